package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/internal/harness"
)

// The tests in this file run the real heraldd on the real Debian Lomiri
// components (issue 15), each on the test's private buses:
//   - lomiri-schemas with the real dconf-service (D-Bus activated on the
//     private session bus), keys set with the real gsettings;
//   - the real ayatana-indicator-messages-service;
//   - the real lomiri-url-dispatcher, its URL database filled by its own
//     lomiri-update-directory;
//   - the real hfd-service on a private "system" bus (dummy vibrator);
//   - lomiri-sounds' Xylo.ogg as the user's message tone.
// Fakes, because Debian ships no part that runs without the Lomiri shell or
// as root on a private system bus: the Lomiri shell's greeter
// (com.lomiri.LomiriGreeter) and launcher (com.lomiri.Shell.Launcher), and
// AccountsService's Lomiri sound interface (org.freedesktop.Accounts with
// com.lomiri.touch.AccountsService.Sound); and, as in every e2e test, the
// notification server (the Lomiri shell's, here recorded by a fake).

const (
	schemaDir       = "/usr/share/glib-2.0/schemas"
	dconfService    = "/usr/libexec/dconf-service"
	indicatorBin    = "/usr/libexec/ayatana-indicator-messages/ayatana-indicator-messages-service"
	hfdBin          = "/usr/libexec/hfd-service"
	xylo            = "/usr/share/sounds/lomiri/notifications/Xylo.ogg"
	platformApp     = "com.example.lomiri_app"
	platformVersion = "1.0"
)

// requireFiles fails under CI and skips elsewhere when a data file is missing.
func requireFiles(t *testing.T, files ...string) {
	t.Helper()
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required in CI (make test installs it): %v", f, err)
			}
			t.Skipf("%s not installed (make test installs it)", f)
		}
	}
}

func dispatcherBin(t *testing.T) string {
	m, _ := filepath.Glob("/usr/lib/*/lomiri-url-dispatcher/lomiri-url-dispatcher")
	if len(m) == 0 {
		requireTools(t, "lomiri-url-dispatcher")
		return ""
	}
	return m[0]
}

// platformWorld is a world with the Lomiri components around heraldd.
type platformWorld struct {
	*world
	sys       *harness.Bus
	notes     *fakeNotifications
	notesConn *dbus.Conn
	accounts  *fakeAccounts
	shell     *fakeShell
	hfdLog    string
	toolEnv   []string // environment of gsettings, the indicator and the dispatcher
}

