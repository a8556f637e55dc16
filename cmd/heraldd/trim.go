package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// trimQuiet is how long the daemon must have been quiet after work (start-up,
// a connection change, messages, a D-Bus call) before its freed memory goes
// back to the system.
const trimQuiet = 10 * time.Second

// trimmer returns freed memory to the system once the daemon has been quiet
// for a while after work (issue 17). A session daemon spends nearly all of
// its life idle, but Go keeps what it freed until the heap reaches its goal
// (4 MiB at the least), which an idle heraldd never does: after start-up
// about 1.2 MiB of garbage (mostly the websocket's deflate writer, 1.2 MB
// allocated for the first compressed frame) would stay resident for good,
// and glibc keeps what SQLite freed in its arenas. It runs once per quiet
// spell: at idle nothing wakes it.
type trimmer struct {
	quiet time.Duration
	trim  func()

	mu    sync.Mutex
	timer *time.Timer
}

func newTrimmer(quiet time.Duration, trim func()) *trimmer {
	return &trimmer{quiet: quiet, trim: trim}
}

// poke says the daemon has just worked: the trim waits for quiet again.
func (t *trimmer) poke() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer == nil {
		t.timer = time.AfterFunc(t.quiet, t.trim)
		return
	}
	t.timer.Reset(t.quiet)
}

// stop cancels a pending trim.
func (t *trimmer) stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
	}
}

// trimMemory collects the garbage and returns the free pages of the Go heap
// and of C's malloc (SQLite's) to the system. Two collections: the first
// moves what sync.Pools hold (gorilla's flate writers and readers) to their
// victim caches, the second (in FreeOSMemory) frees it.
//
// Not before the runtime's first collection of its own: until the heap first
// reaches its goal (4 MiB) Go never collects, not even the forced collection
// every two minutes, and a first collection costs more resident memory (the
// collector's own structures, ~0.5-0.9 MiB in heraldd) than the garbage of
// start-up that it would return (~0.3 MiB resident of the 1.2 MB deflate
// writer). After traffic has made Go collect, those structures exist anyway
// and a trim returns what the heap kept up to its goal.
func trimMemory() {
	if gcCycles() == 0 {
		return
	}
	runtime.GC()
	debug.FreeOSMemory()
	mallocTrim()
}

// gcCycles is the number of completed collections.
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
