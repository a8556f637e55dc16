package session

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// handler records what the session tells the daemon.
type handler struct {
	uaid     string
	channels []string
	codes    func(n *protocol.Notification) int

	mu       sync.Mutex
	welcomed []string
	received []string
	states   chan State
	kinds    []Kind // Receive's kind of each batch
}

func newHandler() *handler {
	return &handler{states: make(chan State, 1000), codes: func(*protocol.Notification) int { return protocol.AckDelivered }}
}

func (h *handler) Hello(ctx context.Context) (string, []string, error) {
	return h.uaid, h.channels, nil
}
func (h *handler) Welcome(ctx context.Context, uaid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.welcomed = append(h.welcomed, uaid)
	return nil
}
func (h *handler) Receive(ctx context.Context, batch []*protocol.Notification, kind Kind) []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.kinds = append(h.kinds, kind)
	codes := make([]int, len(batch))
	for i, n := range batch {
		h.received = append(h.received, n.Version)
		codes[i] = h.codes(n)
	}
	return codes
}
func (h *handler) StateChanged(st State, since time.Time, err error) {
	select {
	case h.states <- st:
	default:
	}
}

func (h *handler) waitState(t *testing.T, want State) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case st := <-h.states:
			if st == want {
				return
			}
		case <-deadline:
			t.Fatalf("state %s not reached", want)
		}
	}
}

// fakeServer is a websocket server speaking the protocol, driven by a test
// function per connection.
type fakeServer struct {
	*httptest.Server
	conns chan *websocket.Conn
}

func newFakeServer(t *testing.T) *fakeServer {
	f := &fakeServer{conns: make(chan *websocket.Conn, 10)}
	up := websocket.Upgrader{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		f.conns <- c
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeServer) url() string { return "ws" + strings.TrimPrefix(f.URL, "http") + "/" }

func (f *fakeServer) accept(t *testing.T) *websocket.Conn {
	t.Helper()
	select {
	case c := <-f.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection from the session")
		return nil
	}
}

func readMsg(t *testing.T, c *websocket.Conn) protocol.Message {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("server read: %v", err)
	}
	m, err := protocol.Decode(b)
	if err != nil {
		t.Fatalf("server decode %s: %v", b, err)
	}
	return m
}

func writeMsg(t *testing.T, c *websocket.Conn, m protocol.Message) {
	t.Helper()
	b, err := protocol.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatalf("server write: %v", err)
	}
}

func start(t *testing.T, cfg Config) (*Session, context.CancelFunc) {
	t.Helper()
	s := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return s, cancel
}

const (
	uaid = "0123456789abcdef0123456789abcdef"
	chA  = "11111111-1111-4111-8111-111111111111"
	chB  = "22222222-2222-4222-8222-222222222222"
)

