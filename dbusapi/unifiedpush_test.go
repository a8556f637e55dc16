package dbusapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/heraldpush/herald/internal/testbus"
)

// connectorBin is the upconnector test program, built by TestMain.
var connectorBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dbusapi-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	connectorBin = filepath.Join(dir, "upconnector")
	out, err := exec.Command("go", "build", "-o", connectorBin, "github.com/heraldpush/herald/internal/testapps/upconnector").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot build upconnector: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type connectorRecord struct {
	Method, Token, Endpoint, ID string
	Version                     int
	Message                     []byte
}

// installConnector writes an activatable .service file for name and returns
// a channel of the records the connector reports.
func installConnector(t *testing.T, e *env, name string, version int, extra ...string) <-chan connectorRecord {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.jsonl")
	exec := strings.Join(append([]string{connectorBin, "--name", name, "--version", strconv.Itoa(version), "--out", out}, extra...), " ")
	svc := fmt.Sprintf("[D-BUS Service]\nName=%s\nExec=%s\n", name, exec)
	if err := os.WriteFile(filepath.Join(e.bus.ServiceDir, name+".service"), []byte(svc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.client.BusObject().Call("org.freedesktop.DBus.ReloadConfig", 0).Err; err != nil {
		t.Fatal(err)
	}
	if err := e.client.AddMatchSignal(dbus.WithMatchInterface("org.herald.TestConnector")); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan *dbus.Signal, 20)
	e.client.Signal(sigs)
	recs := make(chan connectorRecord, 20)
	go func() {
		for s := range sigs {
			if s.Name != "org.herald.TestConnector.Recorded" || len(s.Body) != 1 {
				continue
			}
			line, _ := s.Body[0].(string)
			var r connectorRecord
			if err := json.Unmarshal([]byte(line), &r); err == nil {
				recs <- r
			}
		}
	}()
	t.Cleanup(func() {
		// Stop the activated connector: it exits when asked by name.
		var pid uint32
		if err := e.client.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, name).Store(&pid); err == nil {
			if p, err := os.FindProcess(int(pid)); err == nil {
				_ = p.Signal(os.Interrupt)
			}
		}
	})
	return recs
}

func next(t *testing.T, recs <-chan connectorRecord) connectorRecord {
	t.Helper()
	select {
	case r := <-recs:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("connector reported nothing within 20s")
		return connectorRecord{}
	}
}

