// Package protocol holds the wire messages exchanged between a device (heraldd)
// and a push server (herald-server): Mozilla's autopush websocket protocol.
//
// Every frame is one JSON object tagged by "messageType". The literal "{}" is a
// ping. Decode validates the fields a peer may rely on; Encode is its inverse.
package protocol

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Limits shared by both ends.
const (
	// MaxFrameBytes is the largest websocket frame either side accepts.
	MaxFrameBytes = 64 << 10
	// MaxBodyBytes is the largest push message body (RFC 8030: 413 only above it).
	MaxBodyBytes = 4096
	// MaxPendingPerChannel is how many undelivered messages a channel keeps.
	MaxPendingPerChannel = 100
	// BatchSize is how many stored messages are sent before waiting for acks.
	BatchSize = 10
	// MaxTTL is the longest TTL a message may have (30 days).
	MaxTTL = 30 * 24 * time.Hour
	// DefaultPingInterval is how often the server sends websocket pings.
	DefaultPingInterval = 5 * time.Minute
	// MinClientPingInterval is the shortest interval between client "{}" pings.
	MinClientPingInterval = 45 * time.Second
	// Subprotocol is the websocket subprotocol Firefox asks for.
	Subprotocol = "push-notification"
)

// Websocket close codes.
const (
	CloseNormal         = 1000
	CloseGoingAway      = 1001
	CloseDoNotReconnect = 4774
)

// Ack codes (ack.updates[].code).
const (
	AckDelivered    = 100
	AckDecryptError = 101
	AckNotDelivered = 102
)

// Message types.
const (
	TypeHello        = "hello"
	TypeRegister     = "register"
	TypeUnregister   = "unregister"
	TypeNotification = "notification"
	TypeAck          = "ack"
	TypeNack         = "nack"
	TypePing         = "ping"
	// TypeUrgency (Herald extension ExtUrgency, the shape of autopush-rs's
	// unreleased "urgency" feature): C→S Min, S→C Status.
	TypeUrgency = "urgency"
	// TypeAppAck (Herald extension ExtAppAck): the device reports that the
	// apps themselves have taken these messages.
	TypeAppAck = "app_ack"
	// TypeBatch (Herald extension ExtBatch): C→S Size, S→C Size and Status.
	TypeBatch = "batch"
	// TypeCompact (Herald extension ExtCompact): C→S asks for compact
	// frames, S→C Status.
	TypeCompact = "compact"
)

// Herald extensions a server names in its hello reply (Hello.Extensions).
// A device uses one only with a server that named it: Mozilla's server
// closes the connection on an unknown messageType.
const (
	// ExtUrgency: the device states the lowest urgency it wants now (in
	// hello and in "urgency" frames); the server holds lower ones for it.
	ExtUrgency = "urgency"
	// ExtAppAck: the device sends "app_ack" when an app has taken a message
	// (Lomiri PopAll, an acknowledged UnifiedPush Connector2.Message).
	ExtAppAck = "app_ack"
	// ExtBatch: the device takes stored messages in larger batches (a
	// "batch" frame after the hello reply asks for up to MaxBatchSize), and
	// the server sends the next batch when half of the current one is acked
	// instead of all of it. Without it, BatchSize at a time, the next after
	// every ack (Mozilla's server and Firefox).
	ExtBatch = "batch"
	// ExtCompact: notifications and acks as compact binary frames (see
	// DecodeCompact) instead of JSON text. The device asks with a "compact"
	// frame after the hello reply and acks in compact frames from then on;
	// the server sends notifications as compact frames once it has read the
	// request (JSON ones written before it may still arrive). Without it,
	// JSON text frames only (Mozilla's server closes on a binary frame).
	ExtCompact = "compact"
)

// MaxBatchSize is the largest stored batch a device may ask for (ExtBatch).
const MaxBatchSize = 100

// Urgency levels of RFC 8030 §5.3, lowest first.
var urgencyLevels = [...]string{"very-low", "low", "normal", "high"}

// UrgencyRank returns the rank of an RFC 8030 urgency (very-low 0 … high 3).
func UrgencyRank(u string) (int, bool) {
	for i, l := range urgencyLevels {
		if l == u {
			return i, true
		}
	}
	return 0, false
}

