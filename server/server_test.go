package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

func TestHelloUAID(t *testing.T) {
	ts := startServer(t, nil)
	first := ts.connect("")
	first.ws.Close()
	tests := []struct {
		name string
		uaid string
		same bool
	}{
		{"known uaid is echoed", first.uaid, true},
		{"unknown valid uaid gets a new one", protocol.NewUAID(), false},
		{"invalid uaid gets a new one", "not-a-uaid", false},
		{"uppercase uaid is invalid", strings.ToUpper(first.uaid), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := ts.connect(tt.uaid)
			if (d.uaid == tt.uaid) != tt.same {
				t.Errorf("hello(%q) = %q, same = %v, want %v", tt.uaid, d.uaid, d.uaid == tt.uaid, tt.same)
			}
			d.ws.Close()
		})
	}
}

func TestPushDeliverAck(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	chid := protocol.NewChannelID()
	ep := d.register(chid, "")
	if !strings.HasPrefix(ep, ts.base+"/wpush/v1/") {
		t.Fatalf("endpoint %q", ep)
	}
	tok := strings.TrimPrefix(ep, ts.base+"/wpush/v1/")
	if b, err := protocol.DecodeBase64URL(tok); err != nil || len(b) < 16 {
		t.Errorf("token %q is not >= 128 bits of base64url", tok)
	}
	// Registering again with the same key returns the same endpoint.
	if again := d.register(chid, ""); again != ep {
		t.Errorf("second register = %q, want %q", again, ep)
	}
	body := []byte("hello device")
	r := ts.push(ep, body, map[string]string{"TTL": "99999999999"})
	if r.status != 201 {
		t.Fatalf("push = %d %s", r.status, r.body)
	}
	if got := r.header.Get("TTL"); got != "2592000" {
		t.Errorf("TTL = %q, want clamped 2592000", got)
	}
	loc := r.header.Get("Location")
	if !strings.HasPrefix(loc, ts.base+"/m/") {
		t.Errorf("Location = %q", loc)
	}
	n := d.notification()
	got, _ := n.Body()
	if n.ChannelID != chid || !bytes.Equal(got, body) || n.Headers["encoding"] != "aes128gcm" || n.Version != strings.TrimPrefix(loc, ts.base+"/m/") {
		t.Errorf("notification %#v", n)
	}
	if ts.pending(d.uaid) != 1 {
		t.Errorf("message not stored before the ack")
	}
	d.ack(n)
	d.quiet()
	d.ws.Close()
	d2 := ts.connect(d.uaid)
	d2.quiet() // acked: nothing redelivered
	// Deleted after the ack (the delete commits asynchronously).
	deadline := time.Now().Add(5 * time.Second)
	for ts.pending(d.uaid) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("acked message still stored")
		}
		d2.quiet()
	}
}

func TestUnackedRedeliveredInBatches(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	const total = 25
	for i := range total {
		if r := ts.push(ep, []byte(strconv.Itoa(i)), nil); r.status != 201 {
			t.Fatalf("push %d = %d", i, r.status)
		}
	}
	d = ts.connect(d.uaid)
	next := 0
	for next < total {
		var batch []*protocol.Notification
		for range min(protocol.BatchSize, total-next) {
			batch = append(batch, d.notification())
		}
		d.quiet() // no more until the batch is acked
		for _, n := range batch {
			b, _ := n.Body()
			if string(b) != strconv.Itoa(next) {
				t.Fatalf("got message %q, want %d (in order)", b, next)
			}
			next++
		}
		d.ack(batch...)
	}
	d.quiet()
}

func TestUnackedRedeliveredAfterReconnect(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	ts.push(ep, []byte("x"), nil)
	n := d.notification()
	d.ws.Close() // no ack
	d = ts.connect(d.uaid)
	if n2 := d.notification(); n2.Version != n.Version {
		t.Errorf("redelivered %q, want %q", n2.Version, n.Version)
	}
}

