package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
)

// These tests run UnifiedPush connectors that behave as the ones real apps
// ship (internal/testapps/upconnector): KUnifiedPush's echoes the message
// id, Flutter's unifiedpush_linux answers Message with no values and
// registers with its instance name ("default") as service, newer
// connectors answer {}, UnifiedPush's Go connector registers a second
// token for a second instance. Each app registers itself from its own bus
// connection, as apps do at start.

// startUPApp installs a connector, starts it by D-Bus activation and waits
// until each of its tokens registered and got its endpoint.
func (w *world) startUPApp(t *testing.T, name string, tokens []string, extra ...string) (upApp, map[string]string) {
	t.Helper()
	args := append([]string{"--register", strings.Join(tokens, ",")}, extra...)
	a := w.newUPApp(name, 2, args...)
	if err := w.conn.BusObject().Call("org.freedesktop.DBus.StartServiceByName", 0, name, uint32(0)).Err; err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	for _, r := range a.waitRecords(t, "RegisterResult", len(tokens), nil) {
		if res, _ := r["id"].(string); res != "REGISTRATION_SUCCEEDED" {
			t.Fatalf("%s registering itself: %v", name, r)
		}
	}
	endpoints := map[string]string{}
	for _, ev := range a.waitRecords(t, "NewEndpoint", len(tokens), nil) {
		tok, _ := ev["token"].(string)
		endpoints[tok] = endpointToken(t, ev)
	}
	if len(endpoints) != len(tokens) {
		t.Fatalf("%s got endpoints for %d tokens, want %d", name, len(endpoints), len(tokens))
	}
	return a, endpoints
}

func (w *world) counters(t *testing.T) map[string]uint64 {
	t.Helper()
	var c map[string]uint64
	if err := w.call("org.herald.Daemon", "/org/herald/Daemon", "org.herald.Daemon1.Counters").Store(&c); err != nil {
		t.Fatalf("Counters: %v", err)
	}
	return c
}

func (w *world) inboxLen(t *testing.T, appID string) int {
	t.Helper()
	var entries []map[string]dbus.Variant
	if err := w.call("org.herald.Daemon", "/org/herald/Daemon", "org.herald.Daemon1.Inbox", appID).Store(&entries); err != nil {
		t.Fatalf("Inbox: %v", err)
	}
	return len(entries)
}

func (w *world) push(t *testing.T, endpoint string, body string, ttl int) {
	t.Helper()
	if status, err := w.pushWeb(endpoint, []byte(body), ttl, nil); err != nil || status != 201 {
		t.Fatalf("push %q = %d %v", body, status, err)
	}
}

// TestConnectorReplies: whatever a real connector answers on success, each
// of 20 messages reaches the app exactly once and nothing stays queued.
func TestConnectorReplies(t *testing.T) {
	w := newWorld(t, worldOptions{})
	for i, reply := range []string{"empty", "dict", "id"} {
		t.Run(reply, func(t *testing.T) {
			name := fmt.Sprintf("org.example.Reply%d", i)
			extra := []string{"--reply", reply}
			if reply == "empty" {
				// All of Flutter's unifiedpush_linux: its instance name as service, too.
				extra = append(extra, "--service", "default")
			}
			a, eps := w.startUPApp(t, name, []string{"tok-" + reply}, extra...)
			for n := range 20 {
				w.push(t, eps["tok-"+reply], fmt.Sprintf("%s #%d", reply, n), 600)
			}
			a.waitRecords(t, "Message", 20, nil)
			waitUntil(t, waitLong, "the app's queue to be empty", func() bool { return w.inboxLen(t, name) == 0 })
			byBody := map[string]int{}
			ids := map[string]int{}
			for _, ev := range a.records("Message") {
				b, err := eventBytes(ev, "message")
				if err != nil {
					t.Fatal(err)
				}
				byBody[string(b)]++
				id, _ := ev["id"].(string)
				ids[id]++
			}
			for n := range 20 {
				if k := fmt.Sprintf("%s #%d", reply, n); byBody[k] != 1 {
					t.Errorf("%q delivered %d times, want exactly once", k, byBody[k])
				}
			}
			if len(ids) != 20 {
				t.Errorf("%d distinct message ids, want 20", len(ids))
			}
			t.Logf("reply %q: %d Message calls, %d distinct messages, %d distinct ids, queue empty", reply, len(a.records("Message")), len(byBody), len(ids))
		})
	}
	c := w.counters(t)
	t.Logf("counters: messages_delivered=%d redeliveries=%d", c["messages_delivered"], c["redeliveries"])
	if r := c["redeliveries"]; r != 0 {
		t.Errorf("redeliveries = %d, want 0: a successful reply is delivered", r)
	}
}

