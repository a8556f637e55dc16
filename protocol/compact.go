package protocol

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Compact frames (Herald extension ExtCompact) carry the two frames of the
// hot path, a notification and its ack, as binary websocket frames of a few
// bytes of framing around the raw channel id, version and body, instead of
// JSON with the body in base64. A device asks for them with a "compact"
// frame; from then on the server may send notifications in either form and
// the device acks in the compact one. Every other frame stays JSON.
//
// A compact frame starts with its kind. Integers are unsigned varints
// (encoding/binary), strings a varint length and their bytes (valid UTF-8).
//
//	notification  0x01, flags, channelID (16 bytes), version, [ttl], [headers], body (the rest of the frame)
//	ack           0x02, update…
//	app_ack       0x03, update…
//	update        flags, [channelID (16 bytes)], version, [code]
//
// A version is written in the form its flags name: a string; 16 bytes that
// are the version in unpadded base64url (herald-server's message ids); or
// an integer that is the version in decimal (SimplePush).
//
// Notification flags: bits 0–1 the version's form; bit 2 a ttl follows;
// bit 3 the headers are {"encoding":"aes128gcm"} (nothing follows); bit 4 a
// header count follows and as many key and value strings. Update flags:
// bits 0–1 the version's form; bit 2 the channel is the previous update's
// (no channelID follows); bit 3 a code follows. Other bits are zero.
const (
	compactNotification byte = 0x01
	compactAck          byte = 0x02
	compactAppAck       byte = 0x03
)

const (
	versionString  = 0
	versionID      = 1 // 16 bytes, unpadded base64url
	versionDecimal = 2
	versionForm    = 0x03

	nflagTTL       = 1 << 2
	nflagAES128GCM = 1 << 3
	nflagHeaders   = 1 << 4
	nflagsKnown    = versionForm | nflagTTL | nflagAES128GCM | nflagHeaders

	uflagSameChannel = 1 << 2
	uflagCode        = 1 << 3
	uflagsKnown      = versionForm | uflagSameChannel | uflagCode
)

// MaxCompactUpdates is the most updates one compact ack or app_ack frame may
// carry: an update is as small as 3 bytes, and a frame of MaxFrameBytes must
// not decode to tens of thousands of them. (A device acks a stored batch of
// at most MaxBatchSize at a time.)
const MaxCompactUpdates = 1024

// maxCompactHeaders bounds the headers of a compact notification (Web Push
// needs at most three: encoding, encryption, crypto_key).
const maxCompactHeaders = 16

// maxVersionBytes is the longest version Validate accepts.
const maxVersionBytes = 256

// IsCompact reports whether a text or binary frame's payload is a compact
// frame rather than JSON (which starts with '{').
func IsCompact(frame []byte) bool {
	return len(frame) > 0 && frame[0] >= compactNotification && frame[0] <= compactAppAck
}

// CompactCompressible reports whether a compact frame is worth compressing
// (permessage-deflate): only a notification with a plaintext body of a few
// hundred bytes. Deflate makes small frames and encrypted bodies longer.
func CompactCompressible(frame []byte) bool {
	return len(frame) >= 256 && frame[0] == compactNotification && frame[1]&(nflagAES128GCM|nflagHeaders) == 0
}

// AppendCompactNotification appends the compact frame of a notification
// with the raw body data (Notification.Data is its base64url). ok is false
// if chid is not a valid channel id; nothing is appended then.
func AppendCompactNotification(b []byte, chid, version string, data []byte, headers map[string]string, ttl int64) ([]byte, bool) {
	raw, ok := channelIDBytes(chid)
	if !ok {
		return b, false
	}
	form := versionFormOf(version)
	flags := form
	if ttl > 0 {
		flags |= nflagTTL
	}
	aes := false
	if len(headers) == 1 {
		for k, v := range headers { // cheaper than a lookup (no hashing)
			aes = k == "encoding" && v == "aes128gcm"
		}
	}
	switch {
	case aes:
		flags |= nflagAES128GCM
	case len(headers) > 0:
		flags |= nflagHeaders
	}
	b = append(b, compactNotification, flags)
	b = append(b, raw[:]...)
	b = appendVersion(b, form, version)
	if ttl > 0 {
		b = binary.AppendUvarint(b, uint64(ttl))
	}
	if !aes && len(headers) > 0 {
		b = binary.AppendUvarint(b, uint64(len(headers)))
		for k, v := range headers {
			b = appendString(b, k)
			b = appendString(b, v)
		}
	}
	return append(b, data...), true
}

