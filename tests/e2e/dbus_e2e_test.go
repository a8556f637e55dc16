package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

// The D-Bus app APIs (issue 4) exercised through the real heraldd and
// herald-server, with godbus and with the stock gdbus and dbus-send tools.

const (
	distributorName = "org.unifiedpush.Distributor.herald"
	distributorPath = "/org/unifiedpush/Distributor"
	waitLong        = 60 * time.Second
)

// family is one of the two Lomiri/Ubuntu name families.
type family string

func (f family) pushName() string   { return "com." + string(f) + ".PushNotifications" }
func (f family) postalName() string { return "com." + string(f) + ".Postal" }
func (f family) pushPath(appID string) string {
	return "/com/" + string(f) + "/PushNotifications/" + app.Quote(pkgOf(appID))
}
func (f family) postalPath(appID string) string {
	return "/com/" + string(f) + "/Postal/" + app.Quote(pkgOf(appID))
}

// busEnv is an environment for a stock tool that talks to the test bus.
func (w *world) busEnv() []string {
	return append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS="+w.bus.Address)
}

// tool runs a stock D-Bus command line tool against the test bus.
func (w *world) tool(name string, args ...string) (string, error) {
	w.t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		w.t.Fatalf("%s is not installed: run make test / scripts/deps.sh", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = w.busEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// gdbusCall runs `gdbus call` and returns its output.
func (w *world) gdbusCall(dest, path, method string, args ...string) (string, error) {
	w.t.Helper()
	return w.tool("gdbus", append([]string{"call", "--session", "--dest", dest, "--object-path", path, "--method", method}, args...)...)
}

// dbusSend runs `dbus-send --print-reply` and returns its output.
func (w *world) dbusSend(dest, path, method string, args ...string) (string, error) {
	w.t.Helper()
	return w.tool("dbus-send", append([]string{"--session", "--print-reply", "--dest=" + dest, path, method}, args...)...)
}

var (
	// gdbusString matches the single string of a "('value',)" reply.
	gdbusString = regexp.MustCompile(`^\('([^']*)',\)$`)
	// dbusSendString matches a `string "value"` line of dbus-send.
	dbusSendString = regexp.MustCompile(`(?m)^\s*string "([^"]*)"\s*$`)
	// gdbusArrayItem matches one item of an "as" reply printed by gdbus.
	gdbusArrayItem = regexp.MustCompile(`'((?:[^'\\]|\\.)*)'`)
)

// watchPosts subscribes to the Post signals of one name family on a
// connection of its own and returns the channel they arrive on.
func (w *world) watchPosts(f family) <-chan *dbus.Signal {
	w.t.Helper()
	c, err := dbus.Connect(w.bus.Address)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	if err := c.AddMatchSignal(dbus.WithMatchInterface(f.postalName()), dbus.WithMatchMember("Post")); err != nil {
		w.t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 100)
	c.Signal(ch)
	return ch
}

// waitPostOn waits for a Post(appID) signal of family f on the object path
// of appID's package.
func waitPostOn(t *testing.T, ch <-chan *dbus.Signal, f family, appID string) {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case s := <-ch:
			if s.Name != f.postalName()+".Post" || len(s.Body) != 1 {
				continue
			}
			if got, _ := s.Body[0].(string); got == appID {
				if want := dbus.ObjectPath(f.postalPath(appID)); s.Path != want {
					t.Fatalf("Post(%s) signal on path %s, want %s", appID, s.Path, want)
				}
				return
			}
		case <-deadline:
			t.Fatalf("no %s.Post signal for %s within %s", f.postalName(), appID, waitLong)
		}
	}
}

// registerFamily calls Register of family f with godbus.
func (w *world) registerFamily(f family, appID string) (string, error) {
	var token string
	err := w.call(f.pushName(), f.pushPath(appID), f.pushName()+".Register", appID).Store(&token)
	return token, err
}

// popAllFamily calls PopAll of family f with godbus.
func (w *world) popAllFamily(f family, appID string) ([]string, error) {
	var msgs []string
	err := w.call(f.postalName(), f.postalPath(appID), f.postalName()+".PopAll", appID).Store(&msgs)
	return msgs, err
}