// UrgencyName returns the urgency of a rank (clamped to very-low … high).
func UrgencyName(rank int) string {
	return urgencyLevels[min(max(rank, 0), len(urgencyLevels)-1)]
}

// ErrInvalid is wrapped by every validation error of Decode.
var ErrInvalid = errors.New("invalid message")

// Message is one decoded frame.
type Message interface {
	// Type is the messageType of the frame ("ping" for "{}").
	Type() string
}

// Hello is the first frame in each direction. A client sends UAID (omitted
// for a new device), ChannelIDs and UseWebPush; a server answers with UAID,
// Status 200 and UseWebPush.
type Hello struct {
	UAID       string            `json:"uaid,omitempty"`
	ChannelIDs []string          `json:"channelIDs,omitempty"`
	UseWebPush bool              `json:"use_webpush"`
	Broadcasts map[string]string `json:"broadcasts"`
	Status     int               `json:"status,omitempty"`
	// Extensions (S→C) are the Herald extensions the server supports.
	Extensions []string `json:"herald_extensions,omitempty"`
	// Urgency (C→S, ExtUrgency) is the lowest urgency the device wants now.
	Urgency string `json:"urgency,omitempty"`
}

// Supports reports whether a server's hello reply names extension ext.
func (h *Hello) Supports(ext string) bool {
	for _, e := range h.Extensions {
		if e == ext {
			return true
		}
	}
	return false
}

// Urgency (ExtUrgency) sets the lowest urgency the device wants (Min, C→S);
// the server answers with Status.
type Urgency struct {
	Min    string `json:"min,omitempty"`
	Status int    `json:"status,omitempty"`
}

// Batch (ExtBatch) asks for stored messages Size at a time (C→S); the server
// answers with the Size it grants and Status.
type Batch struct {
	Size   int `json:"size,omitempty"`
	Status int `json:"status,omitempty"`
}

// Compact (ExtCompact) asks for compact frames (C→S, no fields); the server
// answers with Status.
type Compact struct {
	Status int `json:"status,omitempty"`
}

// AppAck (ExtAppAck) reports messages that the apps have taken.
type AppAck struct {
	Updates []Update `json:"updates"`
}

// Register asks for (client) or returns (server) an endpoint for a channel.
type Register struct {
	ChannelID    string `json:"channelID"`
	Key          string `json:"key,omitempty"`
	Status       int    `json:"status,omitempty"`
	PushEndpoint string `json:"pushEndpoint,omitempty"`
}

// Unregister drops a channel; the server answers with Status.
type Unregister struct {
	ChannelID string `json:"channelID"`
	Code      int    `json:"code,omitempty"`
	Status    int    `json:"status,omitempty"`
}

