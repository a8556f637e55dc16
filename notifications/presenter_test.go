package notifications

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/heraldpush/herald/app"
)

func TestPresentNotifyArguments(t *testing.T) {
	const testApp = "com.example.chat_chat_1.2"
	e := newEnv(t, newMemStore(), map[string]string{"com.example.chat_chat_1.2.desktop": chatEntry})
	// Sounds of the app live in <data>/<pkg>/.
	if err := os.MkdirAll(filepath.Join(e.data, "com.example.chat", "snd"), 0o755); err != nil {
		t.Fatal(err)
	}
	ping := filepath.Join(e.data, "com.example.chat", "snd", "ping.ogg")
	if err := os.WriteFile(ping, []byte("ogg"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, e.bus, 0, "body", "actions", "sound")
	base := map[string]any{"desktop-entry": "com.example.chat_chat_1.2", "urgency": byte(1), "category": "im.received",
		"x-canonical-secondary-icon": "chat-symbolic"}
	with := func(kv ...any) map[string]any {
		m := map[string]any{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		return m
	}
	tests := []struct {
		name string
		req  Request
		want *notifyCall // nil: not shown
	}{{
		name: "popup with action and sound file",
		req: Request{AppID: testApp, MsgID: "m1", Card: &app.Card{Summary: "Hi", Body: "there", Popup: true,
			Actions: []string{"appid://com.example.chat/chat/current-user-version", "chat://second"}},
			Sound: &app.Sound{Path: "snd/ping.ogg"}},
		want: &notifyCall{AppName: "Chat", Icon: "chat", Summary: "Hi", Body: "there",
			Actions: []string{"default", "Open"}, Timeout: -1,
			Hints: with("x-canonical-switch-to-application", "true", "sound-file", ping)},
	}, {
		name: "persistent without popup",
		req:  Request{AppID: testApp, Card: &app.Card{Summary: "Quiet", Persist: true, Icon: "/icons/own.png"}, Sound: &app.Sound{Default: true}},
		want: &notifyCall{AppName: "Chat", Icon: "/icons/own.png", Summary: "Quiet", Actions: []string{}, Timeout: -1,
			Hints: with("resident", true, "transient", false, "urgency", byte(0), "sound-name", "message-new-instant")},
	}, {
		name: "neither popup nor persist is not shown",
		req:  Request{AppID: testApp, Card: &app.Card{Summary: "Nothing"}},
	}, {
		name: "empty summary is not shown",
		req:  Request{AppID: testApp, Card: &app.Card{Body: "no summary", Popup: true}},
	}, {
		name: "declared scheme is accepted",
		req:  Request{AppID: testApp, Card: &app.Card{Summary: "S", Popup: true, Actions: []string{"chat://room/1"}}},
		want: &notifyCall{AppName: "Chat", Icon: "chat", Summary: "S", Actions: []string{"default", "Open"}, Timeout: -1,
			Hints: with("x-canonical-switch-to-application", "true")},
	}, {
		name: "foreign action is dropped",
		req: Request{AppID: testApp, Card: &app.Card{Summary: "F", Popup: true,
			Actions: []string{"appid://com.example.other/other/current-user-version"}}},
		want: &notifyCall{AppName: "Chat", Icon: "chat", Summary: "F", Actions: []string{}, Timeout: -1, Hints: with()},
	}, {
		name: "https not declared is dropped, sound outside dirs refused",
		req: Request{AppID: testApp, Card: &app.Card{Summary: "W", Popup: true, Actions: []string{"https://example.com/"}},
			Sound: &app.Sound{Path: "../../etc/passwd"}},
		want: &notifyCall{AppName: "Chat", Icon: "chat", Summary: "W", Actions: []string{}, Timeout: -1, Hints: with()},
	}, {
		name: "app without desktop entry",
		req:  Request{AppID: "org.example.Bare", Card: &app.Card{Summary: "B", Popup: true, Actions: []string{"appid://org.example.Bare/x"}}},
		want: &notifyCall{AppName: "org.example.Bare", Summary: "B", Actions: []string{"default", "Open"}, Timeout: -1,
			Hints: map[string]any{"desktop-entry": "org.example.Bare", "urgency": byte(1), "category": "im.received",
				"x-canonical-switch-to-application": "true"}},
	}}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := e.p.Present(ctx, tt.req); err != nil {
				t.Fatalf("Present: %v", err)
			}
			// A marker card after it tells whether it was shown.
			if err := e.p.Present(ctx, Request{AppID: "org.example.Marker", Card: &app.Card{Summary: "marker", Popup: true}}); err != nil {
				t.Fatal(err)
			}
			got := srv.next1(t)
			if tt.want != nil {
				if diff := cmp.Diff(*tt.want, got); diff != "" {
					t.Errorf("Notify arguments (-want +got):\n%s", diff)
				}
				got = srv.next1(t)
			}
			if got.Summary != "marker" {
				t.Errorf("unexpected Notify %+v", got)
			}
		})
	}
	if err := e.p.Present(ctx, Request{AppID: "../evil", Card: &app.Card{Summary: "x", Popup: true}}); err == nil {
		t.Error("Present accepted an invalid app id")
	}
}

