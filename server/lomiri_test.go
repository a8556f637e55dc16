package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/internal/testcert"
	"github.com/heraldpush/herald/protocol/lomiri"
)

// startLomiri runs a server with a Lomiri TLS listener on loopback.
func startLomiri(t *testing.T, edit func(*Config)) (*testServer, string, *testcert.Cert) {
	t.Helper()
	cert, err := testcert.New("push.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := cert.TLS()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ts := startServer(t, func(c *Config) {
		c.LomiriHosts = []string{addr}
		c.LomiriDomain = "push.test"
		c.LomiriExchangeTimeout = 10 * time.Second
		if edit != nil {
			edit(c)
		}
	})
	if err := ts.srv.ServeLomiri(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{tc}})); err != nil {
		t.Fatal(err)
	}
	return ts, addr, cert
}

// ldevice is a Lomiri client written with the codec only.
type ldevice struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialLomiri(t *testing.T, addr string, cert *testcert.Cert) *ldevice {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: cert.Pool(), ServerName: "push.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte{lomiri.WireVersion}); err != nil {
		t.Fatal(err)
	}
	return &ldevice{t: t, c: c, br: bufio.NewReader(c)}
}

func (d *ldevice) send(m lomiri.Message) {
	d.t.Helper()
	b, err := lomiri.Encode(m)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := lomiri.WriteFrame(d.c, b); err != nil {
		d.t.Fatal(err)
	}
}

func (d *ldevice) recv() lomiri.Message {
	d.t.Helper()
	f, err := lomiri.ReadFrame(d.br, 0)
	if err != nil {
		d.t.Fatalf("read frame: %v", err)
	}
	m, err := lomiri.Decode(f)
	if err != nil {
		d.t.Fatalf("decode %s: %v", f, err)
	}
	return m
}

func (d *ldevice) connect(dev string, info map[string]any, levels map[string]int64) {
	d.t.Helper()
	d.send(&lomiri.Connect{DeviceId: dev, Info: info, Levels: levels})
	ack, ok := d.recv().(*lomiri.ConnAck)
	if !ok {
		d.t.Fatal("no connack")
	}
	if _, err := ack.PingDuration(); err != nil {
		d.t.Fatal(err)
	}
}

func (d *ldevice) notifications() []lomiri.Notification {
	d.t.Helper()
	m := d.recv()
	n, ok := m.(*lomiri.Notifications)
	if !ok {
		d.t.Fatalf("got %s, want notifications", m.Type())
	}
	return n.Notifications
}

// quiet checks that nothing arrives for a while (no frame is expected).
func (d *ldevice) quiet() {
	d.t.Helper()
	d.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	defer d.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if f, err := lomiri.ReadFrame(d.br, 0); err == nil {
		d.t.Fatalf("unexpected frame %s", f)
	}
}

func (ts *testServer) postJSON(path string, v any) (int, map[string]json.RawMessage) {
	ts.t.Helper()
	b, _ := json.Marshal(v)
	r := ts.do("POST", path, map[string]string{"Content-Type": "application/json"}, b)
	var out map[string]json.RawMessage
	decodeJSON(ts.t, r.body, &out)
	return r.status, out
}

func (ts *testServer) lomiriRegister(dev, app string) string {
	ts.t.Helper()
	st, out := ts.postJSON("/register", map[string]string{"deviceid": dev, "appid": app})
	var tok string
	json.Unmarshal(out["token"], &tok)
	if st != 200 || string(out["ok"]) != "true" || tok == "" {
		ts.t.Fatalf("/register = %d %v", st, out)
	}
	return tok
}

func label(out map[string]json.RawMessage) string {
	var s string
	json.Unmarshal(out["error"], &s)
	return s
}