func TestUnifiedPushV1(t *testing.T) {
	e := start(t, []testbus.Option{testbus.WithServiceDir()})
	const name = "org.example.ConnOne"
	recs := installConnector(t, e, name, 1)
	ok, err := e.svc.Activatable(context.Background(), name)
	if err != nil || !ok {
		t.Fatalf("Activatable(%s) = %v, %v", name, ok, err)
	}
	if ok, _ := e.svc.Activatable(context.Background(), "org.example.Missing"); ok {
		t.Error("missing service reported activatable")
	}

	var result, reason string
	if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor1.Register", name, "tok-1", "test app").Store(&result, &reason); err != nil {
		t.Fatal(err)
	}
	if result != "REGISTRATION_SUCCEEDED" || reason != "" {
		t.Fatalf("Register = %q, %q", result, reason)
	}
	r := next(t, recs)
	if r.Method != "NewEndpoint" || r.Version != 1 || r.Token != "tok-1" || r.Endpoint != "https://push.example/wpush/v1/tok-1" {
		t.Errorf("connector got %+v, want NewEndpoint", r)
	}
	e.backend.mu.Lock()
	reg := e.backend.upRegs[0]
	e.backend.mu.Unlock()
	reg.Registrant = strings.TrimSuffix(reg.Registrant, "/"+e.client.Names()[0])
	if reg != (UPRegistration{AppID: name, Service: name, Token: "tok-1", Description: "test app", Version: 1, Registrant: reg.Registrant}) || len(reg.Registrant) != 32 {
		t.Errorf("backend registration %+v", reg)
	}

	body := append([]byte{0, 1, 2, 0xff}, bytes.Repeat([]byte{0xaa}, MaxUPMessage-4)...)
	acked, err := e.svc.DeliverUnifiedPush(context.Background(), UPMessage{Service: name, Token: "tok-1", Version: 1, ID: "m1", Body: body})
	if err != nil || !acked {
		t.Fatalf("DeliverUnifiedPush = %v, %v", acked, err)
	}
	r = next(t, recs)
	if r.Method != "Message" || r.Token != "tok-1" || r.ID != "m1" || !bytes.Equal(r.Message, body) {
		t.Errorf("connector got %s %q id %q, %d bytes; want the exact %d bytes", r.Method, r.Token, r.ID, len(r.Message), len(body))
	}
	if err := e.svc.Unregistered(context.Background(), name, "tok-1", 1); err != nil {
		t.Fatal(err)
	}
	if r = next(t, recs); r.Method != "Unregistered" || r.Token != "tok-1" {
		t.Errorf("connector got %+v, want Unregistered", r)
	}
	// Unregister from the app is NoReply-style.
	if err := e.client.Object(DistributorName, DistributorPath).Call("org.unifiedpush.Distributor1.Unregister", dbus.FlagNoReplyExpected, "tok-1").Err; err != nil {
		t.Fatal(err)
	}
	// Oversized and empty messages are refused before any call.
	for _, n := range []int{0, MaxUPMessage + 1} {
		if _, err := e.svc.DeliverUnifiedPush(context.Background(), UPMessage{Service: name, Token: "tok-1", Version: 1, ID: "x", Body: make([]byte, n)}); err == nil {
			t.Errorf("DeliverUnifiedPush accepted %d bytes", n)
		}
	}
}

func TestUnifiedPushV2(t *testing.T) {
	e := start(t, []testbus.Option{testbus.WithServiceDir()})
	const acking, silent = "org.example.ConnTwo", "org.example.ConnMute"
	recs := installConnector(t, e, acking, 2)
	vapid := "B" + strings.Repeat("A", UPVAPIDLen-1)
	var res map[string]dbus.Variant
	args := map[string]dbus.Variant{"service": dbus.MakeVariant(acking), "token": dbus.MakeVariant("tok-2"), "vapid": dbus.MakeVariant(vapid)}
	if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor2.Register", args).Store(&res); err != nil {
		t.Fatal(err)
	}
	if res["success"].Value() != "REGISTRATION_SUCCEEDED" {
		t.Fatalf("Register = %v", res)
	}
	if r := next(t, recs); r.Method != "NewEndpoint" || r.Version != 2 || r.Token != "tok-2" || r.Endpoint == "" {
		t.Errorf("connector got %+v", r)
	}
	acked, err := e.svc.DeliverUnifiedPush(context.Background(), UPMessage{Service: acking, Token: "tok-2", Version: 2, ID: "m2", Body: []byte("cipher\x00text")})
	if err != nil || !acked {
		t.Errorf("v2 delivery = %v, %v; want acked", acked, err)
	}
	if r := next(t, recs); r.Method != "Message" || string(r.Message) != "cipher\x00text" || r.ID != "m2" {
		t.Errorf("connector got %+v", r)
	}

	// What real connectors answer: KUnifiedPush echoes the id, Flutter's
	// unifiedpush_linux answers with no values, newer revisions with {}.
	// Any of those is "delivered"; an error or a reply naming another
	// message is not.
	for i, tt := range []struct {
		reply     string
		delivered bool
	}{
		{"empty", true},
		{"dict", true},
		{"other-id", false},
		{"error", false},
	} {
		t.Run(tt.reply, func(t *testing.T) {
			name := fmt.Sprintf("%s%d", silent, i)
			recs := installConnector(t, e, name, 2, "--reply", tt.reply)
			id := "m-" + tt.reply
			acked, err := e.svc.DeliverUnifiedPush(context.Background(), UPMessage{Service: name, Token: "tok-3", Version: 2, ID: id, Body: []byte("x")})
			if acked != tt.delivered || (err == nil) != tt.delivered {
				t.Errorf("delivery to a connector answering %s = %v, %v; want delivered %v (an error when not)", tt.reply, acked, err, tt.delivered)
			}
			if r := next(t, recs); r.Method != "Message" || r.ID != id {
				t.Errorf("connector got %+v", r)
			}
		})
	}
	if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor2.Unregister", map[string]dbus.Variant{"token": dbus.MakeVariant("tok-2")}).Store(&res); err != nil {
		t.Errorf("Unregister: %v", err)
	}
}