func TestTagReplacesAndPersistence(t *testing.T) {
	const testApp = "com.example.chat_chat"
	store := newMemStore()
	e := newEnv(t, store, map[string]string{"com.example.chat_chat.desktop": chatEntry})
	srv := startServer(t, e.bus, 10)
	e.run(t)
	ctx := context.Background()
	present := func(testApp, tag, summary string, persist bool) notifyCall {
		t.Helper()
		err := e.p.Present(ctx, Request{AppID: testApp, Tag: tag, Card: &app.Card{Summary: summary, Popup: true, Persist: persist}})
		if err != nil {
			t.Fatal(err)
		}
		return srv.next1(t)
	}
	if c := present(testApp, "a", "a1", true); c.Replaces != 0 {
		t.Fatalf("first card replaces %d", c.Replaces)
	}
	if c := present(testApp, "a", "a2", true); c.Replaces != 11 {
		t.Fatalf("same tag replaces %d, want 11", c.Replaces)
	}
	if c := present("org.example.Other", "a", "o", true); c.Replaces != 0 {
		t.Fatalf("other app's tag replaces %d", c.Replaces)
	}
	present(testApp, "b", "b1", true)      // id 13
	present(testApp, "c", "c1", false)     // id 14, not persistent
	present(testApp, "", "untagged", true) // id 15
	want := map[string]uint32{testApp + "/a/a2": 11, "org.example.Other/a/o": 12, testApp + "/b/b1": 13, testApp + "/c/c1": 14, testApp + "//untagged": 15}
	if diff := cmp.Diff(want, store.ids()); diff != "" {
		t.Fatalf("store (-want +got):\n%s", diff)
	}
	tags, err := e.p.ListPersistent(ctx, testApp)
	if err != nil || !cmp.Equal(tags, []string{"a", "b"}) {
		t.Fatalf("ListPersistent = %q, %v", tags, err)
	}
	n, err := e.p.ClearPersistent(ctx, testApp, []string{"a", "zzz"})
	if err != nil || n != 1 {
		t.Fatalf("ClearPersistent(a) = %d, %v", n, err)
	}
	if id := <-srv.closes; id != 11 {
		t.Fatalf("closed %d, want 11", id)
	}
	tags, _ = e.p.ListPersistent(ctx, testApp)
	if !cmp.Equal(tags, []string{"b"}) {
		t.Fatalf("after clear: %q", tags)
	}
	// A card with the cleared tag is new again.
	if c := present(testApp, "a", "a3", false); c.Replaces != 0 {
		t.Fatalf("cleared tag replaces %d", c.Replaces)
	}
	n, err = e.p.ClearPersistent(ctx, testApp, nil)
	if err != nil || n != 2 {
		t.Fatalf("ClearPersistent(all) = %d, %v", n, err)
	}
	tags, _ = e.p.ListPersistent(ctx, testApp)
	other, _ := e.p.ListPersistent(ctx, "org.example.Other")
	if len(tags) != 0 || !cmp.Equal(other, []string{"a"}) {
		t.Fatalf("after clear all: %q, other app %q", tags, other)
	}
	// The user dismisses the other app's persistent card: it is forgotten.
	srv.emit(t, "NotificationClosed", uint32(12), uint32(closedDismissed))
	waitChange(t, store, "delete org.example.Other 12")
	// Expiry of a tagged non-persistent card forgets its tag too.
	srv.emit(t, "NotificationClosed", uint32(16), uint32(closedExpired))
	waitChange(t, store, "delete "+testApp+" 16")
	if c := present(testApp, "a", "a4", false); c.Replaces != 0 {
		t.Fatalf("closed tag replaces %d", c.Replaces)
	}
}