// TestDBusLomiriFamilies registers a Lomiri-style app through both name
// families with godbus, gdbus and dbus-send, has its app server post to
// /notify and to the Web Push endpoint, and checks the Post signal, PopAll
// and that the token is stable across calls and a daemon restart.
func TestDBusLomiriFamilies(t *testing.T) {
	w := newWorld(t, worldOptions{})
	apps := map[family]string{"lomiri": "com.example.lomirifam_app", "ubuntu": "com.example.ubuntufam_app"}
	tokens := map[family]string{}
	for _, f := range []family{"lomiri", "ubuntu"} {
		appID := apps[f]
		t.Run(string(f), func(t *testing.T) {
			token, err := w.registerFamily(f, appID)
			if err != nil || token == "" {
				t.Fatalf("godbus %s.Register(%s) = %q, %v", f.pushName(), appID, token, err)
			}
			tokens[f] = token

			out, err := w.gdbusCall(f.pushName(), f.pushPath(appID), f.pushName()+".Register", appID)
			if err != nil {
				t.Fatalf("gdbus Register: %v\n%s", err, out)
			}
			if m := gdbusString.FindStringSubmatch(strings.TrimSpace(out)); m == nil || m[1] != token {
				t.Errorf("gdbus Register printed %q, want the token %q", out, token)
			}
			out, err = w.dbusSend(f.pushName(), f.pushPath(appID), f.pushName()+".Register", "string:"+appID+"_1.2")
			if err != nil {
				t.Fatalf("dbus-send Register: %v\n%s", err, out)
			}
			if m := dbusSendString.FindStringSubmatch(out); m == nil || m[1] != token {
				t.Errorf("dbus-send Register of the versioned id printed %q, want the token %q", out, token)
			}
			other := family("ubuntu")
			if f == "ubuntu" {
				other = "lomiri"
			}
			if tok, err := w.registerFamily(other, appID); err != nil || tok != token {
				t.Errorf("Register through %s = %q, %v; want the same token %q", other.pushName(), tok, err, token)
			}

			posts := w.watchPosts(f)
			// The app server posts to /notify.
			status, body, err := w.pushLomiri(appID, token, map[string]any{"via": "notify", "family": string(f)}, time.Now().Add(time.Hour))
			if err != nil || status != 200 || !strings.Contains(body, `"ok":true`) {
				t.Fatalf("/notify = %d %s %v", status, body, err)
			}
			waitPostOn(t, posts, f, appID)
			msgs, err := w.popAllFamily(f, appID)
			if err != nil {
				t.Fatalf("godbus PopAll: %v", err)
			}
			if want := fmt.Sprintf(`{"via":"notify","family":%q}`, f); len(msgs) != 1 || !jsonEqual(msgs[0], want) {
				t.Fatalf("godbus PopAll = %q, want [%s]", msgs, want)
			}

			// The app server posts to the Web Push endpoint (plaintext JSON).
			if status, err := w.pushWeb(token, []byte(`{"via":"wpush"}`), 60, nil); err != nil || status != 201 {
				t.Fatalf("POST /wpush/v1/<token> = %d %v", status, err)
			}
			waitPostOn(t, posts, f, appID)
			out, err = w.gdbusCall(f.postalName(), f.postalPath(appID), f.postalName()+".PopAll", appID)
			if err != nil {
				t.Fatalf("gdbus PopAll: %v\n%s", err, out)
			}
			items := gdbusArrayItem.FindAllStringSubmatch(out, -1)
			if len(items) != 1 || !jsonEqual(items[0][1], `{"via":"wpush"}`) {
				t.Fatalf("gdbus PopAll printed %q, want the one pushed message", out)
			}
			if msgs, err := w.popAllFamily(f, appID); err != nil || len(msgs) != 0 {
				t.Fatalf("PopAll after consuming = %q, %v; want nothing", msgs, err)
			}
		})
	}
	if t.Failed() {
		return
	}

	// The tokens survive a daemon restart, and still reach the app.
	if err := w.daemon.Stop(30 * time.Second); err != nil {
		t.Fatalf("heraldd did not stop cleanly: %v", err)
	}
	w.restartDaemon()
	for _, f := range []family{"lomiri", "ubuntu"} {
		appID := apps[f]
		token, err := w.registerFamily(f, appID)
		if err != nil || token != tokens[f] {
			t.Fatalf("Register(%s) after restart = %q, %v; want %q", appID, token, err, tokens[f])
		}
		posts := w.watchPosts(f)
		status, body, err := w.pushLomiri(appID, token, map[string]any{"after": "restart"}, time.Now().Add(time.Hour))
		if err != nil || status != 200 {
			t.Fatalf("/notify after restart = %d %s %v", status, body, err)
		}
		waitPostOn(t, posts, f, appID)
		if msgs, err := w.popAllFamily(f, appID); err != nil || len(msgs) != 1 || !jsonEqual(msgs[0], `{"after":"restart"}`) {
			t.Fatalf("PopAll after restart = %q, %v", msgs, err)
		}
	}
	// A kill without any shutdown keeps the token too.
	w.daemon.Kill()
	w.restartDaemon()
	for _, f := range []family{"lomiri", "ubuntu"} {
		if token, err := w.registerFamily(f, apps[f]); err != nil || token != tokens[f] {
			t.Fatalf("Register(%s) after SIGKILL = %q, %v; want %q", apps[f], token, err, tokens[f])
		}
	}
}

