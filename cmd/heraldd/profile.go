//go:build pprof

package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// A heraldd built with -tags pprof writes a CPU profile to
// $HERALDD_CPUPROFILE and an execution trace to $HERALDD_TRACE, from start
// to a clean exit (SIGTERM). For profiling (make bench's -daemon-profile);
// release builds leave it out.
func init() {
	var stops []func()
	if path := os.Getenv("HERALDD_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err != nil {
			fmt.Fprintln(os.Stderr, "heraldd: cpu profile:", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "heraldd: cpu profile:", err)
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	if path := os.Getenv("HERALDD_TRACE"); path != "" {
		if f, err := os.Create(path); err != nil {
			fmt.Fprintln(os.Stderr, "heraldd: trace:", err)
		} else if err := trace.Start(f); err != nil {
			fmt.Fprintln(os.Stderr, "heraldd: trace:", err)
		} else {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	stopProfiles = func() {
		for _, stop := range stops {
			stop()
		}
	}
}
