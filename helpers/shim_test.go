package helpers

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary is its own helper shim, as heraldd is.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ShimArg {
		os.Exit(RunShim(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestHelperSetsidChildKilled: a helper that starts a process with setsid
// (out of its process group and session) and exits: under the shim that
// process is killed before Process returns (issue 11); with the process
// group kill alone it survived.
func TestHelperSetsidChildKilled(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, shim := range []bool{true, false} {
		t.Run(map[bool]string{true: "shim", false: "process-group-only"}[shim], func(t *testing.T) {
			e := newTestEnv(t)
			e.install(t, "com.example.escape_app", "escape.sh")
			cfg := Config{}
			if shim {
				cfg.Shim = []string{exe, ShimArg}
			}
			r := e.runner(cfg)
			pidfile := filepath.Join(t.TempDir(), "pid")
			out, err := r.Process(context.Background(), "com.example.escape_app", "m1", []byte(pidfile))
			if err != nil || string(out.Message) != `"left a child"` {
				t.Fatalf("Process = %s, %v", out.Message, err)
			}
			b, err := os.ReadFile(pidfile)
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			alive := unix.Kill(pid, 0) == nil
			if alive {
				// A zombie is dead: look at its state.
				if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && strings.Contains(string(st), ") Z ") {
					alive = false
				}
			}
			t.Logf("setsid child %d of the helper after Process returned: alive %v", pid, alive)
			if shim && alive {
				unix.Kill(pid, unix.SIGKILL)
				t.Fatalf("setsid child %d survived the helper", pid)
			}
			if !shim {
				if !alive {
					t.Fatalf("without the shim the setsid child should survive (the attack reproduces); it did not")
				}
				unix.Kill(pid, unix.SIGKILL)
			}
		})
	}
}

// TestHelperEnvironmentFiltered: a helper does not see what systemd and the
// bus daemon meant for heraldd alone (issue 11).
func TestHelperEnvironmentFiltered(t *testing.T) {
	e := newTestEnv(t)
	e.install(t, "com.example.env_app", "env.sh")
	r := e.runner(Config{Env: []string{"PATH=" + os.Getenv("PATH"), "NOTIFY_SOCKET=/run/user/1/systemd/notify", "WATCHDOG_USEC=30000000",
		"WATCHDOG_PID=1", "DBUS_STARTER_ADDRESS=unix:path=/x", "DBUS_STARTER_BUS_TYPE=session", "LISTEN_FDS=3", "LISTEN_PID=1",
		"KEEP_ME=1"}})
	out, err := r.Process(context.Background(), "com.example.env_app", "m1", []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	got := string(out.Message)
	t.Logf("helper environment: %s", got)
	if !strings.Contains(got, "KEEP_ME=1") || !strings.Contains(got, "HERALD_APP_ID=com.example.env_app") {
		t.Fatalf("helper environment %s lacks KEEP_ME or HERALD_APP_ID", got)
	}
	for _, v := range []string{"NOTIFY_SOCKET", "WATCHDOG_", "DBUS_STARTER_", "LISTEN_"} {
		if strings.Contains(got, v) {
			t.Errorf("helper saw %s: %s", v, got)
		}
	}
}

// TestHelperTimeoutKillsSetsidChild: a helper that starts a setsid process
// and then hangs is stopped at its timeout, and the setsid process with it.
func TestHelperTimeoutKillsSetsidChild(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t)
	e.install(t, "com.example.hang_app", "escape_hang.sh")
	r := e.runner(Config{Shim: []string{exe, ShimArg}, Timeout: 500 * time.Millisecond})
	pidfile := filepath.Join(t.TempDir(), "pid")
	_, err = r.Process(context.Background(), "com.example.hang_app", "m1", []byte(pidfile))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Process error = %v, want ErrTimeout", err)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 {
		t.Fatalf("pid file %q", b)
	}
	alive := unix.Kill(pid, 0) == nil
	if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); alive && err == nil && strings.Contains(string(st), ") Z ") {
		alive = false
	}
	t.Logf("after the timeout: setsid child %d alive %v", pid, alive)
	if alive {
		unix.Kill(pid, unix.SIGKILL)
		t.Fatalf("setsid child %d survived the timed-out helper", pid)
	}
}