// upApp is a UnifiedPush test connector started by D-Bus activation.
type upApp struct {
	name  string
	out   string // JSON lines it records
	token string // the connector token it registers with
}

func (w *world) newUPApp(name string, version int, extra ...string) upApp {
	w.t.Helper()
	a := upApp{name: name, out: filepath.Join(w.dir, name+".jsonl"), token: "tok-" + name}
	cmd := fmt.Sprintf("%s --name %s --version %d --out %s", built.upconnector, name, version, a.out)
	if len(extra) > 0 {
		cmd += " " + strings.Join(extra, " ")
	}
	writeService(w.t, w.bus.ServiceDir, name, cmd)
	return a
}

// records returns the connector's recorded events of kind.
func (a upApp) records(kind string) []map[string]any {
	var out []map[string]any
	for _, ev := range readEvents(a.out) {
		if eventKind(ev) == kind {
			out = append(out, ev)
		}
	}
	return out
}

// waitRecords waits until the connector recorded n events of kind for which
// match is true, and returns them.
func (a upApp) waitRecords(t *testing.T, kind string, n int, match func(map[string]any) bool) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var got []map[string]any
		for _, ev := range a.records(kind) {
			if match == nil || match(ev) {
				got = append(got, ev)
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s recorded %d %s events, want %d within %s (all: %v)", a.name, len(got), kind, n, waitLong, readEvents(a.out))
		}
		<-tick.C
	}
}

func withID(id string) func(map[string]any) bool {
	return func(ev map[string]any) bool { s, _ := ev["id"].(string); return s == id }
}

// endpointToken returns the token of the Web Push endpoint of a NewEndpoint event.
func endpointToken(t *testing.T, ev map[string]any) string {
	t.Helper()
	endpoint, _ := ev["endpoint"].(string)
	i := strings.LastIndex(endpoint, "/wpush/v1/")
	if i < 0 || i+len("/wpush/v1/") == len(endpoint) {
		t.Fatalf("NewEndpoint endpoint %q is not a Web Push endpoint", endpoint)
	}
	return endpoint[i+len("/wpush/v1/"):]
}

// register2 calls Distributor2.Register with godbus.
func (w *world) register2(args map[string]dbus.Variant) (map[string]dbus.Variant, error) {
	var res map[string]dbus.Variant
	err := w.call(distributorName, distributorPath, "org.unifiedpush.Distributor2.Register", args).Store(&res)
	return res, err
}

