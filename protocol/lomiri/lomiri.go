// Package lomiri is the wire protocol between a Lomiri (Ubuntu Touch) push
// client and its push server, as lomiri-push-service and UBports' server
// speak it: after TLS the client writes one byte, the wire version 0, then
// both sides exchange frames of a 2-byte big-endian length followed by that
// many bytes of JSON. Every message has "T" (its type); the other fields are
// capitalised Go field names, except the A/M/P of a notification.
//
// The exchange is lockstep: the server sends connack, ping, notifications or
// broadcast, and waits for the client's pong or ack before the next one.
//
// Decode validates what a peer relies on; Encode is its inverse. Both ends of
// Herald (heraldd's Lomiri backend and herald-server's Lomiri listener) use
// this package.
package lomiri

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Protocol constants.
const (
	// WireVersion is the byte a client writes right after the TLS handshake.
	WireVersion = 0
	// MaxFrameBytes is the largest frame (the length prefix is 16 bits).
	MaxFrameBytes = 65535
	// MaxPayloadBytes bounds the payloads of one notifications or broadcast
	// frame; longer lists are split into parts acked one by one.
	MaxPayloadBytes = 62 * 1024
	// SystemChannel is the broadcast channel of system-image updates.
	SystemChannel = "0"
	// MaxDeviceIDBytes bounds the device id of a connect.
	MaxDeviceIDBytes = 256
)

// Message types ("T").
const (
	TypeConnect       = "connect"
	TypeConnAck       = "connack"
	TypePing          = "ping"
	TypePong          = "pong"
	TypeNotifications = "notifications"
	TypeBroadcast     = "broadcast"
	TypeAck           = "ack"
	TypeNak           = "nak"
	TypeConnBroken    = "connbroken"
	TypeConnWarn      = "connwarn"
	TypeWarn          = "warn"
	TypeSetParams     = "setparams"
)

// Reasons of connbroken and connwarn.
const (
	BrokenHostMismatch = "host-mismatch"
	WarnUnauthorized   = "unauthorized"
)

// ErrInvalid is wrapped by every validation error of Decode and ReadFrame.
var ErrInvalid = errors.New("invalid lomiri frame")

// Message is one decoded frame.
type Message interface {
	// Type is the message's "T".
	Type() string
}

// Connect is the client's first frame.
type Connect struct {
	ClientVer     string
	DeviceId      string
	Authorization string
	Cookie        string
	// Info describes the device (keys "device", "channel", "build_number");
	// omitted when empty.
	Info map[string]any
	// Levels maps each broadcast channel to the level the client has.
	Levels map[string]int64
}

// ConnAck answers Connect.
type ConnAck struct {
	Params ConnAckParams
}

// ConnAckParams are the connection parameters the server gives.
type ConnAckParams struct {
	// PingInterval is a Go duration string ("10s"): the server pings after
	// this much idle time.
	PingInterval string
}

// Ping is sent by the server when idle; the client answers Pong.
type Ping struct{}

// Pong answers Ping.
type Pong struct{}

// Notification is one unicast message.
type Notification struct {
	AppID   string          `json:"A"`
	MsgID   string          `json:"M"`
	Payload json.RawMessage `json:"P"`
}

// Notifications carries unicast messages; the client acks after storing them.
type Notifications struct {
	Notifications []Notification
}

// Broadcast carries the newest payloads of a broadcast channel up to TopLevel.
type Broadcast struct {
	AppId    string `json:",omitempty"`
	ChanId   string
	TopLevel int64
	Payloads []json.RawMessage
}

// Ack acknowledges the previous notifications or broadcast; Nak (ack with
// T "nak") says the client could not store it.
type Ack struct{ Nak bool }

// ConnBroken ends the connection (one-way).
type ConnBroken struct{ Reason string }

// ConnWarn is a warning; the connection goes on. Warn is true when it came
// as T "warn" (the older spelling).
type ConnWarn struct {
	Reason string
	Warn   bool
}

// SetParams gives the client a cookie to send in its next Connect.
type SetParams struct{ SetCookie string }

// Unknown is a frame with a type this package does not know; peers ignore it.
type Unknown struct{ T string }

func (*Connect) Type() string       { return TypeConnect }
func (*ConnAck) Type() string       { return TypeConnAck }
func (*Ping) Type() string          { return TypePing }
func (*Pong) Type() string          { return TypePong }
func (*Notifications) Type() string { return TypeNotifications }
func (*Broadcast) Type() string     { return TypeBroadcast }
func (*ConnBroken) Type() string    { return TypeConnBroken }
func (*SetParams) Type() string     { return TypeSetParams }
func (u *Unknown) Type() string     { return u.T }

func (a *Ack) Type() string {
	if a.Nak {
		return TypeNak
	}
	return TypeAck
}

func (w *ConnWarn) Type() string {
	if w.Warn {
		return TypeWarn
	}
	return TypeConnWarn
}

// PingDuration parses the connack's ping interval.
func (a *ConnAck) PingDuration() (time.Duration, error) {
	d, err := time.ParseDuration(a.Params.PingInterval)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%w: connack PingInterval %q is not a positive duration", ErrInvalid, a.Params.PingInterval)
	}
	return d, nil
}