func TestReshowAtStart(t *testing.T) {
	const testApp = "com.example.chat_chat"
	shown := time.Unix(1700000000, 0)
	store := newMemStore(
		Record{ID: 7, AppID: testApp, Tag: "t", Card: app.Card{Summary: "tagged", Persist: true, Popup: true,
			Actions: []string{"chat://x"}}, Shown: shown},
		Record{ID: 8, AppID: testApp, Card: app.Card{Summary: "untagged", Persist: true}, Shown: shown},
		Record{ID: 9, AppID: testApp, Tag: "old", Card: app.Card{Summary: "stale", Popup: true}, Shown: shown},
	)
	e := newEnv(t, store, map[string]string{"com.example.chat_chat.desktop": chatEntry})
	srv := startServer(t, e.bus, 100, "sound")
	e.run(t)
	e.log.wait(t, "persistent notifications shown again", 1)
	hints := map[string]any{"desktop-entry": "com.example.chat_chat", "urgency": byte(0), "category": "im.received",
		"x-canonical-secondary-icon": "chat-symbolic", "resident": true, "transient": false, "suppress-sound": true}
	got := []notifyCall{srv.next1(t), srv.next1(t)}
	withAction := map[string]any{"x-canonical-switch-to-application": "true"}
	for k, v := range hints {
		withAction[k] = v
	}
	want := []notifyCall{
		{AppName: "Chat", Icon: "chat", Summary: "tagged", Actions: []string{"default", "Open"}, Hints: withAction, Timeout: -1},
		{AppName: "Chat", Icon: "chat", Summary: "untagged", Actions: []string{}, Hints: hints, Timeout: -1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("re-shown (-want +got):\n%s", diff)
	}
	wantIDs := map[string]uint32{testApp + "/t/tagged": 101, testApp + "//untagged": 102}
	if diff := cmp.Diff(wantIDs, store.ids()); diff != "" {
		t.Fatalf("store (-want +got):\n%s", diff)
	}
	tags, err := e.p.ListPersistent(context.Background(), testApp)
	if err != nil || !cmp.Equal(tags, []string{"t"}) {
		t.Fatalf("ListPersistent = %q, %v", tags, err)
	}
	// The re-shown card's action works with its new id.
	srv.emit(t, "ActionInvoked", uint32(101), "default")
	select {
	case r := <-e.launc.got:
		if r.URL != "chat://x" || r.AppID != testApp {
			t.Fatalf("launched %+v", r)
		}
	case <-time.After(waitFor):
		t.Fatal("no launch")
	}
}

func TestSignalsAreChecked(t *testing.T) {
	const testApp = "com.example.chat_chat"
	store := newMemStore()
	e := newEnv(t, store, map[string]string{"com.example.chat_chat.desktop": chatEntry})
	srv := startServer(t, e.bus, 0)
	e.run(t)
	ctx := context.Background()
	err := e.p.Present(ctx, Request{AppID: testApp, MsgID: "m", Tag: "t",
		Card: &app.Card{Summary: "S", Popup: true, Persist: true, Actions: []string{"chat://room/7"}}})
	if err != nil {
		t.Fatal(err)
	}
	id := srv.next1(t).Replaces + 1
	forger := e.bus.Conn(t)
	forge := func(member string, args ...any) {
		t.Helper()
		if err := forger.Emit(notifyPath, notifyIface+"."+member, args...); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, forger)
	}
	forge("ActionInvoked", id, "default")
	forge("NotificationClosed", id, uint32(closedDismissed))
	srv.emit(t, "ActionInvoked", "1", "default")
	srv.emit(t, "ActionInvoked", id)
	srv.emit(t, "ActionInvoked", id, uint32(7))
	srv.emit(t, "NotificationClosed", id, "2")
	if err := srv.conn.Emit("/elsewhere", notifyIface+".ActionInvoked", id, "default"); err != nil {
		t.Fatal(err)
	}
	srv.emit(t, "ActionInvoked", uint32(999), "default") // not ours
	srv.emit(t, "ActionInvoked", id, "other-key")
	roundTrip(t, srv.conn)
	srv.emit(t, "ActionInvoked", id, "default")
	select {
	case r := <-e.launc.got:
		if r.AppID != testApp || r.URL != "chat://room/7" || r.Entry == nil || r.Entry.Name != "Chat" {
			t.Fatalf("launched %+v", r)
		}
	case <-time.After(waitFor):
		t.Fatal("valid ActionInvoked did not launch")
	}
	select {
	case r := <-e.launc.got:
		t.Fatalf("a forged signal launched %+v", r)
	default:
	}
	e.log.wait(t, "ActionInvoked ignored", 4) // the wrong path does not even match
	e.log.wait(t, "NotificationClosed ignored", 2)
	if tags, _ := e.p.ListPersistent(ctx, testApp); !cmp.Equal(tags, []string{"t"}) {
		t.Fatalf("forged close removed the card: %q", tags)
	}
	// Still working: a new card is shown, and the real dismissal removes the record.
	if err := e.p.Present(ctx, Request{AppID: testApp, Card: &app.Card{Summary: "after", Popup: true}}); err != nil {
		t.Fatal(err)
	}
	if c := srv.next1(t); c.Summary != "after" {
		t.Fatalf("got %+v", c)
	}
	srv.emit(t, "NotificationClosed", id, uint32(closedDismissed))
	waitChange(t, store, "delete "+testApp+" 1")
}

