package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// The tests in this file run real helper executables through the real
// heraldd (DESIGN §7, issue 5 "What it must show").

// newWorldWithConfig starts a world whose heraldd reads config (TOML) from a
// file given with --config, so it applies from the daemon's first start.
func newWorldWithConfig(t *testing.T, config string) *world {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return newWorld(t, worldOptions{daemonArgs: []string{"--config", path}})
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, path, script string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// shQuote quotes s for a POSIX shell.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// waitUntil polls cond until it holds or timeout passes. It is for state that
// only another process's files or /proc show; bus events are waited on
// directly.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		<-tick.C
	}
}

// fileLines returns the non-empty lines of path (nil when it does not exist).
func fileLines(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// procAlive reports whether pid is a live process (a zombie counts as gone).
func procAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return !errors.Is(err, syscall.ESRCH)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// readPid reads a pid file written by a helper.
func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("pid file %s holds %q", filepath.Base(path), b)
	}
	return pid
}

// popWant pops appID's queue and checks it holds exactly the JSON values want.
func (w *world) popWant(appID string, want ...string) {
	w.t.Helper()
	msgs, err := w.popAll(appID)
	if err != nil {
		w.t.Fatalf("PopAll(%s): %v", appID, err)
	}
	if len(msgs) != len(want) {
		w.t.Fatalf("PopAll(%s) = %q, want %d messages %q", appID, msgs, len(want), want)
	}
	for i := range want {
		if !jsonEqual(msgs[i], want[i]) {
			w.t.Fatalf("PopAll(%s)[%d] = %s, want %s", appID, i, msgs[i], want[i])
		}
	}
}

// mustPush sends body to token by Web Push and fails unless it is accepted.
func (w *world) mustPush(token, body string) {
	w.t.Helper()
	status, err := w.pushWeb(token, []byte(body), 300, nil)
	if err != nil || status != 201 {
		w.t.Fatalf("web push %s = %d %v", body, status, err)
	}
}

