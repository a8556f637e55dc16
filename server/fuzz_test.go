package server

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// FuzzWebPushHeaders checks that accepted TTL/Urgency/Topic headers are within
// their documented ranges and that rendering them again parses to the same.
// Seeds: testdata/fuzz/FuzzWebPushHeaders.
func FuzzWebPushHeaders(f *testing.F) {
	f.Add("60", "normal", "", false)
	f.Fuzz(func(t *testing.T, ttl, urgency, topic string, twoTTL bool) {
		h := http.Header{}
		if ttl != "" {
			h.Add("TTL", ttl)
			if twoTTL {
				h.Add("TTL", ttl)
			}
		}
		if urgency != "" {
			h.Set("Urgency", urgency)
		}
		if topic != "" {
			h.Set("Topic", topic)
		}
		p, perr := parsePushHeaders(h)
		if perr != nil {
			if perr.Code != 400 || perr.Errno == 0 || perr.Message == "" {
				t.Fatalf("bad error %#v", perr)
			}
			return
		}
		if p.TTL < 0 || p.TTL > int64(protocol.MaxTTL/time.Second) {
			t.Fatalf("TTL %d out of range", p.TTL)
		}
		if !urgencies[p.Urgency] {
			t.Fatalf("urgency %q", p.Urgency)
		}
		if len(p.Topic) > 32 || !isBase64URL(p.Topic) {
			t.Fatalf("topic %q", p.Topic)
		}
		h2 := http.Header{"Ttl": {strconv.FormatInt(p.TTL, 10)}, "Urgency": {p.Urgency}}
		if p.Topic != "" {
			h2.Set("Topic", p.Topic)
		}
		p2, perr := parsePushHeaders(h2)
		if perr != nil || p2 != p {
			t.Fatalf("round trip %#v → %#v, %v", p, p2, perr)
		}
	})
}

// FuzzNotifyJSON checks that an accepted /notify body satisfies every rule of
// the API and that re-encoding it parses to the same request.
// Seeds: testdata/fuzz/FuzzNotifyJSON.
func FuzzNotifyJSON(f *testing.F) {
	f.Add([]byte(`{"appid":"a_b","token":"t","expire_on":"2030-01-01T00:00:00Z","data":{}}`))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		req, nerr := parseNotify(body, now)
		if nerr != nil {
			if nerr.Status != 400 || nerr.Label != "invalid-request" || nerr.Message == "" {
				t.Fatalf("bad error %#v", nerr)
			}
			return
		}
		if req.AppID == "" || req.Token == "" || !req.ExpireOn.After(now) ||
			len(req.Data) == 0 || len(req.Data) > MaxNotifyData || !json.Valid(req.Data) {
			t.Fatalf("accepted an invalid request %#v", req)
		}
		b, err := json.Marshal(map[string]any{
			"appid": req.AppID, "token": req.Token, "expire_on": req.ExpireOn.Format(time.RFC3339Nano),
			"data": req.Data, "clear_pending": req.ClearPending, "replace_tag": req.ReplaceTag,
		})
		if err != nil {
			t.Fatal(err)
		}
		req2, nerr := parseNotify(b, now)
		if nerr != nil {
			t.Fatalf("re-encoded %s: %v", b, nerr)
		}
		if req2.AppID != req.AppID || req2.Token != req.Token || !req2.ExpireOn.Equal(req.ExpireOn) ||
			req2.ClearPending != req.ClearPending || req2.ReplaceTag != req.ReplaceTag {
			t.Fatalf("round trip %#v → %#v", req, req2)
		}
		var a, b2 any
		if json.Unmarshal(req.Data, &a) != nil || json.Unmarshal(req2.Data, &b2) != nil || !jsonEqual(a, b2) {
			t.Fatalf("data changed: %s → %s", req.Data, req2.Data)
		}
	})
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// FuzzCryptoParams checks that an accepted aesgcm Encryption or Crypto-Key
// header is bounded and that a notification frame carrying two of them and
// the largest body fits the frame limit (the poisoned-header attack of issue
// 11). Seeds: testdata/fuzz/FuzzCryptoParams.
func FuzzCryptoParams(f *testing.F) {
	f.Add(`salt="lngarbyKfMoi9Z75xYXmkg"`)
	f.Add(`keyid="p256dh";dh=BDgpRKok2GZZDmS4r63vbJSUtcQx4Fq1V58-6-3NbZzSTlZsQiCEDTQy3CZ0ZMsqeqsEb7qW2blQHA4S48fynTk`)
	f.Add(strings.Repeat("<", 8000))
	f.Fuzz(func(t *testing.T, v string) {
		if !validCryptoParams(v) {
			return
		}
		if len(v) > MaxCryptoHeader {
			t.Fatalf("accepted %d bytes", len(v))
		}
		h := map[string]string{"encoding": "aesgcm", "encryption": v, "crypto_key": v}
		frame := appendNotification(nil, protocol.NewChannelID(), newMessageID(), make([]byte, protocol.MaxBodyBytes), h, int64(protocol.MaxTTL/time.Second))
		if len(frame) > protocol.MaxFrameBytes {
			t.Fatalf("frame of %d bytes", len(frame))
		}
		if _, err := protocol.Decode(frame); err != nil {
			t.Fatalf("frame does not decode: %v", err)
		}
	})
}