func TestOwnerChange(t *testing.T) {
	const testApp = "com.example.chat_chat"
	store := newMemStore()
	e := newEnv(t, store, map[string]string{"com.example.chat_chat.desktop": chatEntry})
	old := startServer(t, e.bus, 0)
	e.run(t)
	ctx := context.Background()
	err := e.p.Present(ctx, Request{AppID: testApp, Tag: "p", Card: &app.Card{Summary: "S", Persist: true, Popup: true, Actions: []string{"chat://a"}}})
	if err != nil {
		t.Fatal(err)
	}
	old.next1(t)
	// A new server replaces the old one: the persistent card moves to it.
	srv := startServer(t, e.bus, 500, "sound")
	c := srv.next1(t)
	if c.Summary != "S" || c.Replaces != 0 || c.Hints["transient"] != false {
		t.Fatalf("re-shown on the new server as %+v", c)
	}
	waitChange(t, store, "save "+testApp+" 501")
	// The old server is no longer trusted, even for its own id.
	if err := old.conn.Emit(notifyPath, notifyIface+".ActionInvoked", uint32(1), "default"); err != nil {
		t.Fatal(err)
	}
	if err := old.conn.Emit(notifyPath, notifyIface+".ActionInvoked", uint32(501), "default"); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, old.conn)
	srv.emit(t, "ActionInvoked", uint32(501), "default")
	select {
	case r := <-e.launc.got:
		if r.URL != "chat://a" {
			t.Fatalf("launched %+v", r)
		}
	case <-time.After(waitFor):
		t.Fatal("no launch")
	}
	select {
	case r := <-e.launc.got:
		t.Fatalf("old server launched %+v", r)
	default:
	}
	// The new server's capabilities are used: the sound goes as a hint.
	if err := e.p.Present(ctx, Request{AppID: testApp, Card: &app.Card{Summary: "snd", Popup: true}, Sound: &app.Sound{Default: true}}); err != nil {
		t.Fatal(err)
	}
	if c := srv.next1(t); c.Hints["sound-name"] != "message-new-instant" {
		t.Fatalf("no sound hint after owner change: %+v", c)
	}
	// The server goes away: Run keeps going and the next one gets the card.
	if _, err := srv.conn.ReleaseName(notifyName); err != nil {
		t.Fatal(err)
	}
	if _, err := old.conn.ReleaseName(notifyName); err != nil {
		t.Fatal(err)
	}
	third := startServer(t, e.bus, 900)
	if c := third.next1(t); c.Summary != "S" {
		t.Fatalf("third server got %+v", c)
	}
}