func newPlatformWorld(t *testing.T, opts ...func(*worldOptions)) *platformWorld {
	t.Helper()
	requireTools(t, "gsettings", "dconf", dconfService, indicatorBin, hfdBin)
	requireFiles(t, xylo, filepath.Join(schemaDir, "com.lomiri.notifications.settings.gschema.xml"))
	ud := dispatcherBin(t)
	sys, err := harness.StartBus(filepath.Join(t.TempDir(), "system"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	lw := &platformWorld{sys: sys}

	// AccountsService (fake, see the top of the file) on the system bus.
	lw.accounts = exportAccounts(t, sys.Address)
	// The real hfd-service on the system bus with its dummy vibrator.
	lw.hfdLog = filepath.Join(t.TempDir(), "hfd.log")
	startProc(t, lw.hfdLog, []string{"DBUS_SYSTEM_BUS_ADDRESS=" + sys.Address, "HFD_VIBRATOR_IMPL=dummy", "HFD_LEDS_IMPL=dummy"}, hfdBin)
	waitOwner(t, sys.Address, "com.lomiri.hfd")

	wo := worldOptions{
		daemonArgs: []string{"--log-level", "debug"},
		daemonEnv: []string{"DBUS_SYSTEM_BUS_ADDRESS=" + sys.Address, "GSETTINGS_SCHEMA_DIR=" + schemaDir,
			"GSETTINGS_BACKEND=dconf"},
	}
	for _, o := range opts {
		o(&wo)
	}
	lw.world = newWorld(t, wo)
	w := lw.world
	home := w.daemon.Dir
	lw.toolEnv = append(harness.CleanEnv(), "DBUS_SESSION_BUS_ADDRESS="+w.bus.Address, "HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"), "XDG_RUNTIME_DIR="+filepath.Join(home, "runtime"),
		"XDG_DATA_HOME="+filepath.Join(home, "data"), "XDG_CACHE_HOME="+filepath.Join(home, "cache"),
		"XDG_DATA_DIRS="+filepath.Join(home, "share"), "GSETTINGS_SCHEMA_DIR="+schemaDir, "GSETTINGS_BACKEND=dconf")

	// dconf-service is D-Bus activated on the private bus with the daemon's
	// home, as on a session.
	svc, err := os.ReadFile("/usr/share/dbus-1/services/ca.desrt.dconf.service")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.bus.ServiceDir, "ca.desrt.dconf.service"), svc, 0o644); err != nil {
		t.Fatal(err)
	}
	actEnv := map[string]string{}
	for _, kv := range lw.toolEnv {
		if k, v, ok := strings.Cut(kv, "="); ok && (strings.HasPrefix(k, "XDG_") || k == "HOME") {
			actEnv[k] = v
		}
	}
	if c := w.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.UpdateActivationEnvironment", actEnv); c.Err != nil {
		t.Fatal(c.Err)
	}

	lw.notes, lw.notesConn = w.exportNotificationsConn()
	lw.shell = exportShell(t, w.bus.Address)

	// The app: a click app with a desktop file (the indicator resolves it),
	// a URL dispatcher entry for its dekko: scheme, and another app's.
	w.writeDesktopEntry(platformApp+"_"+platformVersion, "[Desktop Entry]\nType=Application\nName=Lomiri E2E\nIcon=mail-message-new\nExec=/bin/true %u\n")
	urls := filepath.Join(home, "data", "lomiri-url-dispatcher", "urls")
	mkdir(t, urls)
	for name, content := range map[string]string{
		platformApp + "_" + platformVersion + ".url-dispatcher": `[{"protocol": "dekko"}]`,
		"com.example.other_app_2.0.url-dispatcher":              `[{"protocol": "other"}]`,
	} {
		if err := os.WriteFile(filepath.Join(urls, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lw.run(filepath.Join(filepath.Dir(ud), "lomiri-update-directory"), urls)
	startProc(t, filepath.Join(w.dir, "url-dispatcher.log"), lw.toolEnv, ud)
	w.waitName("com.lomiri.URLDispatcher", 30*time.Second)
	return lw
}

// run runs a Lomiri tool with the tools' environment.
func (lw *platformWorld) run(prog string, args ...string) string {
	lw.t.Helper()
	cmd := exec.Command(prog, args...)
	cmd.Env = lw.toolEnv
	out, err := cmd.CombinedOutput()
	if err != nil {
		lw.t.Fatalf("%s %q: %v\n%s", prog, args, err, out)
	}
	return string(out)
}

// gsettingsSet sets a key of the app's Lomiri notification settings with the
// real gsettings and waits until heraldd has seen dconf's change signal.
func (lw *platformWorld) gsettingsSet(key, value string) {
	lw.t.Helper()
	before := strings.Count(lw.daemon.Tail(1<<20), `"settings changed"`)
	lw.run("gsettings", "set", "com.lomiri.notifications.settings:/com/lomiri/NotificationSettings/com.example.lomiri/app/", key, value)
	waitUntil(lw.t, 30*time.Second, "heraldd sees the dconf change", func() bool {
		return strings.Count(lw.daemon.Tail(1<<20), `"settings changed"`) > before
	})
}

// startProc starts a program in its own process group, killed when the
// test ends, with its output in logPath.
func startProc(t *testing.T, logPath string, env []string, prog string, args ...string) *exec.Cmd {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prog, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", filepath.Base(prog), tail(b, 3000))
		}
	})
	return cmd
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// waitOwner waits until name has an owner on the bus at addr.
func waitOwner(t *testing.T, addr, name string) {
	t.Helper()
	c, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, name)); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 8)
	c.Signal(ch)
	var has bool
	if err := c.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(30 * time.Second)
	for !has {
		select {
		case s := <-ch:
			if len(s.Body) == 3 {
				owner, _ := s.Body[2].(string)
				has = owner != ""
			}
		case <-deadline:
			t.Fatalf("%s has no owner", name)
		}
	}
}

// fakeAccounts is AccountsService's Lomiri sound interface (a fake: the
// real accountsservice runs as root on the real system bus).
type fakeAccounts struct {
	mu    sync.Mutex // guards props
	props map[string]dbus.Variant
}