func TestBadFrames(t *testing.T) {
	ts := startServer(t, nil)
	keep := ts.connect("")
	ep := keep.register(protocol.NewChannelID(), "")
	keep.ws.Close()
	ts.push(ep, []byte("kept"), nil)
	tests := []struct {
		name  string
		hello bool // say hello first
		frame string
		bin   bool
		code  int
	}{
		{"register before hello", false, `{"messageType":"register","channelID":"` + protocol.NewChannelID() + `"}`, false, websocket.CloseProtocolError},
		{"ping before hello", false, `{}`, false, websocket.CloseProtocolError},
		{"malformed json first", false, `{"messageType":`, false, websocket.CloseProtocolError},
		{"malformed json later", true, `{"messageType":"ack","updates":[}`, false, websocket.CloseProtocolError},
		{"invalid channel id", true, `{"messageType":"register","channelID":"NOT-A-UUID"}`, false, websocket.CloseProtocolError},
		{"binary frame", true, `{}`, true, websocket.CloseUnsupportedData},
		{"oversized frame", true, `{"messageType":"ack","updates":[],"x":"` + strings.Repeat("a", protocol.MaxFrameBytes) + `"}`, false, websocket.CloseMessageTooBig},
		{"oversized first frame", false, `{"messageType":"hello","x":"` + strings.Repeat("a", protocol.MaxFrameBytes) + `"}`, false, websocket.CloseMessageTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := ts.dial()
			if tt.hello {
				d.hello(keep.uaid)
				d.notification() // the stored message, not acked
			}
			typ := websocket.TextMessage
			if tt.bin {
				typ = websocket.BinaryMessage
			}
			if err := d.ws.WriteMessage(typ, []byte(tt.frame)); err != nil {
				t.Fatal(err)
			}
			if code := d.closed(); code != tt.code {
				t.Errorf("close code %d, want %d", code, tt.code)
			}
			if ts.pending(keep.uaid) != 1 {
				t.Errorf("stored messages changed")
			}
			if r := ts.do("GET", "/healthz", nil, nil); r.status != 200 {
				t.Errorf("healthz = %d", r.status)
			}
		})
	}
}

func TestUnknownTypesAndPing(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	d.sendRaw(`{"messageType":"broadcast_subscribe","broadcasts":{"remote-settings/monitor_changes":"\"0\""}}`)
	d.sendRaw(`{"messageType":"hello","use_webpush":true}`)
	d.sendRaw(`{"messageType":"ping"}`)
	if m := d.recv(); m.Type() != protocol.TypePing {
		t.Fatalf("got %#v, want ping reply", m)
	}
	d.quiet()
}

func TestUnregister(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	chid := protocol.NewChannelID()
	ep := d.register(chid, "")
	d.ws.Close()
	ts.push(ep, []byte("x"), nil)
	d = ts.connect(d.uaid)
	d.notification()
	for range 2 { // idempotent
		d.send(&protocol.Unregister{ChannelID: chid, Code: 200})
		u, ok := d.recv().(*protocol.Unregister)
		if !ok || u.Status != 200 || u.ChannelID != chid {
			t.Fatalf("unregister reply %#v", u)
		}
	}
	if r := ts.push(ep, []byte("x"), nil); r.status != 404 {
		t.Errorf("push after unregister = %d, want 404", r.status)
	}
	if n := ts.pending(d.uaid); n != 0 {
		t.Errorf("%d messages left after unregister", n)
	}
}

