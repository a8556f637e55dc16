package helpers

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/heraldpush/herald/app"
)

// testEnv is a data home with helpers installed from testdata.
type testEnv struct {
	home   string
	tmp    string // the runner's TempDir
	finder *Finder
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	root := t.TempDir()
	e := &testEnv{home: filepath.Join(root, "data"), tmp: filepath.Join(root, "runtime")}
	e.finder = NewFinder(Dirs{DataHome: e.home}, nil)
	return e
}

// install copies testdata/<script> next to appID's manifest, executable.
func (e *testEnv) install(t *testing.T, appID, script string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", script))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(e.home, "herald", "helpers")
	writeFile(t, filepath.Join(dir, "bin", script), string(b), 0o755)
	writeFile(t, filepath.Join(dir, appID+".json"), fmt.Sprintf(`{"exec": "bin/%s"}`, script), 0o644)
}

func (e *testEnv) runner(cfg Config) *Runner {
	cfg.TempDir = e.tmp
	return NewRunner(e.finder, cfg)
}

// assertTempEmpty checks that no temp file was left behind.
func (e *testEnv) assertTempEmpty(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir(e.tmp)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, ent := range ents {
		t.Errorf("temp file left behind: %s", ent.Name())
	}
}

func TestProcessTransforms(t *testing.T) {
	e := newTestEnv(t)
	e.install(t, "com.example.app_app", "transform.sh")
	r := e.runner(Config{})
	got, err := r.Process(context.Background(), "com.example.app_app_1.0", "m1", []byte("hello"))
	if err != nil {
		t.Fatalf("Process: %v", err)
	}
	want := &Output{
		Message: json.RawMessage(`{"got":"hello","app":"com.example.app_app_1.0","msg":"m1","modes":"600 600"}`),
		Notification: &app.Notification{
			Tag:   "t1",
			Card:  &app.Card{Summary: "hello", Body: "b", Popup: true, Persist: true, Actions: []string{"appid://x/y/current-user-version"}},
			Sound: &app.Sound{Default: true}, Vibrate: &app.Vibration{Pattern: []uint32{200, 100}, Repeat: 1},
			EmblemCounter: &app.EmblemCounter{Count: 3, Visible: true},
		},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Process (-want +got):\n%s", d)
	}
	st := r.Stats()["com.example.app_app_1.0"]
	if st.Runs != 1 || st.Failures != 0 || st.Total <= 0 {
		t.Errorf("Stats = %+v, want 1 run, no failure, some time", st)
	}
	e.assertTempEmpty(t)
}

func TestProcessWithoutHelper(t *testing.T) {
	e := newTestEnv(t)
	for _, r := range []*Runner{e.runner(Config{}), NewRunner(nil, Config{})} {
		tests := []struct {
			payload string
			want    *Output
		}{
			{`{"message": 1, "notification": {"card": {"summary": "s"}}}`,
				&Output{Message: json.RawMessage(`1`), Notification: &app.Notification{Card: &app.Card{Summary: "s"}}}},
			{`{"other": 1}`, &Output{Message: json.RawMessage(`{"other": 1}`)}},
			{`plain text`, &Output{Message: json.RawMessage(`"plain text"`)}},
		}
		for _, tt := range tests {
			got, err := r.Process(context.Background(), "org.example.NoHelper", "m", []byte(tt.payload))
			if err != nil {
				t.Fatalf("Process(%s): %v", tt.payload, err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Process(%s) (-want +got):\n%s", tt.payload, d)
			}
		}
		if len(r.Stats()) != 0 {
			t.Errorf("Stats = %v, want none without helpers", r.Stats())
		}
	}
}

func TestProcessFailures(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct {
		script  string
		wantErr error
	}{
		{"failempty.sh", ErrExit},
		{"invalid.sh", ErrBadOutput},
		{"nothing.sh", ErrNoOutput},
		{"missing.sh", ErrStart},
	}
	for _, tt := range tests {
		if tt.script == "missing.sh" {
			writeFile(t, filepath.Join(e.home, "herald", "helpers", "org.example.missing.json"), `{"exec": "bin/nope"}`, 0o644)
			continue
		}
		e.install(t, "org.example."+strings.TrimSuffix(tt.script, ".sh"), tt.script)
	}
	r := e.runner(Config{})
	payload := []byte(`{"data": "raw"}`)
	for _, tt := range tests {
		t.Run(tt.script, func(t *testing.T) {
			appID := "org.example." + strings.TrimSuffix(tt.script, ".sh")
			got, err := r.Process(context.Background(), appID, "m", payload)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Process error = %v, want %v", err, tt.wantErr)
			}
			if d := cmp.Diff(RawOutput(payload), got); d != "" {
				t.Errorf("Process output (-want +got):\n%s", d)
			}
			if st := r.Stats()[appID]; st.Runs != 1 || st.Failures != 1 || st.Timeouts != 0 {
				t.Errorf("Stats = %+v, want 1 run, 1 failure", st)
			}
		})
	}
	e.assertTempEmpty(t)
}