func TestLomiriRegisterNotifyDeliver(t *testing.T) {
	ts, addr, cert := startLomiri(t, nil)
	const dev, app = "DEV1", "com.example.app_app"
	tok := ts.lomiriRegister(dev, app)
	if again := ts.lomiriRegister(dev, app); again != tok {
		t.Fatalf("second /register gave another token %q, want %q", again, tok)
	}
	if other := ts.lomiriRegister("DEV2", app); other == tok {
		t.Fatal("two devices got the same token")
	}
	if strings.Contains(tok, dev) || len(tok) < 22 {
		t.Fatalf("token %q is not random", tok)
	}

	// Posted while the device is away: stored, sent on connect.
	notify := func(data any, extra map[string]any) (int, map[string]json.RawMessage) {
		m := map[string]any{"appid": app, "token": tok, "expire_on": future(), "data": data}
		for k, v := range extra {
			m[k] = v
		}
		return ts.postJSON("/notify", m)
	}
	if st, out := notify(map[string]int{"n": 1}, nil); st != 200 {
		t.Fatalf("/notify = %d %v", st, out)
	}
	d := dialLomiri(t, addr, cert)
	d.connect(dev, nil, nil)
	ns := d.notifications()
	if len(ns) != 1 || ns[0].AppID != app || string(ns[0].Payload) != `{"n":1}` || ns[0].MsgID == "" {
		t.Fatalf("got %+v", ns)
	}
	d.send(&lomiri.Ack{})

	// Live.
	if st, _ := notify("live", nil); st != 200 {
		t.Fatal(st)
	}
	ns = d.notifications()
	if len(ns) != 1 || string(ns[0].Payload) != `"live"` {
		t.Fatalf("got %+v", ns)
	}
	d.send(&lomiri.Ack{})
	d.quiet()
	if n := ts.pending(LomiriUAIDPrefix + dev); n != 0 {
		t.Fatalf("%d messages still stored after the acks", n)
	}

	// Wrong app id for the token: 401 unauthorized; a version of the same app is fine.
	if st, out := ts.postJSON("/notify", map[string]any{"appid": "com.other_app", "token": tok, "expire_on": future(), "data": 1}); st != 401 || label(out) != "unauthorized" {
		t.Fatalf("foreign app = %d %v", st, out)
	}
	if st, out := ts.postJSON("/notify", map[string]any{"appid": app + "_1.0", "token": tok, "expire_on": future(), "data": 2}); st != 200 {
		t.Fatalf("versioned app id = %d %v", st, out)
	}
	d.notifications()
	d.send(&lomiri.Ack{})

	// Web Push to a Lomiri token is refused.
	if r := ts.push("/wpush/v1/"+tok, []byte("x"), nil); r.status != 404 {
		t.Fatalf("web push to a lomiri token = %d", r.status)
	}

	// /unregister revokes the token and drops what is pending.
	if st, out := ts.postJSON("/unregister", map[string]string{"deviceid": dev, "appid": app}); st != 200 || string(out["ok"]) != "true" {
		t.Fatalf("/unregister = %d %v", st, out)
	}
	if st, out := notify("after", nil); st != 400 || label(out) != "unknown-token" {
		t.Fatalf("/notify with a revoked token = %d %v", st, out)
	}
	if tok2 := ts.lomiriRegister(dev, app); tok2 == tok {
		t.Fatal("a new registration got the revoked token back")
	}
	d.quiet()
}

func TestLomiriUnackedRedelivered(t *testing.T) {
	ts, addr, cert := startLomiri(t, nil)
	tok := ts.lomiriRegister("D", "a.b_c")
	for i := range 3 {
		if st, out := ts.postJSON("/notify", map[string]any{"appid": "a.b_c", "token": tok, "expire_on": future(), "data": i}); st != 200 {
			t.Fatal(st, out)
		}
	}
	d := dialLomiri(t, addr, cert)
	d.connect("D", nil, nil)
	first := d.notifications()
	if len(first) != 3 {
		t.Fatalf("got %d messages, want 3", len(first))
	}
	d.c.Close() // gone before the ack

	d = dialLomiri(t, addr, cert)
	d.connect("D", nil, nil)
	again := d.notifications()
	if len(again) != 3 || again[0].MsgID != first[0].MsgID {
		t.Fatalf("redelivered %+v, want the same 3", again)
	}
	d.send(&lomiri.Ack{})
	d.quiet()
}

func TestLomiriPendingLimitReplaceClear(t *testing.T) {
	ts, addr, cert := startLomiri(t, func(c *Config) { c.NotifyMaxPending = 3 })
	const app = "x.y_z"
	tok := ts.lomiriRegister("D", app)
	post := func(data any, extra map[string]any) (int, map[string]json.RawMessage) {
		m := map[string]any{"appid": app, "token": tok, "expire_on": future(), "data": data}
		for k, v := range extra {
			m[k] = v
		}
		return ts.postJSON("/notify", m)
	}
	for i := range 3 {
		if st, out := post(map[string]int{"i": i}, nil); st != 200 {
			t.Fatal(st, out)
		}
	}
	st, out := post("four", nil)
	if st != 413 || label(out) != "too-many-pending" || string(out["extra"]) != `{"i":2}` {
		t.Fatalf("over the limit = %d %v, want 413 too-many-pending with extra {\"i\":2}", st, out)
	}
	// replace_tag does not count the message it replaces.
	if st, out := post("t1", map[string]any{"replace_tag": "t", "clear_pending": true}); st != 200 {
		t.Fatal(st, out)
	}
	if st, out := post("t2", map[string]any{"replace_tag": "t"}); st != 200 {
		t.Fatal(st, out)
	}
	if st, out := post("plain", nil); st != 200 {
		t.Fatal(st, out)
	}
	d := dialLomiri(t, addr, cert)
	d.connect("D", nil, nil)
	var got []string
	for _, n := range d.notifications() {
		got = append(got, string(n.Payload))
	}
	if fmt.Sprint(got) != `["t2" "plain"]` {
		t.Fatalf("got %v, want [\"t2\" \"plain\"] (clear_pending dropped the rest, replace_tag replaced t1)", got)
	}
	d.send(&lomiri.Ack{})
}