// Notification carries one push message to the device. Data is the
// base64url (unpadded) body, empty for SimplePush; TTL is in seconds.
type Notification struct {
	ChannelID string            `json:"channelID"`
	Version   string            `json:"version"`
	Data      string            `json:"data,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	TTL       int64             `json:"ttl,omitempty"`
}

// Update is one acknowledged message.
type Update struct {
	ChannelID string `json:"channelID"`
	Version   string `json:"version"`
	Code      int    `json:"code,omitempty"`
}

// Ack acknowledges delivered messages.
type Ack struct {
	Updates []Update `json:"updates"`
}

// Nack refuses one message.
type Nack struct {
	Version string `json:"version"`
	Code    int    `json:"code,omitempty"`
}

// Ping is the literal "{}" frame (or {"messageType":"ping"}).
type Ping struct{}

// Unknown is a frame with a messageType this package does not handle (for
// example "broadcast_subscribe"); peers ignore it instead of closing.
type Unknown struct {
	MessageType string
	Raw         json.RawMessage
}

func (*Hello) Type() string        { return TypeHello }
func (*Register) Type() string     { return TypeRegister }
func (*Unregister) Type() string   { return TypeUnregister }
func (*Notification) Type() string { return TypeNotification }
func (*Ack) Type() string          { return TypeAck }
func (*Nack) Type() string         { return TypeNack }
func (*Ping) Type() string         { return TypePing }
func (*Urgency) Type() string      { return TypeUrgency }
func (*Batch) Type() string        { return TypeBatch }
func (*Compact) Type() string      { return TypeCompact }
func (*AppAck) Type() string       { return TypeAppAck }
func (u *Unknown) Type() string    { return u.MessageType }

// Body returns the decoded message body (nil for SimplePush).
func (n *Notification) Body() ([]byte, error) {
	if n.Data == "" {
		return nil, nil
	}
	return DecodeBase64URL(n.Data)
}

// Decode parses and validates one frame.
func Decode(frame []byte) (Message, error) {
	if len(frame) > MaxFrameBytes {
		return nil, fmt.Errorf("%w: frame of %d bytes exceeds %d", ErrInvalid, len(frame), MaxFrameBytes)
	}
	var head struct {
		MessageType *string `json:"messageType"`
	}
	if err := json.Unmarshal(frame, &head); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if head.MessageType == nil {
		// Only the empty object is a ping.
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(frame, &obj); err != nil || len(obj) != 0 {
			return nil, fmt.Errorf("%w: missing messageType", ErrInvalid)
		}
		return &Ping{}, nil
	}
	var m Message
	switch *head.MessageType {
	case TypeHello:
		m = &Hello{}
	case TypeRegister:
		m = &Register{}
	case TypeUnregister:
		m = &Unregister{}
	case TypeNotification:
		m = &Notification{}
	case TypeAck:
		m = &Ack{}
	case TypeNack:
		m = &Nack{}
	case TypeUrgency:
		m = &Urgency{}
	case TypeAppAck:
		m = &AppAck{}
	case TypeBatch:
		m = &Batch{}
	case TypeCompact:
		m = &Compact{}
	case TypePing:
		return &Ping{}, nil
	case "":
		return nil, fmt.Errorf("%w: empty messageType", ErrInvalid)
	default:
		return &Unknown{MessageType: *head.MessageType, Raw: bytes.Clone(frame)}, nil
	}
	if err := json.Unmarshal(frame, m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, *head.MessageType, err)
	}
	if err := Validate(m); err != nil {
		return nil, err
	}
	normalize(m)
	return m, nil
}

// normalize gives absent and empty collections one form, the one Encode
// writes, so that Decode(Encode(m)) equals m.
func normalize(m Message) {
	switch m := m.(type) {
	case *Hello:
		if m.Broadcasts == nil {
			m.Broadcasts = map[string]string{}
		}
		if len(m.ChannelIDs) == 0 {
			m.ChannelIDs = nil
		}
		if len(m.Extensions) == 0 {
			m.Extensions = nil
		}
	case *Ack:
		if m.Updates == nil {
			m.Updates = []Update{}
		}
	case *AppAck:
		if m.Updates == nil {
			m.Updates = []Update{}
		}
	case *Notification:
		if len(m.Headers) == 0 {
			m.Headers = nil
		}
	}
}

// Validate checks the fields of a message that the receiving side relies on.
func Validate(m Message) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalid, m.Type(), fmt.Sprintf(format, args...))
	}
	switch m := m.(type) {
	case *Hello:
		if m.UAID != "" && len(m.UAID) > 128 {
			return bad("uaid too long")
		}
		for _, id := range m.ChannelIDs {
			if !ValidChannelID(id) {
				return bad("invalid channelID %q", id)
			}
		}
		if _, ok := UrgencyRank(m.Urgency); m.Urgency != "" && !ok {
			return bad("invalid urgency %q", m.Urgency)
		}
		if len(m.Extensions) > 32 {
			return bad("too many extensions")
		}
	case *Urgency:
		if _, ok := UrgencyRank(m.Min); m.Min != "" && !ok {
			return bad("invalid min %q", m.Min)
		}
	case *Batch:
		if m.Size < 0 || m.Size > MaxBatchSize {
			return bad("size %d out of 0..%d", m.Size, MaxBatchSize)
		}
	case *Register:
		if !ValidChannelID(m.ChannelID) {
			return bad("invalid channelID %q", m.ChannelID)
		}
		if len(m.Key) > 256 {
			return bad("key too long")
		}
	case *Unregister:
		if !ValidChannelID(m.ChannelID) {
			return bad("invalid channelID %q", m.ChannelID)
		}
	case *Notification:
		if !ValidChannelID(m.ChannelID) {
			return bad("invalid channelID %q", m.ChannelID)
		}
		if m.Version == "" || len(m.Version) > 256 {
			return bad("invalid version")
		}
		if m.Data != "" {
			body, err := DecodeBase64URL(m.Data)
			if err != nil {
				return bad("data is not base64url: %v", err)
			}
			if len(body) > MaxBodyBytes {
				return bad("body of %d bytes exceeds %d", len(body), MaxBodyBytes)
			}
		}
		if m.TTL < 0 {
			return bad("negative ttl")
		}
	case *Ack:
		return validUpdates(m.Updates, bad)
	case *AppAck:
		return validUpdates(m.Updates, bad)
	case *Nack:
		if m.Version == "" || len(m.Version) > 256 {
			return bad("invalid version")
		}
	}
	return nil
}

func validUpdates(us []Update, bad func(string, ...any) error) error {
	for _, u := range us {
		if !ValidChannelID(u.ChannelID) {
			return bad("invalid channelID %q", u.ChannelID)
		}
		if u.Version == "" || len(u.Version) > 256 {
			return bad("invalid version")
		}
	}
	return nil
}

// Encode renders a message as one frame. A Ping encodes as "{}".
func Encode(m Message) ([]byte, error) {
	switch m := m.(type) {
	case *Ping:
		return []byte("{}"), nil
	case *Unknown:
		return bytes.Clone(m.Raw), nil
	case *Hello:
		if m.Broadcasts == nil {
			c := *m
			c.Broadcasts = map[string]string{}
			m = &c
		}
		return tagged(TypeHello, m)
	case *Ack:
		if m.Updates == nil {
			c := *m
			c.Updates = []Update{}
			m = &c
		}
		return tagged(TypeAck, m)
	case *AppAck:
		if m.Updates == nil {
			c := *m
			c.Updates = []Update{}
			m = &c
		}
		return tagged(TypeAppAck, m)
	case nil:
		return nil, errors.New("cannot encode nil message")
	default:
		return tagged(m.Type(), m)
	}
}

// tagged marshals v and prepends the messageType member.
func tagged(typ string, v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot encode %s: %w", typ, err)
	}
	var b bytes.Buffer
	b.Grow(len(body) + len(typ) + 20)
	b.WriteString(`{"messageType":"`)
	b.WriteString(typ)
	b.WriteByte('"')
	if len(body) > 2 {
		b.WriteByte(',')
		b.Write(body[1:])
	} else {
		b.WriteByte('}')
	}
	return b.Bytes(), nil
}

// ValidUAID reports whether s is 32 lowercase hex digits.
func ValidUAID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isLowerHex(s[i]) {
			return false
		}
	}
	return true
}

