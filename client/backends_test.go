package client

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/client/ntfy"
	"github.com/heraldpush/herald/client/push"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
)

// testBackend is a push.Backend standing in for a remote push service the
// core has no real server of in this test (ntfy): it records what the core
// asks and delivers what the test sends through the core's Sink.
type testBackend struct {
	name   app.Backend
	sink   push.Sink
	wanted chan bool

	mu       sync.Mutex // guards channels
	channels map[string]push.Channel
}

func newTestBackend(name app.Backend, sink push.Sink) *testBackend {
	return &testBackend{name: name, sink: sink, wanted: make(chan bool, 100), channels: map[string]push.Channel{}}
}

func (b *testBackend) Name() app.Backend { return b.name }
func (b *testBackend) Run(ctx context.Context) error {
	b.sink.StateChanged(push.Status{Backend: b.name, State: push.StateConnected, Server: "https://ntfy.test", Since: time.Unix(1000, 0)})
	<-ctx.Done()
	return nil
}
func (b *testBackend) SetWanted(v bool) { b.wanted <- v }
func (b *testBackend) SetOnline(bool)   {}
func (b *testBackend) Reconnect()       {}
func (b *testBackend) Register(_ context.Context, ch push.Channel) (push.Endpoint, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.channels[ch.ID] = ch
	return push.Endpoint{URL: "https://ntfy.test/up" + ch.ID, Token: "up" + ch.ID}, nil
}
func (b *testBackend) Unregister(_ context.Context, ch push.Channel) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.channels, ch.ID)
	return nil
}
func (b *testBackend) Status() push.Status {
	return push.Status{Backend: b.name, State: push.StateIdle, Server: "https://ntfy.test"}
}

// waitWanted waits until the core last told b want.
func (b *testBackend) waitWanted(t *testing.T, want bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case v := <-b.wanted:
			if v == want && len(b.wanted) == 0 {
				return
			}
		case <-deadline:
			t.Fatalf("%s backend not told wanted=%v", b.name, want)
		}
	}
}

