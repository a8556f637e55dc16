package server

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strconv"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// The two frames of the hot path, a notification sent and an ack received,
// are encoded and decoded here without reflection. Each produces exactly
// what protocol.Encode and protocol.Decode would (the fuzz targets check it);
// anything outside the common shape goes to the protocol package.

// encodeNotification returns the notification frame of m for c.
func (c *conn) encodeNotification(m *Message) []byte {
	return c.appendNotification(nil, m)
}

// appendNotification appends the notification frame of m for c: compact
// (binary) once the device has asked for it (extension "compact"), else
// JSON. Both are at most the JSON frame's length (Server.fitsFrame).
func (c *conn) appendNotification(b []byte, m *Message) []byte {
	var ttl int64
	if d := m.Expiry.Sub(c.s.now()); d > 0 {
		ttl = int64((d + time.Second - 1) / time.Second)
	}
	if c.compact.Load() {
		if out, ok := protocol.AppendCompactNotification(b, m.ChannelID, m.Version, m.Data, m.Headers, ttl); ok {
			return out
		}
	}
	return appendNotification(b, m.ChannelID, m.Version, m.Data, m.Headers, ttl)
}

// appendNotification appends the frame protocol.Encode writes for n.
func appendNotification(b []byte, chid, version string, data []byte, headers map[string]string, ttl int64) []byte {
	b = append(b, `{"messageType":"notification","channelID":`...)
	b = appendJSONString(b, chid)
	b = append(b, `,"version":`...)
	b = appendJSONString(b, version)
	if len(data) > 0 {
		b = append(b, `,"data":"`...)
		b = base64.RawURLEncoding.AppendEncode(b, data)
		b = append(b, '"')
	}
	if len(headers) == 1 {
		// One header (the encoding): no sorting needed.
		b = append(b, `,"headers":{`...)
		for k, v := range headers {
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, v)
		}
		b = append(b, '}')
	} else if len(headers) > 1 {
		b = append(b, `,"headers":{`...)
		keys := make([]string, 0, len(headers))
		for k := range headers {
			keys = append(keys, k)
		}
		slices.Sort(keys) // encoding/json sorts map keys
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, headers[k])
		}
		b = append(b, '}')
	}
	if ttl != 0 {
		b = append(b, `,"ttl":`...)
		b = strconv.AppendInt(b, ttl, 10)
	}
	return append(b, '}')
}

// notificationLen is len(appendNotification(nil, …)) without building the
// frame when every string is plain (the usual case).
func notificationLen(chid, version string, data []byte, headers map[string]string, ttl int64) int {
	if !plainJSON(chid) || !plainJSON(version) {
		return len(appendNotification(nil, chid, version, data, headers, ttl))
	}
	n := len(`{"messageType":"notification","channelID":`) + len(chid) + 2 + len(`,"version":`) + len(version) + 2
	if len(data) > 0 {
		n += len(`,"data":""`) + base64.RawURLEncoding.EncodedLen(len(data))
	}
	if len(headers) > 0 {
		n += len(`,"headers":{}`) + len(headers) - 1 // commas
		for k, v := range headers {
			if !plainJSON(k) || !plainJSON(v) {
				return len(appendNotification(nil, chid, version, data, headers, ttl))
			}
			n += len(k) + 2 + 1 + len(v) + 2
		}
	}
	if ttl != 0 {
		n += len(`,"ttl":`) + len(strconv.AppendInt(make([]byte, 0, 20), ttl, 10))
	}
	return n + 1
}

// plainJSON reports whether encoding/json writes s between quotes unchanged:
// printable ASCII other than the quote, backslash and the HTML characters.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func appendJSONString(b []byte, s string) []byte {
	if plainJSON(s) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}

// parseAck decodes the usual shape of an ack frame,
//
//	{"messageType":"ack","updates":[{"channelID":"…","version":"…","code":N},…]}
//
// with plain strings, no white space and "code" optional. ok is false for
// anything else, which the caller then gives to protocol.Decode.
func parseAck(frame []byte) (ack *protocol.Ack, ok bool) {
	const head = `{"messageType":"ack","updates":[`
	if len(frame) > protocol.MaxFrameBytes || len(frame) < len(head) || string(frame[:len(head)]) != head {
		return nil, false
	}
	p := frame[len(head):]
	ack = &protocol.Ack{}
	for {
		var u protocol.Update
		if p, ok = lit(p, `{"channelID":`); !ok {
			return nil, false
		}
		if u.ChannelID, p, ok = plainString(p); !ok {
			return nil, false
		}
		if p, ok = lit(p, `,"version":`); !ok {
			return nil, false
		}
		if u.Version, p, ok = plainString(p); !ok {
			return nil, false
		}
		if rest, found := lit(p, `,"code":`); found {
			if u.Code, p, ok = smallInt(rest); !ok {
				return nil, false
			}
		}
		if p, ok = lit(p, `}`); !ok {
			return nil, false
		}
		ack.Updates = append(ack.Updates, u)
		if rest, found := lit(p, `,`); found {
			p = rest
			continue
		}
		if p, ok = lit(p, `]}`); !ok || len(p) != 0 {
			return nil, false
		}
		break
	}
	if protocol.Validate(ack) != nil {
		return nil, false
	}
	return ack, true
}

// lit consumes the literal s at the start of p.
func lit(p []byte, s string) ([]byte, bool) {
	if len(p) < len(s) || string(p[:len(s)]) != s {
		return p, false
	}
	return p[len(s):], true
}

// plainString consumes a quoted string of characters that need no escaping.
func plainString(p []byte) (string, []byte, bool) {
	if len(p) == 0 || p[0] != '"' {
		return "", p, false
	}
	for i := 1; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '"':
			return string(p[1:i]), p[i+1:], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return "", p, false
		}
	}
	return "", p, false
}

// smallInt consumes a non-negative JSON integer of at most 9 digits.
func smallInt(p []byte) (int, []byte, bool) {
	n, i := 0, 0
	for i < len(p) && i < 10 && p[i] >= '0' && p[i] <= '9' {
		n = n*10 + int(p[i]-'0')
		i++
	}
	if i == 0 || i > 9 || (p[0] == '0' && i > 1) {
		return 0, p, false
	}
	return n, p[i:], true
}
