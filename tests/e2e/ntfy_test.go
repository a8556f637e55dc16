package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/ntfy"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/internal/ntfytest"
	"github.com/heraldpush/herald/webpush"
)

// TestNtfyBackend runs heraldd with [unifiedpush] backend = "ntfy" against
// internal/ntfytest, a test double of ntfy's documented HTTP API (Debian
// ships no ntfy server): an app registers and gets an ntfy endpoint
// (<url>/up…?up=1); an app server posts encrypted messages to it; the app
// gets each exactly once, across a dropped stream whose replay overlaps the
// live messages and across a daemon restart that replays the cache.
func TestNtfyBackend(t *testing.T) {
	srv := ntfytest.New()
	t.Cleanup(srv.Close)
	w := newWorld(t, worldOptions{config: "reconnect_min = \"50ms\"\nreconnect_max = \"200ms\"\n\n[unifiedpush]\nbackend = \"ntfy\"\n\n[ntfy]\nurl = \"" + srv.URL + "\"\n"})

	a := w.newUPApp("org.example.NtfyApp", 2, "--register", "tok-ntfy", "--reply", "empty")
	if err := w.conn.BusObject().Call("org.freedesktop.DBus.StartServiceByName", 0, a.name, uint32(0)).Err; err != nil {
		t.Fatal(err)
	}
	if r := a.waitRecords(t, "RegisterResult", 1, nil)[0]; r["id"] != "REGISTRATION_SUCCEEDED" {
		t.Fatalf("Register with the ntfy backend = %v", r)
	}
	endpoint, _ := a.waitRecords(t, "NewEndpoint", 1, nil)[0]["endpoint"].(string)
	topic, ok := strings.CutPrefix(endpoint, srv.URL+"/")
	topic, ok2 := strings.CutSuffix(topic, "?up=1")
	if !ok || !ok2 || !ntfy.ValidTopic(topic) {
		t.Fatalf("endpoint %q, want %s/up<12 of [A-Za-z0-9]>?up=1", endpoint, srv.URL)
	}
	t.Logf("endpoint %s", endpoint)
	waitUntil(t, waitLong, "heraldd to subscribe", func() bool { return srv.Streams() == 1 })

	keys, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	sent := map[string][]byte{}
	var lastID string
	post := func(plain string) {
		t.Helper()
		cipher, err := webpush.Encrypt([]byte(plain), keys.Public(), keys.Auth)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := w.http.Post(endpoint, "application/octet-stream", bytes.NewReader(cipher))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s = %v, %v", endpoint, resp, err)
		}
		var m ntfytest.Message
		err = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if err != nil || m.Encoding != "base64" {
			t.Fatalf("ntfy's answer %+v, %v: want the binary body as base64", m, err)
		}
		lastID = m.ID
		sent[plain] = cipher
	}
	// received returns how many times the app got each plaintext.
	received := func() map[string]int {
		got := map[string]int{}
		for _, ev := range a.records("Message") {
			b, err := eventBytes(ev, "message")
			if err != nil {
				t.Fatal(err)
			}
			dec, err := webpush.Decrypt(b, keys)
			if err != nil {
				t.Fatalf("app got %d bytes that do not decrypt: %v", len(b), err)
			}
			got[string(dec)]++
		}
		return got
	}

	post("first")
	a.waitRecords(t, "Message", 1, nil)

	// The stream drops; what is published meanwhile comes twice on the next
	// one (live, then in the replay), and the replay (since=all: no keepalive
	// yet) repeats "first" too.
	srv.OverlapNextReplay()
	srv.DropStreams()
	for _, p := range []string{"second", "third", "fourth"} {
		post(p)
	}
	a.waitRecords(t, "Message", 4, nil)
	waitUntil(t, waitLong, "the app's queue to be empty", func() bool { return w.inboxLen(t, a.name) == 0 })
	if subs := srv.Subscriptions(); len(subs) < 2 {
		t.Errorf("subscriptions %q, want a reconnect", subs)
	}

	// At a keepalive the daemon saves its catch-up id (after the messages
	// were stored); after a restart it asks for what came after it.
	srv.Keepalive()
	st, err := store.Open(context.Background(), filepath.Join(w.daemon.StateDir, "herald.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	waitUntil(t, waitLong, "the catch-up id to be saved", func() bool {
		v, err := st.BackendState(context.Background(), app.BackendNtfy, "last_id")
		return err == nil && v == lastID
	})
	w.daemon.Kill()
	w.restartDaemon()
	waitUntil(t, waitLong, "heraldd to subscribe again", func() bool { return srv.Streams() == 1 })
	if subs := srv.Subscriptions(); !strings.HasSuffix(subs[len(subs)-1], "since="+lastID) {
		t.Errorf("subscription after the restart %q, want since=%s", subs[len(subs)-1], lastID)
	}
	post("after the restart")
	a.waitRecords(t, "Message", 5, nil)
	waitUntil(t, waitLong, "the app's queue to be empty", func() bool { return w.inboxLen(t, a.name) == 0 })
	got := received()
	for plain := range sent {
		if got[plain] != 1 {
			t.Errorf("%q delivered %d times, want exactly once (all: %v)", plain, got[plain], got)
		}
	}
	t.Logf("subscriptions: %q", srv.Subscriptions())
	t.Logf("deliveries per message (after a dropped stream whose replay overlapped live, and a restart): %v", got)
}