func TestWebPushErrors(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	tests := []struct {
		name   string
		url    string
		header map[string]string
		body   []byte
		status int
		errno  int
	}{
		{"missing TTL", ep, map[string]string{"TTL": "", "Content-Encoding": "aes128gcm"}, []byte("x"), 400, 111},
		{"TTL not a number", ep, map[string]string{"TTL": "soon"}, []byte("x"), 400, 112},
		{"negative TTL", ep, map[string]string{"TTL": "-5"}, []byte("x"), 400, 114},
		{"bad urgency", ep, map[string]string{"Urgency": "urgent"}, []byte("x"), 400, 101},
		{"two urgencies", ep, map[string]string{"Urgency": "low, high"}, []byte("x"), 400, 101},
		{"topic too long", ep, map[string]string{"Topic": strings.Repeat("a", 33)}, []byte("x"), 400, 113},
		{"topic not base64url", ep, map[string]string{"Topic": "a+b"}, []byte("x"), 400, 113},
		{"unknown encoding", ep, map[string]string{"Content-Encoding": "gzip"}, []byte("x"), 400, 110},
		{"body too large", ep, nil, make([]byte, protocol.MaxBodyBytes+1), 413, 104},
		{"unknown token", ts.base + "/wpush/v1/AAAAAAAAAAAAAAAAAAAAAA", nil, []byte("x"), 404, 102},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"}
			for k, v := range tt.header {
				h[k] = v
			}
			if h["TTL"] == "" {
				delete(h, "TTL")
			}
			r := ts.do("POST", tt.url, h, tt.body)
			var e pushError
			decodeJSON(t, r.body, &e)
			if r.status != tt.status || e.Code != tt.status || e.Errno != tt.errno || e.Error == "" || e.Message == "" {
				t.Errorf("= %d %s, want %d errno %d", r.status, r.body, tt.status, tt.errno)
			}
		})
	}
	if n := ts.pending(d.uaid); n != 0 {
		t.Errorf("%d messages stored by bad requests", n)
	}
	// Exactly 4096 bytes is accepted; an empty body needs no encoding.
	if r := ts.push(ep, make([]byte, protocol.MaxBodyBytes), nil); r.status != 201 {
		t.Errorf("4096-byte push = %d %s", r.status, r.body)
	}
	if r := ts.do("POST", ep, map[string]string{"TTL": "60", "Urgency": "very-low"}, nil); r.status != 201 {
		t.Errorf("empty push = %d %s", r.status, r.body)
	}
}

// A plaintext body (no Content-Encoding, as curl or a Lomiri app server
// sends it) is accepted and reaches the device with no encoding header.
func TestWebPushPlaintext(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	for _, enc := range []string{"", "identity"} {
		h := map[string]string{"TTL": "60"}
		if enc != "" {
			h["Content-Encoding"] = enc
		}
		if r := ts.do("POST", ep, h, []byte(`{"text":"hi"}`)); r.status != 201 {
			t.Fatalf("plaintext push (encoding %q) = %d %s", enc, r.status, r.body)
		}
		n := d.notification()
		if b, _ := n.Body(); string(b) != `{"text":"hi"}` || n.Headers["encoding"] != "" {
			t.Errorf("device got %q with headers %v, want the plaintext and no encoding", b, n.Headers)
		}
		d.ack(n)
	}
}

func TestTopicReplacesPending(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	ts.push(ep, []byte("old"), map[string]string{"Topic": "score"})
	ts.push(ep, []byte("other"), map[string]string{"Topic": "other"})
	ts.push(ep, []byte("new"), map[string]string{"Topic": "score"})
	d = ts.connect(d.uaid)
	var got []string
	for range 2 {
		b, _ := d.notification().Body()
		got = append(got, string(b))
	}
	d.quiet()
	if fmt.Sprint(got) != "[other new]" {
		t.Errorf("got %v, want [other new]", got)
	}
}

func TestTTLZero(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	if r := ts.push(ep, []byte("now"), map[string]string{"TTL": "0"}); r.status != 201 || r.header.Get("TTL") != "0" {
		t.Fatalf("connected TTL 0 push = %d", r.status)
	}
	if b, _ := d.notification().Body(); string(b) != "now" {
		t.Errorf("got %q", b)
	}
	d.ws.Close()
	if r := ts.push(ep, []byte("lost"), map[string]string{"TTL": "0"}); r.status != 201 {
		t.Fatalf("offline TTL 0 push = %d", r.status)
	}
	d = ts.connect(d.uaid)
	d.quiet()
}

func TestExpiredNeverDelivered(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	ts.push(ep, []byte("short"), map[string]string{"TTL": "30"})
	ts.push(ep, []byte("long"), map[string]string{"TTL": "300"})
	ts.clock.Advance(31 * time.Second)
	d = ts.connect(d.uaid)
	n := d.notification()
	if b, _ := n.Body(); string(b) != "long" || n.TTL <= 0 || n.TTL > 270 {
		t.Errorf("got %q ttl %d, want long with the remaining ttl", b, n.TTL)
	}
	d.quiet()
	swept, err := ts.srv.store.Sweep(t.Context(), ts.clock.Now())
	if err != nil || swept != 1 {
		t.Errorf("sweep = %d, %v; want 1", swept, err)
	}
}