// TestProcessExitStatusIgnored: as upstream, a helper's exit status does not
// count when its output file is valid.
func TestProcessExitStatusIgnored(t *testing.T) {
	e := newTestEnv(t)
	e.install(t, "org.example.fail", "fail.sh")
	r := e.runner(Config{})
	got, err := r.Process(context.Background(), "org.example.fail", "m", []byte(`{"data": "raw"}`))
	if err != nil {
		t.Fatalf("Process error = %v, want the output used despite exit 3", err)
	}
	if d := cmp.Diff(&Output{Message: json.RawMessage(`"ok"`)}, got); d != "" {
		t.Errorf("Process output (-want +got):\n%s", d)
	}
	e.assertTempEmpty(t)
}

// readPids waits for the hang.sh pid file and returns the helper's and its
// grandchild's pids.
func readPids(t *testing.T, path string) (int, int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("helper did not record its pids: %v", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		t.Fatalf("pid file holds %q", b)
	}
	a, _ := strconv.Atoi(f[0])
	c, _ := strconv.Atoi(f[1])
	return a, c
}

// waitGone waits until pid has exited (a zombie counts as gone), under a
// deadline, by polling a pidfd.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 10_000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("poll pidfd: %v", err)
		}
		if n == 0 {
			t.Fatalf("process %d still running 10 s after the helper was stopped", pid)
		}
		return
	}
}

func TestProcessTimeoutKillsGroup(t *testing.T) {
	e := newTestEnv(t)
	e.install(t, "org.example.Hang", "hang.sh")
	e.install(t, "org.example.Ok", "cat.sh")
	r := e.runner(Config{Timeout: 1500 * time.Millisecond, KillGrace: 100 * time.Millisecond})
	pidfile := filepath.Join(t.TempDir(), "pids")
	got, err := r.Process(context.Background(), "org.example.Hang", "m", []byte(pidfile))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Process error = %v, want ErrTimeout", err)
	}
	if d := cmp.Diff(RawOutput([]byte(pidfile)), got); d != "" {
		t.Errorf("Process output (-want +got):\n%s", d)
	}
	helper, grandchild := readPids(t, pidfile)
	waitGone(t, helper)
	waitGone(t, grandchild)
	if st := r.Stats()["org.example.Hang"]; st.Runs != 1 || st.Failures != 1 || st.Timeouts != 1 {
		t.Errorf("Stats = %+v, want 1 run, 1 failure, 1 timeout", st)
	}
	// The runner is fine afterwards.
	if _, err := r.Process(context.Background(), "org.example.Ok", "m2", []byte(`{"message": 1}`)); err != nil {
		t.Errorf("Process after a timeout: %v", err)
	}
	e.assertTempEmpty(t)
}

// fifoPids makes a FIFO and returns a channel that receives hang.sh's pids
// once the helper writes them.
func fifoPids(t *testing.T) (string, <-chan [2]int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pids")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	ch := make(chan [2]int, 1)
	go func() {
		b, _ := os.ReadFile(path) // blocks until the helper has written
		var p [2]int
		fmt.Sscan(string(b), &p[0], &p[1])
		ch <- p
	}()
	return path, ch
}

func recvPids(t *testing.T, ch <-chan [2]int) [2]int {
	t.Helper()
	select {
	case p := <-ch:
		if p[0] == 0 || p[1] == 0 {
			t.Fatalf("bad pids %v", p)
		}
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("helper did not start within 10 s")
	}
	return [2]int{}
}

