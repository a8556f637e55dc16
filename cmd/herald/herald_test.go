package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/internal/harness"
	"github.com/heraldpush/herald/internal/ntfytest"
	"github.com/heraldpush/herald/internal/testbus"
	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	e := &cli{stdout: &out, stderr: &errb, getenv: func(k string) string { return env[k] }}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := e.main(ctx, args)
	return result{code, out.String(), errb.String()}
}

func TestHelp(t *testing.T) {
	r := runCLI(t, nil, "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Commands:") {
		t.Fatalf("--help = %+v", r)
	}
	for _, c := range commands() {
		for _, args := range [][]string{{"help", c.name}, {c.name, "--help"}} {
			r := runCLI(t, nil, args...)
			out := r.stdout + r.stderr
			if r.code != 0 || !strings.Contains(out, "Usage: herald "+c.name) {
				t.Errorf("%v = %d %q", args, r.code, out)
			}
		}
	}
	if r := runCLI(t, nil, "send", "--help"); !strings.Contains(r.stderr, "-p256dh") {
		t.Errorf("send --help does not list its flags: %q", r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"inbox"}, 2, "want one APP_ID"},
		{[]string{"status", "extra"}, 2, "unexpected argument"},
		{[]string{"send", "ftp://x/y", "hi"}, 2, "invalid endpoint"},
		{[]string{"send", "--urgency", "now", "http://x/y", "hi"}, 2, "invalid --urgency"},
		{[]string{"send", "--p256dh", "AAAA", "http://x/y", "hi"}, 2, "--p256dh and --auth go together"},
		{[]string{"register", "not an app id"}, 1, "invalid application id"},
	}
	for _, tt := range tests {
		r := runCLI(t, nil, tt.args...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("herald %v = %d, stderr %q; want %d and %q", tt.args, r.code, r.stderr, tt.code, tt.want)
		}
	}
}

func TestSend(t *testing.T) {
	type got struct {
		header http.Header
		body   []byte
	}
	reqs := make(chan got, 2)
	status := http.StatusCreated
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		reqs <- got{r.Header.Clone(), b}
		w.Header().Set("Location", "http://push/m/abc")
		w.WriteHeader(status)
		io.WriteString(w, `{"code":404,"errno":102,"error":"Not Found","message":"unknown token"}`)
	}))
	defer srv.Close()

	r := runCLI(t, nil, "send", "--ttl", "60", "--urgency", "high", "--topic", "news", srv.URL+"/wpush/v1/tok", "hello")
	if r.code != 0 || !strings.Contains(r.stdout, "201 Created") || !strings.Contains(r.stdout, "Location: http://push/m/abc") {
		t.Fatalf("send = %+v", r)
	}
	g := <-reqs
	if string(g.body) != "hello" || g.header.Get("TTL") != "60" || g.header.Get("Urgency") != "high" || g.header.Get("Topic") != "news" {
		t.Fatalf("request = %v %q", g.header, g.body)
	}

	// Encrypted for a subscription: the subscriber can decrypt it.
	keys, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, nil, "send", "--p256dh", protocol.EncodeBase64URL(keys.Public()), "--auth", protocol.EncodeBase64URL(keys.Auth), srv.URL+"/wpush/v1/tok", "secret")
	if r.code != 0 {
		t.Fatalf("encrypted send = %+v", r)
	}
	g = <-reqs
	plain, err := webpush.Decrypt(g.body, keys)
	if err != nil || string(plain) != "secret" || g.header.Get("Content-Encoding") != "aes128gcm" {
		t.Fatalf("decrypt = %q, %v (headers %v)", plain, err, g.header)
	}

	status = http.StatusNotFound
	r = runCLI(t, nil, "send", srv.URL+"/wpush/v1/gone", "x")
	<-reqs
	if r.code != 1 || !strings.Contains(r.stdout, "404") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "unknown token") {
		t.Fatalf("send to an unknown token = %+v", r)
	}
}