func TestHelloRegisterReceiveAck(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	h.uaid, h.channels = uaid, []string{chA}
	h.codes = func(n *protocol.Notification) int {
		if n.Version == "bad" {
			return protocol.AckNotDelivered
		}
		return protocol.AckDelivered
	}
	s, _ := start(t, Config{URL: srv.url(), Handler: h})
	s.SetWanted(true)
	c := srv.accept(t)
	hello, ok := readMsg(t, c).(*protocol.Hello)
	if !ok || hello.UAID != uaid || !cmp.Equal(hello.ChannelIDs, []string{chA}) || !hello.UseWebPush {
		t.Fatalf("hello = %+v", hello)
	}
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)

	type result struct {
		ep  string
		err error
	}
	res := make(chan result, 1)
	go func() {
		ep, err := s.Register(context.Background(), chB, "")
		res <- result{ep, err}
	}()
	reg, ok := readMsg(t, c).(*protocol.Register)
	if !ok || reg.ChannelID != chB {
		t.Fatalf("register = %+v", reg)
	}
	// Notifications arrive before the register answer; both are handled.
	for _, v := range []string{"v1", "bad", "v3"} {
		writeMsg(t, c, &protocol.Notification{ChannelID: chA, Version: v, Data: "aGk"})
	}
	writeMsg(t, c, &protocol.Register{ChannelID: chB, Status: 200, PushEndpoint: "http://push/wpush/v1/tok"})
	var acked []protocol.Update
	for len(acked) < 3 {
		ack, ok := readMsg(t, c).(*protocol.Ack)
		if !ok {
			t.Fatal("expected ack")
		}
		acked = append(acked, ack.Updates...)
	}
	// Delivered is the default code (100) and is left out.
	want := []protocol.Update{{ChannelID: chA, Version: "v1"}, {ChannelID: chA, Version: "bad", Code: 102}, {ChannelID: chA, Version: "v3"}}
	if diff := cmp.Diff(want, acked); diff != "" {
		t.Fatalf("acks (-want +got):\n%s", diff)
	}
	r := <-res
	if r.err != nil || r.ep != "http://push/wpush/v1/tok" {
		t.Fatalf("Register = %q, %v", r.ep, r.err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if diff := cmp.Diff([]string{"v1", "bad", "v3"}, h.received); diff != "" {
		t.Fatal(diff)
	}
	if diff := cmp.Diff([]string{uaid}, h.welcomed); diff != "" {
		t.Fatal(diff)
	}
}

func TestRegisterRejected(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h})
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c)
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	go func() {
		for {
			m, err := func() (protocol.Message, error) {
				_, b, err := c.ReadMessage()
				if err != nil {
					return nil, err
				}
				return protocol.Decode(b)
			}()
			if err != nil {
				return
			}
			if r, ok := m.(*protocol.Register); ok {
				b, _ := protocol.Encode(&protocol.Register{ChannelID: r.ChannelID, Status: 409})
				_ = c.WriteMessage(websocket.TextMessage, b)
			}
		}
	}()
	_, err := s.Register(context.Background(), chA, "")
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("Register with status 409: err = %v, want ErrRejected", err)
	}
}

func TestNoConnectionWhileNotWanted(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, RequestTimeout: 300 * time.Millisecond})
	h.waitState(t, StateIdle)
	// Register cannot reach the server while nothing is wanted.
	if _, err := s.Register(context.Background(), chA, ""); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Register while idle: %v", err)
	}
	select {
	case <-srv.conns:
		t.Fatal("session connected while nothing was registered")
	default:
	}
	s.SetOnline(false)
	s.SetWanted(true)
	h.waitState(t, StateOffline)
	s.SetOnline(true)
	c := srv.accept(t)
	if _, ok := readMsg(t, c).(*protocol.Hello); !ok {
		t.Fatal("expected hello")
	}
}

// A server that stops talking is detected by the read deadline (ping
// interval + grace) and the session dials again.
func TestDeadServerDetected(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, PingInterval: 100 * time.Millisecond, PingGrace: 100 * time.Millisecond,
		Rand: func(int64) int64 { return 0 }})
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c)
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	// Silence: no pings, no frames. The session must give up and redial.
	c2 := srv.accept(t)
	if _, ok := readMsg(t, c2).(*protocol.Hello); !ok {
		t.Fatal("expected hello on the new connection")
	}
}

// Reconnect closes the connection with a close frame and dials again at once.
func TestReconnect(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, cancel := start(t, Config{URL: srv.url(), Handler: h})
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c)
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	s.Reconnect()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("old connection ended with %v, want a normal close frame", err)
	}
	c2 := srv.accept(t)
	readMsg(t, c2)
	writeMsg(t, c2, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	// Shutdown sends a close frame too.
	cancel()
	_ = c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = c2.ReadMessage()
	if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("connection at shutdown ended with %v, want a normal close frame", err)
	}
}

func TestBackoffCeiling(t *testing.T) {
	b := DefaultBackoff
	tests := []struct {
		attempt int
		want    time.Duration
	}{
		{0, time.Second}, {1, 2 * time.Second}, {2, 4 * time.Second}, {8, 256 * time.Second},
		{9, 5 * time.Minute}, {100, 5 * time.Minute},
	}
	for _, tt := range tests {
		if got := b.Ceiling(tt.attempt); got != tt.want {
			t.Errorf("Ceiling(%d) = %v, want %v", tt.attempt, got, tt.want)
		}
	}
}

