package main

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The trim runs once, a quiet period after the last poke, and nothing wakes
// it again until the next poke.
func TestTrimmerWaitsForQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var trims atomic.Int32
		tr := newTrimmer(10*time.Second, func() { trims.Add(1) })
		defer tr.stop()
		tr.poke()
		time.Sleep(9 * time.Second)
		tr.poke() // work again: the quiet period starts over
		time.Sleep(9 * time.Second)
		tr.poke()
		time.Sleep(9 * time.Second)
		synctest.Wait()
		if n := trims.Load(); n != 0 {
			t.Fatalf("trimmed %d times while pokes came every 9 s", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := trims.Load(); n != 1 {
			t.Fatalf("trimmed %d times 11 s after the last poke, want 1", n)
		}
		time.Sleep(24 * time.Hour)
		synctest.Wait()
		if n := trims.Load(); n != 1 {
			t.Fatalf("trimmed %d times in a quiet day, want 1", n)
		}
		tr.poke()
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if n := trims.Load(); n != 2 {
			t.Fatalf("trimmed %d times after the next poke, want 2", n)
		}
		tr.poke()
		tr.stop()
		time.Sleep(time.Minute)
		synctest.Wait()
		if n := trims.Load(); n != 2 {
			t.Fatalf("trimmed after stop (%d)", n)
		}
	})
	var nilTrimmer *trimmer
	nilTrimmer.poke() // no trimmer: no-op
	nilTrimmer.stop()
}

// rssAnon is this process's resident anonymous memory (/proc/self/status).
func rssAnon(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no RssAnon in /proc/self/status")
	return 0
}

var sink [][]byte

// trimMemory gives freed heap pages back to the system: garbage well under
// the heap goal, which Go would otherwise keep resident, leaves.
func TestTrimMemoryReturnsFreedHeap(t *testing.T) {
	trimMemory()
	const garbage = 32 << 20
	for range garbage / (256 << 10) {
		b := make([]byte, 256<<10)
		for i := range b {
			b[i] = 1 // resident
		}
		sink = append(sink, b)
	}
	before := rssAnon(t)
	sink = nil
	runtime.GC() // freed, but kept: the pages stay resident
	kept := rssAnon(t)
	trimMemory()
	after := rssAnon(t)
	t.Logf("RssAnon with %d MiB garbage %d KiB, collected %d KiB, trimmed %d KiB", garbage>>20, before>>10, kept>>10, after>>10)
	if before-after < garbage/2 {
		t.Fatalf("trimMemory returned %d KiB of %d KiB freed", (before-after)>>10, garbage>>10)
	}
}

// Before Go's first collection trimMemory leaves the heap alone: a first
// collection would cost more than it returns. Run in a child process with the
// collector off, so that nothing else collects first.
func TestTrimMemoryBeforeFirstCollection(t *testing.T) {
	if os.Getenv("HERALDD_TRIM_CHILD") == "1" {
		if n := gcCycles(); n != 0 {
			t.Fatalf("child: %d collections with GOGC=off", n)
		}
		trimMemory()
		if n := gcCycles(); n != 0 {
			t.Fatalf("trimMemory ran %d collections before the runtime's first", n)
		}
		runtime.GC()
		trimMemory()
		if n := gcCycles(); n < 3 {
			t.Fatalf("after a collection trimMemory did not collect (%d collections)", n)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTrimMemoryBeforeFirstCollection$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HERALDD_TRIM_CHILD=1", "GOGC=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