// Encode renders m as the JSON of one frame. It fails for a message Decode
// would refuse, and for frames over MaxFrameBytes.
func Encode(m Message) ([]byte, error) {
	var v any
	switch m := m.(type) {
	case *Connect:
		levels := m.Levels
		if levels == nil {
			levels = map[string]int64{}
		}
		v = struct {
			T             string
			ClientVer     string
			DeviceId      string
			Authorization string
			Cookie        string
			Info          map[string]any `json:",omitempty"`
			Levels        map[string]int64
		}{TypeConnect, m.ClientVer, m.DeviceId, m.Authorization, m.Cookie, m.Info, levels}
	case *ConnAck:
		v = struct {
			T      string
			Params ConnAckParams
		}{TypeConnAck, m.Params}
	case *Ping, *Pong, *Ack:
		v = struct{ T string }{m.Type()}
	case *Notifications:
		ns := m.Notifications
		if ns == nil {
			ns = []Notification{}
		}
		v = struct {
			T             string
			Notifications []Notification
		}{TypeNotifications, ns}
	case *Broadcast:
		ps := m.Payloads
		if ps == nil {
			ps = []json.RawMessage{}
		}
		v = struct {
			T        string
			AppId    string `json:",omitempty"`
			ChanId   string
			TopLevel int64
			Payloads []json.RawMessage
		}{TypeBroadcast, m.AppId, m.ChanId, m.TopLevel, ps}
	case *ConnBroken:
		v = struct{ T, Reason string }{TypeConnBroken, m.Reason}
	case *ConnWarn:
		v = struct{ T, Reason string }{m.Type(), m.Reason}
	case *SetParams:
		v = struct{ T, SetCookie string }{TypeSetParams, m.SetCookie}
	default:
		return nil, fmt.Errorf("cannot encode %T", m)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot encode %s: %w", m.Type(), err)
	}
	if len(b) > MaxFrameBytes {
		return nil, fmt.Errorf("cannot encode %s: %d bytes exceed the %d-byte frame", m.Type(), len(b), MaxFrameBytes)
	}
	if _, err := Decode(b); err != nil {
		return nil, fmt.Errorf("cannot encode %s: %w", m.Type(), err)
	}
	return b, nil
}

// Decode parses and validates the JSON of one frame. An unknown type is
// returned as *Unknown, not as an error.
func Decode(frame []byte) (Message, error) {
	var head struct {
		T *string
	}
	if err := json.Unmarshal(frame, &head); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrInvalid, err)
	}
	if head.T == nil {
		return nil, fmt.Errorf("%w: no T", ErrInvalid)
	}
	switch *head.T {
	case TypeConnect:
		var m Connect
		if err := strict(frame, &m); err != nil {
			return nil, err
		}
		if m.DeviceId == "" || len(m.DeviceId) > MaxDeviceIDBytes {
			return nil, fmt.Errorf("%w: connect DeviceId must be 1..%d bytes", ErrInvalid, MaxDeviceIDBytes)
		}
		if m.Levels == nil {
			m.Levels = map[string]int64{}
		}
		for ch := range m.Levels {
			if ch == "" {
				return nil, fmt.Errorf("%w: connect Levels has an empty channel", ErrInvalid)
			}
		}
		if len(m.Info) == 0 {
			m.Info = nil
		}
		return &m, nil
	case TypeConnAck:
		var m ConnAck
		if err := strict(frame, &m); err != nil {
			return nil, err
		}
		if _, err := m.PingDuration(); err != nil {
			return nil, err
		}
		return &m, nil
	case TypePing:
		return &Ping{}, nil
	case TypePong:
		return &Pong{}, nil
	case TypeAck:
		return &Ack{}, nil
	case TypeNak:
		return &Ack{Nak: true}, nil
	case TypeNotifications:
		var m Notifications
		if err := strict(frame, &m); err != nil {
			return nil, err
		}
		for i, n := range m.Notifications {
			if n.AppID == "" || n.MsgID == "" {
				return nil, fmt.Errorf("%w: notification %d has no A or M", ErrInvalid, i)
			}
			if len(n.Payload) == 0 || !json.Valid(n.Payload) {
				return nil, fmt.Errorf("%w: notification %d has no valid P", ErrInvalid, i)
			}
			m.Notifications[i].Payload = compact(n.Payload)
		}
		if m.Notifications == nil {
			m.Notifications = []Notification{}
		}
		return &m, nil
	case TypeBroadcast:
		var m Broadcast
		if err := strict(frame, &m); err != nil {
			return nil, err
		}
		if m.ChanId == "" {
			return nil, fmt.Errorf("%w: broadcast has no ChanId", ErrInvalid)
		}
		if m.TopLevel < 0 {
			return nil, fmt.Errorf("%w: broadcast TopLevel %d is negative", ErrInvalid, m.TopLevel)
		}
		for i, p := range m.Payloads {
			if len(p) == 0 || !json.Valid(p) {
				return nil, fmt.Errorf("%w: broadcast payload %d is not JSON", ErrInvalid, i)
			}
			m.Payloads[i] = compact(p)
		}
		if m.Payloads == nil {
			m.Payloads = []json.RawMessage{}
		}
		return &m, nil
	case TypeConnBroken:
		var m ConnBroken
		if err := strict(frame, &m); err != nil {
			return nil, err
		}
		return &m, nil
	case TypeConnWarn, TypeWarn:
		var m ConnWarn
		if err := strict(frame, &m); err != nil {
			return nil, err
		}
		m.Warn = *head.T == TypeWarn
		return &m, nil
	case TypeSetParams:
		var m SetParams
		if err := strict(frame, &m); err != nil {
			return nil, err
		}
		return &m, nil
	}
	return &Unknown{T: *head.T}, nil
}