func TestUnifiedPushRegisterChecks(t *testing.T) {
	e := start(t, nil)
	long := strings.Repeat("t", MaxUPToken+1)
	tests := []struct {
		name   string
		args   []any
		result string
		reason string
	}{
		{"pre-0.3 two args", []any{"org.example.Old", "tok"}, "NEW_ENDPOINT", ""},
		{"four args with vapid", []any{"org.example.Four", "tok4", "d", "B" + strings.Repeat("x", 86)}, "REGISTRATION_SUCCEEDED", ""},
		{"token too long", []any{"org.example.A", long, "d"}, "REGISTRATION_FAILED", "INTERNAL_ERROR"},
		{"empty token", []any{"org.example.A", "", "d"}, "REGISTRATION_FAILED", "INTERNAL_ERROR"},
		{"description too long", []any{"org.example.A", "t", strings.Repeat("d", MaxUPDescription+1)}, "REGISTRATION_FAILED", "INTERNAL_ERROR"},
		{"bad vapid", []any{"org.example.A", "t", "d", "short"}, "REGISTRATION_FAILED", "INTERNAL_ERROR"},
		// Not a bus name, and the caller owns none to call back instead.
		{"bad service", []any{"not a name", "t", "d"}, "REGISTRATION_FAILED", "INTERNAL_ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var result, reason string
			if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor1.Register", tt.args...).Store(&result, &reason); err != nil {
				t.Fatal(err)
			}
			if result != tt.result || reason != tt.reason {
				t.Errorf("Register = %q %q, want %q %q", result, reason, tt.result, tt.reason)
			}
		})
	}
	err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor1.Register", "a.b", int32(1), "d").Err
	if dbusErrName(err) != "org.unifiedpush.Distributor1.Error.InvalidArgs" {
		t.Errorf("wrong type: %v", err)
	}
	var res map[string]dbus.Variant
	if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor2.Register",
		map[string]dbus.Variant{"service": dbus.MakeVariant("org.example.A"), "token": dbus.MakeVariant(int32(5))}).Store(&res); err != nil {
		t.Fatal(err)
	}
	if res["success"].Value() != "REGISTRATION_FAILED" || res["reason"].Value() != "INTERNAL_ERROR" {
		t.Errorf("v2 with non-string token = %v", res)
	}
	e.backend.mu.Lock()
	e.backend.err = fmt.Errorf("no network: %w", ErrOffline)
	e.backend.mu.Unlock()
	if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor2.Register",
		map[string]dbus.Variant{"service": dbus.MakeVariant("org.example.A"), "token": dbus.MakeVariant("t")}).Store(&res); err != nil {
		t.Fatal(err)
	}
	if res["success"].Value() != "REGISTRATION_FAILED" || res["reason"].Value() != "NETWORK" {
		t.Errorf("offline backend = %v, want NETWORK", res)
	}
}

