package notifications

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/heraldpush/herald/internal/testbus"
)

// recordEnv makes the test binary a launch recorder: when set, TestMain
// writes its arguments as JSON to the named file and exits.
const recordEnv = "HERALD_NOTIFICATIONS_TEST_RECORD"

func TestMain(m *testing.M) {
	if out := os.Getenv(recordEnv); out != "" {
		b, _ := json.Marshal(os.Args[1:])
		if err := os.WriteFile(out+".tmp", b, 0o644); err != nil {
			os.Exit(3)
		}
		if err := os.Rename(out+".tmp", out); err != nil {
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const waitFor = 20 * time.Second

// memStore is an in-memory Store.
type memStore struct {
	mu      sync.Mutex
	recs    []Record
	changed chan string // "save <app> <id>" / "delete <app> <id>", buffered
}

func newMemStore(recs ...Record) *memStore {
	return &memStore{recs: recs, changed: make(chan string, 100)}
}

func (s *memStore) SaveNotification(_ context.Context, r Record) error {
	s.mu.Lock()
	i := slices.IndexFunc(s.recs, func(o Record) bool {
		if r.Tag != "" {
			return o.AppID == r.AppID && o.Tag == r.Tag
		}
		return o.ID == r.ID && o.AppID == r.AppID
	})
	if i >= 0 {
		s.recs[i] = r
	} else {
		s.recs = append(s.recs, r)
	}
	s.mu.Unlock()
	s.changed <- fmt.Sprintf("save %s %d", r.AppID, r.ID)
	return nil
}

func (s *memStore) DeleteNotification(_ context.Context, appID string, id uint32) error {
	s.mu.Lock()
	s.recs = slices.DeleteFunc(s.recs, func(o Record) bool { return o.AppID == appID && o.ID == id })
	s.mu.Unlock()
	s.changed <- fmt.Sprintf("delete %s %d", appID, id)
	return nil
}

func (s *memStore) Notifications(_ context.Context, appID string) ([]Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Record
	for _, r := range s.recs {
		if appID == "" || r.AppID == appID {
			out = append(out, r)
		}
	}
	return out, nil
}

func (s *memStore) ids() map[string]uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]uint32{}
	for _, r := range s.recs {
		m[r.AppID+"/"+r.Tag+"/"+r.Card.Summary] = r.ID
	}
	return m
}

func waitChange(t *testing.T, s *memStore, want string) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case got := <-s.changed:
			if got == want {
				return
			}
		case <-deadline:
			t.Fatalf("store change %q did not happen", want)
		}
	}
}

// notifyCall is one Notify call received by the fake server, hints unwrapped.
type notifyCall struct {
	AppName  string
	Replaces uint32
	Icon     string
	Summary  string
	Body     string
	Actions  []string
	Hints    map[string]any
	Timeout  int32
}

// fakeServer is an org.freedesktop.Notifications server on its own connection.
type fakeServer struct {
	conn   *dbus.Conn
	calls  chan notifyCall
	closes chan uint32
	caps   []string

	mu   sync.Mutex
	next uint32
}

func (f *fakeServer) Notify(appName string, replaces uint32, icon, summary, body string, actions []string,
	hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	h := map[string]any{}
	for k, v := range hints {
		h[k] = v.Value()
	}
	id := replaces
	if id == 0 {
		f.mu.Lock()
		f.next++
		id = f.next
		f.mu.Unlock()
	}
	f.calls <- notifyCall{appName, replaces, icon, summary, body, actions, h, timeout}
	return id, nil
}

func (f *fakeServer) CloseNotification(id uint32) *dbus.Error {
	f.closes <- id
	return nil
}

func (f *fakeServer) GetCapabilities() ([]string, *dbus.Error) { return f.caps, nil }

func (f *fakeServer) GetServerInformation() (string, string, string, string, *dbus.Error) {
	return "fake", "herald", "1", "1.2", nil
}

// startServer exports a fake server whose ids start after base and takes
// the name (replacing a server that allows it).
func startServer(t *testing.T, bus *testbus.Bus, base uint32, caps ...string) *fakeServer {
	t.Helper()
	f := &fakeServer{conn: bus.Conn(t), calls: make(chan notifyCall, 100), closes: make(chan uint32, 100), caps: caps, next: base}
	if err := f.conn.Export(f, notifyPath, notifyIface); err != nil {
		t.Fatal(err)
	}
	r, err := f.conn.RequestName(notifyName, dbus.NameFlagDoNotQueue|dbus.NameFlagAllowReplacement|dbus.NameFlagReplaceExisting)
	if err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("cannot own %s: %v %v", notifyName, r, err)
	}
	return f
}

func (f *fakeServer) next1(t *testing.T) notifyCall {
	t.Helper()
	select {
	case c := <-f.calls:
		return c
	case <-time.After(waitFor):
		t.Fatal("no Notify call")
	}
	return notifyCall{}
}

func (f *fakeServer) emit(t *testing.T, member string, args ...any) {
	t.Helper()
	if err := f.conn.Emit(notifyPath, notifyIface+"."+member, args...); err != nil {
		t.Fatal(err)
	}
}

// recLauncher records launches.
type recLauncher struct{ got chan LaunchRequest }

func (l *recLauncher) Launch(_ context.Context, r LaunchRequest) error {
	l.got <- r
	return nil
}

// logRec records log messages so that tests can wait for one.
type logRec struct {
	mu      sync.Mutex
	msgs    []string
	changed chan struct{}
}

func (l *logRec) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRec) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	return nil
}
func (l *logRec) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRec) WithGroup(string) slog.Handler      { return l }

func (l *logRec) count(msg string) (int, chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if m == msg {
			n++
		}
	}
	return n, l.changed
}

// wait waits until msg was logged at least n times.
func (l *logRec) wait(t *testing.T, msg string, n int) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		got, ch := l.count(msg)
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("log %q seen %d times, want %d", msg, got, n)
		}
	}
}

type env struct {
	bus   *testbus.Bus
	store *memStore
	log   *logRec
	launc *recLauncher
	data  string
	p     *Presenter
}

// newEnv builds a Presenter on a private bus with a data dir holding the
// given desktop entries (file name → content).
func newEnv(t *testing.T, store *memStore, entries map[string]string) *env {
	t.Helper()
	e := &env{bus: testbus.Start(t), store: store, log: &logRec{changed: make(chan struct{})},
		launc: &recLauncher{got: make(chan LaunchRequest, 10)}, data: t.TempDir()}
	writeEntries(t, e.data, entries)
	e.p = New(Options{Conn: e.bus.Conn(t), Store: store, Logger: slog.New(e.log), DataDirs: []string{e.data}, Launch: e.launc})
	return e
}

func writeEntries(t *testing.T, data string, entries map[string]string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(data, "applications"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range entries {
		if err := os.WriteFile(filepath.Join(data, "applications", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// run runs the Presenter until the test ends and waits until it follows
// the bus.
func (e *env) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	e.log.wait(t, "notification presenter started", 1)
}

// roundTrip makes sure everything conn sent before reached the bus.
func roundTrip(t *testing.T, conn *dbus.Conn) {
	t.Helper()
	var id string
	if err := conn.BusObject().Call("org.freedesktop.DBus.GetId", 0).Store(&id); err != nil {
		t.Fatal(err)
	}
}

const chatEntry = `[Desktop Entry]
Name=Chat
Name[de]=Plaudern
Icon=chat
Exec=chat %u
MimeType=text/plain;x-scheme-handler/chat;
`

func entryFor(name string) string {
	return strings.Replace(chatEntry, "Name=Chat", "Name="+name, 1)
}