func TestNoDaemon(t *testing.T) {
	bus := testbus.Start(t)
	env := map[string]string{"DBUS_SESSION_BUS_ADDRESS": bus.Address, "HOME": t.TempDir()}
	for _, args := range [][]string{{"status"}, {"inbox", "com.example.app_app"}, {"register", "com.example.app_app"}} {
		r := runCLI(t, env, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "heraldd is not running") {
			t.Errorf("%v without heraldd = %+v", args, r)
		}
	}
	// Loopback only: an autopush server that is down (a closed port), and
	// no [lomiri] service, so Lomiri apps use the same server.
	home := env["HOME"]
	if err := os.MkdirAll(filepath.Join(home, ".config", "herald"), 0o755); err != nil {
		t.Fatal(err)
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	down := "ws" + strings.TrimPrefix(closed.URL, "http") + "/"
	closed.Close()
	if err := os.WriteFile(filepath.Join(home, ".config", "herald", "config.toml"), []byte("server = \""+down+"\"\n[lomiri]\nenabled = false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, env, "doctor")
	if r.code != 1 {
		t.Fatalf("doctor = %+v", r)
	}
	for _, want := range []string{"FAIL  UnifiedPush apps: autopush server " + down + ": cannot reach", "FAIL  Lomiri apps: autopush server " + down,
		"FAIL  heraldd running", "fix: systemctl --user enable --now heraldd",
		"ok    session bus", "FAIL  notification server"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := runCLI(t, map[string]string{"HOME": t.TempDir()}, "status"); r.code != 1 || !strings.Contains(r.stderr, "no session bus") {
		t.Errorf("status without a bus = %+v", r)
	}
}

// TestWithDaemon runs the real heraldd and herald-server.
func TestWithDaemon(t *testing.T) {
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := harness.Build(ctx, bin); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bus, err := harness.StartBus(filepath.Join(dir, "bus"))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	sdir := filepath.Join(dir, "server")
	if err := os.MkdirAll(sdir, 0o700); err != nil {
		t.Fatal(err)
	}
	srv, err := harness.StartServer(filepath.Join(bin, "herald-server"), sdir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Kill()
	home := filepath.Join(dir, "home")
	d, err := harness.StartDaemon(filepath.Join(bin, "heraldd"), home, bus.Address, srv.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill()
	env := map[string]string{"DBUS_SESSION_BUS_ADDRESS": bus.Address, "HOME": home, "XDG_STATE_HOME": filepath.Join(home, "state"),
		"XDG_CONFIG_HOME": filepath.Join(home, "config")}
	conn, err := dbus.Connect(bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, dbusapi.DaemonName)); err != nil {
		t.Fatal(err)
	}
	if err := conn.AddMatchSignal(dbus.WithMatchInterface("com.lomiri.Postal"), dbus.WithMatchMember("Post")); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan *dbus.Signal, 100)
	conn.Signal(sigs)
	wait := func(member string) {
		t.Helper()
		for {
			select {
			case s := <-sigs:
				if strings.HasSuffix(s.Name, "."+member) {
					return
				}
			case <-d.Done():
				t.Fatalf("heraldd exited:\n%s", d.Tail(3000))
			case <-time.After(30 * time.Second):
				t.Fatalf("no %s signal", member)
			}
		}
	}
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusapi.DaemonName).Store(&has); err != nil {
		t.Fatal(err)
	}
	if !has {
		wait("NameOwnerChanged")
	}
	r := runCLI(t, env, "register", "com.example.cli_cli")
	tok := strings.TrimSpace(r.stdout)
	if r.code != 0 || tok == "" {
		t.Fatalf("register = %+v\n%s", r, d.Tail(3000))
	}
	r = runCLI(t, env, "send", srv.HTTP()+"/wpush/v1/"+tok, `{"hi":1}`)
	if r.code != 0 {
		t.Fatalf("send = %+v", r)
	}
	// The message waits in the queue: status shows it, inbox lists it.
	wait("Post")
	r = runCLI(t, env, "status", "--json")
	var st daemonStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil {
		t.Fatalf("status --json = %+v (%v)", r, err)
	}
	if len(st.Registrations) != 1 || st.Registrations[0].Queued != 1 || st.Registrations[0].Backend != "autopush" {
		t.Fatalf("status registrations = %+v", st.Registrations)
	}
	if len(st.Connections) != 1 || st.Connections[0].Backend != "autopush" || st.Connections[0].State != "connected" ||
		st.Connections[0].Server != srv.URL() || st.Connections[0].ConnectedSince == 0 {
		t.Fatalf("status connections = %+v, want the autopush backend connected", st.Connections)
	}
	if st.State != "connected" || st.Server != srv.URL() || st.Registrations[0].AppID != "com.example.cli_cli" || st.Counters["messages_received"] != 1 {
		t.Fatalf("status = %+v", st)
	}
	r = runCLI(t, env, "inbox", "com.example.cli_cli")
	if r.code != 0 || !strings.Contains(r.stdout, "queued") {
		t.Fatalf("inbox = %+v", r)
	}
	r = runCLI(t, env, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "connected") || !strings.Contains(r.stdout, "com.example.cli_cli") ||
		!strings.Contains(r.stdout, "connections: 1") {
		t.Fatalf("status = %+v", r)
	}
	env["XDG_CONFIG_HOME"] = filepath.Join(home, "config")
	if err := os.MkdirAll(filepath.Join(home, "config", "herald"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "config", "herald", "config.toml"), []byte("server = \""+srv.URL()+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, env, "doctor")
	if !strings.Contains(r.stdout, "ok    UnifiedPush apps: autopush server "+srv.URL()) || !strings.Contains(r.stdout, "ok    heraldd running") {
		t.Fatalf("doctor = %+v", r)
	}
}

// TestDoctorLomiriUpstreamConfig: an existing lomiri-push-service config.json
// is used for the Lomiri backend, and doctor says so and checks the service.
func TestDoctorLomiriUpstreamConfig(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/delivery-hosts" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"domain":"push.test","hosts":["127.0.0.1:5001"]}`)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	dir := t.TempDir()
	env := map[string]string{"HOME": dir, "XDG_CONFIG_HOME": filepath.Join(dir, "config"), "XDG_CONFIG_DIRS": filepath.Join(dir, "etc"),
		"XDG_STATE_HOME": filepath.Join(dir, "state")}
	upstream := filepath.Join(dir, "etc", "lomiri-push-service", "config.json")
	for p, content := range map[string]string{
		upstream: `{"addr": "` + srv.URL + `/delivery-hosts", "registration_url": "` + srv.URL + `", "cert_pem_file": ""}`,
		filepath.Join(dir, "config", "herald", "config.toml"): "server = \"\"\n[lomiri]\ndevice_id = \"D\"\n", // loopback only
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := runCLI(t, env, "doctor")
	want := "ok    Lomiri apps: Lomiri push service " + srv.URL + "/delivery-hosts, registration " + srv.URL + " (from lomiri-push-service config " + upstream + ")"
	if !strings.Contains(r.stdout, want) {
		t.Fatalf("doctor output lacks %q:\n%s", want, r.stdout)
	}
	t.Logf("herald doctor:\n%s", r.stdout)
}

// TestDoctorNtfy: with [unifiedpush] backend = "ntfy", doctor names the ntfy
// server and checks its health endpoint with the configured credentials
// (internal/ntfytest, a test double of ntfy's documented HTTP API).
func TestDoctorNtfy(t *testing.T) {
	srv := ntfytest.New()
	defer srv.Close()
	srv.Tokens = []string{"tk_good"}
	for _, tt := range []struct {
		token string
		want  string
	}{
		{"tk_good", "ok    UnifiedPush apps: ntfy server " + srv.URL},
		{"tk_bad", "FAIL  UnifiedPush apps: ntfy server " + srv.URL},
	} {
		home := t.TempDir()
		if err := os.MkdirAll(filepath.Join(home, ".config", "herald"), 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := "unifiedpush.backend = \"ntfy\"\nserver = \"ws://127.0.0.1:1/\"\n[lomiri]\nenabled = false\n[ntfy]\nurl = \"" + srv.URL + "\"\ntoken = \"" + tt.token + "\"\n"
		if err := os.WriteFile(filepath.Join(home, ".config", "herald", "config.toml"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, map[string]string{"HOME": home}, "doctor")
		if !strings.Contains(r.stdout, tt.want) {
			t.Errorf("doctor with token %s lacks %q:\n%s", tt.token, tt.want, r.stdout)
		}
	}
}

// TestDoctorWarnsPlainWebsocket: a ws:// server that is not on this machine
// is a warning (issue 11: the uaid is a bearer secret); ws:// to loopback
// and wss:// are not.
func TestDoctorWarnsPlainWebsocket(t *testing.T) {
	for server, warned := range map[string]bool{
		"ws://push.example.org/": true, "ws://192.0.2.7:8080/": true,
		"ws://127.0.0.1:9/": false, "ws://localhost:9/": false, "ws://[::1]:9/": false, "wss://push.example.org/": false,
	} {
		dir := t.TempDir()
		env := map[string]string{"HOME": dir, "XDG_CONFIG_HOME": filepath.Join(dir, "config"), "XDG_CONFIG_DIRS": filepath.Join(dir, "etc"),
			"XDG_STATE_HOME": filepath.Join(dir, "state")}
		conf := filepath.Join(dir, "config", "herald", "config.toml")
		if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(conf, []byte("server = \""+server+"\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, env, "doctor")
		got := strings.Contains(r.stdout, "warn  autopush server "+server+" is not encrypted")
		if got != warned {
			t.Errorf("server %s: warned %v, want %v:\n%s", server, got, warned, r.stdout)
		}
		if warned {
			t.Logf("herald doctor with server = %q:\n%s", server, grepLines(r.stdout, "warn", "fix: use wss"))
		}
	}
}

func grepLines(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
