package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// pushError is an error answer of the Web Push API, rendered as autopush does:
// {"code","errno","error","message"}.
type pushError struct {
	Code    int    `json:"code"`
	Errno   int    `json:"errno"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

func newPushError(code, errno int, msg string) *pushError {
	return &pushError{Code: code, Errno: errno, Error: http.StatusText(code), Message: msg}
}

// Autopush errnos used by the Web Push API.
const (
	errnoBadHeader    = 101 // invalid Urgency
	errnoNotFound     = 102 // unknown or unregistered token, unknown message
	errnoTooLarge     = 104
	errnoVAPID        = 109
	errnoBadEncoding  = 110 // missing or unsupported Content-Encoding
	errnoMissingTTL   = 111
	errnoInvalidTTL   = 112
	errnoInvalidTopic = 113
	errnoNegativeTTL  = 114
	errnoUnavailable  = 201 // back off and retry
	errnoTooMany      = 429
)

// pushHeaders are the validated RFC 8030 headers of a push.
type pushHeaders struct {
	TTL     int64 // seconds, clamped to protocol.MaxTTL
	Urgency string
	Topic   string
}

var urgencies = map[string]bool{"very-low": true, "low": true, "normal": true, "high": true}

// parsePushHeaders validates TTL (required), Urgency and Topic.
func parsePushHeaders(h http.Header) (pushHeaders, *pushError) {
	var p pushHeaders
	ttls := h["Ttl"] // the canonical form of TTL, without canonicalizing per request
	if len(ttls) == 0 {
		return p, newPushError(400, errnoMissingTTL, "missing TTL header")
	}
	if len(ttls) > 1 {
		return p, newPushError(400, errnoInvalidTTL, "more than one TTL header")
	}
	v := strings.TrimSpace(ttls[0])
	if strings.HasPrefix(v, "-") && len(v) > 1 && allDigits(v[1:]) {
		return p, newPushError(400, errnoNegativeTTL, "negative TTL")
	}
	if v == "" || !allDigits(v) {
		return p, newPushError(400, errnoInvalidTTL, "invalid TTL: want seconds in 0..2592000")
	}
	maxTTL := int64(protocol.MaxTTL / time.Second)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n > maxTTL {
		n = maxTTL // all digits: only an overflow fails
	}
	p.TTL = n

	p.Urgency = "normal"
	if us := h.Values("Urgency"); len(us) > 0 {
		if len(us) > 1 {
			return p, newPushError(400, errnoBadHeader, "more than one Urgency header")
		}
		u := strings.TrimSpace(us[0])
		if !urgencies[u] {
			return p, newPushError(400, errnoBadHeader, "invalid Urgency: want very-low, low, normal or high")
		}
		p.Urgency = u
	}

	if ts := h.Values("Topic"); len(ts) > 0 {
		if len(ts) > 1 {
			return p, newPushError(400, errnoInvalidTopic, "more than one Topic header")
		}
		t := ts[0]
		if t == "" || len(t) > 32 || !isBase64URL(t) {
			return p, newPushError(400, errnoInvalidTopic, "invalid Topic: want 1 to 32 base64url characters")
		}
		p.Topic = t
	}
	return p, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func isBase64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Lomiri /notify.

// MaxNotifyData is the largest raw JSON "data" of a /notify request.
const MaxNotifyData = 2048

// MaxNotifyPending is how many messages a token may have pending via /notify.
const MaxNotifyPending = 100

// notifyError is an error answer of /notify: {"error": label, "message": …}.
type notifyError struct {
	Status  int             `json:"-"`
	Label   string          `json:"error"`
	Message string          `json:"message"`
	Extra   json.RawMessage `json:"extra,omitempty"`
}

func newNotifyError(status int, label, msg string) *notifyError {
	return &notifyError{Status: status, Label: label, Message: msg}
}

// notifyRequest is a validated /notify body.
type notifyRequest struct {
	AppID        string          `json:"appid"`
	Token        string          `json:"token"`
	ExpireOn     time.Time       `json:"expire_on"`
	Data         json.RawMessage `json:"data"`
	ClearPending bool            `json:"clear_pending,omitempty"`
	ReplaceTag   string          `json:"replace_tag,omitempty"`
}

// parseNotify validates a /notify body at time now.
func parseNotify(body []byte, now time.Time) (notifyRequest, *notifyError) {
	var req notifyRequest
	if len(body) == 0 {
		return req, newNotifyError(400, "invalid-request", "Request body empty")
	}
	var raw struct {
		AppID        string          `json:"appid"`
		Token        string          `json:"token"`
		ExpireOn     *string         `json:"expire_on"`
		Data         json.RawMessage `json:"data"`
		ClearPending bool            `json:"clear_pending"`
		ReplaceTag   string          `json:"replace_tag"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil || dec.More() {
		return req, newNotifyError(400, "invalid-request", "Malformed JSON Object")
	}
	if raw.AppID == "" || raw.Token == "" {
		return req, newNotifyError(400, "invalid-request", "Missing id field")
	}
	if len(raw.Data) == 0 || string(raw.Data) == "null" {
		return req, newNotifyError(400, "invalid-request", "Missing data field")
	}
	if len(raw.Data) > MaxNotifyData {
		return req, newNotifyError(400, "invalid-request", "Data too large")
	}
	if raw.ExpireOn == nil {
		return req, newNotifyError(400, "invalid-request", "Invalid expiration date")
	}
	exp, err := time.Parse(time.RFC3339, *raw.ExpireOn)
	if err != nil {
		return req, newNotifyError(400, "invalid-request", "Invalid expiration date")
	}
	if !exp.After(now) {
		return req, newNotifyError(400, "invalid-request", "Past expiration date")
	}
	if len(raw.ReplaceTag) > 256 {
		return req, newNotifyError(400, "invalid-request", "Replace tag too long")
	}
	return notifyRequest{
		AppID: raw.AppID, Token: raw.Token, ExpireOn: exp, Data: bytes.Clone(raw.Data),
		ClearPending: raw.ClearPending, ReplaceTag: raw.ReplaceTag,
	}, nil
}

