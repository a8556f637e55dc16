package session

import (
	"context"
	"testing"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// A server whose hello reply names no extension never gets an extension
// frame or an urgency in hello (Mozilla's server would close with 1011).
func TestExtensionsOnlyForServersThatNameThem(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, RequestTimeout: 2 * time.Second, Rand: func(int64) int64 { return 0 }})
	s.SetUrgency("high")
	s.SetWanted(true)
	c := srv.accept(t)
	if hello := readMsg(t, c).(*protocol.Hello); hello.Urgency != "" {
		t.Fatalf("hello to an unknown server carries urgency %q", hello.Urgency)
	}
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	s.SetUrgency("normal")
	s.AppAck([]protocol.Update{{ChannelID: chA, Version: "v1"}})
	go s.Register(context.Background(), chA, "")
	for {
		m := readMsg(t, c)
		if m.Type() == protocol.TypeRegister {
			break
		}
		t.Fatalf("server got %s, want only register", m.Type())
	}
	c.Close()
	c2 := srv.accept(t)
	if hello := readMsg(t, c2).(*protocol.Hello); hello.Urgency != "" {
		t.Fatalf("second hello carries urgency %q", hello.Urgency)
	}
	writeMsg(t, c2, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
}

// A herald-server naming the extensions gets the wanted urgency at once, in
// every later hello, and the app acks.
func TestExtensionsForHeraldServer(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, RequestTimeout: 2 * time.Second, Rand: func(int64) int64 { return 0 }})
	s.SetUrgency("high")
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c)
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true,
		Extensions: []string{protocol.ExtUrgency, protocol.ExtAppAck}})
	if u, ok := readMsg(t, c).(*protocol.Urgency); !ok || u.Min != "high" {
		t.Fatalf("got %#v, want urgency high", u)
	}
	s.SetUrgency("very-low")
	if u, ok := readMsg(t, c).(*protocol.Urgency); !ok || u.Min != "very-low" {
		t.Fatalf("got %#v, want urgency very-low", u)
	}
	s.AppAck([]protocol.Update{{ChannelID: chA, Version: "v1"}, {ChannelID: "not-a-channel", Version: "v2"}})
	if a, ok := readMsg(t, c).(*protocol.AppAck); !ok || len(a.Updates) != 1 || a.Updates[0].Version != "v1" {
		t.Fatalf("got %#v, want app_ack of v1", a)
	}
	c.Close()
	c2 := srv.accept(t)
	if hello := readMsg(t, c2).(*protocol.Hello); hello.Urgency != "very-low" {
		t.Fatalf("hello to a herald-server carries urgency %q, want very-low", hello.Urgency)
	}
	writeMsg(t, c2, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
}

// After a resume, Check pings; a connection that does not answer within the
// check timeout is replaced at once, without the backoff wait (here a
// minute: the test would time out).
func TestCheckReplacesDeadConnection(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, CheckTimeout: 200 * time.Millisecond, RequestTimeout: 2 * time.Second,
		Backoff: Backoff{Min: time.Minute, Max: time.Hour, Stable: time.Hour}, Rand: func(n int64) int64 { return n - 1 }})
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c)
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	// The server no longer reads: the ping is never answered (a dead path).
	s.Check()
	c2 := srv.accept(t)
	if _, ok := readMsg(t, c2).(*protocol.Hello); !ok {
		t.Fatal("expected hello on the new connection")
	}
	writeMsg(t, c2, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
}

// Check without a connection ends the backoff wait and dials at once.
func TestCheckEndsBackoff(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, RequestTimeout: 2 * time.Second,
		Backoff: Backoff{Min: time.Minute, Max: time.Hour, Stable: time.Hour}, Rand: func(n int64) int64 { return n - 1 }})
	s.SetWanted(true)
	c := srv.accept(t)
	readMsg(t, c)
	c.Close() // no hello: the session backs off a minute
	h.waitState(t, StateBackoff)
	s.Check()
	c2 := srv.accept(t)
	if _, ok := readMsg(t, c2).(*protocol.Hello); !ok {
		t.Fatal("expected hello after Check")
	}
	writeMsg(t, c2, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
}

// Extensions known from an earlier run put the urgency in the very first
// hello, so the server holds lower messages from its first drain on.
func TestKnownExtensionsInFirstHello(t *testing.T) {
	srv := newFakeServer(t)
	h := newHandler()
	s, _ := start(t, Config{URL: srv.url(), Handler: h, RequestTimeout: 2 * time.Second,
		Extensions: []string{protocol.ExtUrgency}, Rand: func(int64) int64 { return 0 }})
	s.SetUrgency("high")
	s.SetWanted(true)
	c := srv.accept(t)
	if hello := readMsg(t, c).(*protocol.Hello); hello.Urgency != "high" {
		t.Fatalf("first hello carries urgency %q, want high", hello.Urgency)
	}
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true, Extensions: []string{protocol.ExtAppAck, protocol.ExtUrgency}})
	h.waitState(t, StateConnected)
	if got := s.Extensions(); len(got) != 2 || got[0] != protocol.ExtAppAck || got[1] != protocol.ExtUrgency {
		t.Fatalf("Extensions() = %v", got)
	}
}