// sendWithNPM is an app server using the web-push npm package (tests/npm/send.js).
func sendWithNPM(t *testing.T, req map[string]any) (status int, body string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: run make test / scripts/deps.sh")
	}
	dir := filepath.Join("..", "npm")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "web-push")); err != nil {
		t.Fatal("tests/npm/node_modules is missing: run make test / scripts/deps.sh (npm ci in tests/npm)")
	}
	in, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "send.js")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("send.js: %v\n%s", err, stderr.String())
	}
	var res struct {
		Status int    `json:"status"`
		Body   string `json:"body"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("send.js printed %q: %v", out, err)
	}
	return res.Status, res.Body
}

// TestDBusUnifiedPush registers Connector1 and Connector2 apps started by
// D-Bus activation, delivers Web Push messages encrypted by the web-push npm
// package and by webpush.Encrypt, checks the exact ciphertext reaches the
// app and decrypts, that an unacked v2 message is delivered again after a
// daemon restart while an acked one is delivered once, and that Unregister
// ends with Unregistered.
func TestDBusUnifiedPush(t *testing.T) {
	w := newWorld(t, worldOptions{})

	// Connector1, registered with Distributor1's three-argument Register.
	v1 := w.newUPApp("org.example.UPOne", 1)
	var result, reason string
	if err := w.call(distributorName, distributorPath, "org.unifiedpush.Distributor1.Register", v1.name, v1.token, "e2e v1").Store(&result, &reason); err != nil {
		t.Fatalf("Distributor1.Register: %v", err)
	}
	if result != "REGISTRATION_SUCCEEDED" || reason != "" {
		t.Fatalf("Distributor1.Register = (%q, %q), want (REGISTRATION_SUCCEEDED, \"\")", result, reason)
	}
	ep := v1.waitRecords(t, "NewEndpoint", 1, nil)[0]
	if tok, _ := ep["token"].(string); tok != v1.token {
		t.Errorf("NewEndpoint token %q, want %q", tok, v1.token)
	}
	v1Endpoint, _ := ep["endpoint"].(string)
	_ = endpointToken(t, ep)

	// An app server encrypts with the web-push npm package (and signs VAPID).
	keys1, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	vapid, err := webpush.GenerateVAPIDKey()
	if err != nil {
		t.Fatal(err)
	}
	vapidPub, err := webpush.VAPIDPublicKey(vapid)
	if err != nil {
		t.Fatal(err)
	}
	vapidPriv, err := vapid.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	const plain1 = "hello Connector1 from web-push ✓"
	status, body := sendWithNPM(t, map[string]any{
		"endpoint":     v1Endpoint,
		"p256dh":       protocol.EncodeBase64URL(keys1.Public()),
		"auth":         protocol.EncodeBase64URL(keys1.Auth),
		"vapidPublic":  vapidPub,
		"vapidPrivate": protocol.EncodeBase64URL(vapidPriv),
		"subject":      "mailto:ops@example.com",
		"ttl":          120,
		"payload":      plain1,
	})
	if status != 201 {
		t.Fatalf("web-push send to the Connector1 app = %d %s", status, body)
	}
	msg := v1.waitRecords(t, "Message", 1, nil)[0]
	if tok, _ := msg["token"].(string); tok != v1.token {
		t.Errorf("Message token %q, want %q", tok, v1.token)
	}
	got, err := eventBytes(msg, "message")
	if err != nil {
		t.Fatal(err)
	}
	// AEAD: only the exact ciphertext the npm package made decrypts.
	if dec, err := webpush.Decrypt(got, keys1); err != nil || string(dec) != plain1 {
		t.Fatalf("Connector1 app decrypted %q, %v; want %q", dec, err, plain1)
	}

	// Connector2 apps, registered with Distributor2's a{sv}: one acks, one
	// answers every message with an error (not delivered).
	acker := w.newUPApp("org.example.UPAck", 2)
	noAck := w.newUPApp("org.example.UPNoAck", 2, "--reply", "error")
	keys2, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	upTokens := map[string]string{}
	for _, a := range []upApp{acker, noAck} {
		res, err := w.register2(map[string]dbus.Variant{
			"service": dbus.MakeVariant(a.name), "token": dbus.MakeVariant(a.token), "description": dbus.MakeVariant("e2e v2"),
		})
		if err != nil {
			t.Fatalf("Distributor2.Register(%s): %v", a.name, err)
		}
		if s, _ := res["success"].Value().(string); s != "REGISTRATION_SUCCEEDED" {
			t.Fatalf("Distributor2.Register(%s) = %v", a.name, res)
		}
		upTokens[a.name] = endpointToken(t, a.waitRecords(t, "NewEndpoint", 1, nil)[0])
	}
	push := func(a upApp, plain string) []byte {
		t.Helper()
		cipher, err := webpush.Encrypt([]byte(plain), keys2.Public(), keys2.Auth)
		if err != nil {
			t.Fatal(err)
		}
		if status, err := w.pushWeb(upTokens[a.name], cipher, 600, map[string]string{"Content-Encoding": "aes128gcm"}); err != nil || status != 201 {
			t.Fatalf("web push to %s = %d %v", a.name, status, err)
		}
		return cipher
	}
	checkExact := func(a upApp, ev map[string]any, cipher []byte, plain string) {
		t.Helper()
		got, err := eventBytes(ev, "message")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, cipher) {
			t.Fatalf("%s got %d bytes, want the exact %d-byte ciphertext", a.name, len(got), len(cipher))
		}
		if dec, err := webpush.Decrypt(got, keys2); err != nil || string(dec) != plain {
			t.Fatalf("%s decrypted %q, %v; want %q", a.name, dec, err, plain)
		}
	}

	cipherA := push(acker, "first for the acking app")
	evA := acker.waitRecords(t, "Message", 1, nil)[0]
	checkExact(acker, evA, cipherA, "first for the acking app")
	idA, _ := evA["id"].(string)
	if idA == "" {
		t.Fatalf("Connector2 Message without an id: %v", evA)
	}

	cipherN := push(noAck, "for the app that never acks")
	evN := noAck.waitRecords(t, "Message", 1, nil)[0]
	checkExact(noAck, evN, cipherN, "for the app that never acks")
	idN, _ := evN["id"].(string)
	if idN == "" {
		t.Fatalf("Connector2 Message without an id: %v", evN)
	}

	// Restart the daemon abruptly: the unacked message comes again, the
	// acked one does not.
	w.daemon.Kill()
	before := len(noAck.waitRecords(t, "Message", 1, withID(idN)))
	w.restartDaemon()
	again := noAck.waitRecords(t, "Message", before+1, withID(idN))
	checkExact(noAck, again[len(again)-1], cipherN, "for the app that never acks")

	// The acking app's queue is FIFO: once its next message arrived, any
	// redelivery of the first would already have happened.
	cipherB := push(acker, "second for the acking app")
	evB := acker.waitRecords(t, "Message", 1, func(ev map[string]any) bool { s, _ := ev["id"].(string); return s != idA })[0]
	checkExact(acker, evB, cipherB, "second for the acking app")
	if n := len(acker.waitRecords(t, "Message", 1, withID(idA))); n != 1 {
		t.Errorf("acked message %s delivered %d times, want exactly once", idA, n)
	}

	// Unregister ends with Unregistered, for both interface versions.
	t.Run("Unregister", func(t *testing.T) {
		if err := w.call(distributorName, distributorPath, "org.unifiedpush.Distributor1.Unregister", v1.token).Err; err != nil {
			t.Fatalf("Distributor1.Unregister: %v", err)
		}
		var res map[string]dbus.Variant
		if err := w.call(distributorName, distributorPath, "org.unifiedpush.Distributor2.Unregister",
			map[string]dbus.Variant{"token": dbus.MakeVariant(acker.token)}).Store(&res); err != nil {
			t.Fatalf("Distributor2.Unregister: %v", err)
		}
		// The v1 text: the token is empty when Unregistered confirms the
		// app's own request; Connector2 always names it.
		for _, a := range []upApp{v1, acker} {
			want := a.token
			if a == v1 {
				want = ""
			}
			ev := a.waitRecords(t, "Unregistered", 1, nil)[0]
			if tok, _ := ev["token"].(string); tok != want {
				t.Errorf("%s Unregistered token %q, want %q", a.name, tok, want)
			}
		}
		// The endpoint is gone at the server. heraldd unregisters the channel
		// over the websocket in the background (it may be offline when the
		// app unregisters), so the 404 may follow the Unregistered call.
		waitUntil(t, 30*time.Second, "the unregistered endpoint to answer 404", func() bool {
			status, err := w.pushWeb(upTokens[acker.name], []byte("x"), 60, nil)
			return err == nil && status == 404
		})
	})
}

// dbusErr returns the D-Bus error name and message of err.
func dbusErr(err error) (name, msg string) {
	var de dbus.Error
	if errors.As(err, &de) {
		if len(de.Body) > 0 {
			msg, _ = de.Body[0].(string)
		}
		return de.Name, msg
	}
	var dp *dbus.Error
	if errors.As(err, &dp) {
		if len(dp.Body) > 0 {
			msg, _ = dp.Body[0].(string)
		}
		return dp.Name, msg
	}
	if err != nil {
		return "", err.Error()
	}
	return "", ""
}

// daemonUp fails the test if heraldd has exited.
func (w *world) daemonUp(t *testing.T) {
	t.Helper()
	select {
	case <-w.daemon.Done():
		t.Fatalf("heraldd exited:\n%s", w.daemon.Tail(4000))
	default:
	}
}

// openToOthers makes every directory above the bus socket searchable by
// other users so a process running as nobody can connect.
func openToOthers(t *testing.T, busAddress string) {
	t.Helper()
	sock := strings.TrimPrefix(strings.Split(busAddress, ",")[0], "unix:path=")
	if !filepath.IsAbs(sock) {
		t.Fatalf("bus address %q is not a unix socket path", busAddress)
	}
	for dir := filepath.Dir(sock); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o005 != 0o005 {
			if err := os.Chmod(dir, fi.Mode().Perm()|0o055); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestDBusOtherUserRefused runs dbus-send as uid 65534 against the real
// daemon: every surface refuses it with AccessDenied, and the daemon is
// untouched.
func TestDBusOtherUserRefused(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test must run as root in CI to start a process as another user")
		}
		t.Skip("needs root to run a process as another user")
	}
	w := newWorld(t, worldOptions{})
	const app = "com.example.owner_app"
	token := w.registerLomiri(app)
	if status, _, err := w.pushLomiri(app, token, map[string]any{"secret": 1}, time.Now().Add(time.Hour)); err != nil || status != 200 {
		t.Fatalf("/notify = %d %v", status, err)
	}
	w.waitPost(app, waitLong)
	openToOthers(t, w.bus.Address)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"lomiri register", []string{"--dest=com.lomiri.PushNotifications", family("lomiri").pushPath(app), "com.lomiri.PushNotifications.Register", "string:" + app}, "com.lomiri.PushNotifications.Error.AccessDenied"},
		{"ubuntu popall", []string{"--dest=com.ubuntu.Postal", family("ubuntu").postalPath(app), "com.ubuntu.Postal.PopAll", "string:" + app}, "com.ubuntu.Postal.Error.AccessDenied"},
		{"lomiri post", []string{"--dest=com.lomiri.Postal", family("lomiri").postalPath(app), "com.lomiri.Postal.Post", "string:" + app, `string:{"forged":true}`}, "com.lomiri.Postal.Error.AccessDenied"},
		{"unifiedpush", []string{"--dest=" + distributorName, distributorPath, "org.unifiedpush.Distributor1.Register", "string:org.example.Intruder", "string:tok", "string:d"}, "org.unifiedpush.Distributor1.Error.AccessDenied"},
		{"management", []string{"--dest=org.herald.Daemon", "/org/herald/Daemon", "org.herald.Daemon1.Reconnect"}, "org.herald.Daemon1.Error.AccessDenied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "dbus-send", append([]string{"--session", "--print-reply"}, tt.args...)...)
			cmd.Env = w.busEnv()
			cmd.Dir = "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tt.want) || !strings.Contains(string(out), "uid 65534") {
				t.Errorf("dbus-send as nobody: err %v\n%s\nwant %s mentioning uid 65534", err, out, tt.want)
			}
		})
	}
	w.daemonUp(t)
	// Nothing was consumed or posted by the refused caller.
	msgs, err := w.popAll(app)
	if err != nil || len(msgs) != 1 || !jsonEqual(msgs[0], `{"secret":1}`) {
		t.Fatalf("PopAll by the owner = %q, %v; want the one message, untouched", msgs, err)
	}
	if again := w.registerLomiri(app); again != token {
		t.Errorf("Register after the refusals = %q, want %q", again, token)
	}
}

// TestDBusBadInput sends invalid arguments to the real daemon: each gets a
// clear D-Bus error, nothing changes, and the daemon stays up.
func TestDBusBadInput(t *testing.T) {
	w := newWorld(t, worldOptions{})
	const app = "com.example.badinput_app"
	token := w.registerLomiri(app)
	lom := family("lomiri")
	ubu := family("ubuntu")
	long := `"` + strings.Repeat("x", dbusapi.MaxPostPayload) + `"`

	tests := []struct {
		name     string
		dest     string
		path     string
		method   string
		args     []any
		wantErr  string // D-Bus error name
		wantText string // in the error message
	}{
		{"invalid app id", lom.pushName(), lom.pushPath(app), lom.pushName() + ".Register", []any{"not a valid app id!"},
			"com.lomiri.PushNotifications.Error.InvalidAppID", "invalid application id"},
		{"empty app id", ubu.postalName(), ubu.postalPath(app), ubu.postalName() + ".PopAll", []any{""},
			"com.ubuntu.Postal.Error.InvalidAppID", "invalid application id"},
		{"path package mismatch", lom.pushName(), lom.pushPath(app), lom.pushName() + ".Register", []any{"com.example.other_app"},
			"com.lomiri.PushNotifications.Error.PackageMismatch", "package"},
		{"path package mismatch postal", ubu.postalName(), ubu.postalPath(app), ubu.postalName() + ".PopAll", []any{"com.example.other_app"},
			"com.ubuntu.Postal.Error.PackageMismatch", "package"},
		{"oversized post", lom.postalName(), lom.postalPath(app), lom.postalName() + ".Post", []any{app, long},
			"com.lomiri.Postal.Error.PayloadTooLarge", "too large"},
		{"post not json", lom.postalName(), lom.postalPath(app), lom.postalName() + ".Post", []any{app, "{not json"},
			"com.lomiri.Postal.Error.BadJSON", "json"},
		{"register int", lom.pushName(), lom.pushPath(app), lom.pushName() + ".Register", []any{int32(7)},
			"com.lomiri.PushNotifications.Error.InvalidArgs", "bad argument type"},
		{"popall no args", ubu.postalName(), ubu.postalPath(app), ubu.postalName() + ".PopAll", nil,
			"com.ubuntu.Postal.Error.InvalidArgs", "wrong number of arguments"},
		{"setcounter wrong types", lom.postalName(), lom.postalPath(app), lom.postalName() + ".SetCounter", []any{app, "three", true},
			"com.lomiri.Postal.Error.InvalidArgs", "bad argument type"},
		{"distributor1 wrong types", distributorName, distributorPath, "org.unifiedpush.Distributor1.Register", []any{"org.example.X", uint32(1), "d"},
			"org.unifiedpush.Distributor1.Error.InvalidArgs", "bad argument type"},
		{"distributor2 not a dict", distributorName, distributorPath, "org.unifiedpush.Distributor2.Register", []any{"org.example.X"},
			"org.unifiedpush.Distributor2.Error.InvalidArgs", "bad argument type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := w.call(tt.dest, tt.path, tt.method, tt.args...).Err
			name, msg := dbusErr(err)
			if name != tt.wantErr || !strings.Contains(strings.ToLower(msg), strings.ToLower(tt.wantText)) {
				t.Errorf("%s = %q %q (%v), want %s mentioning %q", tt.method, name, msg, err, tt.wantErr, tt.wantText)
			}
			w.daemonUp(t)
		})
	}

	// UnifiedPush limits are registration failures with the spec's reason.
	t.Run("unifiedpush limits", func(t *testing.T) {
		for _, args := range []map[string]dbus.Variant{
			{"service": dbus.MakeVariant("org.example.Big"), "token": dbus.MakeVariant(strings.Repeat("t", dbusapi.MaxUPToken+1))},
			{"service": dbus.MakeVariant("not a bus name"), "token": dbus.MakeVariant("t")},
			{"service": dbus.MakeVariant("org.example.Num"), "token": dbus.MakeVariant(int32(5))},
		} {
			res, err := w.register2(args)
			if err != nil {
				t.Fatalf("Distributor2.Register(%v): %v", args, err)
			}
			if s, _ := res["success"].Value().(string); s != "REGISTRATION_FAILED" {
				t.Errorf("Distributor2.Register(%v) = %v, want REGISTRATION_FAILED", args, res)
			}
			if r, _ := res["reason"].Value().(string); r != "INTERNAL_ERROR" {
				t.Errorf("Distributor2.Register(%v) reason = %v, want INTERNAL_ERROR", args, res)
			}
		}
		w.daemonUp(t)
	})

	// The stock tools get the same clear errors.
	t.Run("dbus-send wrong type", func(t *testing.T) {
		out, err := w.dbusSend(lom.pushName(), lom.pushPath(app), lom.pushName()+".Register", "int32:7")
		if err == nil || !strings.Contains(out, "com.lomiri.PushNotifications.Error.InvalidArgs") {
			t.Errorf("dbus-send Register(int32) = %v\n%s\nwant InvalidArgs", err, out)
		}
		out, err = w.gdbusCall(ubu.postalName(), ubu.postalPath(app), ubu.postalName()+".Post", app, "'"+long+"'")
		if err == nil || !strings.Contains(out, "com.ubuntu.Postal.Error.PayloadTooLarge") {
			t.Errorf("gdbus oversized Post = %v\n%s\nwant PayloadTooLarge", err, out)
		}
		w.daemonUp(t)
	})

	// Nothing was queued by the refused posts, and the daemon still works.
	if msgs, err := w.popAll(app); err != nil || len(msgs) != 0 {
		t.Errorf("PopAll after bad posts = %q, %v; want nothing queued", msgs, err)
	}
	if again := w.registerLomiri(app); again != token {
		t.Errorf("Register after bad input = %q, want %q", again, token)
	}
	if got := w.registerLomiri("com.example.later_app"); got == "" || got == token {
		t.Errorf("Register of a new app after bad input = %q", got)
	}
	posts := w.watchPosts(lom)
	if err := w.call(lom.postalName(), lom.postalPath(app), lom.postalName()+".Post", app, `{"ok":1}`).Err; err != nil {
		t.Fatalf("valid Post after bad input: %v", err)
	}
	waitPostOn(t, posts, lom, app)
	if msgs, err := w.popAll(app); err != nil || len(msgs) != 1 || !jsonEqual(msgs[0], `{"ok":1}`) {
		t.Errorf("PopAll after a valid Post = %q, %v", msgs, err)
	}
	w.daemonUp(t)
}

// listUPServices returns the connector services of the daemon's UnifiedPush
// registrations, from the management interface.
func (w *world) listUPServices(t *testing.T) []string {
	t.Helper()
	var regs []map[string]dbus.Variant
	if err := w.call("org.herald.Daemon", "/org/herald/Daemon", "org.herald.Daemon1.ListRegistrations").Store(&regs); err != nil {
		t.Fatalf("ListRegistrations: %v", err)
	}
	var out []string
	for _, r := range regs {
		if k, _ := r["kind"].Value().(string); k == "unifiedpush" {
			s, _ := r["service"].Value().(string)
			out = append(out, s)
		}
	}
	return out
}

// stopConnector ends a running test connector (a child of the test bus) and
// waits until its name is released.
func (w *world) stopConnector(t *testing.T, name string) {
	t.Helper()
	c, err := dbus.Connect(w.bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, name)); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 16)
	c.Signal(ch)
	var pid uint32
	if err := c.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, name).Store(&pid); err != nil {
		t.Fatalf("pid of %s: %v", name, err)
	}
	if err := syscall.Kill(int(pid), syscall.SIGTERM); err != nil {
		t.Fatalf("cannot stop connector %s (pid %d): %v", name, pid, err)
	}
	deadline := time.After(waitLong)
	for {
		select {
		case s := <-ch:
			if len(s.Body) == 3 {
				if owner, _ := s.Body[2].(string); owner == "" {
					return
				}
			}
		case <-deadline:
			t.Fatalf("%s still owned %s after SIGTERM", name, waitLong)
		}
	}
}

// TestDBusUnifiedPushRemovedAppDropped: a registration whose connector is
// no longer activatable (the app was removed) is kept at the first start
// that misses it (issue 11: a restart must not delete a queue), and dropped
// at a start once it stayed gone for unifiedpush_forget_after; one whose
// connector is still installed is kept.
func TestDBusUnifiedPushRemovedAppDropped(t *testing.T) {
	w := newWorld(t, worldOptions{config: "unifiedpush_forget_after = \"1ms\"\n"})
	kept := w.newUPApp("org.example.UPKept", 2)
	gone := w.newUPApp("org.example.UPGone", 2)
	for _, a := range []upApp{kept, gone} {
		res, err := w.register2(map[string]dbus.Variant{"service": dbus.MakeVariant(a.name), "token": dbus.MakeVariant(a.token)})
		if err != nil {
			t.Fatalf("Distributor2.Register(%s): %v", a.name, err)
		}
		if s, _ := res["success"].Value().(string); s != "REGISTRATION_SUCCEEDED" {
			t.Fatalf("Distributor2.Register(%s) = %v", a.name, res)
		}
		a.waitRecords(t, "NewEndpoint", 1, nil)
	}
	if got := w.listUPServices(t); len(got) != 2 {
		t.Fatalf("registrations before removal = %q, want both apps", got)
	}

	// Remove the app: stop it, delete its service file, let the bus re-read it.
	if err := w.daemon.Stop(30 * time.Second); err != nil {
		t.Fatalf("heraldd did not stop cleanly: %v", err)
	}
	w.stopConnector(t, gone.name)
	if err := os.Remove(filepath.Join(w.bus.ServiceDir, gone.name+".service")); err != nil {
		t.Fatal(err)
	}
	if err := w.conn.BusObject().Call("org.freedesktop.DBus.ReloadConfig", 0).Err; err != nil {
		t.Fatalf("ReloadConfig: %v", err)
	}
	var names []string
	if err := w.conn.BusObject().Call("org.freedesktop.DBus.ListActivatableNames", 0).Store(&names); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, gone.name) || !slices.Contains(names, kept.name) {
		t.Fatalf("activatable names %q: the test setup did not remove only %s", names, gone.name)
	}
	w.restartDaemon()

	// First start without the connector: kept (watch the log under a deadline).
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(w.daemon.Tail(100000), "keeping its registration and queue") {
		if time.Now().After(deadline) {
			t.Fatalf("no keep decision logged:\n%s", w.daemon.Tail(4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := w.listUPServices(t); len(got) != 2 {
		t.Fatalf("registrations after the first start without the connector = %q, want both kept", got)
	}
	if err := w.daemon.Stop(30 * time.Second); err != nil {
		t.Fatalf("heraldd did not stop cleanly: %v", err)
	}
	w.restartDaemon()

	// Gone for longer than unifiedpush_forget_after: dropped at this start;
	// watch the registrations under a deadline.
	deadline = time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		got := w.listUPServices(t)
		if slices.Equal(got, []string{kept.name}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("registrations after restart = %q, want only %s (the removed app's registration is kept)", got, kept.name)
		}
		<-tick.C
	}
}