// TestRedialTiming checks the redial schedule on a fake clock: full jitter
// below the doubling ceiling, reset after a stable connection, the maximum
// after close code 4774, and an immediate dial on Reconnect.
func TestRedialTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dials := make(chan time.Time, 100)
		results := make(chan error, 100)
		h := newHandler()
		s := New(Config{
			URL: "ws://unused/", Handler: h,
			// Jitter at the top of the range, so the waits are exact.
			Rand: func(n int64) int64 { return n - 1 },
			Dial: func(ctx context.Context, url string) (*websocket.Conn, error) {
				dials <- time.Now()
				return nil, <-results
			},
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		s.SetWanted(true)
		t0 := time.Now()
		refused := errors.New("connection refused")
		var gaps []time.Duration
		last := t0
		for range 5 {
			at := <-dials
			gaps = append(gaps, at.Sub(last))
			last = at
			results <- refused
		}
		want := []time.Duration{0, time.Second - 1, 2*time.Second - 1, 4*time.Second - 1, 8*time.Second - 1}
		if diff := cmp.Diff(want, gaps); diff != "" {
			t.Fatalf("gaps between dials (-want +got):\n%s", diff)
		}
		// The server says "do not reconnect soon": the maximum wait.
		at := <-dials
		if got := at.Sub(last); got != 16*time.Second-1 {
			t.Fatalf("gap = %v", got)
		}
		last = at
		results <- fmt.Errorf("closed: %w", &websocket.CloseError{Code: protocol.CloseDoNotReconnect})
		at = <-dials
		if got := at.Sub(last); got != 5*time.Minute {
			t.Fatalf("gap after 4774 = %v, want 5m", got)
		}
		last = at
		results <- refused
		// Reconnect cuts the backoff short.
		synctest.Wait()
		s.Reconnect()
		at = <-dials
		if got := at.Sub(last); got != 0 {
			t.Fatalf("gap after Reconnect = %v, want 0", got)
		}
		results <- refused
		// Going offline stops dialing; coming back dials at once.
		synctest.Wait()
		s.SetOnline(false)
		synctest.Wait()
		time.Sleep(time.Hour)
		select {
		case <-dials:
			t.Fatal("dialed while offline")
		default:
		}
		before := time.Now()
		s.SetOnline(true)
		at = <-dials
		if got := at.Sub(before); got != 0 {
			t.Fatalf("gap after online = %v, want 0", got)
		}
		cancel()
		results <- refused
		<-done
	})
}

func TestNextDelayResetsAfterStable(t *testing.T) {
	s := New(Config{Handler: newHandler(), Rand: func(n int64) int64 { return n - 1 }})
	d, a := s.nextDelay(errors.New("x"), 5, 2*time.Minute)
	if d != time.Second-1 || a != 1 {
		t.Fatalf("after a stable connection: delay %v attempt %d, want 1s-1ns, 1", d, a)
	}
	d, a = s.nextDelay(errors.New("x"), 5, time.Second)
	if d != 32*time.Second-1 || a != 6 {
		t.Fatalf("after a short connection: delay %v attempt %d", d, a)
	}
}