func TestProcessCancel(t *testing.T) {
	e := newTestEnv(t)
	e.install(t, "org.example.Hang", "hang.sh")
	r := e.runner(Config{Timeout: time.Hour})
	queued := make(chan string, 3)
	r.onQueued = func(_, msgID string) { queued <- msgID }
	fifo1, pids1 := fifoPids(t)
	fifo3, pids3 := fifoPids(t)

	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	ctx3, cancel3 := context.WithCancel(context.Background())
	defer cancel3()
	type res struct {
		out *Output
		err error
	}
	done1, done2, done3 := make(chan res, 1), make(chan res, 1), make(chan res, 1)
	go func() { o, err := r.Process(ctx1, "org.example.Hang", "m1", []byte(fifo1)); done1 <- res{o, err} }()
	<-queued
	go func() { o, err := r.Process(ctx2, "org.example.Hang", "m2", []byte("unused")); done2 <- res{o, err} }()
	<-queued
	go func() { o, err := r.Process(ctx3, "org.example.Hang", "m3", []byte(fifo3)); done3 <- res{o, err} }()
	<-queued

	// A waiting caller gives up without disturbing the others.
	cancel2()
	if got := <-done2; !errors.Is(got.err, context.Canceled) || got.out == nil {
		t.Errorf("waiting Process = %v, %v; want raw output and context.Canceled", got.out, got.err)
	}
	p1 := recvPids(t, pids1)
	cancel1()
	if got := <-done1; !errors.Is(got.err, context.Canceled) || got.out == nil {
		t.Errorf("running Process = %v, %v; want raw output and context.Canceled", got.out, got.err)
	}
	waitGone(t, p1[0])
	waitGone(t, p1[1])
	// The third caller gets its turn next.
	p3 := recvPids(t, pids3)
	cancel3()
	if got := <-done3; !errors.Is(got.err, context.Canceled) {
		t.Errorf("third Process error = %v, want context.Canceled", got.err)
	}
	waitGone(t, p3[0])
	waitGone(t, p3[1])
	if st := r.Stats()["org.example.Hang"]; st.Runs != 2 || st.Failures != 0 {
		t.Errorf("Stats = %+v, want 2 runs, no failures (cancelled runs are not failures)", st)
	}
	e.assertTempEmpty(t)
}

func TestProcessBigOutput(t *testing.T) {
	e := newTestEnv(t)
	e.install(t, "org.example.Big", "big.sh")
	r := e.runner(Config{})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, err := r.Process(context.Background(), "org.example.Big", "m", []byte(`"p"`))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrBadOutput) {
		t.Fatalf("Process error = %v, want ErrBadOutput", err)
	}
	if d := cmp.Diff(RawOutput([]byte(`"p"`)), got); d != "" {
		t.Errorf("Process output (-want +got):\n%s", d)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("processing a 100 MiB output allocated %d bytes", alloc)
	}
	e.assertTempEmpty(t)
}

func TestProcessConcurrencyAndOrder(t *testing.T) {
	const (
		limit = 3
		apps  = 5
		msgs  = 4
	)
	e := newTestEnv(t)
	for a := range apps {
		e.install(t, fmt.Sprintf("org.example.App%d", a), "record.sh")
	}
	r := e.runner(Config{Concurrency: limit})
	queued := make(chan string, 1)
	r.onQueued = func(_, msgID string) { queued <- msgID }
	logPath := filepath.Join(t.TempDir(), "log")
	var wg sync.WaitGroup
	errs := make(chan error, apps*msgs)
	for m := range msgs {
		for a := range apps {
			appID, msgID := fmt.Sprintf("org.example.App%d", a), fmt.Sprintf("%d-%d", a, m)
			wg.Go(func() {
				out, err := r.Process(context.Background(), appID, msgID, []byte(logPath))
				if err == nil && string(out.Message) != strconv.Quote(msgID) {
					err = fmt.Errorf("message %s got output %s", msgID, out.Message)
				}
				if err != nil {
					errs <- err
				}
			})
			if got := <-queued; got != msgID { // the next call starts once this one holds its place
				t.Fatalf("queued %s, want %s", got, msgID)
			}
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	fh, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	running := map[string]bool{} // app ids running
	next := map[string]int{}     // app id → next message index expected
	maxRunning, lines := 0, 0
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		lines++
		var ev, appID, msgID string
		if _, err := fmt.Sscan(sc.Text(), &ev, &appID, &msgID); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		switch ev {
		case "start":
			if running[appID] {
				t.Errorf("two helpers of %s at once (at %s)", appID, msgID)
			}
			running[appID] = true
			maxRunning = max(maxRunning, len(running))
			want := fmt.Sprintf("%s-%d", strings.TrimPrefix(appID, "org.example.App"), next[appID])
			if msgID != want {
				t.Errorf("%s started %s, want %s (per-app order)", appID, msgID, want)
			}
			next[appID]++
		case "end":
			delete(running, appID)
		}
	}
	if lines != 2*apps*msgs {
		t.Errorf("log has %d lines, want %d", lines, 2*apps*msgs)
	}
	if maxRunning > limit {
		t.Errorf("%d helpers ran at once, limit %d", maxRunning, limit)
	}
	for a := range apps {
		if st := r.Stats()[fmt.Sprintf("org.example.App%d", a)]; st.Runs != msgs || st.Failures != 0 {
			t.Errorf("app %d Stats = %+v, want %d runs", a, st, msgs)
		}
	}
	e.assertTempEmpty(t)
}
