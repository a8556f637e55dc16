package dbusapi

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/heraldpush/herald/internal/testbus"
)

func (f *fakeBackend) upReg(token string) (UPRegistration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.byToken[token]
	return r, ok
}

func register2(t *testing.T, c *dbus.Conn, service, token string) map[string]dbus.Variant {
	t.Helper()
	var res map[string]dbus.Variant
	err := c.Object(DistributorName, DistributorPath).Call("org.unifiedpush.Distributor2.Register", 0, map[string]dbus.Variant{
		"service": dbus.MakeVariant(service), "token": dbus.MakeVariant(token),
	}).Store(&res)
	if err != nil {
		t.Fatalf("Distributor2.Register(%s, %s): %v", service, token, err)
	}
	return res
}

// TestUnifiedPushOwnerUnconfined: a registration belongs to the connection
// that made it and to the owner of its service name; a second caller of
// the same user can neither unregister nor replace it.
func TestUnifiedPushOwnerUnconfined(t *testing.T) {
	e := start(t, []testbus.Option{testbus.WithServiceDir()})
	const name = "org.example.Owned"
	recs := installConnector(t, e, name, 2)
	if res := register2(t, e.client, name, "tok-a"); res["success"].Value() != upSucceeded {
		t.Fatalf("first Register = %v", res)
	}
	if r := next(t, recs); r.Method != "NewEndpoint" || r.Token != "tok-a" {
		t.Fatalf("connector got %+v, want NewEndpoint", r)
	}

	other := e.bus.Conn(t)
	obj := other.Object(DistributorName, DistributorPath)
	err := obj.Call("org.unifiedpush.Distributor1.Unregister", 0, "tok-a").Err
	if dbusErrName(err) != "org.unifiedpush.Distributor1.Error.AccessDenied" {
		t.Errorf("v1 Unregister of another caller's token: %v, want AccessDenied", err)
	}
	err = obj.Call("org.unifiedpush.Distributor2.Unregister", 0, map[string]dbus.Variant{"token": dbus.MakeVariant("tok-a")}).Err
	if dbusErrName(err) != "org.unifiedpush.Distributor2.Error.AccessDenied" {
		t.Errorf("v2 Unregister of another caller's token: %v, want AccessDenied", err)
	}
	for _, svc := range []string{"org.evil.Other", name} {
		res := register2(t, other, svc, "tok-a")
		if res["success"].Value() != upFailed || res["reason"].Value() != ReasonUnauthorized {
			t.Errorf("second caller registering tok-a for %s = %v, want REGISTRATION_FAILED UNAUTHORIZED", svc, res)
		}
	}
	var result, reason string
	if err := obj.Call("org.unifiedpush.Distributor1.Register", 0, "org.evil.Other", "tok-a", "d").Store(&result, &reason); err != nil || result != upFailed || reason != ReasonUnauthorized {
		t.Errorf("v1 replace by a second caller = %q %q %v", result, reason, err)
	}
	if r, ok := e.backend.upReg("tok-a"); !ok || r.Service != name {
		t.Fatalf("registration after the attempts: %+v %v, want the first caller's", r, ok)
	}

	// An unknown token is success with nothing to do, on both interfaces.
	if err := obj.Call("org.unifiedpush.Distributor1.Unregister", 0, "no-such-token").Err; err != nil {
		t.Errorf("v1 Unregister of an unknown token: %v", err)
	}
	var res map[string]dbus.Variant
	if err := obj.Call("org.unifiedpush.Distributor2.Unregister", 0, map[string]dbus.Variant{"token": dbus.MakeVariant("no-such-token")}).Store(&res); err != nil || len(res) != 0 {
		t.Errorf("v2 Unregister of an unknown token = %v, %v; want {}", res, err)
	}

	// The connector owns its service name: it may unregister too.
	var pid uint32
	if err := e.client.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, name).Store(&pid); err != nil {
		t.Fatal(err)
	}
	for _, c := range e.backend.Calls() {
		if strings.HasPrefix(c, "UnregisterUnifiedPush") {
			t.Fatalf("backend was asked to unregister: %q", e.backend.Calls())
		}
	}
	if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor1.Unregister", "tok-a").Err; err != nil {
		t.Fatalf("owner's Unregister: %v", err)
	}
	if _, ok := e.backend.upReg("tok-a"); ok {
		t.Error("owner's Unregister left the registration")
	}
}