func TestCancelMessage(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	r := ts.push(ep, []byte("x"), nil)
	loc := r.header.Get("Location")
	if r := ts.do("DELETE", loc, nil, nil); r.status != 204 {
		t.Errorf("delete = %d", r.status)
	}
	if r := ts.do("DELETE", loc, nil, nil); r.status != 404 {
		t.Errorf("second delete = %d", r.status)
	}
	if r := ts.do("DELETE", "/m/nonsense", nil, nil); r.status != 404 {
		t.Errorf("bad id delete = %d", r.status)
	}
	d = ts.connect(d.uaid)
	d.quiet()
}

func TestVAPIDRestricted(t *testing.T) {
	ts := startServer(t, nil)
	key, err := webpush.GenerateVAPIDKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := webpush.VAPIDPublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := webpush.GenerateVAPIDKey()
	d := ts.connect("")
	chid := protocol.NewChannelID()
	ep := d.register(chid, pub+"=") // padded, as Firefox sends it
	exp := time.Now().Add(time.Hour)
	good, _ := webpush.SignVAPID(key, ts.base, "mailto:a@example.com", exp)
	wrongKey, _ := webpush.SignVAPID(other, ts.base, "mailto:a@example.com", exp)
	wrongAud, _ := webpush.SignVAPID(key, "https://elsewhere.example", "mailto:a@example.com", exp)
	tooLong, _ := webpush.SignVAPID(key, ts.base, "mailto:a@example.com", time.Now().Add(48*time.Hour))
	tests := []struct {
		name, auth string
		status     int
	}{
		{"missing", "", 401},
		{"garbage", "vapid t=abc, k=def", 403},
		{"other key", wrongKey, 403},
		{"other audience", wrongAud, 403},
		{"exp beyond 24h", tooLong, 403},
		{"valid", good, 201},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{}
			if tt.auth != "" {
				h["Authorization"] = tt.auth
			}
			if r := ts.push(ep, []byte("v"), h); r.status != tt.status {
				t.Errorf("= %d %s, want %d", r.status, r.body, tt.status)
			}
		})
	}
	d.notification()
	// Another key for the same channel conflicts; a bad key is refused.
	d.send(&protocol.Register{ChannelID: chid})
	if r := d.recv().(*protocol.Register); r.Status != 409 {
		t.Errorf("re-register without key = %d, want 409", r.Status)
	}
	d.send(&protocol.Register{ChannelID: protocol.NewChannelID(), Key: "AAAA"})
	if r := d.recv().(*protocol.Register); r.Status != 400 {
		t.Errorf("register with bad key = %d, want 400", r.Status)
	}
	// /notify cannot reach a restricted channel.
	tok := strings.TrimPrefix(ep, ts.base+"/wpush/v1/")
	r := ts.notify(map[string]any{"appid": "a_b", "token": tok, "expire_on": future(), "data": 1})
	if r.status != 401 {
		t.Errorf("notify to restricted = %d %s", r.status, r.body)
	}
}

func TestSimplePushKeepsLatest(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	for _, v := range []string{"5", "7", "3"} {
		if r := ts.do("PUT", ep, form, []byte("version="+v)); r.status != 200 {
			t.Fatalf("put %s = %d %s", v, r.status, r.body)
		}
	}
	if r := ts.do("PUT", ep, form, []byte("version=-1")); r.status != 400 {
		t.Errorf("bad version = %d", r.status)
	}
	d = ts.connect(d.uaid)
	n := d.notification()
	if n.Version != "7" || n.Data != "" {
		t.Errorf("got %#v, want version 7 without data", n)
	}
	d.quiet()
	d.ack(n)
	d.quiet()
}

func future() string { return time.Now().Add(time.Hour).UTC().Format(time.RFC3339) }

func (ts *testServer) notify(v any) response {
	b, _ := json.Marshal(v)
	return ts.do("POST", "/notify", map[string]string{"Content-Type": "application/json"}, b)
}