// TestConfinedCaller: a real Flatpak-like sandbox (bwrap, with its
// instance) of org.example.App may act for its app only.
func TestConfinedCaller(t *testing.T) {
	runtimeDir := t.TempDir()
	e := start(t, nil, func(c *Config) { c.RuntimeDir, c.ProcRoot = runtimeDir, "/proc" })
	call := func(dest, path, method string, args ...string) (string, error) {
		return sandboxCall(t, e.bus.Address, runtimeDir, "org.example.App", dest, path, method, args...)
	}
	if out, err := call("com.lomiri.PushNotifications", "/com/lomiri/PushNotifications/org_2eexample_2eApp", "com.lomiri.PushNotifications.Register", "string:org.example.App"); err != nil {
		t.Errorf("confined app registering itself: %v\n%s", err, out)
	}
	out, err := call("com.lomiri.PushNotifications", "/com/lomiri/PushNotifications/org_2eexample_2eOther", "com.lomiri.PushNotifications.Register", "string:org.example.Other")
	if err == nil || !strings.Contains(out, "com.lomiri.PushNotifications.Error.AccessDenied") || !strings.Contains(out, "org.example.App") {
		t.Errorf("confined app acting for another: %v\n%s", err, out)
	}
	if out, err := call(DistributorName, string(DistributorPath), "org.unifiedpush.Distributor1.Register", "string:org.example.App", "string:t1", "string:d"); err != nil || !strings.Contains(out, "REGISTRATION_SUCCEEDED") {
		t.Errorf("flatpak registering its own service: %v\n%s", err, out)
	}
	if out, err := call(DistributorName, string(DistributorPath), "org.unifiedpush.Distributor1.Register", "string:org.evil.Other", "string:t2", "string:d"); err != nil || !strings.Contains(out, "UNAUTHORIZED") {
		t.Errorf("flatpak registering another service: %v\n%s", err, out)
	}
	e.backend.mu.Lock()
	regs := e.backend.upRegs
	e.backend.mu.Unlock()
	if len(regs) != 1 || regs[0].AppID != "org.example.App" {
		t.Errorf("backend registrations %+v", regs)
	}
	if out, err := call(DaemonName, string(DaemonPath), DaemonIface+".Counters"); err == nil || !strings.Contains(out, "org.herald.Daemon1.Error.AccessDenied") {
		t.Errorf("confined app on management interface: %v\n%s", err, out)
	}
}

func TestRequireConfinement(t *testing.T) {
	e := start(t, nil, func(c *Config) { c.RequireConfinement = true })
	err := e.call(t, "com.lomiri.PushNotifications", "/com/lomiri/PushNotifications/ab", "com.lomiri.PushNotifications.Register", "ab_c").Err
	if dbusErrName(err) != "com.lomiri.PushNotifications.Error.AccessDenied" || !strings.Contains(dbusErrMsg(err), "require_confinement") {
		t.Errorf("unconfined caller with require_confinement: %v", err)
	}
	var result, reason string
	if err := e.call(t, DistributorName, DistributorPath, "org.unifiedpush.Distributor1.Register", "org.example.A", "t", "d").Store(&result, &reason); err != nil || reason != "UNAUTHORIZED" {
		t.Errorf("UP register = %q %q %v", result, reason, err)
	}
	// The management interface stays usable for the user's own tools.
	if err := e.call(t, DaemonName, DaemonPath, DaemonIface+".Counters").Err; err != nil {
		t.Errorf("management with require_confinement: %v", err)
	}
}

func TestIdentityCacheDroppedOnDisconnect(t *testing.T) {
	e := start(t, nil)
	forgotten := make(chan string, 10)
	e.svc.mu.Lock()
	e.svc.forgotten = func(name string) { forgotten <- name }
	e.svc.mu.Unlock()
	c, err := dbus.Connect(e.bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	name := c.Names()[0]
	if err := c.Object(DaemonName, DaemonPath).Call(DaemonIface+".Counters", 0).Err; err != nil {
		t.Fatal(err)
	}
	if _, ok := e.svc.cachedIdentity(name); !ok {
		t.Fatalf("identity of %s not cached", name)
	}
	c.Close()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case n := <-forgotten:
			if n != name {
				continue
			}
			if _, ok := e.svc.cachedIdentity(name); ok {
				t.Fatal("identity still cached after disconnect")
			}
			return
		case <-deadline:
			t.Fatal("identity not dropped after disconnect")
		}
	}
}