func (a *fakeAccounts) GetAll(iface string) (map[string]dbus.Variant, *dbus.Error) {
	if iface != "com.lomiri.touch.AccountsService.Sound" {
		return nil, dbus.NewError("org.freedesktop.DBus.Error.UnknownInterface", []any{iface})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]dbus.Variant{}
	for k, v := range a.props {
		out[k] = v
	}
	return out, nil
}

func (a *fakeAccounts) set(k string, v any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.props[k] = dbus.MakeVariant(v)
}

func exportAccounts(t *testing.T, addr string) *fakeAccounts {
	t.Helper()
	c, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &fakeAccounts{props: map[string]dbus.Variant{
		"SilentMode":                       dbus.MakeVariant(false),
		"IncomingMessageSound":             dbus.MakeVariant(xylo),
		"IncomingMessageVibrate":           dbus.MakeVariant(true),
		"IncomingMessageVibrateSilentMode": dbus.MakeVariant(true),
	}}
	path := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/Accounts/User%d", os.Getuid()))
	if err := c.Export(a, path, "org.freedesktop.DBus.Properties"); err != nil {
		t.Fatal(err)
	}
	if r, err := c.RequestName("org.freedesktop.Accounts", dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("cannot own org.freedesktop.Accounts: %v %v", r, err)
	}
	return a
}

// fakeShell is the Lomiri shell's greeter and launcher (a fake: the real
// shell needs a display server and a whole session).
type fakeShell struct {
	mu     sync.Mutex // guards counts
	counts map[string][]string
}

type shellGreeter struct{}

func (shellGreeter) Get(iface, prop string) (dbus.Variant, *dbus.Error) {
	if iface == "com.lomiri.LomiriGreeter" && prop == "IsActive" {
		return dbus.MakeVariant(false), nil
	}
	return dbus.Variant{}, dbus.NewError("org.freedesktop.DBus.Error.UnknownProperty", []any{prop})
}

type shellLauncher struct{ s *fakeShell }

func (l shellLauncher) Set(msg dbus.Message, iface, prop string, v dbus.Variant) *dbus.Error {
	if iface != "com.lomiri.Shell.Launcher.Item" {
		return dbus.NewError("org.freedesktop.DBus.Error.UnknownInterface", []any{iface})
	}
	path, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	l.s.counts[string(path)] = append(l.s.counts[string(path)], fmt.Sprintf("%s=%v", prop, v.Value()))
	return nil
}

func (s *fakeShell) countsOf(path string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.counts[path]...)
}

func exportShell(t *testing.T, addr string) *fakeShell {
	t.Helper()
	c, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &fakeShell{counts: map[string][]string{}}
	if err := c.Export(shellGreeter{}, "/com/lomiri/LomiriGreeter", "org.freedesktop.DBus.Properties"); err != nil {
		t.Fatal(err)
	}
	if err := c.ExportSubtree(shellLauncher{s}, "/com/lomiri/Shell/Launcher", "org.freedesktop.DBus.Properties"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"com.lomiri.LomiriGreeter", "com.lomiri.Shell.Launcher"} {
		if r, err := c.RequestName(n, dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
			t.Fatalf("cannot own %s: %v %v", n, r, err)
		}
	}
	return s
}

// lomiriCardHelper turns a payload into a card with a sound, a vibration pattern,
// a counter and optionally an action and persistence.
const lomiriCardHelper = `#!/bin/sh
n=$(cat "$1" | sed 's/[^a-z0-9:/.]//g')
case "$n" in
persist*) extra='"persist":true,"popup":false' ;;
*) extra='"popup":true' ;;
esac
action=""
case "$n" in
*dekko*) action=',"actions":["dekko://inbox/'"$n"'"]' ;;
*other*) action=',"actions":["other://x/'"$n"'"]' ;;
esac
printf '{"message":{"n":"%s"},"notification":{"tag":"%s","card":{"summary":"Hi %s",%s%s},"sound":true,"vibrate":{"pattern":[200,100]},"emblem-counter":{"count":7,"visible":true}}}' "$n" "$n" "$n" "$extra" "$action" > "$2"
`

func (lw *platformWorld) nextNote(what string) notifyCall {
	lw.t.Helper()
	select {
	case n := <-lw.notes.shown:
		return n
	case <-time.After(30 * time.Second):
		lw.t.Fatalf("no notification for %s", what)
	}
	return notifyCall{}
}

