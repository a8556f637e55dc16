package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/webpush"
)

// cardHelper wraps the pushed JSON as the message and shows a card.
const cardHelper = `#!/bin/sh
in=$(cat "$1")
printf '{"message":%s,"notification":{"tag":"chat","card":{"summary":"New message","body":"from e2e","popup":true,"persist":true}}}' "$in" > "$2"
`

// TestLifecycle drives a Lomiri app and a UnifiedPush app through the whole
// lifecycle at once: register over D-Bus, an app server posts, heraldd
// receives, runs the helper, shows the card, queues the message and the app
// reads it.
func TestLifecycle(t *testing.T) {
	w := newWorld(t, worldOptions{})
	notes := w.exportNotifications()

	// A Lomiri app with a helper.
	const chat = "com.example.chat_chat"
	w.installHelper(chat, cardHelper)
	token := w.registerLomiri(chat)
	if again := w.registerLomiri(chat + "_1.0"); again != token {
		t.Errorf("Register of the versioned id gave token %q, want the same %q", again, token)
	}

	// A UnifiedPush app, started by D-Bus activation.
	const upName = "org.example.UPApp"
	upOut := filepath.Join(w.dir, "upapp.jsonl")
	writeService(t, w.bus.ServiceDir, upName, fmt.Sprintf("%s --name %s --version 2 --out %s", built.upconnector, upName, upOut))
	keys, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]dbus.Variant
	err = w.call("org.unifiedpush.Distributor.herald", "/org/unifiedpush/Distributor", "org.unifiedpush.Distributor2.Register",
		map[string]dbus.Variant{"service": dbus.MakeVariant(upName), "token": dbus.MakeVariant("up-token-1"), "description": dbus.MakeVariant("e2e")}).Store(&res)
	if err != nil {
		t.Fatalf("Distributor2.Register: %v", err)
	}
	if got := res["success"].Value(); got != "REGISTRATION_SUCCEEDED" {
		t.Fatalf("Distributor2.Register = %v", res)
	}
	endpointEvt := waitEvent(t, upOut, "NewEndpoint", 30*time.Second)
	endpoint, _ := endpointEvt["endpoint"].(string)
	i := strings.LastIndex(endpoint, "/wpush/v1/")
	if i < 0 {
		t.Fatalf("NewEndpoint endpoint %q is not a Web Push endpoint", endpoint)
	}
	upToken := endpoint[i+len("/wpush/v1/"):]

	// The Lomiri app server posts through /notify and through Web Push.
	status, body, err := w.pushLomiri(chat, token, map[string]any{"text": "hello via notify"}, time.Now().Add(time.Hour))
	if err != nil || status != 200 || !strings.Contains(body, `"ok":true`) {
		t.Fatalf("/notify = %d %s %v", status, body, err)
	}
	w.waitPost(chat, 30*time.Second)
	n := waitNotify(t, notes, 30*time.Second)
	if n.Summary != "New message" || n.Body != "from e2e" {
		t.Errorf("shown card = %q/%q, want New message/from e2e", n.Summary, n.Body)
	}
	msgs, err := w.popAll(chat)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || !jsonEqual(msgs[0], `{"text":"hello via notify"}`) {
		t.Fatalf("PopAll = %q, want the helper's message", msgs)
	}
	if status, err := w.pushWeb(token, []byte(`{"text":"hello via webpush"}`), 60, nil); err != nil || status != 201 {
		t.Fatalf("web push = %d %v", status, err)
	}
	w.waitPost(chat, 30*time.Second)
	msgs, err = w.popAll(chat)
	if err != nil || len(msgs) != 1 || !jsonEqual(msgs[0], `{"text":"hello via webpush"}`) {
		t.Fatalf("PopAll = %q %v", msgs, err)
	}
	if msgs, _ := w.popAll(chat); len(msgs) != 0 {
		t.Fatalf("second PopAll = %q, want nothing (PopAll consumes)", msgs)
	}

	// The UnifiedPush app gets the exact ciphertext and decrypts it.
	plain := []byte("a secret for the UnifiedPush app")
	cipher, err := webpush.Encrypt(plain, keys.Public(), keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	if status, err := w.pushWeb(upToken, cipher, 60, map[string]string{"Content-Encoding": "aes128gcm"}); err != nil || status != 201 {
		t.Fatalf("web push to UnifiedPush app = %d %v", status, err)
	}
	msgEvt := waitEvent(t, upOut, "Message", 30*time.Second)
	got, err := eventBytes(msgEvt, "message")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, cipher) {
		t.Fatalf("connector got %d bytes, want the exact %d-byte ciphertext", len(got), len(cipher))
	}
	dec, err := webpush.Decrypt(got, keys)
	if err != nil || !bytes.Equal(dec, plain) {
		t.Fatalf("decrypt = %q %v", dec, err)
	}
}

func jsonEqual(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

func waitNotify(t *testing.T, f *fakeNotifications, timeout time.Duration) notifyCall {
	t.Helper()
	select {
	case n := <-f.shown:
		return n
	case <-time.After(timeout):
		t.Fatalf("no notification shown within %s", timeout)
	}
	return notifyCall{}
}

// writeService writes a D-Bus activation file for name.
func writeService(t *testing.T, dir, name, exec string) {
	t.Helper()
	content := fmt.Sprintf("[D-BUS Service]\nName=%s\nExec=%s\n", name, exec)
	if err := os.WriteFile(filepath.Join(dir, name+".service"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readEvents reads the JSON lines a test connector wrote.
func readEvents(path string) []map[string]any {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var evs []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev map[string]any
		if json.Unmarshal(sc.Bytes(), &ev) == nil {
			evs = append(evs, ev)
		}
	}
	return evs
}

// waitEvent waits until the connector recorded an event of the given kind.
// The connector writes a file; polling it is the only way to observe a
// separate process's writes without a bus round trip.
func waitEvent(t *testing.T, path, kind string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, ev := range readEvents(path) {
			if eventKind(ev) == kind {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("connector recorded no %s within %s (events: %v)", kind, timeout, readEvents(path))
		}
		<-tick.C
	}
}

// eventKind is the method a test connector recorded ("NewEndpoint", "Message", "Unregistered").
func eventKind(ev map[string]any) string {
	m, _ := ev["method"].(string)
	return m
}

// eventBytes decodes a []byte field of a recorded event (base64 in JSON).
func eventBytes(ev map[string]any, key string) ([]byte, error) {
	s, ok := ev[key].(string)
	if !ok {
		return nil, fmt.Errorf("event has no %s: %v", key, ev)
	}
	return base64.StdEncoding.DecodeString(s)
}