func TestLauncherEntryCounter(t *testing.T) {
	e := newEnv(t, newMemStore(), map[string]string{"com.example.chat_chat_2.desktop": chatEntry})
	listener := e.bus.Conn(t)
	if err := listener.AddMatchSignal(dbus.WithMatchInterface("com.canonical.Unity.LauncherEntry"), dbus.WithMatchMember("Update")); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 10)
	listener.Signal(ch)
	ctx := context.Background()
	if err := e.p.SetCounter(ctx, "com.example.chat_chat", 5, true); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Present(ctx, Request{AppID: "org.example.NoEntry", Counter: &app.EmblemCounter{Count: -1, Visible: false}}); err != nil {
		t.Fatal(err)
	}
	want := [][]any{
		{"application://com.example.chat_chat_2.desktop", map[string]dbus.Variant{"count": dbus.MakeVariant(int64(5)), "count-visible": dbus.MakeVariant(true)}},
		{"application://org.example.NoEntry.desktop", map[string]dbus.Variant{"count": dbus.MakeVariant(int64(-1)), "count-visible": dbus.MakeVariant(false)}},
	}
	for _, w := range want {
		select {
		case s := <-ch:
			if s.Name != "com.canonical.Unity.LauncherEntry.Update" || !cmp.Equal(s.Body, w, cmp.Comparer(func(a, b dbus.Variant) bool {
				return a.String() == b.String() && a.Signature() == b.Signature()
			})) {
				t.Fatalf("got %s %v, want %v", s.Name, s.Body, w)
			}
		case <-time.After(waitFor):
			t.Fatal("no Update signal")
		}
	}
	if err := e.p.SetCounter(ctx, "bad/id", 1, true); err == nil {
		t.Error("SetCounter accepted an invalid app id")
	}
}

// blockingLauncher blocks every launch until release is closed, whatever
// its context says (an app that hangs in activation).
type blockingLauncher struct {
	entered chan LaunchRequest
	release chan struct{}
}

func (l *blockingLauncher) Launch(_ context.Context, r LaunchRequest) error {
	l.entered <- r
	<-l.release
	return nil
}

// TestSignalLoopNeverBlocks: while an app launch (slow work) hangs, the
// signal loop still checks and handles the next signals in order.
func TestSignalLoopNeverBlocks(t *testing.T) {
	const testApp = "com.example.chat_chat"
	store := newMemStore()
	e := newEnv(t, store, map[string]string{"com.example.chat_chat.desktop": chatEntry})
	bl := &blockingLauncher{entered: make(chan LaunchRequest, 1), release: make(chan struct{})}
	e.p.launch = bl
	srv := startServer(t, e.bus, 0)
	e.run(t)
	defer close(bl.release)
	ctx := context.Background()
	err := e.p.Present(ctx, Request{AppID: testApp, MsgID: "m", Tag: "t",
		Card: &app.Card{Summary: "S", Popup: true, Persist: true, Actions: []string{"chat://room/7"}}})
	if err != nil {
		t.Fatal(err)
	}
	id := srv.next1(t).Replaces + 1
	srv.emit(t, "ActionInvoked", id, "default")
	select {
	case <-bl.entered:
	case <-time.After(waitFor):
		t.Fatal("ActionInvoked did not launch")
	}
	// The launch hangs; the loop goes on with the next signals.
	srv.emit(t, "ActionInvoked", "bad body")
	e.log.wait(t, "ActionInvoked ignored", 1)
	srv.emit(t, "NotificationClosed", id, uint32(closedDismissed))
	e.log.wait(t, "notification closed", 1)
}