func (lw *platformWorld) noNote(what string) {
	lw.t.Helper()
	select {
	case n := <-lw.notes.shown:
		lw.t.Fatalf("%s: notification shown: %+v", what, n)
	default:
	}
}

func (lw *platformWorld) push(token, body string) {
	lw.t.Helper()
	lw.mustPush(token, body)
	lw.waitPost(platformApp, 30*time.Second)
	lw.popWant(platformApp, `{"n":"`+body+`"}`)
}

// TestLomiriPlatformSettingsE2E: the per-app switches of System Settings, set with
// the real gsettings on the real dconf, and AccountsService's sound settings
// decide what heraldd shows, plays and vibrates.
func TestLomiriPlatformSettingsE2E(t *testing.T) {
	lw := newPlatformWorld(t)
	lw.installHelper(platformApp, lomiriCardHelper)
	token := lw.registerLomiri(platformApp)
	counterPath := "/com/lomiri/Shell/Launcher/" + app.Quote("com.example.lomiri_app")

	// All switches on: a bubble with the user's tone and Lomiri's hints,
	// the counter on Lomiri's launcher, the pattern on hfd-service.
	lw.push(token, "one")
	n := lw.nextNote("one")
	t.Logf("all switches on: bubble %q hints %v", n.Summary, n.Hints)
	if got, _ := n.Hints["sound-file"].Value().(string); got != xylo {
		t.Errorf("sound-file hint = %q, want the user's tone %s", got, xylo)
	}
	if _, ok := n.Hints["x-lomiri-secondary-icon"]; !ok {
		t.Errorf("no x-lomiri-secondary-icon hint on Lomiri: %v", n.Hints)
	}
	if _, ok := n.Hints["x-canonical-secondary-icon"]; ok {
		t.Errorf("x-canonical-secondary-icon hint although the server does not advertise x-canonical-*: %v", n.Hints)
	}
	waitUntil(t, 30*time.Second, "hfd-service vibrates the pattern", func() bool {
		b, _ := os.ReadFile(lw.hfdLog)
		return strings.Contains(string(b), "VibratorDummy on, duration: 200")
	})
	waitUntil(t, 30*time.Second, "the counter on com.lomiri.Shell.Launcher", func() bool {
		return slicesEqual(lw.shell.countsOf(counterPath), []string{"count=7", "countVisible=true"})
	})

	// use-sounds-notifications off: a bubble without a sound hint.
	lw.gsettingsSet("use-sounds-notifications", "false")
	lw.push(token, "two")
	n = lw.nextNote("two")
	t.Logf("use-sounds-notifications false: bubble %q hints %v", n.Summary, n.Hints)
	if _, ok := n.Hints["sound-file"]; ok {
		t.Errorf("sound-file hint with use-sounds-notifications false: %v", n.Hints)
	}
	if _, ok := n.Hints["sound-name"]; ok {
		t.Errorf("sound-name hint with use-sounds-notifications false: %v", n.Hints)
	}
	lw.gsettingsSet("use-sounds-notifications", "true")

	// enable-notifications off: nothing shown, the counter still updates,
	// PopAll still returns the message (push checks it).
	lw.gsettingsSet("enable-notifications", "false")
	before := len(lw.shell.countsOf(counterPath))
	lw.push(token, "three")
	waitUntil(t, 30*time.Second, "the counter updates with notifications off", func() bool {
		return len(lw.shell.countsOf(counterPath)) >= before+2
	})
	lw.noNote("enable-notifications false")
	t.Logf("enable-notifications false: PopAll returned the message, launcher Set calls %q", lw.shell.countsOf(counterPath))

	// Back on, in silent mode: a bubble without sound.
	lw.gsettingsSet("enable-notifications", "true")
	lw.accounts.set("SilentMode", true)
	lw.push(token, "four")
	n = lw.nextNote("four")
	if n.Summary != "Hi four" {
		t.Fatalf("first bubble after notifications were off is %q, want \"Hi four\" (\"three\" was pushed with enable-notifications false)", n.Summary)
	}
	if _, ok := n.Hints["sound-file"]; ok {
		t.Errorf("sound-file hint in silent mode: %v", n.Hints)
	}
	t.Logf("enabled again, silent mode: first bubble %q hints %v", n.Summary, n.Hints)
	hfd, _ := os.ReadFile(lw.hfdLog)
	t.Logf("hfd-service log: %q", hfd)
	if got := lw.run("gsettings", "get", "com.lomiri.notifications.settings:/com/lomiri/NotificationSettings/com.example.lomiri/app/", "enable-notifications"); strings.TrimSpace(got) != "true" {
		t.Errorf("gsettings get enable-notifications = %q", got)
	}
}

