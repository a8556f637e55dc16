package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/internal/harness"
)

// world is one running Herald: a private bus, herald-server, heraldd and a
// test connection to the bus.
type world struct {
	t      *testing.T
	dir    string
	bus    *harness.Bus
	server *harness.Server
	proxy  *harness.Proxy // between heraldd and the server, when asked for
	daemon *harness.Daemon
	conn   *dbus.Conn
	http   *http.Client
	sysBus *harness.Bus // heraldd's system bus, when asked for

	posts chan string // app ids from Post signals
}

type worldOptions struct {
	proxy      bool
	daemonArgs []string
	serverArgs []string
	config     string // config.toml of heraldd, when set
	// server replaces herald-server as heraldd's --server ("none": no
	// --server flag at all).
	server string
	// configFor, when set, makes config.toml from the server's HTTP base URL.
	configFor func(httpBase string) string
	daemonEnv []string
	// systemBus gives heraldd a private system bus (world.sysBus).
	systemBus bool
}

func newWorld(t *testing.T, o worldOptions) *world {
	t.Helper()
	dir := t.TempDir()
	w := &world{t: t, dir: dir, http: &http.Client{Timeout: 10 * time.Second}, posts: make(chan string, 10000)}
	bus, err := harness.StartBus(filepath.Join(dir, "bus"))
	if err != nil {
		t.Fatal(err)
	}
	w.bus = bus
	t.Cleanup(bus.Close)
	mkdir(t, filepath.Join(dir, "server"))
	srv, err := harness.StartServer(built.server, filepath.Join(dir, "server"), "127.0.0.1:0", o.serverArgs...)
	if err != nil {
		t.Fatal(err)
	}
	w.server = srv
	t.Cleanup(func() {
		if srv.Proc != nil {
			srv.Kill()
		}
	})
	target := srv.URL()
	if o.configFor != nil {
		o.config = o.configFor(srv.HTTP())
	}
	if o.proxy {
		p, err := harness.StartProxy(srv.Addr)
		if err != nil {
			t.Fatal(err)
		}
		w.proxy = p
		t.Cleanup(p.Close)
		target = "ws://" + p.Addr + "/"
	}
	conn, err := dbus.Connect(bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	w.conn = conn
	t.Cleanup(func() { conn.Close() })
	if err := conn.AddMatchSignal(dbus.WithMatchMember("Post")); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan *dbus.Signal, 10000)
	conn.Signal(sigs)
	go func() {
		for s := range sigs {
			if strings.HasSuffix(s.Name, "Postal.Post") && len(s.Body) == 1 {
				if app, ok := s.Body[0].(string); ok && strings.HasPrefix(s.Name, "com.lomiri.") {
					w.posts <- app
				}
			}
		}
	}()
	ddir := filepath.Join(dir, "home")
	mkdir(t, ddir)
	if o.config != "" {
		mkdir(t, filepath.Join(ddir, "config", "herald"))
		if err := os.WriteFile(filepath.Join(ddir, "config", "herald", "config.toml"), []byte(o.config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	switch o.server {
	case "":
	case "none":
		target = ""
	default:
		target = o.server
	}
	extraEnv := append([]string(nil), o.daemonEnv...)
	if o.systemBus {
		sb, err := harness.StartBus(filepath.Join(dir, "sysbus"))
		if err != nil {
			t.Fatal(err)
		}
		w.sysBus = sb
		t.Cleanup(sb.Close)
		extraEnv = append(extraEnv, "DBUS_SYSTEM_BUS_ADDRESS="+sb.Address)
	}
	d, err := harness.StartDaemon(built.heraldd, ddir, bus.Address, target, extraEnv, o.daemonArgs...)
	if err != nil {
		t.Fatal(err)
	}
	w.daemon = d
	t.Cleanup(func() {
		if d.Proc != nil {
			select {
			case <-d.Done():
			default:
				d.Kill()
			}
		}
		if t.Failed() {
			t.Logf("heraldd log tail:\n%s", d.Tail(6000))
			t.Logf("herald-server log tail:\n%s", srv.Tail(3000))
			if keep := os.Getenv("HERALD_E2E_LOGS"); keep != "" {
				// Keep the whole logs of a failed run for a closer look.
				db := filepath.Join(d.StateDir, "herald.db")
				for _, f := range []string{d.Proc.Log, srv.Proc.Log, srv.DB, srv.DB + "-wal", db, db + "-wal"} {
					if b, err := os.ReadFile(f); err == nil {
						_ = os.WriteFile(filepath.Join(keep, t.Name()+"-"+filepath.Base(f)), b, 0o644)
					}
				}
			}
		}
	})
	w.waitDaemon()
	return w
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// waitDaemon waits until heraldd owns its management name.
func (w *world) waitDaemon() {
	w.t.Helper()
	w.waitName("org.herald.Daemon", 30*time.Second)
}

// waitName waits until name has an owner on the bus, watching NameOwnerChanged.
func (w *world) waitName(name string, timeout time.Duration) {
	w.t.Helper()
	ch := make(chan *dbus.Signal, 16)
	c, err := dbus.Connect(w.bus.Address)
	if err != nil {
		w.t.Fatal(err)
	}
	defer c.Close()
	if err := c.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, name)); err != nil {
		w.t.Fatal(err)
	}
	c.Signal(ch)
	var has bool
	if err := c.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has); err != nil {
		w.t.Fatal(err)
	}
	if has {
		return
	}
	deadline := time.After(timeout)
	for {
		select {
		case s := <-ch:
			if len(s.Body) == 3 {
				if owner, _ := s.Body[2].(string); owner != "" {
					return
				}
			}
		case <-w.daemon.Done():
			w.t.Fatalf("heraldd exited before owning %s:\n%s", name, w.daemon.Tail(4000))
		case <-deadline:
			w.t.Fatalf("%s has no owner after %s:\n%s", name, timeout, w.daemon.Tail(4000))
		}
	}
}

// restartDaemon starts heraldd again after it was killed.
func (w *world) restartDaemon() {
	w.t.Helper()
	if err := w.daemon.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.waitDaemon()
}

func pkgOf(appID string) string {
	aid, err := app.ParseID(appID)
	if err != nil {
		return appID // an invalid id: the daemon is to refuse it
	}
	return aid.Package
}

// call makes a D-Bus method call with a timeout.
func (w *world) call(dest, path, method string, args ...any) *dbus.Call {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return w.conn.Object(dest, dbus.ObjectPath(path)).CallWithContext(ctx, method, 0, args...)
}

// registerLomiri calls com.lomiri.PushNotifications.Register and returns the token.
func (w *world) registerLomiri(appID string) string {
	w.t.Helper()
	var token string
	path := "/com/lomiri/PushNotifications/" + app.Quote(pkgOf(appID))
	if err := w.call("com.lomiri.PushNotifications", path, "com.lomiri.PushNotifications.Register", appID).Store(&token); err != nil {
		w.t.Fatalf("Register(%s): %v", appID, err)
	}
	if token == "" {
		w.t.Fatalf("Register(%s) returned an empty token", appID)
	}
	return token
}

// popAll calls com.lomiri.Postal.PopAll.
func (w *world) popAll(appID string) ([]string, error) {
	var msgs []string
	path := "/com/lomiri/Postal/" + app.Quote(pkgOf(appID))
	err := w.call("com.lomiri.Postal", path, "com.lomiri.Postal.PopAll", appID).Store(&msgs)
	return msgs, err
}

// pushWeb posts body to the Web Push endpoint of token and returns the status.
func (w *world) pushWeb(token string, body []byte, ttl int, hdr map[string]string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, w.server.HTTP()+"/wpush/v1/"+token, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("TTL", fmt.Sprint(ttl))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := w.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// pushLomiri posts data to /notify for token and returns the status and body.
func (w *world) pushLomiri(appID, token string, data any, expire time.Time) (int, string, error) {
	body, _ := json.Marshal(map[string]any{
		"appid": appID, "token": token, "expire_on": expire.UTC().Format(time.RFC3339), "data": data,
	})
	resp, err := w.http.Post(w.server.HTTP()+"/notify", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// waitPost waits for a Post signal for appID.
func (w *world) waitPost(appID string, timeout time.Duration) {
	w.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case a := <-w.posts:
			if a == appID || strings.HasPrefix(a, appID) {
				return
			}
		case <-deadline:
			w.t.Fatalf("no Post signal for %s within %s", appID, timeout)
		}
	}
}

// installHelper writes a helper manifest for appID whose executable is script.
func (w *world) installHelper(appID, script string) {
	w.t.Helper()
	dir := filepath.Join(w.daemon.Dir, "data", "herald", "helpers")
	mkdir(w.t, dir)
	exe := filepath.Join(dir, appID+".sh")
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		w.t.Fatal(err)
	}
	manifest, _ := json.Marshal(map[string]string{"exec": filepath.Base(exe)})
	if err := os.WriteFile(filepath.Join(dir, appID+".json"), manifest, 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// fakeNotifications is a notification server exported on the test bus: the
// edge of the system, recording what heraldd asks it to show.
type fakeNotifications struct {
	mu     sync.Mutex // guards nextID
	nextID uint32
	shown  chan notifyCall
}

type notifyCall struct {
	AppName   string
	ReplaceID uint32
	Icon      string
	Summary   string
	Body      string
	Actions   []string
	Hints     map[string]dbus.Variant
	ID        uint32
}

func (f *fakeNotifications) Notify(appName string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	f.mu.Lock()
	id := replaces
	if id == 0 {
		f.nextID++
		id = f.nextID
	}
	f.mu.Unlock()
	f.shown <- notifyCall{appName, replaces, icon, summary, body, actions, hints, id}
	return id, nil
}

func (f *fakeNotifications) GetCapabilities() ([]string, *dbus.Error) {
	return []string{"body", "actions", "persistence", "sound"}, nil
}

func (f *fakeNotifications) GetServerInformation() (string, string, string, string, *dbus.Error) {
	return "fake", "herald-tests", "1", "1.2", nil
}

func (f *fakeNotifications) CloseNotification(id uint32) *dbus.Error { return nil }

// exportNotifications puts a fake notification server on the bus.
func (w *world) exportNotifications() *fakeNotifications {
	w.t.Helper()
	f, _ := w.exportNotificationsConn()
	return f
}
