package dbusapi

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
	"github.com/heraldpush/herald/internal/testbus"
)

// fakeBackend records calls and answers from its fields.
type fakeBackend struct {
	mu     sync.Mutex
	calls  []string
	upRegs []UPRegistration
	// byToken holds the current UnifiedPush registrations (guarded by mu).
	byToken map[string]UPRegistration
	queue   map[string][]string
	err     error // returned by every call when set
}

func (f *fakeBackend) record(format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
	return f.err
}

func (f *fakeBackend) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeBackend) RegisterLomiri(_ context.Context, appID string) (string, error) {
	if err := f.record("RegisterLomiri %s", appID); err != nil {
		return "", err
	}
	return "tok-" + appID, nil
}
func (f *fakeBackend) UnregisterLomiri(_ context.Context, appID string) error {
	return f.record("UnregisterLomiri %s", appID)
}
func (f *fakeBackend) Post(_ context.Context, appID string, payload []byte) error {
	if err := f.record("Post %s %s", appID, payload); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.queue == nil {
		f.queue = map[string][]string{}
	}
	f.queue[appID] = append(f.queue[appID], string(payload))
	return nil
}
func (f *fakeBackend) PopAll(_ context.Context, appID string) ([]string, error) {
	if err := f.record("PopAll %s", appID); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	q := f.queue[appID]
	delete(f.queue, appID)
	return q, nil
}
func (f *fakeBackend) ListPersistent(_ context.Context, appID string) ([]string, error) {
	return []string{"t1", "t2"}, f.record("ListPersistent %s", appID)
}
func (f *fakeBackend) ClearPersistent(_ context.Context, appID string, tags []string) (uint32, error) {
	return uint32(len(tags)) + 10, f.record("ClearPersistent %s %q", appID, tags)
}
func (f *fakeBackend) SetCounter(_ context.Context, appID string, count int32, visible bool) error {
	return f.record("SetCounter %s %d %v", appID, count, visible)
}
func (f *fakeBackend) RegisterUnifiedPush(_ context.Context, r UPRegistration) (string, error) {
	if err := f.record("RegisterUnifiedPush %s %s v%d", r.AppID, r.Service, r.Version); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if ex, ok := f.byToken[r.Token]; ok && ex.Owner != r.Owner {
		return "", ErrNotOwner
	}
	f.upRegs = append(f.upRegs, r)
	if f.byToken == nil {
		f.byToken = map[string]UPRegistration{}
	}
	f.byToken[r.Token] = r
	return "https://push.example/wpush/v1/" + r.Token, nil
}
func (f *fakeBackend) UnregisterUnifiedPush(_ context.Context, token string) error {
	if err := f.record("UnregisterUnifiedPush %s", token); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.byToken[token]; !ok {
		return ErrNotRegistered
	}
	delete(f.byToken, token)
	return nil
}
func (f *fakeBackend) UnifiedPushRegistration(_ context.Context, token string) (UPRegistration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.byToken[token]
	if !ok {
		return UPRegistration{}, ErrNotRegistered
	}
	return r, nil
}
func (f *fakeBackend) Status(context.Context) Status {
	return Status{State: "idle", Server: "wss://push.example"}
}
func (f *fakeBackend) Registrations(context.Context) ([]Registration, error) {
	return []Registration{{AppID: "com.example.app_app", Kind: app.KindLomiri, Endpoint: "https://push.example/wpush/v1/x", Queued: 2, Registered: time.Unix(1700000000, 0)}},
		f.record("Registrations")
}
func (f *fakeBackend) Inbox(_ context.Context, appID string) ([]InboxEntry, error) {
	return []InboxEntry{{MsgID: "m1", AppID: appID, Step: "queued", Received: time.Unix(1700000001, 0), Size: 12}},
		f.record("Inbox %s", appID)
}
func (f *fakeBackend) Counters(context.Context) (map[string]uint64, error) {
	return map[string]uint64{"messages_received": 3}, f.record("Counters")
}
func (f *fakeBackend) Reconnect(context.Context) error { return f.record("Reconnect") }

