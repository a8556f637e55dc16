package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/internal/testcert"
)

// The Lomiri wire protocol at both ends (issue 14): heraldd's Lomiri backend
// against herald-server's Lomiri listener over TLS, with a certificate made
// by the test and pinned with cert_pem_file.

// lomiriWorld is a world whose heraldd has a [lomiri] table pointing at the
// world's herald-server, which serves Lomiri devices on a TLS listener.
type lomiriWorld struct {
	*world
	lomiriAddr string
	device     string
	cert       *testcert.Cert
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// newLomiriWorld starts the world; pin is the certificate heraldd trusts
// (nil: the server's own).
func newLomiriWorld(t *testing.T, pin *testcert.Cert) *lomiriWorld {
	t.Helper()
	cert, err := testcert.New("push.test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := cert.Write(dir); err != nil {
		t.Fatal(err)
	}
	pinFile := cert.CertFile
	if pin != nil {
		pdir := t.TempDir()
		if err := pin.Write(pdir); err != nil {
			t.Fatal(err)
		}
		pinFile = pin.CertFile
	}
	laddr := freePort(t)
	device := fmt.Sprintf("e2e-%d", time.Now().UnixNano())
	// The HTTP API's port is known only once the server runs: the config
	// names it through a placeholder filled in after.
	lw := &lomiriWorld{lomiriAddr: laddr, device: device, cert: cert}
	lw.world = newWorld(t, worldOptions{
		serverArgs: []string{"--log-level", "debug", "--lomiri-listen", laddr, "--lomiri-cert", cert.CertFile, "--lomiri-key", cert.KeyFile},
		daemonArgs: []string{"--log-level", "debug"},
		configFor: func(httpBase string) string {
			return fmt.Sprintf(`[lomiri]
addr = %q
registration_url = %q
cert_pem_file = %q
device_id = %q
device = "mako"
image_channel = "ubports/stable"
build_number = 3
`, httpBase+"/delivery-hosts", httpBase, pinFile, device)
		},
	})
	return lw
}

// postJSON posts v to the server's HTTP API and returns status and body.
func (w *world) postJSON(path string, v any) (int, map[string]json.RawMessage) {
	w.t.Helper()
	b, _ := json.Marshal(v)
	resp, err := w.http.Post(w.server.HTTP()+path, "application/json", bytes.NewReader(b))
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out map[string]json.RawMessage
	_ = json.Unmarshal(body, &out)
	return resp.StatusCode, out
}

func (w *world) notifyLomiri(appID, token string, data any, extra map[string]any) {
	w.t.Helper()
	m := map[string]any{"appid": appID, "token": token, "expire_on": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "data": data}
	for k, v := range extra {
		m[k] = v
	}
	if st, out := w.postJSON("/notify", m); st != 200 {
		w.t.Fatalf("/notify = %d %v", st, out)
	}
}

// connection returns the daemon's connection of backend name
// (ListConnections).
func (w *world) connection(name string) map[string]any {
	w.t.Helper()
	var cs []map[string]dbus.Variant
	if err := w.call("org.herald.Daemon", "/org/herald/Daemon", dbusapi.DaemonIface+".ListConnections").Store(&cs); err != nil {
		w.t.Fatal(err)
	}
	for _, c := range cs {
		if n, _ := c["backend"].Value().(string); n == name {
			out := map[string]any{}
			for k, v := range c {
				out[k] = v.Value()
			}
			return out
		}
	}
	return nil
}

func (w *world) waitConnection(name, state string, also func(map[string]any) bool) map[string]any {
	w.t.Helper()
	var c map[string]any
	waitUntil(w.t, waitLong, name+" connection "+state, func() bool {
		c = w.connection(name)
		return c != nil && c["state"] == state && (also == nil || also(c))
	})
	return c
}

// frames returns heraldd's debug log lines of Lomiri frames.
func (w *world) frames() []string { return logFrames(w.daemon.Proc.Log) }

// logFrames returns the debug log lines of Lomiri frames in a log file.
func logFrames(path string) []string {
	b, _ := os.ReadFile(path)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `msg="lomiri frame"`) {
			out = append(out, l)
		}
	}
	return out
}