func TestLomiriBroadcast(t *testing.T) {
	ts, addr, cert := startLomiri(t, nil)
	info := map[string]any{"channel": "ubports/stable", "device": "mako", "build_number": 3.0}
	bcast := func(data any) (int, map[string]json.RawMessage) {
		return ts.postJSON("/broadcast", map[string]any{"channel": "system", "expire_on": future(), "data": data})
	}
	if st, out := bcast(map[string]any{"ubports/stable/mako": []any{4, "r4"}}); st != 200 {
		t.Fatal(st, out)
	}
	if st, out := bcast(map[string]any{"other/chan/hammerhead": []any{9, ""}}); st != 200 {
		t.Fatal(st, out)
	}
	if st, out := ts.postJSON("/broadcast", map[string]any{"channel": "nope", "expire_on": future(), "data": 1}); st != 400 || label(out) != "unknown-channel" {
		t.Fatalf("unknown channel = %d %v", st, out)
	}

	d := dialLomiri(t, addr, cert)
	d.connect("D", info, map[string]int64{"0": 0})
	m, ok := d.recv().(*lomiri.Broadcast)
	if !ok || m.ChanId != "0" || m.TopLevel != 2 || len(m.Payloads) != 1 || !strings.Contains(string(m.Payloads[0]), "mako") {
		t.Fatalf("got %#v, want the mako payload at level 2", m)
	}
	d.send(&lomiri.Ack{})
	d.quiet()

	// Live, to a connected device.
	bcast(map[string]any{"ubports/stable/mako": []any{5, "r5"}})
	m, ok = d.recv().(*lomiri.Broadcast)
	if !ok || m.TopLevel != 3 || len(m.Payloads) != 1 || !strings.Contains(string(m.Payloads[0]), "r5") {
		t.Fatalf("got %#v, want r5 at level 3", m)
	}
	d.send(&lomiri.Ack{})
	d.c.Close()

	// A device at the top level gets nothing.
	d = dialLomiri(t, addr, cert)
	d.connect("D", info, map[string]int64{"0": 3})
	d.quiet()
}

func TestLomiriPingAndBadDevices(t *testing.T) {
	ts, addr, cert := startLomiri(t, func(c *Config) { c.LomiriPingInterval = 50 * time.Millisecond })
	d := dialLomiri(t, addr, cert)
	d.connect("D", nil, nil)
	if m := d.recv(); m.Type() != lomiri.TypePing {
		t.Fatalf("got %s, want ping", m.Type())
	}
	d.send(&lomiri.Pong{})
	if m := d.recv(); m.Type() != lomiri.TypePing {
		t.Fatalf("got %s, want a second ping", m.Type())
	}
	d.send(&lomiri.Ack{Nak: true}) // not a pong: the server drops the device
	if _, err := lomiri.ReadFrame(d.br, 0); err == nil {
		t.Fatal("connection still open after a wrong answer")
	}

	// A wrong wire version or a non-connect first frame gets no connack.
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: cert.Pool(), ServerName: "push.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte{1})
	lomiri.WriteFrame(c, []byte(`{"T":"connect","DeviceId":"X","Levels":{}}`))
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Logf("read: %v", err)
	}
	d2 := dialLomiri(t, addr, cert)
	d2.send(&lomiri.Pong{})
	if _, err := lomiri.ReadFrame(d2.br, 0); err == nil {
		t.Fatal("a device that did not connect got a frame")
	}

	// /delivery-hosts names the listener.
	r := ts.do("GET", "/delivery-hosts", nil, nil)
	var hosts struct {
		Domain string
		Hosts  []string
	}
	decodeJSON(t, r.body, &hosts)
	if r.status != 200 || hosts.Domain != "push.test" || len(hosts.Hosts) != 1 || hosts.Hosts[0] != addr {
		t.Fatalf("/delivery-hosts = %d %s", r.status, r.body)
	}
}