type env struct {
	bus     *testbus.Bus
	svc     *Service
	backend *fakeBackend
	client  *dbus.Conn
}

type envOption func(*Config)

// start runs a Service on a private bus. ProcRoot is an empty directory
// unless an option sets it, so test callers are unconfined.
func start(t *testing.T, busOpts []testbus.Option, opts ...envOption) *env {
	t.Helper()
	bus := testbus.Start(t, busOpts...)
	fb := &fakeBackend{}
	cfg := Config{Address: bus.Address, Backend: fb, ProcRoot: t.TempDir(), CallTimeout: 20 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	return &env{bus: bus, svc: svc, backend: fb, client: bus.Conn(t)}
}

func (e *env) call(t *testing.T, dest string, path dbus.ObjectPath, method string, args ...any) *dbus.Call {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return e.client.Object(dest, path).CallWithContext(ctx, method, 0, args...)
}

func dbusErrName(err error) string {
	if de, ok := err.(dbus.Error); ok {
		return de.Name
	}
	if de, ok := err.(*dbus.Error); ok {
		return de.Name
	}
	return fmt.Sprintf("not a dbus error: %v", err)
}

func dbusErrMsg(err error) string {
	var body []any
	switch de := err.(type) {
	case dbus.Error:
		body = de.Body
	case *dbus.Error:
		body = de.Body
	}
	if len(body) > 0 {
		if s, ok := body[0].(string); ok {
			return s
		}
	}
	return ""
}

func TestLomiriBothFamilies(t *testing.T) {
	e := start(t, nil)
	for _, fam := range []string{"lomiri", "ubuntu"} {
		t.Run(fam, func(t *testing.T) {
			pn := "com." + fam + ".PushNotifications"
			postal := "com." + fam + ".Postal"
			pnPath := dbus.ObjectPath("/com/" + fam + "/PushNotifications/com_2eexample_2eapp")
			postalPath := dbus.ObjectPath("/com/" + fam + "/Postal/com_2eexample_2eapp")
			var token string
			if err := e.call(t, pn, pnPath, pn+".Register", "com.example.app_app_1.2").Store(&token); err != nil {
				t.Fatalf("Register: %v", err)
			}
			if token != "tok-com.example.app_app" {
				t.Errorf("token %q: versioned id not normalised", token)
			}
			if err := e.call(t, postal, postalPath, postal+".Post", "com.example.app_app", `{"message":"hi"}`).Err; err != nil {
				t.Fatalf("Post: %v", err)
			}
			var msgs []string
			if err := e.call(t, postal, postalPath, postal+".PopAll", "com.example.app_app_1.2").Store(&msgs); err != nil {
				t.Fatalf("PopAll: %v", err)
			}
			if !slices.Equal(msgs, []string{`{"message":"hi"}`}) {
				t.Errorf("PopAll = %q", msgs)
			}
			if err := e.call(t, postal, postalPath, postal+".PopAll", "com.example.app_app").Store(&msgs); err != nil || len(msgs) != 0 {
				t.Errorf("second PopAll = %q, %v; want empty", msgs, err)
			}
			var tags []string
			if err := e.call(t, postal, postalPath, postal+".ListPersistent", "com.example.app_app").Store(&tags); err != nil || len(tags) != 2 {
				t.Errorf("ListPersistent = %q, %v", tags, err)
			}
			var n uint32
			if err := e.call(t, postal, postalPath, postal+".ClearPersistent", "com.example.app_app", "a", "b", "c").Store(&n); err != nil || n != 13 {
				t.Errorf("ClearPersistent(3 tags) = %d, %v; want 13", n, err)
			}
			if err := e.call(t, postal, postalPath, postal+".ClearPersistent", "com.example.app_app").Store(&n); err != nil || n != 10 {
				t.Errorf("ClearPersistent(no tags) = %d, %v; want 10", n, err)
			}
			if err := e.call(t, postal, postalPath, postal+".ClearPersistentList", "com.example.app_app", []string{"x"}).Store(&n); err != nil || n != 11 {
				t.Errorf("ClearPersistentList = %d, %v; want 11", n, err)
			}
			if err := e.call(t, postal, postalPath, postal+".SetCounter", "com.example.app_app", int32(7), true).Err; err != nil {
				t.Errorf("SetCounter: %v", err)
			}
			if err := e.call(t, pn, pnPath, pn+".Unregister", "com.example.app_app").Err; err != nil {
				t.Errorf("Unregister: %v", err)
			}
		})
	}
	want := []string{
		"RegisterLomiri com.example.app_app",
		`Post com.example.app_app {"message":"hi"}`,
		"PopAll com.example.app_app",
		"PopAll com.example.app_app",
		"ListPersistent com.example.app_app",
		`ClearPersistent com.example.app_app ["a" "b" "c"]`,
		`ClearPersistent com.example.app_app []`,
		`ClearPersistent com.example.app_app ["x"]`,
		"SetCounter com.example.app_app 7 true",
		"UnregisterLomiri com.example.app_app",
	}
	got := e.backend.Calls()
	if len(got) != 2*len(want) || !slices.Equal(got[:len(want)], want) || !slices.Equal(got[len(want):], want) {
		t.Errorf("backend calls:\n%s\nwant twice:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestLomiriAppIDForms(t *testing.T) {
	e := start(t, nil)
	tests := []struct {
		path, appID, base string
	}{
		{"/com/lomiri/PushNotifications/_", "_ubuntu-system-settings", "_ubuntu-system-settings"},
		{"/com/lomiri/PushNotifications/org_2eexample_2eApp", "org.example.App", "org.example.App"},
		{"/com/lomiri/PushNotifications/org_2Eexample_2EApp", "org.example.App", "org.example.App"}, // lenient unquote
	}
	for _, tt := range tests {
		var token string
		if err := e.call(t, "com.lomiri.PushNotifications", dbus.ObjectPath(tt.path), "com.lomiri.PushNotifications.Register", tt.appID).Store(&token); err != nil {
			t.Errorf("Register %s at %s: %v", tt.appID, tt.path, err)
			continue
		}
		if token != "tok-"+tt.base {
			t.Errorf("Register %s: token %q", tt.appID, token)
		}
	}
}

func TestLomiriErrors(t *testing.T) {
	e := start(t, nil)
	const pkgPath = "/com/lomiri/Postal/com_2eexample_2eapp"
	tests := []struct {
		name, path, method string
		args               []any
		errName, errMsg    string
	}{
		{"invalid app id", pkgPath, "com.lomiri.Postal.PopAll", []any{"not an id"}, "com.lomiri.Postal.Error.InvalidAppID", "invalid application id"},
		{"path mismatch", "/com/lomiri/Postal/com_2eother", "com.lomiri.Postal.PopAll", []any{"com.example.app_app"}, "com.lomiri.Postal.Error.PackageMismatch", "package must be prefix of app id"},
		{"base path", "/com/lomiri/Postal", "com.lomiri.Postal.PopAll", []any{"com.example.app_app"}, "com.lomiri.Postal.Error.PackageMismatch", "package must be prefix of app id"},
		{"bad json", pkgPath, "com.lomiri.Postal.Post", []any{"com.example.app_app", "{nope"}, "com.lomiri.Postal.Error.BadJSON", "bad json data"},
		{"oversized", pkgPath, "com.lomiri.Postal.Post", []any{"com.example.app_app", `"` + strings.Repeat("x", MaxPostPayload) + `"`}, "com.lomiri.Postal.Error.PayloadTooLarge", "payload too large"},
		{"wrong type", pkgPath, "com.lomiri.Postal.SetCounter", []any{"com.example.app_app", "seven", true}, "com.lomiri.Postal.Error.InvalidArgs", "bad argument type"},
		{"wrong count", pkgPath, "com.lomiri.Postal.Post", []any{"com.example.app_app"}, "com.lomiri.Postal.Error.InvalidArgs", "wrong number of arguments"},
		{"variadic non-string", pkgPath, "com.lomiri.Postal.ClearPersistent", []any{"com.example.app_app", "a", int32(1)}, "com.lomiri.Postal.Error.InvalidArgs", "bad argument type"},
		{"unknown method", pkgPath, "com.lomiri.Postal.Nope", nil, "org.freedesktop.DBus.Error.UnknownMethod", ""},
		{"deep path", pkgPath + "/x", "com.lomiri.Postal.PopAll", []any{"com.example.app_app"}, "org.freedesktop.DBus.Error.NoSuchObject", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.call(t, "com.lomiri.Postal", dbus.ObjectPath(tt.path), tt.method, tt.args...).Err
			if err == nil {
				t.Fatal("call succeeded, want error")
			}
			if dbusErrName(err) != tt.errName || !strings.Contains(dbusErrMsg(err), tt.errMsg) {
				t.Errorf("error %s %q, want %s containing %q", dbusErrName(err), dbusErrMsg(err), tt.errName, tt.errMsg)
			}
		})
	}
	// Nothing reached the backend, and the service still answers.
	if calls := e.backend.Calls(); len(calls) != 0 {
		t.Errorf("backend got calls for bad input: %q", calls)
	}
	var msgs []string
	if err := e.call(t, "com.lomiri.Postal", pkgPath, "com.lomiri.Postal.PopAll", "com.example.app_app").Store(&msgs); err != nil {
		t.Errorf("service not alive after bad calls: %v", err)
	}
	// Backend errors become clear D-Bus errors.
	e.backend.mu.Lock()
	e.backend.err = fmt.Errorf("store down: %w", ErrNotRegistered)
	e.backend.mu.Unlock()
	err := e.call(t, "com.lomiri.Postal", pkgPath, "com.lomiri.Postal.PopAll", "com.example.app_app").Err
	if dbusErrName(err) != "com.lomiri.Postal.Error.NotRegistered" || !strings.Contains(dbusErrMsg(err), "com.example.app_app") {
		t.Errorf("backend error became %s %q", dbusErrName(err), dbusErrMsg(err))
	}
}

func TestPostSignal(t *testing.T) {
	e := start(t, nil)
	if err := e.client.AddMatchSignal(dbus.WithMatchMember("Post")); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 10)
	e.client.Signal(ch)
	if err := e.svc.EmitPost("com.example.app_app"); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for len(got) < 2 {
		select {
		case s := <-ch:
			if len(s.Body) == 1 && s.Body[0] == "com.example.app_app" {
				got[string(s.Path)+" "+s.Name] = true
			}
		case <-deadline:
			t.Fatalf("Post signals: got %v", got)
		}
	}
	for _, want := range []string{
		"/com/lomiri/Postal/com_2eexample_2eapp com.lomiri.Postal.Post",
		"/com/ubuntu/Postal/com_2eexample_2eapp com.ubuntu.Postal.Post",
	} {
		if !got[want] {
			t.Errorf("missing signal %s (got %v)", want, got)
		}
	}
	if err := e.svc.EmitPost("bad id"); err == nil {
		t.Error("EmitPost accepted an invalid app id")
	}
}

func TestNameAlreadyOwned(t *testing.T) {
	e := start(t, nil)
	other, err := New(Config{Address: e.bus.Address, Backend: &fakeBackend{}})
	if err != nil {
		t.Fatal(err)
	}
	err = other.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "already owned") {
		t.Fatalf("second Start = %v, want already owned error", err)
	}
	// The first service still owns everything and answers.
	var token string
	if err := e.call(t, "com.ubuntu.PushNotifications", "/com/ubuntu/PushNotifications/ab", "com.ubuntu.PushNotifications.Register", "ab_c").Store(&token); err != nil {
		t.Errorf("first service broken: %v", err)
	}
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	var has bool
	if err := e.client.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, "com.lomiri.Postal").Store(&has); err != nil || has {
		t.Errorf("after Close com.lomiri.Postal owned=%v (%v)", has, err)
	}
}