// TestLomiriPlatformURLDispatcherE2E: an action URL the real URL dispatcher maps to
// the app is kept and, when the bubble is clicked, dispatched restricted to
// the app's package; one it maps to another app is dropped.
func TestLomiriPlatformURLDispatcherE2E(t *testing.T) {
	lw := newPlatformWorld(t)
	lw.installHelper(platformApp, lomiriCardHelper)
	token := lw.registerLomiri(platformApp)

	calls := monitorCalls(t, lw.bus.Address, "com.lomiri.URLDispatcher")

	lw.push(token, "other")
	n := lw.nextNote("other")
	if len(n.Actions) != 0 {
		t.Errorf("other:// mapped to com.example.other_app was kept: actions %q", n.Actions)
	}
	lw.push(token, "dekko")
	n = lw.nextNote("dekko")
	if !slicesEqual(n.Actions, []string{"default", "Open"}) {
		t.Fatalf("dekko:// mapped to the app: actions %q, want the default action", n.Actions)
	}
	if err := lw.notesConn.Emit("/org/freedesktop/Notifications", "org.freedesktop.Notifications.ActionInvoked", n.ID, "default"); err != nil {
		t.Fatal(err)
	}
	want := `DispatchURL ["dekko://inbox/dekko" "com.example.lomiri"]`
	waitUntil(t, 30*time.Second, "heraldd calls DispatchURL", func() bool {
		for _, c := range calls.list() {
			if c == want {
				return true
			}
		}
		return false
	})
	waitUntil(t, 30*time.Second, "the dispatcher hands the URL to the app", func() bool {
		b, _ := os.ReadFile(filepath.Join(lw.dir, "url-dispatcher.log"))
		return strings.Contains(string(b), "'com.example.lomiri_app_1.0' with URL 'dekko://inbox/dekko'")
	})
	t.Logf("URL dispatcher calls seen on the bus: %q", calls.list())
}

// busCalls records method calls to a destination, seen by a bus monitor.
type busCalls struct {
	mu    sync.Mutex // guards calls
	calls []string
}

func (b *busCalls) list() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.calls...)
}

func monitorCalls(t *testing.T, addr, dest string) *busCalls {
	t.Helper()
	c, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan *dbus.Message, 100)
	rule := fmt.Sprintf("type='method_call',destination='%s'", dest)
	if call := c.BusObject().Call("org.freedesktop.DBus.Monitoring.BecomeMonitor", 0, []string{rule}, uint32(0)); call.Err != nil {
		t.Fatal(call.Err)
	}
	// Only now: godbus hands every message to an eavesdropper, the reply
	// above included.
	c.Eavesdrop(ch)
	b := &busCalls{}
	go func() {
		for m := range ch {
			member, _ := m.Headers[dbus.FieldMember].Value().(string)
			b.mu.Lock()
			var args []string
			for _, a := range m.Body {
				switch a.(type) {
				case string, []string:
					args = append(args, fmt.Sprintf("%q", a))
				default:
					args = append(args, fmt.Sprint(a))
				}
			}
			b.calls = append(b.calls, member+" ["+strings.Join(args, " ")+"]")
			b.mu.Unlock()
		}
	}()
	return b
}