func TestLomiriAPIErrors(t *testing.T) {
	ts, _, _ := startLomiri(t, nil)
	for _, tt := range []struct {
		name   string
		path   string
		body   any
		status int
		label  string
	}{
		{"missing appid", "/register", map[string]string{"deviceid": "d"}, 400, "invalid-request"},
		{"missing deviceid", "/unregister", map[string]string{"appid": "a"}, 400, "invalid-request"},
		{"long id", "/register", map[string]string{"deviceid": strings.Repeat("d", 300), "appid": "a"}, 400, "invalid-request"},
		{"broadcast no data", "/broadcast", map[string]any{"channel": "system", "expire_on": future()}, 400, "invalid-request"},
		{"broadcast past", "/broadcast", map[string]any{"channel": "system", "expire_on": "2001-01-01T00:00:00Z", "data": 1}, 400, "invalid-request"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, out := ts.postJSON(tt.path, tt.body)
			if st != tt.status || label(out) != tt.label {
				t.Fatalf("= %d %v, want %d %s", st, out, tt.status, tt.label)
			}
		})
	}
	if r := ts.do("GET", "/register", nil, nil); r.status != 405 {
		t.Fatalf("GET /register = %d", r.status)
	}
	if r := ts.do("POST", "/register", map[string]string{"Content-Type": "text/plain"}, []byte("{}")); r.status != 415 {
		t.Fatalf("text/plain /register = %d", r.status)
	}
}

// A client address holds at most MaxConnsPerIP Lomiri connections; the next
// one is closed at once, and a slot frees when one of them ends.
func TestLomiriConnectionsPerAddress(t *testing.T) {
	_, addr, cert := startLomiri(t, func(c *Config) { c.MaxConnsPerIP = 2 })
	d1 := dialLomiri(t, addr, cert)
	d1.connect("A", nil, nil)
	d2 := dialLomiri(t, addr, cert)
	d2.connect("B", nil, nil)
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: cert.Pool(), ServerName: "push.test"})
	if err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte{lomiri.WireVersion})
		lomiri.WriteFrame(c, []byte(`{"T":"connect","DeviceId":"C","Levels":{}}`))
		if f, err := lomiri.ReadFrame(c, 0); err == nil {
			t.Fatalf("a third connection from one address got %s", f)
		}
		c.Close()
	}
	d1.c.Close()
	// The server notices d1 is gone (its reader ends), then a slot is free.
	waitFor(t, func() bool {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: cert.Pool(), ServerName: "push.test"})
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte{lomiri.WireVersion})
		lomiri.WriteFrame(c, []byte(`{"T":"connect","DeviceId":"C","Levels":{}}`))
		_, err = lomiri.ReadFrame(c, 0)
		return err == nil
	})
}

// waitFor polls cond (each try is a real exchange with the server) until
// it holds, failing after 20 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20 s")
		}
	}
}

// TestLomiriIdleDeviceDeleted: a Lomiri device (channels "L:<device id>"
// from /register) away for longer than DeviceIdle is deleted with its
// channels and messages, like a websocket device; a connected one is kept.
// It runs on SQLite and, in TestOnPostgres, on PostgreSQL.
func TestLomiriIdleDeviceDeleted(t *testing.T) {
	ts, addr, cert := startLomiri(t, func(c *Config) { c.DeviceIdle = 24 * time.Hour })
	ctx := context.Background()
	const app = "com.example.app_app"
	idleTok := ts.lomiriRegister("IDLE", app)
	if st, out := ts.postJSON("/notify", map[string]any{"token": idleTok, "appid": app, "expire_on": time.Now().Add(72 * time.Hour).UTC().Format(time.RFC3339), "data": map[string]string{"m": "1"}}); st != 200 {
		t.Fatalf("/notify = %d %v", st, out)
	}
	if n := ts.pending(LomiriUAIDPrefix + "IDLE"); n != 1 {
		t.Fatalf("%d messages stored for IDLE, want 1", n)
	}
	busyTok := ts.lomiriRegister("BUSY", app)
	d := dialLomiri(t, addr, cert)
	d.connect("BUSY", nil, nil)

	ts.srv.sweepDevices(ctx, ts.clock.Now().Add(23*time.Hour))
	if _, err := ts.srv.store.Channel(ctx, idleTok); err != nil {
		t.Fatalf("channel of a device away 23 h (idle after 24 h): %v", err)
	}
	ts.clock.Advance(25 * time.Hour)
	ts.srv.sweepDevices(ctx, ts.clock.Now())
	if _, err := ts.srv.store.Channel(ctx, idleTok); !errors.Is(err, ErrNotFound) {
		t.Fatalf("channel of a device away 25 h: %v, want ErrNotFound", err)
	}
	if n := ts.pending(LomiriUAIDPrefix + "IDLE"); n != 0 {
		t.Errorf("%d messages of the deleted device left", n)
	}
	if known, err := ts.srv.store.HasDevice(ctx, LomiriUAIDPrefix+"IDLE"); err != nil || known {
		t.Errorf("HasDevice(L:IDLE) = %v, %v after the sweep", known, err)
	}
	if _, err := ts.srv.store.Channel(ctx, busyTok); err != nil {
		t.Fatalf("channel of the connected device: %v", err)
	}
	if again := ts.lomiriRegister("IDLE", app); again == idleTok {
		t.Error("the deleted device's token came back")
	}
}