// ValidChannelID reports whether s is a lowercase dashed UUID.
func ValidChannelID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isLowerHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isLowerHex(c byte) bool { return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') }

// NewUAID returns a fresh random uaid (128 bits, 32 lowercase hex digits).
func NewUAID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// NewChannelID returns a random (version 4) lowercase dashed UUID.
func NewChannelID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// EncodeBase64URL encodes b as unpadded base64url.
func EncodeBase64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// DecodeBase64URL decodes padded or unpadded base64url.
func DecodeBase64URL(s string) ([]byte, error) {
	for len(s) > 0 && s[len(s)-1] == '=' {
		s = s[:len(s)-1]
	}
	return base64.RawURLEncoding.DecodeString(s)
}

// ErrFrameTooBig is returned by ReadFrame for a message larger than
// MaxFrameBytes after decompression; close with 1009 (message too big).
var ErrFrameTooBig = errors.New("frame larger than the limit after decompression")

// CloseMessageTooBig is the websocket close code for a frame over the limit.
const CloseMessageTooBig = 1009

// ReadFrame reads the next message from next (a websocket connection's
// NextReader) and returns it if it has at most MaxFrameBytes after
// decompression. A websocket read limit counts wire bytes: with
// permessage-deflate a 61 KB frame can inflate to 60 MiB, and reading the
// whole message first would hold all of it. ReadFrame stops one byte past the
// limit instead.
func ReadFrame(next func() (int, io.Reader, error)) (typ int, frame []byte, err error) {
	typ, r, err := next()
	if err != nil {
		return typ, nil, err
	}
	frame, err = io.ReadAll(io.LimitReader(r, MaxFrameBytes+1))
	if err != nil {
		return typ, nil, err
	}
	if len(frame) > MaxFrameBytes {
		return typ, nil, ErrFrameTooBig
	}
	return typ, frame, nil
}
