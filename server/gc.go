package server

import (
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
)

// DefaultMinHeapGoal is the smallest heap goal KeepHeapGoal keeps.
const DefaultMinHeapGoal = 32 << 20

// KeepHeapGoal lets the heap grow to at least min bytes before a garbage
// collection. With the default GOGC=100 the heap goal is twice the live heap:
// a server with a few MB live (1,000 devices) collected 6–7 times a second
// under the throughput load, about 8 % of its CPU, and every collection is a
// chance for a delivery to wait behind its stop-the-world phases or an assist.
// After each collection the percentage is set so that the goal is at least min
// (live heap 5 MB: GOGC about 1000), and back to GOGC's own value once the live heap
// alone is large (19,000 idle connections: it changes nothing there). The
// memory it costs is garbage up to min, only while the server allocates; an
// idle server does not grow. GOMEMLIMIT still applies; GOGC=off, or min 0,
// turns it off. For the whole process: the command calls it, not New.
func KeepHeapGoal(min uint64) {
	if min == 0 || os.Getenv("GOGC") == "off" {
		return
	}
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	if base < 0 {
		return
	}
	// The first adjustment follows the first collection: before it the
	// runtime's goal is based on its 4 MB minimum, not on a live heap, and a
	// large GOGC on it would let a heap that grows fast (connections being
	// opened) run far past min.
	h := &heapGoal{min: min, base: base, last: base, sample: []rtmetrics.Sample{
		{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}}
	h.arm()
}

// heapGoal adjusts GOGC after every collection (a finalizer of an object
// made unreachable at once runs after each cycle: no timer, no wakeups).
type heapGoal struct {
	mu     sync.Mutex
	min    uint64
	base   int
	last   int
	sample []rtmetrics.Sample
}

// gcSentinel is big enough not to share a tiny-allocator block.
type gcSentinel struct{ _ [32]byte }

func (h *heapGoal) arm() {
	runtime.SetFinalizer(&gcSentinel{}, func(*gcSentinel) {
		h.adjust()
		h.arm()
	})
}

func (h *heapGoal) adjust() {
	h.mu.Lock()
	defer h.mu.Unlock()
	rtmetrics.Read(h.sample)
	var v [3]uint64
	for i, x := range h.sample {
		if x.Value.Kind() != rtmetrics.KindUint64 {
			return
		}
		v[i] = x.Value.Uint64()
	}
	p := gcPercentFor(v[0], v[0]+v[1]+v[2], h.min, h.base)
	if p != h.last {
		debug.SetGCPercent(p)
		h.last = p
	}
}

// gcPercentFor is the GOGC that makes the heap goal at least floor, and
// never below base. The runtime's goal is live + scan × GOGC/100, where scan is
// the live heap plus the stacks and globals it scans, but never below its
// minimum heap, 4 MB × GOGC/100: GOGC is capped so that this minimum is
// floor at most.
func gcPercentFor(live, scan, floor uint64, base int) int {
	scan = max(scan, live, 1<<20)
	if live >= floor {
		return base
	}
	p := min(int((floor-live)*100/scan), int(floor*100/(4<<20)))
	return max(p, base)
}