// TestUnifiedPushServiceOwner: a connector that registers itself owns the
// token through its bus name; another connection cannot take it.
func TestUnifiedPushServiceOwner(t *testing.T) {
	e := start(t, []testbus.Option{testbus.WithServiceDir()})
	const name = "org.example.SelfReg"
	recs := installConnector(t, e, name, 2, "--register", "tok-s,tok-t")
	if err := e.client.BusObject().Call("org.freedesktop.DBus.StartServiceByName", 0, name, uint32(0)).Err; err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for len(got) < 4 {
		r := next(t, recs)
		got[r.Method+" "+r.Token]++
		if r.Method == "RegisterResult" && r.ID != upSucceeded {
			t.Fatalf("connector's own Register = %+v", r)
		}
	}
	for _, k := range []string{"RegisterResult tok-s", "RegisterResult tok-t", "NewEndpoint tok-s", "NewEndpoint tok-t"} {
		if got[k] != 1 {
			t.Errorf("connector records %v, want one %q", got, k)
		}
	}
	err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor1.Unregister", "tok-s").Err
	if dbusErrName(err) != "org.unifiedpush.Distributor1.Error.AccessDenied" {
		t.Errorf("Unregister of a connector's own token by another connection: %v", err)
	}
	if res := register2(t, e.client, "org.evil.Taker", "tok-t"); res["success"].Value() != upFailed {
		t.Errorf("replacing a connector's own token = %v", res)
	}
}

// TestUnifiedPushFlutterService: Flutter's connector sends its instance name
// ("default") as service; the distributor calls back the caller's own
// well-known name and records both.
func TestUnifiedPushFlutterService(t *testing.T) {
	e := start(t, []testbus.Option{testbus.WithServiceDir()})
	const name = "org.example.FlutterApp"
	recs := installConnector(t, e, name, 2, "--register", "tok-f", "--service", "default", "--reply", "empty")
	if err := e.client.BusObject().Call("org.freedesktop.DBus.StartServiceByName", 0, name, uint32(0)).Err; err != nil {
		t.Fatal(err)
	}
	seen := map[string]connectorRecord{}
	for len(seen) < 2 {
		r := next(t, recs)
		seen[r.Method] = r
	}
	if r := seen["RegisterResult"]; r.ID != upSucceeded {
		t.Fatalf("Register with service \"default\" = %+v", r)
	}
	if r := seen["NewEndpoint"]; r.Token != "tok-f" || r.Endpoint == "" {
		t.Errorf("NewEndpoint = %+v", r)
	}
	r, ok := e.backend.upReg("tok-f")
	if !ok || r.Service != name || r.Instance != "default" || r.AppID != name {
		t.Errorf("backend registration %+v, want service %s, instance default", r, name)
	}
	acked, err := e.svc.DeliverUnifiedPush(context.Background(), UPMessage{Service: r.Service, Token: "tok-f", Version: 2, ID: "m1", Body: []byte("hi")})
	if err != nil || !acked {
		t.Errorf("delivery to a Flutter-style connector = %v, %v; want delivered", acked, err)
	}
}

// TestUnifiedPushPre03: a two-argument Register is a DBUS_0.1/0.2
// connector: NEW_ENDPOINT, then messages as strings; a binary message
// cannot be given to it.
func TestUnifiedPushPre03(t *testing.T) {
	e := start(t, []testbus.Option{testbus.WithServiceDir()})
	const name = "org.example.OldConn"
	recs := installConnector(t, e, name, 0)
	var result, reason string
	if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor1.Register", name, "tok-o").Store(&result, &reason); err != nil || result != upNewEndpoint {
		t.Fatalf("two-argument Register = %q %q %v", result, reason, err)
	}
	if r, _ := e.backend.upReg("tok-o"); r.Version != UPVersion0 {
		t.Errorf("registration version %d, want %d", r.Version, UPVersion0)
	}
	if r := next(t, recs); r.Method != "NewEndpoint" || r.Token != "tok-o" {
		t.Errorf("connector got %+v", r)
	}
	acked, err := e.svc.DeliverUnifiedPush(context.Background(), UPMessage{Service: name, Token: "tok-o", Version: UPVersion0, ID: "m", Body: []byte("text ✓")})
	if err != nil || !acked {
		t.Fatalf("text message to a pre-0.3 connector = %v %v", acked, err)
	}
	if r := next(t, recs); r.Method != "Message" || string(r.Message) != "text ✓" {
		t.Errorf("connector got %+v", r)
	}
	if _, err := e.svc.DeliverUnifiedPush(context.Background(), UPMessage{Service: name, Token: "tok-o", Version: UPVersion0, ID: "m", Body: []byte{0xff, 0, 1}}); err == nil {
		t.Error("binary message given to a pre-0.3 connector")
	}
}

// confinedCaller runs dbus-send as a Flatpak app: under real bwrap, with
// its instance written under runtimeDir before the call. It returns
// dbus-send's output and error.
func confinedCaller(t *testing.T, busAddr, runtimeDir, appID string, method string, args ...string) (string, error) {
	t.Helper()
	return sandboxCall(t, busAddr, runtimeDir, appID, DistributorName, string(DistributorPath), method, args...)
}

var instances atomic.Int64

// sandboxCall makes a D-Bus call with dbus-send from a real Flatpak-like
// sandbox of appID (see startSandbox).
func sandboxCall(t *testing.T, busAddr, runtimeDir, appID, dest, path, method string, args ...string) (string, error) {
	t.Helper()
	inst := strconv.FormatInt(2000+instances.Add(1), 10)
	argv := append([]string{"dbus-send", "--bus=" + busAddr, "--print-reply", "--dest=" + dest, path, method}, args...)
	s := startSandbox(t, flatpakInfo(appID, inst), argv...)
	writeInstance(t, runtimeDir, inst, s.info)
	if _, err := s.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	err := s.cmd.Wait()
	return s.out.String(), err
}

