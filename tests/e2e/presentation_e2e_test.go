package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/internal/harness"
)

// The tests in this file check presentation through the real heraldd (DESIGN
// §8, issue 6 "What it must show"): the real dunst under Xvfb, forged
// notification signals, persistent cards across restarts.

// requireTools fails under CI and skips elsewhere when a program is missing.
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required in CI (make test installs it): %v", n, err)
			}
			t.Skipf("%s not installed (make test installs it)", n)
		}
	}
}

// e2eDunstrc keeps every notification until it is closed.
const e2eDunstrc = `[global]
    font = Monospace 8
    notification_limit = 0
    history_length = 20
    idle_threshold = 0
    show_indicators = no
    sticky_history = yes
    dmenu = /bin/false
    browser = /bin/false
[urgency_low]
    timeout = 0
[urgency_normal]
    timeout = 0
[urgency_critical]
    timeout = 0
`

// startXvfbDisplay starts Xvfb on a free display and returns ":N".
func startXvfbDisplay(t *testing.T) string {
	t.Helper()
	display, p, err := harness.StartXvfb(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return display
}

// startDunstOn runs the real dunst on the world's bus and waits until it owns
// org.freedesktop.Notifications.
func (w *world) startDunstOn(display string) {
	t := w.t
	t.Helper()
	conf := filepath.Join(t.TempDir(), "dunstrc")
	if err := os.WriteFile(conf, []byte(e2eDunstrc), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := harness.StartDunst(w.dir, w.bus.Address, display, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	w.waitName("org.freedesktop.Notifications", 30*time.Second)
}

// dunstctl runs dunstctl against the world's bus.
func (w *world) dunstctl(args ...string) []byte {
	w.t.Helper()
	cmd := exec.Command("dunstctl", args...)
	cmd.Env = append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS="+w.bus.Address)
	out, err := cmd.CombinedOutput()
	if err != nil {
		w.t.Fatalf("dunstctl %v: %v\n%s", args, err, out)
	}
	return out
}

// recorderApp installs a desktop entry for appID whose Exec is a script
// appending its arguments, one per line, to the returned file.
func (w *world) recorderApp(appID, extra string) string {
	w.t.Helper()
	out := filepath.Join(w.dir, appID+".argv")
	script := filepath.Join(w.dir, appID+".recorder.sh")
	writeScript(w.t, script, "#!/bin/sh\nprintf '%s\\n' \"$@\" >> "+shQuote(out)+"\n")
	w.writeDesktopEntry(appID, "[Desktop Entry]\nType=Application\nName=E2E "+appID+"\nIcon=mail-message-new\n"+
		"Exec=\""+script+"\" %u\n"+extra)
	return out
}

// cardOfNumber is a helper whose payload is a number n: it queues {"n":n} and
// shows a card tagged "chat" whose action opens the app at ?n=<n>.
const cardOfNumber = `#!/bin/sh
n=$(cat "$1")
printf '{"message":{"n":%s},"notification":{"tag":"chat","card":{"summary":"Chat %s","body":"message %s","popup":true,"persist":true,"actions":["appid://com.example.dunst/app/current-user-version?n=%s"]}}}' "$n" "$n" "$n" "$n" > "$2"
`

// TestDunstE2E shows cards from a helper on the real dunst: the second card
// with the same tag replaces the first, dunstctl action opens the app's
// desktop entry with the action URL, and dunst's history holds the card.
func TestDunstE2E(t *testing.T) {
	requireTools(t, "dunst", "dunstctl", "Xvfb")
	w := newWorld(t, worldOptions{})
	w.startDunstOn(startXvfbDisplay(t))

	const app = "com.example.dunst_app"
	argv := w.recorderApp(app, "")
	w.installHelper(app, cardOfNumber)
	token := w.registerLomiri(app)

	for _, n := range []string{"1", "2"} {
		w.mustPush(token, n)
		w.waitPost(app, 30*time.Second)
		w.popWant(app, `{"n":`+n+`}`)
	}
	if got := strings.TrimSpace(string(w.dunstctl("count", "displayed"))); got != "1" {
		t.Fatalf("dunst displays %s notifications, want 1 (the second replaced the first)", got)
	}

	w.dunstctl("action", "0")
	waitUntil(t, 30*time.Second, "dunstctl action launches the app", func() bool { return len(fileLines(argv)) > 0 })
	if got, want := fileLines(argv), []string{"appid://com.example.dunst/app/current-user-version?n=2"}; !slicesEqual(got, want) {
		t.Fatalf("app launched with %q, want %q", got, want)
	}

	w.dunstctl("close-all")
	var hist struct {
		Data [][]map[string]struct {
			Data any `json:"data"`
		} `json:"data"`
	}
	raw := w.dunstctl("history")
	if err := json.Unmarshal(raw, &hist); err != nil || len(hist.Data) != 1 {
		t.Fatalf("cannot read dunst history: %v\n%s", err, raw)
	}
	var got []string
	for _, n := range hist.Data[0] {
		got = append(got, fmt.Sprintf("%v|%v|%v", n["appname"].Data, n["summary"].Data, n["body"].Data))
	}
	if want := []string{"E2E " + app + "|Chat 2|message 2"}; !slicesEqual(got, want) {
		t.Fatalf("dunst history = %q, want %q", got, want)
	}
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestForgedActionInvokedE2E: ActionInvoked signals with a wrong body, or
// from a bus client that does not own org.freedesktop.Notifications, are
// ignored: the daemon stays alive and launches nothing; the owner's valid
// signal afterwards does launch.
func TestForgedActionInvokedE2E(t *testing.T) {
	w := newWorld(t, worldOptions{})
	notes, owner := w.exportNotificationsConn()
	const app = "com.example.forge_app"
	argv := w.recorderApp(app, "")
	w.installHelper(app, `#!/bin/sh
n=$(cat "$1")
printf '{"message":{"n":%s},"notification":{"tag":"t%s","card":{"summary":"s%s","popup":true,"actions":["appid://com.example.forge/app/current-user-version?n=%s"]}}}' "$n" "$n" "$n" "$n" > "$2"
`)
	token := w.registerLomiri(app)
	ids := map[string]uint32{}
	for _, n := range []string{"1", "2"} {
		w.mustPush(token, n)
		w.waitPost(app, 30*time.Second)
		w.popWant(app, `{"n":`+n+`}`)
		c := waitNotify(t, notes, 30*time.Second)
		if c.Summary != "s"+n || len(c.Actions) < 2 || c.Actions[0] != "default" {
			t.Fatalf("Notify for %s: summary %q actions %q, want s%s with a default action", n, c.Summary, c.Actions, n)
		}
		ids[n] = c.ID
	}

	forger, err := dbus.Connect(w.bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	const path, sig = dbus.ObjectPath("/org/freedesktop/Notifications"), "org.freedesktop.Notifications.ActionInvoked"
	for i, emit := range []struct {
		conn *dbus.Conn
		body []any
	}{
		{forger, []any{ids["1"], "default"}},         // valid body, not the owner
		{forger, []any{"default", ids["1"]}},         // wrong types, not the owner
		{owner, []any{"default", ids["1"]}},          // wrong types from the owner
		{owner, []any{ids["1"]}},                     // too short
		{owner, []any{int32(ids["1"]), "default"}},   // signed id
		{owner, []any{ids["1"], "default", "extra"}}, // too long
		{owner, []any{dbus.MakeVariant(ids["1"]), "default"}},
		{owner, []any{}},
	} {
		if err := emit.conn.Emit(path, sig, emit.body...); err != nil {
			t.Fatalf("emit %d: %v", i, err)
		}
	}
	// A round trip through the bus on each connection: every forged signal
	// is routed before the real one below.
	for _, c := range []*dbus.Conn{forger, owner} {
		if err := c.BusObject().Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err != nil {
			t.Fatal(err)
		}
	}
	if err := owner.Emit(path, sig, ids["2"], "default"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "the owner's ActionInvoked launches the app", func() bool { return len(fileLines(argv)) > 0 })

	// The daemon handles signals in order: the forged ones came first, so
	// they would have been logged and launched before the real one.
	select {
	case <-w.daemon.Done():
		t.Fatalf("heraldd exited:\n%s", w.daemon.Tail(3000))
	default:
	}
	var has bool
	if err := w.conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, "org.herald.Daemon").Store(&has); err != nil || !has {
		t.Fatalf("org.herald.Daemon has no owner after forged signals: %v", err)
	}
	w.popWant(app) // the daemon still answers
	log := w.daemon.Tail(1 << 24)
	if n := strings.Count(log, `msg="ActionInvoked ignored"`); n != 8 {
		t.Errorf("daemon logged %d ignored ActionInvoked signals, want the 8 forged ones", n)
	}
	actions := regexp.MustCompile(`msg="notification action".* id=(\d+)`).FindAllStringSubmatch(log, -1)
	if len(actions) != 1 || actions[0][1] != fmt.Sprint(ids["2"]) {
		t.Errorf("daemon acted on notifications %v, want only %d", actions, ids["2"])
	}
	if got, want := fileLines(argv), []string{"appid://com.example.forge/app/current-user-version?n=2"}; !slicesEqual(got, want) {
		t.Errorf("app launched with %q, want only %q", got, want)
	}
}

// postal calls a com.lomiri.Postal method for appID.
func (w *world) postal(method, appID string, args ...any) *dbus.Call {
	path := "/com/lomiri/Postal/" + app.Quote(pkgOf(appID))
	return w.call("com.lomiri.Postal", path, "com.lomiri.Postal."+method, append([]any{appID}, args...)...)
}

func (w *world) listPersistent(appID string) []string {
	w.t.Helper()
	var tags []string
	if err := w.postal("ListPersistent", appID).Store(&tags); err != nil {
		w.t.Fatalf("ListPersistent(%s): %v", appID, err)
	}
	return tags
}

// gatedNotifications is a fake notification server whose Notify replies
// wait for the gate while hold is set.
type gatedNotifications struct {
	*fakeNotifications
	hold atomic.Bool
	gate chan struct{}
}

func (g *gatedNotifications) Notify(appName string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	id, err := g.fakeNotifications.Notify(appName, replaces, icon, summary, body, actions, hints, timeout)
	if g.hold.Load() {
		<-g.gate
	}
	return id, err
}

func (w *world) exportGatedNotifications() *gatedNotifications {
	w.t.Helper()
	c, err := dbus.Connect(w.bus.Address)
	if err != nil {
		w.t.Fatal(err)
	}
	g := &gatedNotifications{fakeNotifications: &fakeNotifications{shown: make(chan notifyCall, 1000)}, gate: make(chan struct{})}
	w.t.Cleanup(func() {
		if g.hold.Load() {
			select {
			case <-g.gate:
			default:
				close(g.gate)
			}
		}
		c.Close()
	})
	if err := c.Export(g, "/org/freedesktop/Notifications", "org.freedesktop.Notifications"); err != nil {
		w.t.Fatal(err)
	}
	reply, err := c.RequestName("org.freedesktop.Notifications", dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		w.t.Fatalf("cannot own org.freedesktop.Notifications: %v %v", reply, err)
	}
	return g
}

// reshows counts how often heraldd logged that it showed persistent cards again.
func (w *world) reshows() int {
	return strings.Count(w.daemon.Tail(1<<24), `msg="persistent notifications shown again"`)
}

// TestPersistentAcrossRestartE2E: a persistent card's tag is listed after a
// clean restart and after a crash, the card is shown again, and
// ClearPersistent removes it, also while the card is being shown again.
func TestPersistentAcrossRestartE2E(t *testing.T) {
	w := newWorld(t, worldOptions{})
	notes := w.exportGatedNotifications()
	const app = "com.example.keep_app"
	w.installHelper(app, `#!/bin/sh
printf '{"message":%s,"notification":{"tag":"keep","card":{"summary":"Kept","body":"stays","popup":true,"persist":true}}}' "$(cat "$1")" > "$2"
`)
	token := w.registerLomiri(app)
	w.mustPush(token, `{"n":1}`)
	w.waitPost(app, 30*time.Second)
	first := waitNotify(t, notes.fakeNotifications, 30*time.Second)
	if first.Summary != "Kept" {
		t.Fatalf("Notify summary %q, want Kept", first.Summary)
	}
	if r, ok := first.Hints["resident"].Value().(bool); !ok || !r {
		t.Errorf("persistent card hints %v, want resident=true", first.Hints)
	}
	if tags := w.listPersistent(app); !slicesEqual(tags, []string{"keep"}) {
		t.Fatalf("ListPersistent = %q, want [keep]", tags)
	}

	for i, how := range []string{"SIGTERM", "SIGKILL"} {
		if how == "SIGTERM" {
			if err := w.daemon.Stop(30 * time.Second); err != nil {
				t.Fatalf("stop heraldd: %v", err)
			}
		} else {
			w.daemon.Kill()
		}
		w.restartDaemon()
		if tags := w.listPersistent(app); !slicesEqual(tags, []string{"keep"}) {
			t.Fatalf("after %s and restart: ListPersistent = %q, want [keep]", how, tags)
		}
		again := waitNotify(t, notes.fakeNotifications, 30*time.Second)
		if again.Summary != "Kept" || again.Body != "stays" || again.ReplaceID != 0 {
			t.Errorf("after %s: re-shown card %q/%q replaces %d, want Kept/stays as a new notification", how, again.Summary, again.Body, again.ReplaceID)
		}
		waitUntil(t, 30*time.Second, "heraldd finishes showing the card again", func() bool { return w.reshows() >= i+1 })
	}

	// ClearPersistent while the card is being shown again after a restart:
	// the notification server holds its Notify reply.
	notes.hold.Store(true)
	w.daemon.Kill()
	w.restartDaemon()
	waitNotify(t, notes.fakeNotifications, 30*time.Second)
	type result struct {
		n   uint32
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = w.postal("ClearPersistent", app, "keep").Store(&r.n)
		done <- r
	}()
	var res result
	returned := false
	select {
	case res = <-done: // not serialised with the re-show
		returned = true
	case <-time.After(3 * time.Second): // bounded: waiting for the re-show is as correct
	}
	notes.hold.Store(false)
	close(notes.gate)
	if !returned {
		res = <-done
	}
	if res.err != nil || res.n != 1 {
		t.Fatalf("ClearPersistent(keep) = %d %v, want 1", res.n, res.err)
	}
	waitUntil(t, 30*time.Second, "heraldd finishes showing the card again", func() bool { return w.reshows() >= 3 })
	if tags := w.listPersistent(app); len(tags) != 0 {
		t.Fatalf("ListPersistent after ClearPersistent returned 1 = %q, want none (ClearPersistent raced with the re-show at start)", tags)
	}
	var n uint32
	if err := w.postal("ClearPersistent", app, "keep").Store(&n); err != nil || n != 0 {
		t.Fatalf("second ClearPersistent(keep) = %d %v, want 0", n, err)
	}
}