func TestNotify(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	tok := strings.TrimPrefix(ep, ts.base+"/wpush/v1/")
	ok := func(extra map[string]any) map[string]any {
		m := map[string]any{"appid": "com.example.app_app", "token": tok, "expire_on": future(), "data": map[string]any{"message": "hi"}}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	errTests := []struct {
		name   string
		req    func() response
		status int
		label  string
	}{
		{"wrong method", func() response { return ts.do("GET", "/notify", nil, nil) }, 405, "invalid-request"},
		{"empty body", func() response {
			return ts.do("POST", "/notify", map[string]string{"Content-Type": "application/json"}, nil)
		}, 400, "invalid-request"},
		{"wrong content type", func() response { return ts.do("POST", "/notify", nil, []byte("{}")) }, 415, "invalid-request"},
		{"malformed", func() response {
			return ts.do("POST", "/notify", map[string]string{"Content-Type": "application/json"}, []byte("{"))
		}, 400, "invalid-request"},
		{"too large", func() response {
			return ts.do("POST", "/notify", map[string]string{"Content-Type": "application/json"}, make([]byte, 5000))
		}, 413, "invalid-request"},
		{"missing token", func() response { return ts.notify(ok(map[string]any{"token": ""})) }, 400, "invalid-request"},
		{"missing data", func() response { return ts.notify(ok(map[string]any{"data": nil})) }, 400, "invalid-request"},
		{"data too large", func() response { return ts.notify(ok(map[string]any{"data": strings.Repeat("x", 2047)})) }, 400, "invalid-request"},
		{"bare date", func() response { return ts.notify(ok(map[string]any{"expire_on": "2030-01-01"})) }, 400, "invalid-request"},
		{"past", func() response { return ts.notify(ok(map[string]any{"expire_on": "2001-01-01T00:00:00Z"})) }, 400, "invalid-request"},
		{"unknown token", func() response { return ts.notify(ok(map[string]any{"token": "nope"})) }, 400, "unknown-token"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.req()
			var e struct{ Error, Message string }
			decodeJSON(t, r.body, &e)
			if r.status != tt.status || e.Error != tt.label || e.Message == "" {
				t.Errorf("= %d %s, want %d %s", r.status, r.body, tt.status, tt.label)
			}
		})
	}
	d.quiet()

	// Delivered: the raw JSON of data.
	raw := `{"appid":"x_y","token":"` + tok + `","expire_on":"` + future() + `","data":{"message": {"k": [1, 2]}}}`
	r := ts.do("POST", "/notify", map[string]string{"Content-Type": "application/json; charset=utf-8"}, []byte(raw))
	if r.status != 200 || strings.TrimSpace(string(r.body)) != `{"ok":true}` {
		t.Fatalf("notify = %d %s", r.status, r.body)
	}
	n := d.notification()
	if b, _ := n.Body(); string(b) != `{"message": {"k": [1, 2]}}` {
		t.Errorf("delivered %q", b)
	}
	d.ack(n)
	// The ack's deletion is not synchronous with the next /notify (on
	// PostgreSQL it commits asynchronously): wait until it is gone, or the
	// limit below would count it.
	deadline := time.Now().Add(10 * time.Second)
	for ts.pending(d.uaid) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the acked message is still pending after 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.ws.Close()

	// Pending limit, replace_tag and clear_pending.
	for i := range MaxNotifyPending {
		if r := ts.notify(ok(map[string]any{"data": i})); r.status != 200 {
			t.Fatalf("notify %d = %d %s", i, r.status, r.body)
		}
	}
	r = ts.notify(ok(map[string]any{"data": "one too many"}))
	var e struct{ Error string }
	decodeJSON(t, r.body, &e)
	if r.status != 413 || e.Error != "too-many-pending" {
		t.Errorf("101st = %d %s", r.status, r.body)
	}
	if r := ts.notify(ok(map[string]any{"data": "fresh", "clear_pending": true})); r.status != 200 {
		t.Fatalf("clear_pending = %d %s", r.status, r.body)
	}
	ts.notify(ok(map[string]any{"data": "tag1", "replace_tag": "t"}))
	ts.notify(ok(map[string]any{"data": "tag2", "replace_tag": "t"}))
	d = ts.connect(d.uaid)
	var got []string
	for range 2 {
		b, _ := d.notification().Body()
		got = append(got, string(b))
	}
	d.quiet()
	if fmt.Sprint(got) != `["fresh" "tag2"]` {
		t.Errorf("got %v", got)
	}
}