// writeDesktopEntry writes <XDG_DATA_HOME>/applications/<id>.desktop for heraldd.
func (w *world) writeDesktopEntry(id, content string) {
	w.t.Helper()
	dir := filepath.Join(w.daemon.Dir, "data", "applications")
	mkdir(w.t, dir)
	if err := os.WriteFile(filepath.Join(dir, id+".desktop"), []byte(content), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// TestHelperTransformsE2E: a helper's message reaches PopAll, its card reaches
// the notification server with the app's desktop entry, and the helper sees
// HERALD_APP_ID and HERALD_MESSAGE_ID.
func TestHelperTransformsE2E(t *testing.T) {
	w := newWorld(t, worldOptions{})
	notes := w.exportNotifications()
	const app = "com.example.helper_app"
	runs := filepath.Join(w.dir, "runs.txt")
	w.writeDesktopEntry(app, "[Desktop Entry]\nType=Application\nName=Helper App\nIcon=mail-message-new\nExec=true\n")
	w.installHelper(app, `#!/bin/sh
printf '%s %s\n' "$HERALD_APP_ID" "$HERALD_MESSAGE_ID" >> `+shQuote(runs)+`
in=$(cat "$1")
printf '{"message":{"wrapped":%s},"notification":{"card":{"summary":"Hello","body":"wrapped by the helper","popup":true}}}' "$in" > "$2"
`)
	token := w.registerLomiri(app)
	w.mustPush(token, `{"text":"hi"}`)
	w.waitPost(app, 30*time.Second)

	n := waitNotify(t, notes, 30*time.Second)
	if n.Summary != "Hello" || n.Body != "wrapped by the helper" || n.AppName != "Helper App" || n.ReplaceID != 0 {
		t.Errorf("Notify = app %q summary %q body %q replaces %d, want Helper App/Hello/wrapped by the helper/0",
			n.AppName, n.Summary, n.Body, n.ReplaceID)
	}
	if de, _ := n.Hints["desktop-entry"].Value().(string); de != app {
		t.Errorf("desktop-entry hint = %v, want %q", n.Hints["desktop-entry"], app)
	}
	w.popWant(app, `{"wrapped":{"text":"hi"}}`)

	lines := fileLines(runs)
	if len(lines) != 1 {
		t.Fatalf("helper ran %d times (%q), want 1", len(lines), lines)
	}
	f := strings.Fields(lines[0])
	if len(f) != 2 || !strings.HasPrefix(f[0], app) || f[1] == "" {
		t.Errorf("helper environment HERALD_APP_ID HERALD_MESSAGE_ID = %q, want %s… and a message id", lines[0], app)
	}
}

// TestHelperTimeoutKillsGroupE2E: a helper that hangs and forks a grandchild
// is killed with its whole process group after helper_timeout; the raw
// payload is queued and the daemon keeps working.
func TestHelperTimeoutKillsGroupE2E(t *testing.T) {
	w := newWorldWithConfig(t, "helper_timeout = \"1s\"\n")
	notes := w.exportNotifications()
	const app = "com.example.hang_app"
	dir := t.TempDir()
	helperPid, grandPid := filepath.Join(dir, "helper.pid"), filepath.Join(dir, "grandchild.pid")
	w.installHelper(app, `#!/bin/sh
case "$(cat "$1")" in
*hang*)
	echo $$ > `+shQuote(helperPid)+`
	sh -c 'echo $$ > `+strings.ReplaceAll(shQuote(grandPid), "'", `'\''`)+`; exec sleep 600' &
	wait
	;;
esac
printf '{"message":{"ok":%s},"notification":{"card":{"summary":"fine","popup":true}}}' "$(cat "$1")" > "$2"
`)
	t.Cleanup(func() { // never leave a helper behind if the daemon did
		for _, p := range []string{helperPid, grandPid} {
			if b, err := os.ReadFile(p); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 && procAlive(pid) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	token := w.registerLomiri(app)
	w.mustPush(token, `{"n":"hang"}`)
	w.waitPost(app, 60*time.Second)
	w.popWant(app, `{"n":"hang"}`) // the raw payload

	hp, gp := readPid(t, helperPid), readPid(t, grandPid)
	waitUntil(t, 10*time.Second, "the hanging helper and its grandchild are killed", func() bool {
		return !procAlive(hp) && !procAlive(gp)
	})
	select {
	case <-notes.shown:
		t.Fatal("a notification was shown for a helper that timed out")
	default:
	}

	// The daemon is fine: the next message goes through the helper.
	select {
	case <-w.daemon.Done():
		t.Fatalf("heraldd exited:\n%s", w.daemon.Tail(3000))
	default:
	}
	w.mustPush(token, `{"n":"after"}`)
	w.waitPost(app, 30*time.Second)
	w.popWant(app, `{"ok":{"n":"after"}}`)
	if n := waitNotify(t, notes, 30*time.Second); n.Summary != "fine" {
		t.Errorf("Notify summary = %q, want fine", n.Summary)
	}
}

// recordingHelper logs "<message id> <payload>" to runs for each run, blocks
// on fifo when the payload contains "block", and wraps the payload.
func recordingHelper(runs, fifo string) string {
	return `#!/bin/sh
in=$(cat "$1")
printf '%s %s\n' "$HERALD_MESSAGE_ID" "$in" >> ` + shQuote(runs) + `
case "$in" in
*block*) read x < ` + shQuote(fifo) + ` ;;
esac
printf '{"message":{"got":%s}}' "$in" > "$2"
`
}

// runCounts counts the helper runs per message id in a recordingHelper log,
// and returns the ids in first-run order.
func runCounts(t *testing.T, runs string) (map[string]int, []string) {
	t.Helper()
	counts := map[string]int{}
	var order []string
	for _, l := range fileLines(runs) {
		id, _, _ := strings.Cut(l, " ")
		if counts[id] == 0 {
			order = append(order, id)
		}
		counts[id]++
	}
	return counts, order
}

// TestHelperNotRerunAfterCrashE2E: a message whose helper finished before
// heraldd was SIGKILLed is not processed again after the restart.
func TestHelperNotRerunAfterCrashE2E(t *testing.T) {
	w := newWorld(t, worldOptions{})
	const app = "com.example.crash_app"
	runs := filepath.Join(w.dir, "runs.txt")
	w.installHelper(app, recordingHelper(runs, filepath.Join(w.dir, "unused.fifo")))
	token := w.registerLomiri(app)

	w.mustPush(token, `{"n":1}`)
	w.waitPost(app, 30*time.Second) // queued: visible to PopAll
	w.daemon.Kill()
	w.restartDaemon()

	// A second message goes after the first in the app's order, so once it
	// is queued a rerun of the first would have happened already.
	w.mustPush(token, `{"n":2}`)
	w.waitPost(app, 30*time.Second)
	w.popWant(app, `{"got":{"n":1}}`, `{"got":{"n":2}}`)

	counts, order := runCounts(t, runs)
	if len(order) != 2 {
		t.Fatalf("helper ran for %d message ids (%v), want 2", len(order), counts)
	}
	for _, id := range order {
		if counts[id] != 1 {
			t.Errorf("helper ran %d times for message %s, want 1 (runs: %q)", counts[id], id, fileLines(runs))
		}
	}
}

// TestHelperRerunAfterCrashDuringRunE2E: a message whose helper was running
// when heraldd was SIGKILLed is processed again after the restart and reaches
// PopAll exactly once.
func TestHelperRerunAfterCrashDuringRunE2E(t *testing.T) {
	// A long timeout: the blocked helper must not time out while the test
	// restarts the daemon.
	w := newWorldWithConfig(t, "helper_timeout = \"120s\"\n")
	const app = "com.example.blocked_app"
	runs := filepath.Join(w.dir, "runs.txt")
	fifo := filepath.Join(w.dir, "release.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		// Opening for write wakes every reader blocked on the fifo (also a
		// helper left over from the killed daemon).
		done := make(chan error, 1)
		go func() {
			f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err == nil {
				_, err = f.WriteString("go\n")
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("release helper: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no helper reads the release fifo")
		}
		released = true
	}
	t.Cleanup(func() {
		if !released { // unblock helpers so that none outlives the test
			if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
		}
	})
	w.installHelper(app, recordingHelper(runs, fifo))
	token := w.registerLomiri(app)

	w.mustPush(token, `{"n":"block"}`)
	waitUntil(t, 30*time.Second, "the helper starts", func() bool { return len(fileLines(runs)) == 1 })
	w.daemon.Kill()
	w.restartDaemon()
	waitUntil(t, 30*time.Second, "the helper runs again after the restart", func() bool { return len(fileLines(runs)) >= 2 })
	release()
	w.waitPost(app, 30*time.Second)
	w.popWant(app, `{"got":{"n":"block"}}`)

	// Nothing more for that message: the next one is queued alone.
	w.mustPush(token, `{"n":"next"}`)
	w.waitPost(app, 30*time.Second)
	w.popWant(app, `{"got":{"n":"next"}}`)

	counts, order := runCounts(t, runs)
	if len(order) != 2 || counts[order[0]] != 2 || counts[order[1]] != 1 {
		t.Fatalf("helper runs per message = %v in order %v, want 2 for the interrupted one and 1 for the next (runs: %q)",
			counts, order, fileLines(runs))
	}
}

// TestLomiriHelpersDataE2E: with the default data home (~/.local/share), a
// Lomiri helpers_data.json is found, keyed by pkg_app and by pkg.
func TestLomiriHelpersDataE2E(t *testing.T) {
	w := newWorld(t, worldOptions{})
	if err := w.daemon.Stop(30 * time.Second); err != nil {
		t.Fatalf("stop heraldd: %v", err)
	}
	// The default XDG_DATA_HOME: HOME/.local/share.
	w.daemon.Env = slices.DeleteFunc(w.daemon.Env, func(kv string) bool { return strings.HasPrefix(kv, "XDG_DATA_HOME=") })
	share := filepath.Join(w.daemon.Dir, ".local", "share", "lomiri-push-service")
	mkdir(t, share)
	byApp, byPkg := filepath.Join(w.dir, "by-app.sh"), filepath.Join(w.dir, "by-pkg.sh")
	writeScript(t, byApp, "#!/bin/sh\nprintf '{\"message\":{\"by\":\"pkg_app\",\"in\":%s}}' \"$(cat \"$1\")\" > \"$2\"\n")
	writeScript(t, byPkg, "#!/bin/sh\nprintf '{\"message\":{\"by\":\"pkg\",\"in\":%s}}' \"$(cat \"$1\")\" > \"$2\"\n")
	data, _ := json.Marshal(map[string]map[string]string{
		"com.example.lomiri_app": {"exec": byApp, "helper_id": "com.example.lomiri_app-helper"},
		"com.example.lpkg":       {"exec": byPkg, "helper_id": "com.example.lpkg_helper"},
	})
	if err := os.WriteFile(filepath.Join(share, "helpers_data.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	w.restartDaemon()

	for _, tc := range []struct{ app, by string }{
		{"com.example.lomiri_app", "pkg_app"},
		{"com.example.lpkg_other", "pkg"},
	} {
		token := w.registerLomiri(tc.app)
		w.mustPush(token, `{"n":1}`)
		w.waitPost(tc.app, 30*time.Second)
		w.popWant(tc.app, `{"by":"`+tc.by+`","in":{"n":1}}`)
	}
}

// exportNotificationsConn is exportNotifications that also returns the
// server's bus connection, to send signals as the real owner.
func (w *world) exportNotificationsConn() (*fakeNotifications, *dbus.Conn) {
	w.t.Helper()
	c, err := dbus.Connect(w.bus.Address)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	f := &fakeNotifications{shown: make(chan notifyCall, 1000)}
	if err := c.Export(f, "/org/freedesktop/Notifications", "org.freedesktop.Notifications"); err != nil {
		w.t.Fatal(err)
	}
	reply, err := c.RequestName("org.freedesktop.Notifications", dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		w.t.Fatalf("cannot own org.freedesktop.Notifications: %v %v", reply, err)
	}
	return f, c
}