// AppendCompact appends the compact frame of a Notification, Ack or AppAck.
// It fails for any other message, for a channel id that is not valid, for
// a notification whose Data is not base64url and for more than
// MaxCompactUpdates updates.
func AppendCompact(b []byte, m Message) ([]byte, error) {
	switch m := m.(type) {
	case *Notification:
		if m.TTL < 0 {
			return b, fmt.Errorf("cannot encode notification: negative ttl")
		}
		body, err := m.Body()
		if err != nil {
			return b, fmt.Errorf("cannot encode notification: data is not base64url: %w", err)
		}
		out, ok := AppendCompactNotification(b, m.ChannelID, m.Version, body, m.Headers, m.TTL)
		if !ok {
			return b, fmt.Errorf("cannot encode notification: invalid channelID %q", m.ChannelID)
		}
		return out, nil
	case *Ack:
		return appendUpdates(b, compactAck, m.Updates)
	case *AppAck:
		return appendUpdates(b, compactAppAck, m.Updates)
	case nil:
		return b, fmt.Errorf("cannot encode nil message in compact form")
	default:
		return b, fmt.Errorf("no compact form for %s", m.Type())
	}
}

func appendUpdates(b []byte, kind byte, us []Update) ([]byte, error) {
	if len(us) > MaxCompactUpdates {
		return b, fmt.Errorf("cannot encode %d updates in one compact frame (at most %d)", len(us), MaxCompactUpdates)
	}
	out := append(b, kind)
	for i, u := range us {
		raw, ok := channelIDBytes(u.ChannelID)
		if !ok {
			return b, fmt.Errorf("cannot encode update: invalid channelID %q", u.ChannelID)
		}
		if u.Code < 0 {
			return b, fmt.Errorf("cannot encode update: negative code %d", u.Code)
		}
		form := versionFormOf(u.Version)
		flags := form
		same := i > 0 && us[i-1].ChannelID == u.ChannelID
		if same {
			flags |= uflagSameChannel
		}
		if u.Code != 0 {
			flags |= uflagCode
		}
		out = append(out, flags)
		if !same {
			out = append(out, raw[:]...)
		}
		out = appendVersion(out, form, u.Version)
		if u.Code != 0 {
			out = binary.AppendUvarint(out, uint64(u.Code))
		}
	}
	return out, nil
}

// versionFormOf returns the shortest form that renders back to exactly v.
func versionFormOf(v string) byte {
	if len(v) == 22 {
		var raw [16]byte
		var again [22]byte
		if n, err := base64.RawURLEncoding.Decode(raw[:], []byte(v)); err == nil && n == 16 {
			base64.RawURLEncoding.Encode(again[:], raw[:])
			if string(again[:]) == v { // the last character's two spare bits are zero
				return versionID
			}
		}
	}
	if len(v) > 0 && len(v) <= 20 && (v[0] != '0' || len(v) == 1) {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil && strconv.FormatUint(n, 10) == v {
			return versionDecimal
		}
	}
	return versionString
}

func appendVersion(b []byte, form byte, v string) []byte {
	switch form {
	case versionID:
		out, _ := base64.RawURLEncoding.AppendDecode(b, []byte(v)) // checked by versionFormOf
		return out
	case versionDecimal:
		n, _ := strconv.ParseUint(v, 10, 64)
		return binary.AppendUvarint(b, n)
	default:
		return appendString(b, v)
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// channelIDBytes returns the 16 bytes of a channel id; ok is false if it
// is not valid (ValidChannelID).
func channelIDBytes(chid string) (raw [16]byte, ok bool) {
	if len(chid) != 36 || chid[8] != '-' || chid[13] != '-' || chid[18] != '-' || chid[23] != '-' {
		return raw, false
	}
	j := 0
	for i := 0; i < 36; i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i-- // the dash; the next pair starts after it
			continue
		}
		hi, ok1 := unhex(chid[i])
		lo, ok2 := unhex(chid[i+1])
		if !ok1 || !ok2 {
			return raw, false
		}
		raw[j] = hi<<4 | lo
		j++
	}
	return raw, true
}

