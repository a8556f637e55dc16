// Command bench measures the figures of DESIGN §9 and prints them beside
// their targets. It writes the same figures to bench-results.json.
//
// Usage: go run ./tests/bench [-bin DIR] [-out FILE] [-only NAME,...] [-cpuprofile FILE] [-daemon-profile DIR [-daemon-trace]]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one measured figure.
type Result struct {
	Name   string  // key in bench-results.json
	Label  string  // human label in the table
	Value  float64 // measured value
	Unit   string
	Target float64
	Lower  bool   // true when lower is better
	Note   string // how it was measured, or why it is missing
}

// Env is what every figure gets.
type Env struct {
	Bin string // directory holding heraldd, herald and herald-server
	Tmp string // a fresh directory for this run, removed afterwards
	// CPUProfile, when set, is where server_throughput writes a CPU profile
	// of herald-server taken in the middle of its window.
	CPUProfile string
	// DaemonProfile, when set, is a directory where reconnect_drain and
	// e2e_latency have heraldd (built with -tags pprof) write a CPU profile
	// of its run (NAME.cpu.prof), and with DaemonTrace an execution trace
	// (NAME.trace).
	DaemonProfile string
	DaemonTrace   bool
}

// daemonProfileEnv is the environment that makes a heraldd built with -tags
// pprof profile its run for figure name (none without -daemon-profile).
func (e *Env) daemonProfileEnv(name string) []string {
	if e.DaemonProfile == "" {
		return nil
	}
	env := []string{"HERALDD_CPUPROFILE=" + filepath.Join(e.DaemonProfile, name+".cpu.prof")}
	if e.DaemonTrace {
		env = append(env, "HERALDD_TRACE="+filepath.Join(e.DaemonProfile, name+".trace"))
	}
	return env
}

// Logf prints a progress line on stderr.
func (e *Env) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// errNotMeasured marks a figure whose measurement does not exist yet.
var errNotMeasured = errors.New("not measured yet")

type figure struct {
	name string
	run  func(ctx context.Context, env *Env) ([]Result, error)
}

func figures() []figure {
	return []figure{
		{"e2e_latency", benchE2ELatency},                    // e2e.go
		{"server_latency", benchServerLatency},              // server.go
		{"server_throughput", benchServerThroughput},        // server.go
		{"server_throughput_pg1", benchServerThroughputPG1}, // pg.go
		{"server_throughput_pg2", benchServerThroughputPG2}, // pg.go
		{"server_idle_conn", benchServerIdleConn},           // server.go
		{"daemon_idle", benchDaemonIdle},                    // daemon.go: RSS + wakeups
		{"daemon_idle_device", benchDaemonIdleDevice},       // device.go: wakeups with device watchers, resume
		{"wire_bytes", benchWireBytes},                      // daemon.go
		{"reconnect_drain", benchReconnectDrain},            // daemon.go
		{"helper_throughput", benchHelperThroughput},        // helpers.go
	}
}

func main() {
	bin := flag.String("bin", "bin", "directory with the built binaries")
	out := flag.String("out", "bench-results.json", "where to write the figures as JSON")
	only := flag.String("only", "", "comma-separated figure names to run (default all)")
	prof := flag.String("cpuprofile", "", "write a CPU profile of herald-server under the throughput load to this file")
	dprof := flag.String("daemon-profile", "", "`DIR` where reconnect_drain and e2e_latency write a CPU profile of heraldd (build it with -tags pprof)")
	dtrace := flag.Bool("daemon-trace", false, "with -daemon-profile, also write an execution trace of heraldd")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *bin, *out, *only, *prof, *dprof, *dtrace); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin, out, only, prof, dprof string, dtrace bool) error {
	absBin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	if prof != "" {
		if prof, err = filepath.Abs(prof); err != nil {
			return err
		}
	}
	if dprof != "" {
		if dprof, err = filepath.Abs(dprof); err != nil {
			return err
		}
	}
	tmp, err := os.MkdirTemp("", "herald-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		if n != "" {
			want[n] = true
		}
	}
	var results []Result
	for _, f := range figures() {
		if len(want) > 0 && !want[f.name] {
			continue
		}
		dir := filepath.Join(tmp, f.name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		env := &Env{Bin: absBin, Tmp: dir, CPUProfile: prof, DaemonProfile: dprof, DaemonTrace: dtrace}
		start := time.Now()
		env.Logf("%s: running", f.name)
		rs, err := f.run(ctx, env)
		if err != nil {
			env.Logf("%s: %v", f.name, err)
			results = append(results, Result{Name: f.name, Label: f.name, Note: "FAILED: " + err.Error()})
			continue
		}
		env.Logf("%s: done in %s", f.name, time.Since(start).Round(time.Millisecond))
		results = append(results, rs...)
	}
	printTable(results)
	return writeJSON(out, results)
}

func met(r Result) string {
	switch {
	case strings.HasPrefix(r.Note, "FAILED"):
		return "failed"
	case r.Lower && r.Value <= r.Target, !r.Lower && r.Value >= r.Target:
		return "met"
	default:
		return "MISSED"
	}
}

func printTable(results []Result) {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "figure\tmeasured\ttarget\tresult\tnote")
	for _, r := range results {
		cmp := ">="
		if r.Lower {
			cmp = "<="
		}
		fmt.Fprintf(w, "%s\t%s %s\t%s %s %s\t%s\t%s\n", r.Label, fmtNum(r.Value), r.Unit, cmp, fmtNum(r.Target), r.Unit, met(r), r.Note)
	}
	w.Flush()
}

func fmtNum(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func writeJSON(path string, results []Result) error {
	type entry struct {
		Value  float64 `json:"value"`
		Unit   string  `json:"unit"`
		Target float64 `json:"target"`
	}
	m := map[string]entry{}
	for _, r := range results {
		if strings.HasPrefix(r.Note, "FAILED") {
			continue
		}
		m[r.Name] = entry{Value: r.Value, Unit: r.Unit, Target: r.Target}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
