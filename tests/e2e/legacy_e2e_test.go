package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// TestLegacyAppE2E: a legacy Lomiri app id ("_name", package "") registered
// over com.lomiri gets its helper's card shown by the real dunst and its
// emblem counter set, both from a push and from Postal.SetCounter — the
// same id grammar on every surface (issue 12). Before, presentation refused
// "_legacy" although D-Bus and the helper finder accepted it.
func TestLegacyAppE2E(t *testing.T) {
	requireTools(t, "dunst", "dunstctl", "Xvfb")
	w := newWorld(t, worldOptions{})
	w.startDunstOn(startXvfbDisplay(t))

	const appID = "_legacy"
	// A legacy app's desktop entry is <name>.desktop.
	w.writeDesktopEntry("legacy", "[Desktop Entry]\nType=Application\nName=Legacy E2E\nIcon=mail-message-new\nExec=/bin/true %u\n")
	w.installHelper(appID, `#!/bin/sh
n=$(cat "$1")
printf '{"message":{"n":%s},"notification":{"card":{"summary":"Legacy %s","body":"old app","popup":true},"emblem-counter":{"count":%s,"visible":true}}}' "$n" "$n" "$n" > "$2"
`)
	counters := w.watchLauncherEntry()
	token := w.registerLomiri(appID) // path /com/lomiri/PushNotifications/_ (empty package)

	w.mustPush(token, "7")
	w.waitPost(appID, waitLong)
	w.popWant(appID, `{"n":7}`)
	waitCounter(t, counters, "application://legacy.desktop", 7, true)

	if got := strings.TrimSpace(string(w.dunstctl("count", "displayed"))); got != "1" {
		t.Fatalf("dunst displays %s notifications, want the legacy app's card", got)
	}
	w.dunstctl("close-all")
	var hist struct {
		Data [][]map[string]struct {
			Data any `json:"data"`
		} `json:"data"`
	}
	raw := w.dunstctl("history")
	if err := json.Unmarshal(raw, &hist); err != nil || len(hist.Data) != 1 || len(hist.Data[0]) != 1 {
		t.Fatalf("cannot read dunst history: %v\n%s", err, raw)
	}
	n := hist.Data[0][0]
	if got := fmt.Sprintf("%v|%v|%v", n["appname"].Data, n["summary"].Data, n["body"].Data); got != "Legacy E2E|Legacy 7|old app" {
		t.Fatalf("dunst history = %q, want the legacy app's card with its desktop entry's name", got)
	}

	if err := w.postal("SetCounter", appID, int32(3), false).Err; err != nil {
		t.Fatalf("SetCounter(%s): %v", appID, err)
	}
	waitCounter(t, counters, "application://legacy.desktop", 3, false)
}

// watchLauncherEntry subscribes to com.canonical.Unity.LauncherEntry Update
// signals (the emblem counters) on a connection of its own.
func (w *world) watchLauncherEntry() <-chan *dbus.Signal {
	w.t.Helper()
	c, err := dbus.Connect(w.bus.Address)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	if err := c.AddMatchSignal(dbus.WithMatchInterface("com.canonical.Unity.LauncherEntry"), dbus.WithMatchMember("Update")); err != nil {
		w.t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 100)
	c.Signal(ch)
	return ch
}

// waitCounter waits for an Update(uri, {count, count-visible}) signal.
func waitCounter(t *testing.T, ch <-chan *dbus.Signal, uri string, count int64, visible bool) {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		select {
		case s := <-ch:
			if len(s.Body) != 2 {
				continue
			}
			u, _ := s.Body[0].(string)
			props, _ := s.Body[1].(map[string]dbus.Variant)
			c, _ := props["count"].Value().(int64)
			v, _ := props["count-visible"].Value().(bool)
			if u == uri && c == count && v == visible {
				return
			}
			t.Logf("launcher entry update %s count %d visible %v", u, c, v)
		case <-deadline:
			t.Fatalf("no launcher entry update %s count %d visible %v within %s", uri, count, visible, waitLong)
		}
	}
}