// TestUnifiedPushOwnerConfined: under require_confinement, with two real
// processes seen as two Flatpak apps, the second app can neither
// unregister nor take the first app's token, and an unconfined caller can
// do nothing; another process of the first app can unregister it.
func TestUnifiedPushOwnerConfined(t *testing.T) {
	root := t.TempDir()
	e := start(t, nil, func(c *Config) { c.RuntimeDir, c.ProcRoot = root, "/proc"; c.RequireConfinement = true })
	addr := e.bus.Address
	const app, other = "org.example.App", "org.example.Other"
	out, err := confinedCaller(t, addr, root, app, "org.unifiedpush.Distributor1.Register", "string:"+app, "string:tok-app", "string:d")
	if err != nil || !strings.Contains(out, upSucceeded) {
		t.Fatalf("confined app registering its own service: %v\n%s", err, out)
	}
	out, err = confinedCaller(t, addr, root, other, "org.unifiedpush.Distributor1.Unregister", "string:tok-app")
	if err == nil || !strings.Contains(out, "AccessDenied") {
		t.Errorf("another confined app unregistering the token: %v\n%s", err, out)
	}
	out, err = confinedCaller(t, addr, root, other, "org.unifiedpush.Distributor1.Register", "string:"+other, "string:tok-app", "string:d")
	if err != nil || !strings.Contains(out, upFailed) || !strings.Contains(out, ReasonUnauthorized) {
		t.Errorf("another confined app taking the token: %v\n%s", err, out)
	}
	out, err = confinedCaller(t, addr, root, other, "org.unifiedpush.Distributor1.Register", "string:"+app, "string:tok-other", "string:d")
	if err != nil || !strings.Contains(out, ReasonUnauthorized) {
		t.Errorf("confined app naming another app's service: %v\n%s", err, out)
	}
	err = e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor1.Unregister", "tok-app").Err
	if dbusErrName(err) != "org.unifiedpush.Distributor1.Error.AccessDenied" || !strings.Contains(dbusErrMsg(err), "require_confinement") {
		t.Errorf("unconfined Unregister under require_confinement: %v", err)
	}
	if r, ok := e.backend.upReg("tok-app"); !ok || r.Owner != "flatpak:"+app {
		t.Fatalf("registration %+v %v, want owned by flatpak:%s", r, ok, app)
	}
	if slices.ContainsFunc(e.backend.Calls(), func(c string) bool { return strings.HasPrefix(c, "UnregisterUnifiedPush") }) {
		t.Fatalf("backend was asked to unregister: %q", e.backend.Calls())
	}
	// Another process of the same app is the same owner.
	out, err = confinedCaller(t, addr, root, app, "org.unifiedpush.Distributor1.Unregister", "string:tok-app")
	if err != nil {
		t.Fatalf("the app's own Unregister: %v\n%s", err, out)
	}
	if _, ok := e.backend.upReg("tok-app"); ok {
		t.Error("the app's own Unregister left the registration")
	}
}

// TestConfinedServiceNames: a confined caller of any kind (AppArmor/click,
// snap, Flatpak) may name its app id, a name it owns on the bus now, and —
// Flatpak only, which exports them — a name below its app id; nothing else.
func TestConfinedServiceNames(t *testing.T) {
	e := start(t, nil)
	if reply, err := e.client.RequestName("org.example.Owned", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName = %v, %v", reply, err)
	}
	sender := e.client.Names()[0]
	ctx := context.Background()
	for _, tt := range []struct {
		id      Identity
		service string
		ok      bool
	}{
		{Identity{Confined: true, Source: SourceFlatpak, AppID: "org.example.App"}, "org.example.App", true},
		{Identity{Confined: true, Source: SourceFlatpak, AppID: "org.example.App"}, "org.example.App.Push", true},
		{Identity{Confined: true, Source: SourceFlatpak, AppID: "org.example.App"}, "org.example.Other", false},
		{Identity{Confined: true, Source: SourceSnap, AppID: "foo_bar"}, "org.example.App", false},
		{Identity{Confined: true, Source: SourceSnap, AppID: "foo_bar"}, "org.example.Owned", true},
		{Identity{Confined: true, Source: SourceAppArmor, AppID: "com.example.pkg_app"}, "com.example.pkg_app", true},
		{Identity{Confined: true, Source: SourceAppArmor, AppID: "com.example.pkg_app"}, "com.example.pkg_app.Sub", false},
		{Identity{Confined: true, Source: SourceAppArmor, AppID: "com.example.pkg_app"}, "org.example.Owned", true},
	} {
		if got := e.svc.mayNameService(ctx, sender, tt.id, tt.service); got != tt.ok {
			t.Errorf("%s naming %s = %v, want %v", tt.id, tt.service, got, tt.ok)
		}
	}
}