func TestRateLimits(t *testing.T) {
	tests := []struct {
		name  string
		token Limit
		ip    Limit
	}{
		{"per token", Limit{Rate: 1, Burst: 2}, Limit{Rate: -1}},
		{"per client address", Limit{Rate: -1}, Limit{Rate: 1, Burst: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.TokenLimit, c.IPLimit = tt.token, tt.ip })
			d := ts.connect("")
			ep := d.register(protocol.NewChannelID(), "")
			d.ws.Close()
			burst := max(tt.token.Burst, tt.ip.Burst)
			for i := range burst {
				if r := ts.push(ep, []byte("x"), nil); r.status != 201 {
					t.Fatalf("push %d = %d", i, r.status)
				}
			}
			r := ts.push(ep, []byte("x"), nil)
			if r.status != 429 || r.header.Get("Retry-After") != "1" {
				t.Fatalf("over the limit = %d Retry-After %q", r.status, r.header.Get("Retry-After"))
			}
			ts.clock.Advance(time.Second)
			if r := ts.push(ep, []byte("x"), nil); r.status != 201 {
				t.Errorf("after a second = %d", r.status)
			}
			if n := ts.pending(d.uaid); n != burst+1 {
				t.Errorf("%d stored, want %d", n, burst+1)
			}
		})
	}
}

// TestSecondConnectionReplacesFirst: the replaced connection gets a normal
// close (1000), not 4774, so its owner redials after a short back-off.
func TestSecondConnectionReplacesFirst(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.connect("")
	ep := a.register(protocol.NewChannelID(), "")
	b := ts.connect(a.uaid)
	if b.uaid != a.uaid {
		t.Fatalf("uaid changed")
	}
	if code := a.closed(); code != protocol.CloseNormal {
		t.Errorf("old connection closed with %d", code)
	}
	ts.push(ep, []byte("to b"), nil)
	if got, _ := b.notification().Body(); string(got) != "to b" {
		t.Errorf("got %q", got)
	}
}

func TestShutdownClosesDevices(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	ts.push(ep, []byte("x"), nil)
	d = ts.connect(d.uaid)
	d.notification()
	errc := make(chan error, 1)
	go func() { errc <- ts.stop() }()
	if code := d.closed(); code != protocol.CloseGoingAway {
		t.Errorf("close code %d, want 1001", code)
	}
	if err := <-errc; err != nil {
		t.Errorf("Serve = %v", err)
	}
	// The message is still stored: reopen the database.
	st, err := OpenSQLite(ts.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ms, err := st.Pending(t.Context(), d.uaid, 0, 10, time.Now())
	if err != nil || len(ms) != 1 {
		t.Errorf("pending after restart = %d, %v", len(ms), err)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	ts.push(ep, []byte("x"), nil)
	d.ack(d.notification())
	d.quiet()
	r := ts.do("GET", "/metrics", nil, nil)
	for _, want := range []string{
		"herald_connected_devices 1",
		`herald_messages_accepted_total{api="webpush"} 1`,
		"herald_messages_delivered_total 1",
		"herald_messages_expired_total 0",
		"herald_store_latency_seconds_count",
	} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if r := ts.do("GET", "/healthz", nil, nil); r.status != http.StatusOK {
		t.Errorf("healthz = %d", r.status)
	}
}

// Beyond MaxPending undelivered messages a channel keeps only the newest.
func TestMaxPendingDropsOldest(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxPending = 3 })
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	for i := range 5 {
		if r := ts.push(ep, []byte(fmt.Sprint(i)), nil); r.status != 201 {
			t.Fatalf("push %d = %d %s", i, r.status, r.body)
		}
	}
	d = ts.connect(d.uaid)
	var got []string
	for range 3 {
		b, _ := d.notification().Body()
		got = append(got, string(b))
	}
	d.quiet()
	if fmt.Sprint(got) != "[2 3 4]" {
		t.Errorf("got %v, want the newest three [2 3 4]", got)
	}
}
