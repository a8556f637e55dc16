package server

import (
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// A write under way for longer than the limit is found; one that began
// lately, or none, is not.
func TestStuckWrites(t *testing.T) {
	h := &hub{conns: map[string]*conn{}}
	now := int64(time.Hour)
	idle, recent, stuck := &conn{uaid: "idle"}, &conn{uaid: "recent"}, &conn{uaid: "stuck"}
	recent.writing.Store(now - int64(time.Second))
	stuck.writing.Store(now - int64(11*time.Second))
	for _, c := range []*conn{idle, recent, stuck} {
		h.conns[c.uaid] = c
	}
	got := h.stuckWrites(now, 10*time.Second)
	if len(got) != 1 || got[0] != stuck {
		t.Fatalf("stuck writes = %v, want only %q", got, stuck.uaid)
	}
}

// A reader poked out of its wait after handling frames (a device gone quiet:
// it goes on as a fresh goroutine) keeps the connection: the device's read
// deadline is back, and frames are read and written as before.
func TestPokedReaderKeepsConnection(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "") // a frame handled: the reader is hot
	c := ts.srv.hub.get(d.uaid)
	deadline := time.Now().Add(10 * time.Second)
	for !c.poke(math.MaxInt64) { // once the reader waits again
		if time.Now().After(deadline) {
			t.Fatal("the reader never waited after handling the register")
		}
		runtime.Gosched()
	}
	for range 2 {
		d.sendRaw("{}")
		if m := d.recv(); m.Type() != "ping" {
			t.Fatalf("after the poke: got %s, want the ping's answer", m.Type())
		}
	}
	if r := ts.push(ep, []byte("after"), nil); r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}
	n := d.notification()
	d.ack(n)
	waitPending(t, ts, d, 0)
}