// TestConnectorOwnership: another process of the same user can neither
// unregister nor take over an app's token, and with require_confinement an
// unconfined caller can do neither (nor register).
func TestConnectorOwnership(t *testing.T) {
	w := newWorld(t, worldOptions{})
	const name = "org.example.Victim"
	a, eps := w.startUPApp(t, name, []string{"tok-victim"}, "--reply", "empty")
	err := w.call(distributorName, distributorPath, "org.unifiedpush.Distributor2.Unregister",
		map[string]dbus.Variant{"token": dbus.MakeVariant("tok-victim")}).Err
	if n, _ := dbusErr(err); n != "org.unifiedpush.Distributor2.Error.AccessDenied" {
		t.Errorf("second caller's Unregister: %v, want AccessDenied", err)
	}
	t.Logf("second caller's Distributor2.Unregister: %v", err)
	err = w.call(distributorName, distributorPath, "org.unifiedpush.Distributor1.Unregister", "tok-victim").Err
	if n, _ := dbusErr(err); n != "org.unifiedpush.Distributor1.Error.AccessDenied" {
		t.Errorf("second caller's v1 Unregister: %v, want AccessDenied", err)
	}
	res, err := w.register2(map[string]dbus.Variant{"service": dbus.MakeVariant("org.example.Thief"), "token": dbus.MakeVariant("tok-victim")})
	if err != nil || res["success"].Value() != "REGISTRATION_FAILED" || res["reason"].Value() != "UNAUTHORIZED" {
		t.Errorf("second caller's Register of the token = %v, %v; want REGISTRATION_FAILED UNAUTHORIZED", res, err)
	}
	t.Logf("second caller's Distributor2.Register of the token: %v", res)
	// An unknown token: success, nothing to do.
	if err := w.call(distributorName, distributorPath, "org.unifiedpush.Distributor2.Unregister",
		map[string]dbus.Variant{"token": dbus.MakeVariant("never-registered")}).Err; err != nil {
		t.Errorf("Unregister of an unknown token: %v", err)
	}
	// The victim still gets its messages and was never told it is unregistered.
	w.push(t, eps["tok-victim"], "still mine", 600)
	a.waitRecords(t, "Message", 1, nil)
	if u := a.records("Unregistered"); len(u) != 0 {
		t.Errorf("victim got Unregistered: %v", u)
	}

	t.Run("require_confinement", func(t *testing.T) {
		w := newWorld(t, worldOptions{config: "require_confinement = true\n"})
		b := w.newUPApp("org.example.Unconfined", 2, "--register", "tok-u")
		if err := w.conn.BusObject().Call("org.freedesktop.DBus.StartServiceByName", 0, b.name, uint32(0)).Err; err != nil {
			t.Fatal(err)
		}
		r := b.waitRecords(t, "RegisterResult", 1, nil)[0]
		if r["id"] != "REGISTRATION_FAILED" || r["endpoint"] != "UNAUTHORIZED" {
			t.Errorf("unconfined app's Register under require_confinement = %v", r)
		}
		err := w.call(distributorName, distributorPath, "org.unifiedpush.Distributor2.Unregister",
			map[string]dbus.Variant{"token": dbus.MakeVariant("tok-u")}).Err
		if n, msg := dbusErr(err); n != "org.unifiedpush.Distributor2.Error.AccessDenied" || !strings.Contains(msg, "require_confinement") {
			t.Errorf("unconfined Unregister under require_confinement: %v", err)
		}
		t.Logf("require_confinement: app's own Register = %v %v; Unregister = %v", r["id"], r["endpoint"], err)
	})
}