func (w *world) heraldCLI(args ...string) string {
	w.t.Helper()
	cmd := exec.Command(built.herald, args...)
	cmd.Env = w.busEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		w.t.Fatalf("herald %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestLomiriBackendE2E(t *testing.T) {
	w := newLomiriWorld(t, nil)
	const lapp = "com.example.lom_lom"

	// Register over D-Bus: the token is the one herald-server's /register
	// gives this device and lapp.
	tok := w.registerLomiri(lapp)
	st, out := w.postJSON("/register", map[string]string{"deviceid": w.device, "appid": lapp})
	var want string
	json.Unmarshal(out["token"], &want)
	if st != 200 || tok != want {
		t.Fatalf("Register gave %q; /register for the device gives %d %q", tok, st, want)
	}
	w.waitConnection("lomiri", "connected", nil)

	// /notify → Post signal → PopAll.
	w.notifyLomiri(lapp, tok, map[string]any{"text": "hello lomiri"}, nil)
	w.waitPost(lapp, waitLong)
	w.popWant(lapp, `{"text":"hello lomiri"}`)
	t.Logf("frame transcript (heraldd debug log):\n%s", strings.Join(w.frames(), "\n"))
	t.Logf("frame transcript (herald-server debug log):\n%s", strings.Join(logFrames(w.server.Proc.Log), "\n"))

	// A UnifiedPush lapp on the autopush connection at the same time.
	up := w.newUPApp("org.example.LomUP", 1)
	var result, reason string
	if err := w.call(distributorName, distributorPath, "org.unifiedpush.Distributor1.Register", up.name, up.token, "e2e").Store(&result, &reason); err != nil || result != "REGISTRATION_SUCCEEDED" {
		t.Fatalf("Distributor1.Register = %q %q %v", result, reason, err)
	}
	up.waitRecords(t, "NewEndpoint", 1, nil)
	w.waitConnection("autopush", "connected", nil)
	t.Logf("herald status:\n%s", w.heraldCLI("status"))
	var status struct {
		Connections   []struct{ Backend, State string }
		Registrations []struct {
			AppID   string `json:"app_id"`
			Backend string
		}
	}
	if err := json.Unmarshal([]byte(w.heraldCLI("status", "--json")), &status); err != nil {
		t.Fatal(err)
	}
	conns := map[string]string{}
	for _, c := range status.Connections {
		conns[c.Backend] = c.State
	}
	regs := map[string]string{}
	for _, r := range status.Registrations {
		regs[r.AppID] = r.Backend
	}
	if conns["autopush"] != "connected" || conns["lomiri"] != "connected" || regs[lapp] != "lomiri" || regs[up.name] != "autopush" {
		t.Errorf("herald status --json: connections %v, registrations %v; want both connected, %s on lomiri, %s on autopush", conns, regs, lapp, up.name)
	}

	// clear_pending and replace_tag, while heraldd is away.
	w.daemon.Kill()
	<-w.daemon.Done()
	w.notifyLomiri(lapp, tok, "x", nil)
	w.notifyLomiri(lapp, tok, "y", map[string]any{"clear_pending": true})
	w.notifyLomiri(lapp, tok, "t1", map[string]any{"replace_tag": "t"})
	w.notifyLomiri(lapp, tok, "t2", map[string]any{"replace_tag": "t"})
	w.restartDaemon()
	w.waitPost(lapp, waitLong)
	waitUntil(t, waitLong, "two queued messages", func() bool {
		msgs, _ := w.popAllPeek(lapp)
		return len(msgs) >= 2
	})
	w.popWant(lapp, `"y"`, `"t2"`)

	// A system-update broadcast for this device's image channel and model
	// reaches the system settings lapp (legacy lapp id, package "").
	if st, out := w.postJSON("/broadcast", map[string]any{"channel": "system", "expire_on": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		"data": map[string]any{"ubports/stable/mako": []any{4, "r4"}}}); st != 200 {
		t.Fatalf("/broadcast = %d %v", st, out)
	}
	w.waitPost("_ubuntu-system-settings", waitLong)
	var sys []string
	if err := w.call("com.lomiri.Postal", "/com/lomiri/Postal/_", "com.lomiri.Postal.PopAll", "_ubuntu-system-settings").Store(&sys); err != nil {
		t.Fatalf("PopAll(_ubuntu-system-settings): %v", err)
	}
	if len(sys) != 1 || !jsonEqual(sys[0], `{"ubports/stable/mako":[4,"r4"]}`) {
		t.Fatalf("PopAll(_ubuntu-system-settings) = %q, want the broadcast payload", sys)
	}

	// herald-server SIGKILLed with pending messages: delivered once after
	// its restart.
	w.daemon.Kill()
	<-w.daemon.Done()
	w.notifyLomiri(lapp, tok, "p1", nil)
	w.notifyLomiri(lapp, tok, "p2", nil)
	w.server.Kill()
	<-w.server.Done()
	if err := w.server.Restart(); err != nil {
		t.Fatal(err)
	}
	w.restartDaemon()
	waitUntil(t, waitLong, "both pending messages", func() bool {
		msgs, _ := w.popAllPeek(lapp)
		return len(msgs) >= 2
	})
	w.popWant(lapp, `"p1"`, `"p2"`)
	// Once: a reconnection brings nothing again, only what is new.
	if err := w.call("org.herald.Daemon", "/org/herald/Daemon", dbusapi.DaemonIface+".Reconnect").Err; err != nil {
		t.Fatalf("Reconnect: %v", err)
	}
	w.waitConnection("lomiri", "connected", nil)
	w.notifyLomiri(lapp, tok, "after", nil)
	waitUntil(t, waitLong, "the message after the reconnection", func() bool {
		msgs, _ := w.popAllPeek(lapp)
		return len(msgs) >= 1
	})
	w.popWant(lapp, `"after"`)

	// Unregister over D-Bus revokes the token at the server.
	path := "/com/lomiri/PushNotifications/" + app.Quote(pkgOf(lapp))
	if err := w.call("com.lomiri.PushNotifications", path, "com.lomiri.PushNotifications.Unregister", lapp).Err; err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	m := map[string]any{"appid": lapp, "token": tok, "expire_on": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "data": 1}
	if st, out := w.postJSON("/notify", m); st != 400 || !strings.Contains(string(out["error"]), "unknown-token") {
		t.Fatalf("/notify with the unregistered token = %d %v, want 400 unknown-token", st, out)
	}
}

// popAllPeek reads an app's queue through the management interface without
// consuming it.
func (w *world) popAllPeek(appID string) ([]string, error) {
	var entries []map[string]dbus.Variant
	err := w.call("org.herald.Daemon", "/org/herald/Daemon", dbusapi.DaemonIface+".Inbox", appID).Store(&entries)
	var out []string
	for _, e := range entries {
		if step, _ := e["step"].Value().(string); step == "queued" {
			id, _ := e["msg_id"].Value().(string)
			out = append(out, id)
		}
	}
	return out, err
}

func TestLomiriWrongCertificateE2E(t *testing.T) {
	other, err := testcert.New("push.test")
	if err != nil {
		t.Fatal(err)
	}
	w := newLomiriWorld(t, other)
	const pinApp = "com.example.pin_pin"
	// /register is plain HTTP here and works; the delivery connection,
	// pinned to another certificate with the same name, is refused.
	w.registerLomiri(pinApp)
	c := w.waitConnection("lomiri", "backoff", func(c map[string]any) bool {
		e, _ := c["last_error"].(string)
		return strings.Contains(e, "certificate")
	})
	t.Logf("lomiri connection: %v", c)
	if slices.ContainsFunc(w.frames(), func(l string) bool { return strings.Contains(l, "connack") }) {
		t.Fatal("heraldd got a connack over a connection it should have refused")
	}
}
