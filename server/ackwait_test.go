package server

import (
	"sync"
	"testing"
	"time"
)

// Waits end with the ack when it comes, else when their time is up, however
// many run at once, and an ack after the end changes nothing.
func TestAckWaits(t *testing.T) {
	var w ackWaits
	const n = 200
	results := make([]bool, n)
	msgs := make([]*earlyMsg, n)
	var wg sync.WaitGroup
	for i := range n {
		msgs[i] = &earlyMsg{ackc: make(chan struct{})}
		wait := time.Duration(i%5) * time.Millisecond
		if i%2 == 0 {
			wait = time.Hour // ended by its ack only
		}
		wg.Go(func() { results[i] = msgs[i].await(wait, &w) })
	}
	for i := 0; i < n; i += 2 {
		msgs[i].ack()
	}
	wg.Wait()
	for i, got := range results {
		if want := i%2 == 0; got != want {
			t.Errorf("wait %d = %v, want %v", i, got, want)
		}
	}
	msgs[1].ack() // after its wait ended: already closed, no panic
	if msgs[1].state.Load() != earlyTimedOut {
		t.Errorf("a late ack changed a timed-out wait")
	}
	// Acked before the wait: no wait at all.
	e := &earlyMsg{ackc: make(chan struct{})}
	e.ack()
	if !e.await(time.Hour, &w) {
		t.Error("an ack before the wait was not seen")
	}
}
