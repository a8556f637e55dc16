package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/internal/harness"
	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

// sendWebPushNPM runs tests/npm/send.js: an app server using the web-push
// npm package (aes128gcm, VAPID).
func sendWebPushNPM(t *testing.T, req map[string]any) (status int) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: run make test / scripts/deps.sh")
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "tests", "npm")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "web-push")); err != nil {
		t.Fatal("tests/npm/node_modules is missing: run make test / scripts/deps.sh (npm ci in tests/npm)")
	}
	in, _ := json.Marshal(req)
	cmd := exec.Command(node, "send.js")
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
	return res.Status
}

// A Lomiri-API app gets its public key and auth secret from heraldd, its
// server encrypts with the web-push npm package, and the app's helper and
// PopAll see the plaintext; plaintext pushes keep working.
func TestLomiriAppEndToEndEncryption(t *testing.T) {
	w := newWorld(t, worldOptions{})
	const appID = "com.example.secret_secret"
	// The helper wraps what it reads: were it given ciphertext, its output
	// would not be JSON and the raw body would be queued instead.
	w.installHelper(appID, "#!/bin/sh\nprintf '{\"message\":{\"helper_saw\":%s}}' \"$(cat \"$1\")\" > \"$2\"\n")
	token := w.registerLomiri(appID)
	path := "/com/lomiri/Postal/" + app.Quote(pkgOf(appID))
	var p256dh, auth string
	if err := w.call("com.lomiri.Postal", path, "org.herald.Postal1.WebPushKeys", appID).Store(&p256dh, &auth); err != nil {
		t.Fatalf("WebPushKeys: %v", err)
	}
	if pub, err := webpush.ParseP256PublicKey(p256dh); err != nil || len(pub) != 65 {
		t.Fatalf("p256dh %q is not a P-256 point: %v", p256dh, err)
	}
	if a, err := protocol.DecodeBase64URL(auth); err != nil || len(a) != 16 {
		t.Fatalf("auth %q is not 16 octets: %v", auth, err)
	}
	var again1, again2 string
	if err := w.call("com.ubuntu.Postal", "/com/ubuntu/Postal/"+app.Quote(pkgOf(appID)), "org.herald.Postal1.WebPushKeys", appID).Store(&again1, &again2); err != nil || again1 != p256dh || again2 != auth {
		t.Fatalf("second WebPushKeys = %q %q, %v; want the same keys", again1, again2, err)
	}
	// The package in the path must be the app's, as for every Postal method.
	if err := w.call("com.lomiri.Postal", "/com/lomiri/Postal/com_2eexample_2eother", "org.herald.Postal1.WebPushKeys", appID).Err; err == nil {
		t.Fatal("WebPushKeys on another package's path succeeded")
	}

	vapid, err := webpush.GenerateVAPIDKey()
	if err != nil {
		t.Fatal(err)
	}
	vapidPub, _ := webpush.VAPIDPublicKey(vapid)
	vapidPriv, _ := vapid.Bytes()
	status := sendWebPushNPM(t, map[string]any{
		"endpoint": w.server.HTTP() + "/wpush/v1/" + token, "p256dh": p256dh, "auth": auth,
		"vapidPublic": vapidPub, "vapidPrivate": protocol.EncodeBase64URL(vapidPriv), "subject": "mailto:ops@example.com",
		"payload": `{"pin":"4711"}`, "ttl": 600,
	})
	if status != 201 {
		t.Fatalf("web-push send = %d", status)
	}
	if got := w.popUntil(appID, 1); !slices.Equal(got, []string{`{"helper_saw":{"pin":"4711"}}`}) {
		t.Fatalf("the app got %q; want the decrypted message through its helper", got)
	}
	// Plaintext through /notify still reaches the helper as is.
	if st, body, err := w.pushLomiri(appID, token, map[string]any{"plain": true}, time.Now().Add(time.Hour)); err != nil || st != 200 {
		t.Fatalf("/notify = %d %s %v", st, body, err)
	}
	if got := w.popUntil(appID, 1); !slices.Equal(got, []string{`{"helper_saw":{"plain":true}}`}) {
		t.Fatalf("the app got %q for plaintext", got)
	}
}