// TestRegistrationsOnTheirBackend: [unifiedpush] backend = "ntfy" puts
// UnifiedPush registrations on the ntfy backend while Lomiri apps stay on
// the autopush server; each backend is wanted only while it has
// registrations; a message the ntfy backend receives reaches the app with
// its registration's token; the status shows both connections; a message
// for the channel of another backend is refused as unknown.
func TestRegistrationsOnTheirBackend(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, filepath.Join(dir, "server.db"), "127.0.0.1:0")
	st, err := store.Open(context.Background(), filepath.Join(dir, "herald.db"), store.Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := config.DefaultConfig()
	cfg.Server = ts.wsURL
	cfg.RequestTimeout.Duration = 10 * time.Second
	cfg.Ntfy.URL = "https://ntfy.test"
	cfg.UnifiedPush.Backend = app.BackendNtfy
	d := New(Options{Config: cfg, Store: st})
	nb := newTestBackend(app.BackendNtfy, d)
	d.AddBackend(nb)
	bus := newFakeBus()
	d.SetBus(bus)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	nb.waitWanted(t, false)
	ep, err := d.RegisterUnifiedPush(ctx, dbusapi.UPRegistration{AppID: "org.example.Up", Service: "org.example.Up", Token: "tok-1", Version: 2})
	if err != nil {
		t.Fatal(err)
	}
	nb.waitWanted(t, true)
	regs, _ := st.Registrations(ctx)
	if len(regs) != 1 || regs[0].Backend != app.BackendNtfy || ep != "https://ntfy.test/up"+regs[0].ChannelID {
		t.Fatalf("registrations %+v, endpoint %q; want one on ntfy", regs, ep)
	}
	if _, err := d.RegisterLomiri(ctx, "com.example.chat_chat"); err != nil {
		t.Fatal(err)
	}
	regs, _ = st.Registrations(ctx)
	var backends []app.Backend
	for _, r := range regs {
		backends = append(backends, r.Backend)
	}
	slices.Sort(backends)
	if !slices.Equal(backends, []app.Backend{app.BackendAutopush, app.BackendNtfy}) {
		t.Fatalf("backends of the registrations = %v", backends)
	}

	var upChan, lomiriChan string
	for _, r := range regs {
		if r.Kind == app.KindUnifiedPush {
			upChan = r.ChannelID
		} else {
			lomiriChan = r.ChannelID
		}
	}
	res := d.Receive(ctx, push.Batch{Backend: app.BackendNtfy, Messages: []push.Message{
		{ChannelID: upChan, ServerID: "m1", Body: []byte("hello")},
		{ChannelID: lomiriChan, ServerID: "m2", Body: []byte("not mine")}, // an autopush channel
	}})
	if res[0] != nil || !errors.Is(res[1], push.ErrUnknownChannel) {
		t.Fatalf("Receive results = %v", res)
	}
	select {
	case m := <-bus.upDone:
		if m.Token != "tok-1" || string(m.Body) != "hello" || m.Service != "org.example.Up" {
			t.Fatalf("delivered %+v", m)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the ntfy backend's message was not delivered to the app")
	}

	status := d.Status(ctx)
	var got []string
	for _, c := range status.Connections {
		got = append(got, c.Backend+"="+c.State)
	}
	if !slices.Equal(got, []string{"autopush=connected", "ntfy=connected"}) || status.State != "connected" || status.Server != ts.wsURL {
		t.Fatalf("status = %+v", status)
	}

	if err := d.UnregisterUnifiedPush(ctx, "tok-1"); err != nil {
		t.Fatal(err)
	}
	nb.waitWanted(t, false)
}

// TestBackendNotAvailable: a configured backend that this daemon does not
// run is a clear error, nothing is stored.
func TestBackendNotAvailable(t *testing.T) {
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "herald.db"), store.Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := config.DefaultConfig()
	cfg.Lomiri.Use = false
	cfg.UnifiedPush.Backend = app.BackendLomiri // not a UnifiedPush backend, and not running
	d := New(Options{Config: cfg, Store: st})
	_, err = d.RegisterUnifiedPush(context.Background(), dbusapi.UPRegistration{AppID: "org.example.Up", Service: "org.example.Up", Token: "t", Version: 2})
	if !errors.Is(err, errUnavailable) {
		t.Fatalf("RegisterUnifiedPush = %v, want errUnavailable", err)
	}
	if regs, _ := st.Registrations(context.Background()); len(regs) != 0 {
		t.Fatalf("stored %+v", regs)
	}
}

// TestNtfyRegistration: with [unifiedpush] backend = "ntfy" a registration
// gets an ntfy endpoint made up locally (no request to the server), and
// keeps it.
func TestNtfyRegistration(t *testing.T) {
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "herald.db"), store.Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := config.DefaultConfig()
	cfg.Ntfy.URL = "https://ntfy.test/"
	cfg.UnifiedPush.Backend = app.BackendNtfy
	d := New(Options{Config: cfg, Store: st})
	u := dbusapi.UPRegistration{AppID: "org.example.Up", Service: "org.example.Up", Token: "t", Version: 2}
	ep, err := d.RegisterUnifiedPush(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	topic, ok := strings.CutPrefix(ep, "https://ntfy.test/")
	topic, ok2 := strings.CutSuffix(topic, "?up=1")
	if !ok || !ok2 || !ntfy.ValidTopic(topic) {
		t.Fatalf("endpoint %q, want https://ntfy.test/up…?up=1", ep)
	}
	regs, _ := st.Registrations(context.Background())
	if len(regs) != 1 || regs[0].Backend != app.BackendNtfy || regs[0].Endpoint != ep {
		t.Fatalf("stored %+v", regs)
	}
	if again, err := d.RegisterUnifiedPush(context.Background(), u); err != nil || again != ep {
		t.Errorf("Register again = %q, %v; want the same endpoint", again, err)
	}
}