// unhex is the value of a lowercase hex digit.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// DecodeCompact parses and validates one compact frame. Every message it
// returns passes Validate, and AppendCompact writes it back.
func DecodeCompact(frame []byte) (Message, error) {
	if len(frame) > MaxFrameBytes {
		return nil, fmt.Errorf("%w: compact frame of %d bytes exceeds %d", ErrInvalid, len(frame), MaxFrameBytes)
	}
	if len(frame) == 0 {
		return nil, fmt.Errorf("%w: empty compact frame", ErrInvalid)
	}
	d := compactReader{p: frame[1:]}
	switch frame[0] {
	case compactNotification:
		n, err := d.notification()
		if err != nil {
			return nil, fmt.Errorf("%w: compact notification: %v", ErrInvalid, err)
		}
		return n, nil
	case compactAck:
		us, err := d.updates()
		if err != nil {
			return nil, fmt.Errorf("%w: compact ack: %v", ErrInvalid, err)
		}
		return &Ack{Updates: us}, nil
	case compactAppAck:
		us, err := d.updates()
		if err != nil {
			return nil, fmt.Errorf("%w: compact app_ack: %v", ErrInvalid, err)
		}
		return &AppAck{Updates: us}, nil
	default:
		return nil, fmt.Errorf("%w: unknown compact frame kind 0x%02x", ErrInvalid, frame[0])
	}
}

// CompactUndeliverable returns the channel id and version of a compact
// notification frame that DecodeCompact refuses but whose head (kind,
// flags, channel id, version) is sound, so that it can be acked as not
// delivered; ok is false for any other frame.
func CompactUndeliverable(frame []byte) (chid, version string, ok bool) {
	if len(frame) < 2 || frame[0] != compactNotification {
		return "", "", false
	}
	d := compactReader{p: frame[2:]}
	chid, err := d.channelID()
	if err != nil {
		return "", "", false
	}
	version, err = d.version(frame[1] & versionForm)
	if err != nil {
		return "", "", false
	}
	return chid, version, true
}

type compactReader struct {
	p []byte
}

func (d *compactReader) byte() (byte, error) {
	if len(d.p) == 0 {
		return 0, fmt.Errorf("frame ends early")
	}
	c := d.p[0]
	d.p = d.p[1:]
	return c, nil
}

func (d *compactReader) uvarint() (uint64, error) {
	n, k := binary.Uvarint(d.p)
	if k <= 0 {
		return 0, fmt.Errorf("bad varint")
	}
	d.p = d.p[k:]
	return n, nil
}

func (d *compactReader) bytes(n uint64) ([]byte, error) {
	if n > uint64(len(d.p)) {
		return nil, fmt.Errorf("frame ends early")
	}
	b := d.p[:n]
	d.p = d.p[n:]
	return b, nil
}

// string reads a string of at most max bytes.
func (d *compactReader) string(max int) (string, error) {
	n, err := d.uvarint()
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", fmt.Errorf("string of %d bytes exceeds %d", n, max)
	}
	b, err := d.bytes(n)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(b) {
		return "", fmt.Errorf("string is not UTF-8")
	}
	return string(b), nil
}

func (d *compactReader) channelID() (string, error) {
	raw, err := d.bytes(16)
	if err != nil {
		return "", err
	}
	var s [36]byte
	hex.Encode(s[0:8], raw[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], raw[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], raw[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], raw[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], raw[10:16])
	return string(s[:]), nil
}