// TestLomiriPlatformMessagingMenuE2E: a persistent card becomes an entry of the real
// ayatana messaging indicator (not a bubble), ListPersistent agrees, and
// ClearPersistent removes it from the indicator.
func TestLomiriPlatformMessagingMenuE2E(t *testing.T) {
	lw := newPlatformWorld(t)
	lw.installHelper(platformApp, lomiriCardHelper)
	token := lw.registerLomiri(platformApp)
	env := append(slicesClone(lw.toolEnv), "GSETTINGS_BACKEND=memory")
	startIndicator := func() (*exec.Cmd, chan struct{}) {
		cmd := exec.Command(indicatorBin)
		cmd.Env = env
		log, err := os.OpenFile(filepath.Join(lw.dir, "indicator.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); log.Close(); close(done) }()
		lw.waitName("org.ayatana.indicator.messages", 30*time.Second)
		return cmd, done
	}
	// Before the indicator runs (it may start after heraldd), a persistent
	// card is a resident notification; when the indicator comes, it becomes
	// an entry and the bubble is closed.
	notifyCalls := monitorCalls(t, lw.bus.Address, "org.freedesktop.Notifications")
	lw.push(token, "persist0")
	n0 := lw.nextNote("persist0 before the indicator")
	if r, _ := n0.Hints["resident"].Value().(bool); !r {
		t.Fatalf("persistent card without the indicator: hints %v, want resident", n0.Hints)
	}
	ind, indDone := startIndicator()
	t.Cleanup(func() { ind.Process.Kill(); <-indDone })
	waitUntil(t, 30*time.Second, "the indicator holds the earlier card and its bubble is closed", func() bool {
		return strings.Contains(lw.indicatorState(), "Hi persist0") &&
			slices.Contains(notifyCalls.list(), fmt.Sprintf("CloseNotification [%d]", n0.ID))
	})
	t.Logf("indicator came: %s; the resident bubble %d was closed", lw.indicatorState(), n0.ID)

	lw.push(token, "persist1")
	lw.noNote("a persistent card without popup where the indicator runs")
	waitUntil(t, 30*time.Second, "the indicator holds the entry", func() bool {
		return strings.Contains(lw.indicatorState(), "Hi persist1")
	})
	// The indicator restarts: heraldd registers again and the entry is back.
	ind.Process.Kill()
	<-indDone
	ind, indDone = startIndicator()
	waitUntil(t, 30*time.Second, "the restarted indicator holds the entry again", func() bool {
		return strings.Contains(lw.indicatorState(), "Hi persist1")
	})
	var tags []string
	path := "/com/lomiri/Postal/" + app.Quote("com.example.lomiri")
	if err := lw.call("com.lomiri.Postal", path, "com.lomiri.Postal.ListPersistent", platformApp).Store(&tags); err != nil {
		t.Fatal(err)
	}
	if !slicesEqual(tags, []string{"persist0", "persist1"}) {
		t.Fatalf("ListPersistent = %q, want [persist0 persist1]", tags)
	}
	t.Logf("indicator state with the entry: %s", lw.indicatorState())
	var n uint32
	if err := lw.call("com.lomiri.Postal", path, "com.lomiri.Postal.ClearPersistent", platformApp).Store(&n); err != nil || n != 2 {
		t.Fatalf("ClearPersistent = %d, %v; want 2", n, err)
	}
	waitUntil(t, 30*time.Second, "the indicator drops the entry", func() bool {
		st := lw.indicatorState()
		return !strings.Contains(st, "persist1") && !strings.Contains(st, "persist0")
	})
	if err := lw.call("com.lomiri.Postal", path, "com.lomiri.Postal.ListPersistent", platformApp).Store(&tags); err != nil || len(tags) != 0 {
		t.Fatalf("ListPersistent after ClearPersistent = %q, %v", tags, err)
	}

	// A tap on an entry in the real indicator dispatches its action through
	// the URL dispatcher and the entry is gone.
	calls := monitorCalls(t, lw.bus.Address, "com.lomiri.URLDispatcher")
	lw.push(token, "persistdekko")
	lw.noNote("a persistent card without popup where the indicator runs")
	var action string
	waitUntil(t, 30*time.Second, "the indicator holds the entry", func() bool {
		action = lw.indicatorAction("Hi persistdekko")
		return action != ""
	})
	if c := lw.call("org.ayatana.indicator.messages", "/org/ayatana/indicator/messages", "org.gtk.Actions.Activate",
		action, []dbus.Variant{dbus.MakeVariant(true)}, map[string]dbus.Variant{}); c.Err != nil {
		t.Fatalf("Activate %s: %v", action, c.Err)
	}
	waitUntil(t, 30*time.Second, "the tap is dispatched", func() bool {
		return slices.Contains(calls.list(), `DispatchURL ["dekko://inbox/persistdekko" "com.example.lomiri"]`)
	})
	waitUntil(t, 30*time.Second, "the tapped entry is gone", func() bool {
		err := lw.call("com.lomiri.Postal", path, "com.lomiri.Postal.ListPersistent", platformApp).Store(&tags)
		return err == nil && len(tags) == 0
	})
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// indicatorState is the real indicator's phone menu: the labels, message
// ids and actions of its items.
func (lw *platformWorld) indicatorState() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var groups []struct {
		Group, Menu uint32
		Items       []map[string]dbus.Variant
	}
	err := lw.conn.Object("org.ayatana.indicator.messages", "/org/ayatana/indicator/messages/phone").CallWithContext(ctx,
		"org.gtk.Menus.Start", 0, []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}).Store(&groups)
	if err != nil {
		return "error: " + err.Error()
	}
	_ = lw.conn.Object("org.ayatana.indicator.messages", "/org/ayatana/indicator/messages/phone").CallWithContext(ctx,
		"org.gtk.Menus.End", 0, []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}).Err
	var items []string
	for _, g := range groups {
		for _, it := range g.Items {
			if id, ok := it["x-ayatana-message-id"]; ok {
				items = append(items, fmt.Sprintf("%v id=%v action=%v", it["label"].Value(), id.Value(), it["action"].Value()))
			}
		}
	}
	return strings.Join(items, "; ")
}