func TestConfig(t *testing.T) {
	if _, err := New(Config{Backend: &fakeBackend{}}); err == nil || !strings.Contains(err.Error(), "address") {
		t.Errorf("New without an address: %v", err)
	}
	if _, err := New(Config{Address: "x"}); err == nil {
		t.Error("New without backend succeeded")
	}
}

func TestManagement(t *testing.T) {
	e := start(t, nil)
	var regs []map[string]dbus.Variant
	if err := e.call(t, DaemonName, DaemonPath, DaemonIface+".ListRegistrations").Store(&regs); err != nil {
		t.Fatal(err)
	}
	if len(regs) != 1 || regs[0]["app_id"].Value() != "com.example.app_app" || regs[0]["kind"].Value() != "lomiri" ||
		regs[0]["queued"].Value() != int32(2) || regs[0]["registered"].Value() != int64(1700000000) {
		t.Errorf("ListRegistrations = %v", regs)
	}
	var inbox []map[string]dbus.Variant
	if err := e.call(t, DaemonName, DaemonPath, DaemonIface+".Inbox", "com.example.app_app_3").Store(&inbox); err != nil {
		t.Fatal(err)
	}
	if len(inbox) != 1 || inbox[0]["app_id"].Value() != "com.example.app_app" || inbox[0]["size"].Value() != int32(12) {
		t.Errorf("Inbox = %v", inbox)
	}
	var counters map[string]uint64
	if err := e.call(t, DaemonName, DaemonPath, DaemonIface+".Counters").Store(&counters); err != nil || counters["messages_received"] != 3 {
		t.Errorf("Counters = %v, %v", counters, err)
	}
	if err := e.call(t, DaemonName, DaemonPath, DaemonIface+".Reconnect").Err; err != nil {
		t.Error(err)
	}
	if !slices.Contains(e.backend.Calls(), "Reconnect") {
		t.Error("Reconnect did not reach the backend")
	}

	// Properties: initial from Backend.Status, then SetStatus.
	var state dbus.Variant
	if err := e.call(t, DaemonName, DaemonPath, "org.freedesktop.DBus.Properties.Get", DaemonIface, "State").Store(&state); err != nil || state.Value() != "idle" {
		t.Errorf("State = %v, %v", state, err)
	}
	if err := e.client.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus.Properties"), dbus.WithMatchObjectPath(DaemonPath)); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 10)
	e.client.Signal(ch)
	since := time.Unix(1700000100, 0)
	e.svc.SetStatus(Status{State: "connected", Server: "wss://push.example", ConnectedSince: since})
	select {
	case s := <-ch:
		changed, _ := s.Body[1].(map[string]dbus.Variant)
		if s.Name != "org.freedesktop.DBus.Properties.PropertiesChanged" || s.Body[0] != DaemonIface ||
			changed["State"].Value() != "connected" || changed["ConnectedSince"].Value() != since.Unix() {
			t.Errorf("PropertiesChanged = %v", s.Body)
		}
		if _, ok := changed["Server"]; ok {
			t.Error("unchanged Server reported as changed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no PropertiesChanged")
	}
	var all map[string]dbus.Variant
	if err := e.call(t, DaemonName, DaemonPath, "org.freedesktop.DBus.Properties.GetAll", DaemonIface).Store(&all); err != nil || all["State"].Value() != "connected" {
		t.Errorf("GetAll = %v, %v", all, err)
	}
	err := e.call(t, DaemonName, DaemonPath, "org.freedesktop.DBus.Properties.Set", DaemonIface, "State", dbus.MakeVariant("x")).Err
	if dbusErrName(err) != "org.freedesktop.DBus.Error.PropertyReadOnly" {
		t.Errorf("Set = %v", err)
	}
}

func TestIntrospectOverBus(t *testing.T) {
	e := start(t, nil)
	tests := []struct {
		dest, path string
		want       []string
	}{
		{"com.lomiri.Postal", "/com/lomiri/Postal/com_2eexample_2eapp", []string{`<interface name="com.lomiri.Postal">`, `<signal name="Post">`}},
		{"com.ubuntu.PushNotifications", "/com/ubuntu/PushNotifications/_", []string{`<interface name="com.ubuntu.PushNotifications">`}},
		{DistributorName, string(DistributorPath), []string{`org.unifiedpush.Distributor1`, `org.unifiedpush.Distributor2`}},
		{DaemonName, string(DaemonPath), []string{`<property name="State"`, `org.freedesktop.DBus.Properties`}},
		{DaemonName, "/", []string{`<node name="com"/>`, `<node name="org"/>`}},
		{DaemonName, "/com/lomiri", []string{`<node name="Postal"/>`, `<node name="PushNotifications"/>`}},
	}
	for _, tt := range tests {
		var x string
		if err := e.call(t, tt.dest, dbus.ObjectPath(tt.path), "org.freedesktop.DBus.Introspectable.Introspect").Store(&x); err != nil {
			t.Errorf("Introspect %s: %v", tt.path, err)
			continue
		}
		parseXML(t, []byte(x))
		for _, w := range tt.want {
			if !strings.Contains(x, w) {
				t.Errorf("Introspect %s lacks %s:\n%s", tt.path, w, x)
			}
		}
	}
}

// TestStockTools drives the service with gdbus and dbus-send.
func TestStockTools(t *testing.T) {
	e := start(t, nil)
	tests := []struct {
		name string
		argv []string
		want string
		fail bool
	}{
		{"gdbus register", []string{"gdbus", "call", "--session", "--dest", "com.lomiri.PushNotifications", "--object-path", "/com/lomiri/PushNotifications/com_2eexample_2eapp",
			"--method", "com.lomiri.PushNotifications.Register", "com.example.app_app"}, "('tok-com.example.app_app',)", false},
		{"gdbus post", []string{"gdbus", "call", "--session", "--dest", "com.ubuntu.Postal", "--object-path", "/com/ubuntu/Postal/com_2eexample_2eapp",
			"--method", "com.ubuntu.Postal.Post", "com.example.app_app", `"{\"a\":1}"`}, "()", false},
		{"gdbus popall", []string{"gdbus", "call", "--session", "--dest", "com.ubuntu.Postal", "--object-path", "/com/ubuntu/Postal/com_2eexample_2eapp",
			"--method", "com.ubuntu.Postal.PopAll", "com.example.app_app"}, `(['{"a":1}'],)`, false},
		{"dbus-send clear variadic", []string{"dbus-send", "--session", "--print-reply", "--dest=com.lomiri.Postal", "/com/lomiri/Postal/com_2eexample_2eapp",
			"com.lomiri.Postal.ClearPersistent", "string:com.example.app_app", "string:a", "string:b"}, "uint32 12", false},
		{"dbus-send counter", []string{"dbus-send", "--session", "--print-reply", "--dest=com.lomiri.Postal", "/com/lomiri/Postal/com_2eexample_2eapp",
			"com.lomiri.Postal.SetCounter", "string:com.example.app_app", "int32:4", "boolean:false"}, "method return", false},
		{"dbus-send UP register", []string{"dbus-send", "--session", "--print-reply", "--dest=" + DistributorName, string(DistributorPath),
			"org.unifiedpush.Distributor1.Register", "string:org.example.Conn", "string:tok1", "string:demo"}, `string "REGISTRATION_SUCCEEDED"`, false},
		{"gdbus counters", []string{"gdbus", "call", "--session", "--dest", DaemonName, "--object-path", string(DaemonPath), "--method", DaemonIface + ".Counters"},
			"{'messages_received': uint64 3}", false},
		{"dbus-send mismatch", []string{"dbus-send", "--session", "--print-reply", "--dest=com.lomiri.Postal", "/com/lomiri/Postal/other",
			"com.lomiri.Postal.PopAll", "string:com.example.app_app"}, "com.lomiri.Postal.Error.PackageMismatch", true},
		{"dbus-send wrong type", []string{"dbus-send", "--session", "--print-reply", "--dest=com.lomiri.Postal", "/com/lomiri/Postal/com_2eexample_2eapp",
			"com.lomiri.Postal.PopAll", "int32:3"}, "com.lomiri.Postal.Error.InvalidArgs", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := exec.LookPath(tt.argv[0]); err != nil {
				t.Fatalf("%s not installed (make test installs it): %v", tt.argv[0], err)
			}
			cmd := exec.Command(tt.argv[0], tt.argv[1:]...)
			cmd.Env = e.bus.Env()
			out, err := cmd.CombinedOutput()
			if (err != nil) != tt.fail {
				t.Fatalf("%v: err %v, want failure %v\n%s", tt.argv, err, tt.fail, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("%v:\n%s\nwant %q", tt.argv, out, tt.want)
			}
		})
	}
}

// TestOtherUserRefused runs dbus-send as nobody.
func TestOtherUserRefused(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test must run as root in CI to start a process as another user")
		}
		t.Skip("needs root to run a process as another user")
	}
	e := start(t, nil)
	// Make the bus socket reachable for uid 65534.
	sock := strings.TrimPrefix(strings.Split(e.bus.Address, ",")[0], "unix:path=")
	for dir := filepath.Dir(sock); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o005 != 0o005 {
			if err := os.Chmod(dir, fi.Mode().Perm()|0o055); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"lomiri", []string{"--dest=com.lomiri.Postal", "/com/lomiri/Postal/com_2eexample_2eapp", "com.lomiri.Postal.PopAll", "string:com.example.app_app"}, "com.lomiri.Postal.Error.AccessDenied"},
		{"unifiedpush", []string{"--dest=" + DistributorName, string(DistributorPath), "org.unifiedpush.Distributor1.Register", "string:org.example.Conn", "string:tok", "string:d"}, "org.unifiedpush.Distributor1.Error.AccessDenied"},
		{"management", []string{"--dest=" + DaemonName, string(DaemonPath), DaemonIface + ".Counters"}, "org.herald.Daemon1.Error.AccessDenied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("dbus-send", append([]string{"--session", "--print-reply"}, tt.args...)...)
			cmd.Env = e.bus.Env()
			cmd.Dir = "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tt.want) || !strings.Contains(string(out), "uid 65534") {
				t.Errorf("dbus-send as nobody: err %v\n%s\nwant %s mentioning uid 65534", err, out, tt.want)
			}
		})
	}
	if calls := e.backend.Calls(); len(calls) != 0 {
		t.Errorf("backend reached by another user: %q", calls)
	}
}

