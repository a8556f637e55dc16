package session

import (
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

func TestKeepaliveAdapt(t *testing.T) {
	lo, hi := 30*time.Second, 5*time.Minute
	var k keepalive
	steps := []struct {
		ok   bool
		want time.Duration
	}{
		{false, 150 * time.Second}, // died idle at the server's 5 min
		{false, 75 * time.Second},
		{true, 75 * time.Second},
		{true, 75 * time.Second},
		{true, 112500 * time.Millisecond}, // three answered pings: +50 %
		{false, 56250 * time.Millisecond},
		{false, 30 * time.Second}, // never below lo
		{false, 30 * time.Second},
	}
	for i, st := range steps {
		k = k.adapt(st.ok, lo, hi)
		if k.interval != st.want {
			t.Fatalf("step %d (ok=%v): interval %s, want %s", i, st.ok, k.interval, st.want)
		}
	}
	// Growing stops at the server's interval.
	k = keepalive{interval: 4 * time.Minute}
	for range 3 {
		k = k.adapt(true, lo, hi)
	}
	if k.interval != hi {
		t.Fatalf("grew to %s, want the server's %s", k.interval, hi)
	}
}

// A path that drops the connection while idle makes the session ping on its
// own on the next connection, sooner than the server's interval.
func TestKeepalivePingsAfterIdleDeath(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, PingInterval: 400 * time.Millisecond, PingGrace: 100 * time.Millisecond,
		MinKeepalive: 50 * time.Millisecond, RequestTimeout: 2 * time.Second, Rand: func(int64) int64 { return 0 }})
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c)
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	if s.keepaliveInterval() != 0 {
		t.Fatal("the session pings before its path ever dropped a connection")
	}
	// Silence: the server neither pings nor reads, as if the path were gone.
	c2 := srv.accept(t)
	pinged := make(chan struct{}, 10)
	c2.SetPingHandler(func(string) error {
		pinged <- struct{}{}
		return nil // no pong: the server reads but does not answer
	})
	readMsg(t, c2)
	writeMsg(t, c2, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	if got := s.keepaliveInterval(); got != 200*time.Millisecond {
		t.Fatalf("keepalive after an idle death = %s, want half the server's 400ms", got)
	}
	go func() {
		for {
			if _, _, err := c2.ReadMessage(); err != nil {
				return
			}
		}
	}()
	select {
	case <-pinged:
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not ping on its own")
	}
	// Unanswered, the ping makes the session replace the connection and
	// halve again.
	c3 := srv.accept(t)
	readMsg(t, c3)
	writeMsg(t, c3, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	if got := s.keepaliveInterval(); got != 100*time.Millisecond {
		t.Fatalf("keepalive after an unanswered ping = %s, want 100ms", got)
	}
	h.waitState(t, StateConnected)
}

// Answered pings go on, and after keepaliveGrowAfter of them the interval
// grows back toward the server's.
func TestKeepaliveGrowsWhenAnswered(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, PingInterval: 400 * time.Millisecond, PingGrace: 100 * time.Millisecond,
		MinKeepalive: 50 * time.Millisecond, RequestTimeout: 2 * time.Second, Rand: func(int64) int64 { return 0 }})
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c)
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	c2 := srv.accept(t) // after the idle death of the first
	pinged := make(chan struct{}, 100)
	c2.SetPingHandler(func(data string) error {
		pinged <- struct{}{}
		return c2.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	readMsg(t, c2)
	writeMsg(t, c2, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	go func() {
		for {
			if _, _, err := c2.ReadMessage(); err != nil {
				return
			}
		}
	}()
	for i := range keepaliveGrowAfter + 2 {
		select {
		case <-pinged:
		case <-time.After(10 * time.Second):
			t.Fatalf("ping %d did not come", i+1)
		}
	}
	if got := s.keepaliveInterval(); got != 300*time.Millisecond {
		t.Fatalf("keepalive after %d answered pings = %s, want 300ms (200ms + 50%%)", keepaliveGrowAfter, got)
	}
}