// indicatorAction is the action of the menu item labelled label.
func (lw *platformWorld) indicatorAction(label string) string {
	for _, it := range strings.Split(lw.indicatorState(), "; ") {
		if strings.HasPrefix(it, label+" ") {
			_, a, _ := strings.Cut(it, " action=")
			return a
		}
	}
	return ""
}

// TestLomiriPlatformConfinedHelperE2E: a click app's push helper, installed
// through the push-helper click hook and registered by `herald click-hook`
// (which also fills System Settings' applications list on the real dconf),
// runs through aa-exec under its helper profile <pkg>_<hook>_<version>, and
// its {} output is accepted as upstream accepts it. This kernel has no
// AppArmor: aa-exec is a test double on heraldd's PATH (it records the
// profile and runs the command), and AppArmor's securityfs is a directory
// whose "profiles" file lists the loaded profiles. A helper whose profile is
// not loaded is refused.
func TestLomiriPlatformConfinedHelperE2E(t *testing.T) {
	root := t.TempDir()
	aaDir := filepath.Join(root, "aa-bin")
	mkdir(t, aaDir)
	double, err := os.ReadFile(filepath.Join("..", "..", "helpers", "testdata", "aa", "aa-exec"))
	if err != nil {
		t.Fatal(err)
	}
	writeScript(t, filepath.Join(aaDir, "aa-exec"), string(double))
	secfs := filepath.Join(root, "securityfs")
	mkdir(t, secfs)
	if err := os.WriteFile(filepath.Join(secfs, "profiles"), []byte("com.example.lomiri_helper_1.0 (enforce)\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	lw := newPlatformWorld(t, func(o *worldOptions) {
		o.daemonEnv = append(o.daemonEnv, "PATH="+aaDir+":"+os.Getenv("PATH"))
		o.config = fmt.Sprintf("apparmor_securityfs = %q\n", secfs)
	})
	home := lw.daemon.Dir

	// Two click packages as click installs them, each with a push-helper
	// hook link; the second's profile is not loaded.
	hooks := filepath.Join(home, "data", "lomiri-push-service", "helpers")
	mkdir(t, hooks)
	for _, p := range []struct{ pkg, app, hookID string }{
		{"com.example.lomiri", "app", "com.example.lomiri_helper_1.0"},
		{"com.example.noprofile", "app", "com.example.noprofile_helper_1.0"},
	} {
		dir := filepath.Join(root, "click", p.pkg)
		mkdir(t, dir)
		// The helper writes {} and records where its files are.
		writeScript(t, filepath.Join(dir, "helper.sh"), "#!/bin/sh\necho \"$1\" >> "+shQuote(filepath.Join(root, p.pkg+".ran"))+"\nprintf '{}' > \"$2\"\n")
		manifest := fmt.Sprintf(`{"exec": "helper.sh", "app_id": "%s_%s"}`, p.pkg, p.app)
		if err := os.WriteFile(filepath.Join(dir, "push-helper.json"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, "push-helper.json"), filepath.Join(hooks, p.hookID+".json")); err != nil {
			t.Fatal(err)
		}
	}
	// What the click hook's wrapper runs.
	cmd := exec.Command(built.herald, "click-hook")
	cmd.Env = lw.toolEnv
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("herald click-hook: %v\n%s", err, out)
	}
	t.Logf("herald click-hook:\n%s", out)
	apps := lw.run("gsettings", "get", "com.lomiri.notifications.settings.applications", "applications")
	if strings.TrimSpace(apps) != "['com.example.lomiri/app/1.0', 'com.example.noprofile/app/1.0']" {
		t.Errorf("System Settings applications = %s", apps)
	}

	token := lw.registerLomiri(platformApp)
	lw.mustPush(token, `{"hello": 1}`)
	lw.waitPost(platformApp, 30*time.Second)
	lw.popWant(platformApp, `{"hello": 1}`) // {} has no message: the payload is queued
	b, _ := os.ReadFile(filepath.Join(aaDir, "aa-exec.log"))
	if got := strings.Fields(string(b)); !slicesEqual(got, []string{"com.example.lomiri_helper_1.0"}) {
		t.Errorf("aa-exec ran with profiles %q, want [com.example.lomiri_helper_1.0]", got)
	}
	ran := fileLines(filepath.Join(root, "com.example.lomiri.ran"))
	if len(ran) != 1 || filepath.Dir(ran[0]) != filepath.Join(home, "cache", "com.example.lomiri") {
		t.Errorf("helper input files %q, want one in the package's cache dir", ran)
	}
	t.Logf("aa-exec double log: %q; helper ran on %q", b, ran)
	log := lw.daemon.Tail(1 << 20)
	if strings.Contains(log, "helper failed") {
		t.Errorf("{} output refused:\n%s", log)
	}

	const noProfile = "com.example.noprofile_app"
	token = lw.registerLomiri(noProfile)
	lw.mustPush(token, `{"n": 2}`)
	lw.waitPost(noProfile, 30*time.Second)
	lw.popWant(noProfile, `{"n": 2}`)
	log = lw.daemon.Tail(1 << 20)
	if !strings.Contains(log, `profile \"com.example.noprofile_helper_1.0\" is not loaded; helper refused`) {
		t.Errorf("no refusal logged for the helper without its profile:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(root, "com.example.noprofile.ran")); err == nil {
		t.Error("the helper without its AppArmor profile ran")
	}

	// herald doctor reports the Lomiri platform: heraldd holds the push
	// names, AppArmor is enabled with aa-exec, the confined helpers' profiles
	// (one missing), the settings schema and the running services.
	doctor := exec.Command(built.herald, "doctor")
	doctor.Env = append(slicesClone(lw.toolEnv), "PATH="+aaDir+":"+os.Getenv("PATH"))
	dout, _ := doctor.CombinedOutput() // exits 1: the missing profile is a failed check
	t.Logf("herald doctor:\n%s", dout)
	for _, want := range []string{
		"ok    bus name com.lomiri.Postal",
		"ok    AppArmor enabled: confined click helpers run with aa-exec",
		"ok    confinement of the helper of com.example.lomiri_app",
		"FAIL  confinement of the helper of com.example.noprofile_app: AppArmor profile com.example.noprofile_helper_1.0 is not loaded",
		"ok    per-app notification settings: com.lomiri.notifications.settings",
		"ok    URL dispatcher (actions): running",
		"ok    Lomiri launcher (counters): running",
	} {
		if !strings.Contains(string(dout), want) {
			t.Errorf("herald doctor does not say %q", want)
		}
	}

	// Uninstalling a package (click removes its hook link and runs the hook
	// again) drops it from the list and resets its switches, as upstream.
	const npSettings = "com.lomiri.notifications.settings:/com/lomiri/NotificationSettings/com.example.noprofile/app/"
	lw.run("gsettings", "set", npSettings, "enable-notifications", "false")
	if err := os.Remove(filepath.Join(hooks, "com.example.noprofile_helper_1.0.json")); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(built.herald, "click-hook")
	cmd.Env = lw.toolEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("herald click-hook after removal: %v\n%s", err, out)
	}
	if apps := lw.run("gsettings", "get", "com.lomiri.notifications.settings.applications", "applications"); strings.TrimSpace(apps) != "['com.example.lomiri/app/1.0']" {
		t.Errorf("applications after removing com.example.noprofile = %s", apps)
	}
	if v := lw.run("gsettings", "get", npSettings, "enable-notifications"); strings.TrimSpace(v) != "true" {
		t.Errorf("enable-notifications of the removed app = %s, want reset to true", v)
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "helper refused") || strings.Contains(l, "aa-exec") {
			t.Logf("heraldd: %s", l)
		}
	}
}
