package server

import (
	"testing"
	"time"
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
