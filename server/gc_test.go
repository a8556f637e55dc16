package server

import "testing"

func TestGCPercentFor(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		live, scan, floor uint64
		base, want        int
	}{
		{5 * mb, 5 * mb, 64 * mb, 100, 1180},    // a few MB live: the goal is the floor
		{5 * mb, 10 * mb, 64 * mb, 100, 590},    // stacks and globals count into the goal
		{32 * mb, 32 * mb, 64 * mb, 100, 100},   // half the floor: GOGC 100 reaches it already
		{200 * mb, 210 * mb, 64 * mb, 100, 100}, // a large live heap: GOGC's own value
		{40 * mb, 40 * mb, 64 * mb, 200, 200},   // never below GOGC
		{0, 0, 64 * mb, 100, 1600},              // nothing live yet: the minimum-heap cap
	} {
		if got := gcPercentFor(c.live, c.scan, c.floor, c.base); got != c.want {
			t.Errorf("gcPercentFor(%d MB live, %d MB scanned, %d MB floor, %d) = %d, want %d",
				c.live/mb, c.scan/mb, c.floor/mb, c.base, got, c.want)
		}
	}
}