// Acks of notifications stored one by one wait to share a frame: with a
// long AckDelay, ten notifications handled separately are acked in one
// frame when the batch is full; with a short one, a lone notification is
// acked when the delay ends.
func TestAcksCoalesce(t *testing.T) {
	for _, tt := range []struct {
		name  string
		delay time.Duration
		n     int
		live  bool // the messages come after the drain phase
	}{
		{"full batch", time.Hour, protocol.BatchSize, false},
		{"after the delay", time.Millisecond, 1, false},
		{"live at once", time.Hour, 1, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t)
			h := newHandler()
			h.uaid, h.channels = uaid, []string{chA}
			stored := make(chan string, 100)
			h.codes = func(n *protocol.Notification) int {
				stored <- n.Version
				return protocol.AckDelivered
			}
			// The clock stands still: messages sent right after the hello
			// stay in the drain phase (stored batches) however slow the
			// machine, until the test moves it past the phase.
			var mu sync.Mutex
			now := time.Unix(1e9, 0)
			clock := func() time.Time {
				mu.Lock()
				defer mu.Unlock()
				return now
			}
			s, _ := start(t, Config{URL: srv.url(), Handler: h, AckDelay: tt.delay, Now: clock})
			s.SetWanted(true)
			c := srv.accept(t)
			readMsg(t, c) // hello
			writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
			h.waitState(t, StateConnected)
			if tt.live {
				mu.Lock()
				now = now.Add(maxDrainPhase + time.Second)
				mu.Unlock()
			}
			var want []protocol.Update
			for i := range tt.n {
				v := fmt.Sprintf("v%d", i)
				writeMsg(t, c, &protocol.Notification{ChannelID: chA, Version: v, Data: "aGk"})
				// Wait until it is stored, so that each one is a batch of its own.
				select {
				case got := <-stored:
					if got != v {
						t.Fatalf("stored %s, want %s", got, v)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("notification %s not stored", v)
				}
				want = append(want, protocol.Update{ChannelID: chA, Version: v})
			}
			ack, ok := readMsg(t, c).(*protocol.Ack)
			if !ok {
				t.Fatal("expected an ack")
			}
			if diff := cmp.Diff(want, ack.Updates); diff != "" {
				t.Fatalf("one ack frame for all (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBatchExtension: the session asks for larger stored batches only from a
// server that named the extension in its hello reply.
func TestBatchExtension(t *testing.T) {
	for _, named := range []bool{true, false} {
		t.Run(fmt.Sprint("named=", named), func(t *testing.T) {
			srv := newFakeServer(t)
			h := newHandler()
			h.uaid, h.channels = uaid, []string{chA}
			s, _ := start(t, Config{URL: srv.url(), Handler: h})
			s.SetWanted(true)
			c := srv.accept(t)
			if _, ok := readMsg(t, c).(*protocol.Hello); !ok {
				t.Fatal("expected hello")
			}
			reply := &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true}
			if named {
				reply.Extensions = []string{protocol.ExtUrgency, protocol.ExtBatch}
			}
			writeMsg(t, c, reply)
			h.waitState(t, StateConnected)
			go func() { _, _ = s.Register(context.Background(), chB, "") }()
			first := readMsg(t, c)
			if b, ok := first.(*protocol.Batch); named && (!ok || b.Size != protocol.MaxBatchSize) {
				t.Fatalf("first frame after hello = %#v, want batch of %d", first, protocol.MaxBatchSize)
			}
			if !named {
				if _, ok := first.(*protocol.Register); !ok {
					t.Fatalf("first frame after hello = %#v, want the register (no batch frame)", first)
				}
			}
		})
	}
}

// TestDrainPhase: every batch the server sends right after the hello is a
// Reconnect batch, even a single message; after a drainGap without one a
// live message is Live, and a full batch Stored.
func TestDrainPhase(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	h.uaid, h.channels = uaid, []string{chA}
	stored := make(chan string, 100)
	h.codes = func(n *protocol.Notification) int {
		stored <- n.Version
		return protocol.AckDelivered
	}
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	s, _ := start(t, Config{URL: srv.url(), Handler: h, Now: clock})
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c) // hello
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	send := func(vs ...string) {
		t.Helper()
		for _, v := range vs {
			writeMsg(t, c, &protocol.Notification{ChannelID: chA, Version: v, Data: "aGk"})
		}
		for range vs {
			select {
			case <-stored:
			case <-time.After(10 * time.Second):
				t.Fatal("notification not stored")
			}
		}
	}
	kinds := func() []Kind {
		h.mu.Lock()
		defer h.mu.Unlock()
		return append([]Kind(nil), h.kinds...)
	}
	send("d1")
	send("d2")
	if got := kinds(); !cmp.Equal(got, []Kind{Reconnect, Reconnect}) {
		t.Fatalf("kinds of the drain's batches = %v, want Reconnect", got)
	}
	mu.Lock()
	now = now.Add(drainGap + time.Millisecond)
	mu.Unlock()
	send("live")
	if got := kinds(); got[len(got)-1] != Live {
		t.Fatalf("a live message after the drain gap is not Live: %v", got)
	}
	full := make([]string, protocol.BatchSize)
	for i := range full {
		full[i] = fmt.Sprintf("f%d", i)
	}
	before := len(kinds())
	send(full...)
	// The reader may hand them over in several batches; read together, they
	// are a full batch, Stored.
	if got := kinds()[before:]; len(got) == 1 && got[0] != Stored {
		t.Fatalf("a full batch is not Stored: %v", got)
	}
}
