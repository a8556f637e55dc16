package server

import (
	"sync"
	"time"
)

// ackWaits ends the waits for early acks (earlyMsg.await) whose time is up:
// one ticker for all of them while any is registered, instead of a timer per
// message (a timer started and stopped per message was ~4 % of the CPU under
// the throughput load). A wait ends on the tick of its deadline, at most
// ackWaitTick early. Waits sit in a ring of buckets by deadline tick; one
// longer than the ring stays in its bucket for the next round.
type ackWaits struct {
	mu      sync.Mutex
	buckets [ackWaitSlots][]*earlyMsg // guarded by mu
	n       int                       // guarded by mu: waits in the buckets
	running bool                      // guarded by mu: run is ticking
}

const (
	ackWaitTick  = time.Millisecond
	ackWaitSlots = 64
)

// earlyMsg states.
const (
	earlyWaiting = iota
	earlyAcked
	earlyTimedOut
)

// add registers e's wait until deadline (monotime).
func (w *ackWaits) add(e *earlyMsg, deadline int64) {
	tick := int64(ackWaitTick)
	deadline = max(deadline, monotime()+tick) // never a tick run has passed
	e.deadline = deadline
	w.mu.Lock()
	b := &w.buckets[(deadline/tick)%ackWaitSlots]
	*b = append(*b, e)
	w.n++
	if !w.running {
		w.running = true
		go w.run()
	}
	w.mu.Unlock()
}

// run ticks while waits are registered, ending those whose deadline tick
// has come (acked ones are dropped).
func (w *ackWaits) run() {
	tick := int64(ackWaitTick)
	t := time.NewTicker(ackWaitTick)
	defer t.Stop()
	last := monotime()/tick - 1 // the last tick whose bucket was done
	for range t.C {
		cur := monotime() / tick
		w.mu.Lock()
		for i := last + 1; i <= cur && i <= last+ackWaitSlots; i++ {
			b := &w.buckets[i%ackWaitSlots]
			keep := (*b)[:0]
			for _, e := range *b {
				if e.state.Load() == earlyWaiting && e.deadline/tick > cur {
					keep = append(keep, e) // a later round
					continue
				}
				if e.state.CompareAndSwap(earlyWaiting, earlyTimedOut) {
					close(e.ackc)
				}
				w.n--
			}
			clear((*b)[len(keep):])
			*b = keep
		}
		last = cur
		if w.n == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}

// ack ends e's wait, if it has not timed out: the device's ack arrived.
func (e *earlyMsg) ack() {
	if e.state.CompareAndSwap(earlyWaiting, earlyAcked) {
		close(e.ackc)
	}
}

// await waits up to d for the device's ack of e and reports whether it came.
func (e *earlyMsg) await(d time.Duration, w *ackWaits) bool {
	if s := e.state.Load(); s != earlyWaiting || d <= 0 {
		return s == earlyAcked
	}
	w.add(e, monotime()+int64(d))
	<-e.ackc
	return e.state.Load() == earlyAcked
}
