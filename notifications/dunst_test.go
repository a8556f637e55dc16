package notifications

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/internal/harness"
	"github.com/heraldpush/herald/internal/testbus"
)

// needTools fails in CI and skips elsewhere when a program is missing.
func needTools(t *testing.T, names ...string) {
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

// startXvfb starts Xvfb on a free display and returns ":N".
func startXvfb(t *testing.T) string {
	t.Helper()
	display, p, err := harness.StartXvfb(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return display
}

// startDunst runs dunst on display and the bus, and waits until it owns
// org.freedesktop.Notifications.
func startDunst(t *testing.T, bus *testbus.Bus, display string) {
	t.Helper()
	watch := bus.Conn(t)
	if err := watch.AddMatchSignal(dbus.WithMatchSender("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"),
		dbus.WithMatchArg(0, notifyName)); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 10)
	watch.Signal(ch)
	conf, err := filepath.Abs(filepath.Join("testdata", "dunstrc"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := harness.StartDunst(t.TempDir(), bus.Address, display, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	deadline := time.After(waitFor)
	for {
		select {
		case s := <-ch:
			if len(s.Body) == 3 && s.Body[2] != "" {
				return
			}
		case <-p.Done():
			t.Fatalf("dunst exited:\n%s", p.Tail(2000))
		case <-deadline:
			t.Fatal("dunst did not take org.freedesktop.Notifications")
		}
	}
}

func dunstctl(t *testing.T, bus *testbus.Bus, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("dunstctl", args...)
	cmd.Env = bus.Env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dunstctl %v: %v\n%s", args, err, out)
	}
	return out
}

// launchDone is a Launcher that reports each finished launch.
type launchDone struct {
	l    *AppLauncher
	done chan error
}

func (d *launchDone) Launch(ctx context.Context, r LaunchRequest) error {
	err := d.l.Launch(ctx, r)
	d.done <- err
	return err
}

// TestDunst shows cards on the real dunst: replacement by tag, the default
// action launching the app's desktop entry with the URL, and dunst's history.
func TestDunst(t *testing.T) {
	needTools(t, "dunst", "dunstctl", "Xvfb", "busctl", "dbus-send")
	bus := testbus.Start(t)
	startDunst(t, bus, startXvfb(t))

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "argv.json")
	data := t.TempDir()
	writeEntries(t, data, map[string]string{"com.example.e2e_app.desktop": "[Desktop Entry]\nType=Application\n" +
		"Name=E2E Chat\nIcon=mail-message-new\nMimeType=x-scheme-handler/e2e;\n" +
		"Exec=env " + recordEnv + "=" + out + " \"" + self + "\" %u\n"})
	conn := bus.Conn(t)
	store := newMemStore()
	launcher := &launchDone{l: &AppLauncher{Conn: conn}, done: make(chan error, 1)}
	logs := &logRec{changed: make(chan struct{})}
	p := New(Options{Conn: conn, Store: store, DataDirs: []string{data}, Launch: launcher, Logger: slog.New(logs)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	logs.wait(t, "notification presenter started", 1)

	const testApp = "com.example.e2e_app_1.0"
	for i, c := range []app.Card{
		{Summary: "First", Body: "one", Popup: true, Persist: true, Actions: []string{"e2e://open/1"}},
		{Summary: "Second", Body: "two", Popup: true, Persist: true, Actions: []string{"e2e://open/2?x=a b"}},
	} {
		if err := p.Present(ctx, Request{AppID: testApp, MsgID: "m", Tag: "chat", Card: &c}); err != nil {
			t.Fatalf("Present %d: %v", i, err)
		}
	}
	recs, _ := store.Notifications(ctx, testApp)
	if len(recs) != 1 {
		t.Fatalf("store holds %d records, want 1", len(recs))
	}
	id := recs[0].ID
	if n := strings.TrimSpace(string(dunstctl(t, bus, "count", "displayed"))); n != "1" {
		t.Fatalf("dunst displays %s notifications, want 1", n)
	}

	dunstctl(t, bus, "action", "0")
	select {
	case err := <-launcher.done:
		if err != nil {
			t.Fatalf("launch: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("dunstctl action launched nothing")
	}
	launcher.l.Wait()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the app was not started: %v", err)
	}
	var argv []string
	if err := json.Unmarshal(b, &argv); err != nil || !cmp.Equal(argv, []string{"e2e://open/2?x=a b"}) {
		t.Fatalf("app argv %q, %v", argv, err)
	}

	dunstctl(t, bus, "close-all")
	var hist struct {
		Data [][]map[string]struct {
			Data any `json:"data"`
		} `json:"data"`
	}
	raw := dunstctl(t, bus, "history")
	if err := json.Unmarshal(raw, &hist); err != nil || len(hist.Data) != 1 {
		t.Fatalf("cannot read dunst history: %v\n%s", err, raw)
	}
	var got []map[string]any
	for _, n := range hist.Data[0] {
		got = append(got, map[string]any{"summary": n["summary"].Data, "body": n["body"].Data,
			"appname": n["appname"].Data, "id": n["id"].Data})
	}
	want := []map[string]any{{"summary": "Second", "body": "two", "appname": "E2E Chat", "id": float64(id)}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("dunst history (-want +got):\n%s", diff)
	}
}