func (d *compactReader) version(form byte) (string, error) {
	switch form {
	case versionString:
		v, err := d.string(maxVersionBytes)
		if err != nil {
			return "", fmt.Errorf("version: %v", err)
		}
		if v == "" {
			return "", fmt.Errorf("empty version")
		}
		return v, nil
	case versionID:
		raw, err := d.bytes(16)
		if err != nil {
			return "", err
		}
		return base64.RawURLEncoding.EncodeToString(raw), nil
	case versionDecimal:
		n, err := d.uvarint()
		if err != nil {
			return "", fmt.Errorf("version: %v", err)
		}
		return strconv.FormatUint(n, 10), nil
	default:
		return "", fmt.Errorf("unknown version form %d", form)
	}
}

func (d *compactReader) notification() (*Notification, error) {
	flags, err := d.byte()
	if err != nil {
		return nil, err
	}
	if flags&^nflagsKnown != 0 {
		return nil, fmt.Errorf("unknown flags 0x%02x", flags)
	}
	if flags&nflagAES128GCM != 0 && flags&nflagHeaders != 0 {
		return nil, fmt.Errorf("two sets of headers")
	}
	n := &Notification{}
	if n.ChannelID, err = d.channelID(); err != nil {
		return nil, err
	}
	if n.Version, err = d.version(flags & versionForm); err != nil {
		return nil, err
	}
	if flags&nflagTTL != 0 {
		ttl, err := d.uvarint()
		if err != nil {
			return nil, fmt.Errorf("ttl: %v", err)
		}
		if ttl > math.MaxInt64 {
			return nil, fmt.Errorf("ttl %d out of range", ttl)
		}
		n.TTL = int64(ttl)
	}
	switch {
	case flags&nflagAES128GCM != 0:
		n.Headers = map[string]string{"encoding": "aes128gcm"}
	case flags&nflagHeaders != 0:
		count, err := d.uvarint()
		if err != nil {
			return nil, fmt.Errorf("headers: %v", err)
		}
		if count > maxCompactHeaders {
			return nil, fmt.Errorf("%d headers exceed %d", count, maxCompactHeaders)
		}
		if count > 0 {
			n.Headers = make(map[string]string, count)
		}
		for range count {
			k, err := d.string(MaxFrameBytes)
			if err != nil {
				return nil, fmt.Errorf("header name: %v", err)
			}
			v, err := d.string(MaxFrameBytes)
			if err != nil {
				return nil, fmt.Errorf("header %q: %v", k, err)
			}
			if _, dup := n.Headers[k]; dup {
				return nil, fmt.Errorf("header %q twice", k)
			}
			n.Headers[k] = v
		}
	}
	if len(d.p) > MaxBodyBytes {
		return nil, fmt.Errorf("body of %d bytes exceeds %d", len(d.p), MaxBodyBytes)
	}
	if len(d.p) > 0 {
		n.Data = base64.RawURLEncoding.EncodeToString(d.p)
	}
	return n, nil
}

func (d *compactReader) updates() ([]Update, error) {
	us := []Update{}
	for len(d.p) > 0 {
		if len(us) == MaxCompactUpdates {
			return nil, fmt.Errorf("more than %d updates", MaxCompactUpdates)
		}
		flags, _ := d.byte()
		if flags&^uflagsKnown != 0 {
			return nil, fmt.Errorf("update %d: unknown flags 0x%02x", len(us), flags)
		}
		var u Update
		var err error
		if flags&uflagSameChannel != 0 {
			if len(us) == 0 {
				return nil, fmt.Errorf("update 0 names the previous channel")
			}
			u.ChannelID = us[len(us)-1].ChannelID
		} else if u.ChannelID, err = d.channelID(); err != nil {
			return nil, fmt.Errorf("update %d: %v", len(us), err)
		}
		if u.Version, err = d.version(flags & versionForm); err != nil {
			return nil, fmt.Errorf("update %d: %v", len(us), err)
		}
		if flags&uflagCode != 0 {
			code, err := d.uvarint()
			if err != nil || code > math.MaxInt32 {
				return nil, fmt.Errorf("update %d: bad code", len(us))
			}
			u.Code = int(code)
		}
		us = append(us, u)
	}
	return us, nil
}