// MaxCryptoHeader is the most bytes an aesgcm Encryption or Crypto-Key
// header may have: real ones carry a salt, a dh key and a VAPID key (under
// 300 bytes); the bound keeps every notification frame far below
// protocol.MaxFrameBytes.
const MaxCryptoHeader = 512

// validCryptoParams reports whether v is a parameter list of the aesgcm
// Encryption or Crypto-Key header (draft-ietf-httpbis-encryption-encoding-03,
// the parameter syntax RFC 8188 kept): comma-separated elements of
// semicolon-separated name=value parameters, a name a token, a value a token
// (with "/" and "=" of base64 allowed) or a quoted string without escapes.
func validCryptoParams(v string) bool {
	if v == "" || len(v) > MaxCryptoHeader {
		return false
	}
	i := 0
	ows := func() {
		for i < len(v) && (v[i] == ' ' || v[i] == '\t') {
			i++
		}
	}
	for {
		ows()
		// name
		n := i
		for i < len(v) && isTokenChar(v[i]) {
			i++
		}
		if i == n || i >= len(v) || v[i] != '=' {
			return false
		}
		i++
		// value
		if i < len(v) && v[i] == '"' {
			i++
			for i < len(v) && v[i] != '"' {
				if c := v[i]; c < 0x20 || c > 0x7e || c == '\\' {
					return false
				}
				i++
			}
			if i >= len(v) {
				return false
			}
			i++
		} else {
			n = i
			for i < len(v) && (isTokenChar(v[i]) || v[i] == '/' || v[i] == '=') {
				i++
			}
			if i == n {
				return false
			}
		}
		ows()
		if i == len(v) {
			return true
		}
		if v[i] != ';' && v[i] != ',' {
			return false
		}
		i++
	}
}

// isTokenChar reports whether c is a tchar of RFC 9110.
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
