package server

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

// npmDir holds the web-push npm package (installed by make test / scripts/deps.sh).
const npmDir = "../tests/npm"

type npmResult struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

// sendWithNPM runs tests/npm/send.js, an app server using the web-push package.
func sendWithNPM(t *testing.T, req map[string]any) npmResult {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: run make test / scripts/deps.sh")
	}
	if _, err := os.Stat(filepath.Join(npmDir, "node_modules", "web-push")); err != nil {
		t.Fatal("tests/npm/node_modules is missing: run make test / scripts/deps.sh (npm ci in tests/npm)")
	}
	in, _ := json.Marshal(req)
	cmd := exec.Command(node, "send.js")
	cmd.Dir = npmDir
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("send.js: %v\n%s", err, stderr.String())
	}
	var res npmResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("send.js printed %q: %v", out, err)
	}
	return res
}

// TestWebPushNPMInterop: a device registers a VAPID-restricted channel, the
// web-push npm package encrypts (aes128gcm) and signs (VAPID) as an app server
// would, and the device decrypts the exact plaintext.
func TestWebPushNPMInterop(t *testing.T) {
	ts := startServer(t, nil)
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
	keys, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	d := ts.connect("")
	chid := protocol.NewChannelID()
	ep := d.register(chid, vapidPub)
	req := map[string]any{
		"endpoint":     ep,
		"p256dh":       protocol.EncodeBase64URL(keys.Public()),
		"auth":         protocol.EncodeBase64URL(keys.Auth),
		"vapidPublic":  vapidPub,
		"vapidPrivate": protocol.EncodeBase64URL(vapidPriv),
		"subject":      "mailto:ops@example.com",
		"ttl":          120,
		"topic":        "news",
		"urgency":      "high",
	}
	for _, plaintext := range []string{"Hello from web-push ✓", string(bytes.Repeat([]byte("x"), 3000))} {
		req["payload"] = plaintext
		res := sendWithNPM(t, req)
		if res.Status != 201 || res.Headers["location"] == "" || res.Headers["ttl"] != "120" {
			t.Fatalf("web-push send = %+v", res)
		}
		n := d.notification()
		if n.ChannelID != chid || n.Headers["encoding"] != "aes128gcm" {
			t.Errorf("notification %#v", n)
		}
		body, err := n.Body()
		if err != nil {
			t.Fatal(err)
		}
		got, err := webpush.Decrypt(body, keys)
		if err != nil {
			t.Fatalf("decrypt: %v", err)
		}
		if string(got) != plaintext {
			t.Errorf("decrypted %q, want %q", got, plaintext)
		}
		d.ack(n)
	}
	// Signed with another key: refused.
	other, _ := webpush.GenerateVAPIDKey()
	otherPub, _ := webpush.VAPIDPublicKey(other)
	otherPriv, _ := other.Bytes()
	req["vapidPublic"], req["vapidPrivate"] = otherPub, protocol.EncodeBase64URL(otherPriv)
	if res := sendWithNPM(t, req); res.Status != 403 {
		t.Errorf("send with another VAPID key = %+v, want 403", res)
	}
	d.quiet()
}