// strict decodes frame into v; fields of the wrong type are an error,
// unknown fields are ignored (the protocol grows by adding fields).
func strict(frame []byte, v any) error {
	if err := json.Unmarshal(frame, v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

func compact(raw json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

// ReadFrame reads one length-prefixed frame from r. A zero length is an
// error; so is a frame longer than max (0 means MaxFrameBytes).
func ReadFrame(r io.Reader, max int) ([]byte, error) {
	if max <= 0 || max > MaxFrameBytes {
		max = MaxFrameBytes
	}
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n == 0 {
		return nil, fmt.Errorf("%w: empty frame", ErrInvalid)
	}
	if n > max {
		return nil, fmt.Errorf("%w: frame of %d bytes exceeds %d", ErrInvalid, n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

// AppendFrame appends the length prefix and frame to dst.
func AppendFrame(dst, frame []byte) ([]byte, error) {
	if len(frame) == 0 || len(frame) > MaxFrameBytes {
		return dst, fmt.Errorf("cannot frame %d bytes: want 1..%d", len(frame), MaxFrameBytes)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(frame)))
	return append(dst, frame...), nil
}

// WriteFrame writes frame with its length prefix in one write.
func WriteFrame(w io.Writer, frame []byte) error {
	b, err := AppendFrame(make([]byte, 0, len(frame)+2), frame)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// SplitNotifications cuts ns into parts whose payloads add up to at most
// MaxPayloadBytes each (a single larger payload is a part of its own). Each
// part is sent as one notifications frame and acked on its own.
func SplitNotifications(ns []Notification) [][]Notification {
	var parts [][]Notification
	start, size := 0, 0
	for i, n := range ns {
		if i > start && size+len(n.Payload) > MaxPayloadBytes {
			parts = append(parts, ns[start:i])
			start, size = i, 0
		}
		size += len(n.Payload)
	}
	if start < len(ns) {
		parts = append(parts, ns[start:])
	}
	return parts
}

// SplitBroadcast cuts b into parts as SplitNotifications does; the TopLevel
// of each part is the level of its last payload, so a client that stores
// the level of each acked part never claims a level it has not seen.
func SplitBroadcast(b *Broadcast) []*Broadcast {
	first := b.TopLevel - int64(len(b.Payloads)) // level before the first payload
	var parts []*Broadcast
	start, size := 0, 0
	flush := func(end int) {
		parts = append(parts, &Broadcast{AppId: b.AppId, ChanId: b.ChanId, TopLevel: first + int64(end), Payloads: b.Payloads[start:end]})
	}
	for i, p := range b.Payloads {
		if i > start && size+len(p) > MaxPayloadBytes {
			flush(i)
			start, size = i, 0
		}
		size += len(p)
	}
	if start < len(b.Payloads) || len(parts) == 0 {
		flush(len(b.Payloads))
	}
	return parts
}

// Describe renders a message for a debug log with secrets and payloads
// redacted: the device id and cookie are shortened, each payload is shown
// by its size.
func Describe(m Message) string {
	switch m := m.(type) {
	case *Connect:
		c := *m
		c.DeviceId = redact(c.DeviceId)
		c.Cookie = redact(c.Cookie)
		b, _ := Encode(&c)
		return string(b)
	case *Notifications:
		parts := make([]string, 0, len(m.Notifications))
		for _, n := range m.Notifications {
			parts = append(parts, fmt.Sprintf(`{"A":%q,"M":%q,"P":<%d bytes>}`, n.AppID, n.MsgID, len(n.Payload)))
		}
		return `{"T":"notifications","Notifications":[` + strings.Join(parts, ",") + `]}`
	case *Broadcast:
		return fmt.Sprintf(`{"T":"broadcast","ChanId":%q,"TopLevel":%d,"Payloads":<%d>}`, m.ChanId, m.TopLevel, len(m.Payloads))
	case *SetParams:
		return `{"T":"setparams","SetCookie":"` + redact(m.SetCookie) + `"}`
	}
	b, err := Encode(m)
	if err != nil {
		return `{"T":"` + m.Type() + `"}`
	}
	return string(b)
}

func redact(s string) string {
	if s == "" {
		return ""
	}
	if len(s) <= 4 {
		return "…"
	}
	return s[:4] + "…"
}