// TestLomiriNamesReplaceable: the Lomiri/Ubuntu names are taken as upstream
// takes them (DESIGN §6): heraldd replaces a push daemon that allowed it,
// and a daemon that asks to replace heraldd gets the name and heraldd is
// told through Lost.
func TestLomiriNamesReplaceable(t *testing.T) {
	bus := testbus.Start(t)
	old := bus.Conn(t)
	if r, err := old.RequestName("com.lomiri.Postal", dbus.NameFlagAllowReplacement|dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("old daemon cannot own com.lomiri.Postal: %v %v", r, err)
	}
	svc, err := New(Config{Address: bus.Address, Backend: &fakeBackend{}, ProcRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatalf("Start beside a replaceable lomiri-push-service: %v", err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	var owner string
	if err := old.BusObject().Call("org.freedesktop.DBus.GetNameOwner", 0, "com.lomiri.Postal").Store(&owner); err != nil || owner == old.Names()[0] {
		t.Fatalf("com.lomiri.Postal owner = %q (%v), want heraldd", owner, err)
	}
	select {
	case name := <-svc.Lost():
		t.Fatalf("Lost(%s) before anything took a name", name)
	default:
	}
	next := bus.Conn(t)
	if r, err := next.RequestName("com.ubuntu.Postal", dbus.NameFlagReplaceExisting|dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("a new push daemon cannot replace heraldd on com.ubuntu.Postal: %v %v", r, err)
	}
	select {
	case name := <-svc.Lost():
		if name != "com.ubuntu.Postal" {
			t.Errorf("Lost = %q, want com.ubuntu.Postal", name)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Lost not signalled after the name was taken over")
	}
	// Herald's own names are never given away.
	if r, err := next.RequestName(DaemonName, dbus.NameFlagReplaceExisting|dbus.NameFlagDoNotQueue); err != nil || r == dbus.RequestNameReplyPrimaryOwner {
		t.Errorf("%s taken from heraldd: %v %v", DaemonName, r, err)
	}
}
