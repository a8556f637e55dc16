package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/internal/pgtest"
	"github.com/heraldpush/herald/protocol"
)

// clock is real time plus an offset the test can advance.
type clock struct {
	mu     sync.Mutex
	offset time.Duration // guarded by mu
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

type testServer struct {
	t      *testing.T
	srv    *Server
	base   string // http://127.0.0.1:port
	ws     string // ws://127.0.0.1:port/
	db     string
	clock  *clock
	cancel context.CancelFunc
	done   chan error
}

// startServer runs a Server on a real loopback listener until the test ends.
func startServer(t *testing.T, edit func(*Config)) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, clock: &clock{}, db: filepath.Join(t.TempDir(), "server.db")}
	ts.base = "http://" + ln.Addr().String()
	ts.ws = "ws://" + ln.Addr().String() + "/"
	cfg := Config{PublicURL: ts.base, DBPath: ts.db, Now: ts.clock.Now, TokenLimit: Limit{Rate: -1}, IPLimit: Limit{Rate: -1}}
	if strings.HasPrefix(t.Name(), onPostgres+"/") {
		// The scenario runs again on PostgreSQL, the server as a node.
		cfg.DBPath = pgtest.Database(t)
		cfg.NodeURL = ts.base
	}
	if edit != nil {
		edit(&cfg)
	}
	ts.srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	ts.done = make(chan error, 1)
	go func() { ts.done <- ts.srv.Serve(ctx, ln) }()
	t.Cleanup(func() { ts.stop() })
	return ts
}

// stop shuts the server down and returns Serve's error.
func (ts *testServer) stop() error {
	ts.cancel()
	select {
	case err, ok := <-ts.done:
		if ok {
			close(ts.done)
		}
		return err
	case <-time.After(20 * time.Second):
		ts.t.Fatal("server did not stop")
		return nil
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends one HTTP request to the server.
func (ts *testServer) do(method, path string, header map[string]string, body []byte) response {
	ts.t.Helper()
	url := path
	if !strings.HasPrefix(path, "http") {
		url = ts.base + path
	}
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// push posts a Web Push message with TTL 60 and aes128gcm.
func (ts *testServer) push(endpoint string, body []byte, extra map[string]string) response {
	h := map[string]string{"TTL": "60", "Content-Encoding": "aes128gcm"}
	for k, v := range extra {
		h[k] = v
	}
	return ts.do("POST", endpoint, h, body)
}

type device struct {
	t    *testing.T
	ws   *websocket.Conn
	uaid string
}

func (ts *testServer) dial() *device {
	ts.t.Helper()
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(ts.ws, nil)
	if err != nil {
		ts.t.Fatalf("dial: %v", err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != protocol.Subprotocol {
		ts.t.Errorf("subprotocol = %q, want %q", got, protocol.Subprotocol)
	}
	ts.t.Cleanup(func() { ws.Close() })
	return &device{t: ts.t, ws: ws}
}

// connect dials and says hello with uaid ("" for a new device).
func (ts *testServer) connect(uaid string) *device {
	ts.t.Helper()
	d := ts.dial()
	d.hello(uaid)
	return d
}

func (d *device) sendRaw(s string) {
	d.t.Helper()
	if err := d.ws.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		d.t.Fatalf("write: %v", err)
	}
}

func (d *device) send(m protocol.Message) {
	d.t.Helper()
	b, err := protocol.Encode(m)
	if err != nil {
		d.t.Fatal(err)
	}
	d.sendRaw(string(b))
}

// recv reads the next frame (under a deadline).
func (d *device) recv() protocol.Message {
	d.t.Helper()
	d.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := d.ws.ReadMessage()
	if err != nil {
		d.t.Fatalf("read: %v", err)
	}
	m, err := protocol.Decode(b)
	if err != nil {
		d.t.Fatalf("decode %s: %v", b, err)
	}
	return m
}

// closed waits for the server's close frame and returns its code.
func (d *device) closed() int {
	d.t.Helper()
	d.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, b, err := d.ws.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil {
			d.t.Fatalf("connection ended without a close frame: %v", err)
		}
		d.t.Logf("frame before close: %s", b)
	}
}

func (d *device) hello(uaid string) {
	d.t.Helper()
	d.send(&protocol.Hello{UAID: uaid, UseWebPush: true})
	h, ok := d.recv().(*protocol.Hello)
	if !ok || h.Status != 200 || !h.UseWebPush || !protocol.ValidUAID(h.UAID) {
		d.t.Fatalf("bad hello reply %#v", h)
	}
	d.uaid = h.UAID
}

func (d *device) register(chid, key string) string {
	d.t.Helper()
	d.send(&protocol.Register{ChannelID: chid, Key: key})
	r, ok := d.recv().(*protocol.Register)
	if !ok || r.Status != 200 || r.ChannelID != chid {
		d.t.Fatalf("bad register reply %#v", r)
	}
	return r.PushEndpoint
}

// notification reads the next frame, which must be a notification.
func (d *device) notification() *protocol.Notification {
	d.t.Helper()
	m := d.recv()
	n, ok := m.(*protocol.Notification)
	if !ok {
		d.t.Fatalf("got %T %#v, want a notification", m, m)
	}
	return n
}

func (d *device) ack(ns ...*protocol.Notification) {
	d.t.Helper()
	a := &protocol.Ack{}
	for _, n := range ns {
		a.Updates = append(a.Updates, protocol.Update{ChannelID: n.ChannelID, Version: n.Version, Code: protocol.AckDelivered})
	}
	d.send(a)
}

// quiet checks that nothing is queued for the device: the answer to a ping
// comes before any notification (the server writes in order).
func (d *device) quiet() {
	d.t.Helper()
	d.sendRaw("{}")
	if m := d.recv(); m.Type() != protocol.TypePing {
		d.t.Fatalf("got %#v, want only the ping reply", m)
	}
}

func decodeJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("bad JSON %q: %v", b, err)
	}
}

// pendingCount reads the number of stored messages from the store.
func (ts *testServer) pending(uaid string) int {
	ts.t.Helper()
	ms, err := ts.srv.store.Pending(context.Background(), uaid, 0, 1000, ts.clock.Now())
	if err != nil {
		ts.t.Fatal(err)
	}
	return len(ms)
}
