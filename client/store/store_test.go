package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldpush/herald/app"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMigrateAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "herald.db")
	s := open(t, path)
	if _, err := s.SetUAID(ctx, "0123456789abcdef0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, path)
	got, err := s.UAID(ctx)
	if err != nil || got != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("UAID after reopen = %q, %v", got, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "herald.db")
	s := open(t, path)
	if err := s.Incr(ctx, "x", 1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", SchemaVersion+1)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(ctx, path, Options{})
	if !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("Open of a newer schema: err = %v, want ErrNewerSchema", err)
	}
	// Nothing was changed: the version is still the newer one.
	db, _ = sql.Open("sqlite3", path)
	defer db.Close()
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != SchemaVersion+1 {
		t.Fatalf("user_version = %d, %v", v, err)
	}
}

func TestSetUAIDMarksStale(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	if ch, _ := s.SetUAID(ctx, "aa"); !ch {
		t.Fatal("first uaid not reported as changed")
	}
	r := Registration{ChannelID: "c1", AppID: "pkg_app", Kind: app.KindLomiri, Endpoint: "http://x/wpush/v1/t"}
	if err := s.PutRegistration(ctx, r); err != nil {
		t.Fatal(err)
	}
	if ch, _ := s.SetUAID(ctx, "aa"); ch {
		t.Fatal("same uaid reported as changed")
	}
	if got, _ := s.LomiriRegistration(ctx, "pkg_app"); got.Stale {
		t.Fatal("registration stale after same uaid")
	}
	if ch, _ := s.SetUAID(ctx, "bb"); !ch {
		t.Fatal("new uaid not reported as changed")
	}
	got, err := s.LomiriRegistration(ctx, "pkg_app")
	if err != nil || !got.Stale {
		t.Fatalf("registration after new uaid = %+v, %v; want stale", got, err)
	}
	if err := s.SetEndpoint(ctx, "c1", "http://x/wpush/v1/u"); err != nil {
		t.Fatal(err)
	}
	got, _ = s.LomiriRegistration(ctx, "pkg_app")
	if got.Stale || got.Endpoint != "http://x/wpush/v1/u" {
		t.Fatalf("after SetEndpoint: %+v", got)
	}
	if err := s.SetEndpoint(ctx, "nope", "e"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetEndpoint of unknown channel: %v", err)
	}
}

func TestRegistrationUniqueness(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	tests := []struct {
		name    string
		reg     Registration
		wantErr bool
	}{
		{"lomiri", Registration{ChannelID: "c1", AppID: "pkg_app", Kind: app.KindLomiri}, false},
		{"second lomiri channel for the app", Registration{ChannelID: "c2", AppID: "pkg_app", Kind: app.KindLomiri}, true},
		{"up", Registration{ChannelID: "c3", AppID: "org.example.x", Kind: app.KindUnifiedPush, UPToken: "t1"}, false},
		{"second up token", Registration{ChannelID: "c4", AppID: "org.example.x", Kind: app.KindUnifiedPush, UPToken: "t2"}, false},
		{"same up token", Registration{ChannelID: "c5", AppID: "org.example.y", Kind: app.KindUnifiedPush, UPToken: "t1"}, true},
		{"bad kind", Registration{ChannelID: "c6", AppID: "x", Kind: "other"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.PutRegistration(ctx, tt.reg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("PutRegistration: err = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
	regs, err := s.Registrations(ctx)
	if err != nil || len(regs) != 3 {
		t.Fatalf("Registrations = %d, %v; want 3", len(regs), err)
	}
	if r, err := s.UPRegistration(ctx, "t2"); err != nil || r.ChannelID != "c4" {
		t.Fatalf("UPRegistration(t2) = %+v, %v", r, err)
	}
}

func TestReceiveDedupAndOrder(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	now := time.UnixMilli(1_700_000_000_000)
	in := func(app, ch, ver string) Incoming {
		return Incoming{MsgID: ch + "/" + ver, AppID: app, ChannelID: ch, Version: ver, Body: []byte(ver), Received: now}
	}
	dup, err := s.Receive(ctx, []Incoming{in("a", "ca", "1"), in("b", "cb", "1"), in("a", "ca", "2")})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]bool{false, false, false}, dup); diff != "" {
		t.Fatal(diff)
	}
	// A redelivery of ca/2 with a new message is a duplicate, the new one is not.
	dup, err = s.Receive(ctx, []Incoming{in("a", "ca", "2"), in("a", "ca", "3")})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]bool{true, false}, dup); diff != "" {
		t.Fatal(diff)
	}
	for _, m := range mustPending(t, s, "a") {
		if err := s.Processed(ctx, m.Seq, append([]byte(`"`), append(m.Body, '"')...), nil); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.PopAll(ctx, "a", now)
	if err != nil {
		t.Fatal(err)
	}
	var strs []string
	for _, m := range got {
		strs = append(strs, string(m))
	}
	if diff := cmp.Diff([]string{`"1"`, `"2"`, `"3"`}, strs); diff != "" {
		t.Fatalf("PopAll order (-want +got):\n%s", diff)
	}
	if got, _ := s.PopAll(ctx, "a", now); len(got) != 0 {
		t.Fatalf("second PopAll returned %d messages", len(got))
	}
	c, _ := s.Counters(ctx)
	if c["messages_received"] != 4 || c["duplicates"] != 1 || c["messages_delivered"] != 3 {
		t.Fatalf("counters = %v", c)
	}
	// b's message is untouched.
	if p := mustPending(t, s, "b"); len(p) != 1 {
		t.Fatalf("b pending = %d", len(p))
	}
}

func TestReceiveAtomic(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	// Two messages with the same msg_id: the second insert fails, so the
	// whole batch (seen ids included) is rolled back.
	batch := []Incoming{
		{MsgID: "m", AppID: "a", ChannelID: "c", Version: "1"},
		{MsgID: "m", AppID: "a", ChannelID: "c", Version: "2"},
	}
	if _, err := s.Receive(ctx, batch); err == nil {
		t.Fatal("Receive with a duplicate msg id succeeded")
	}
	dup, err := s.Receive(ctx, batch[:1])
	if err != nil || dup[0] {
		t.Fatalf("after a failed batch: dup = %v, err = %v; want stored anew", dup, err)
	}
}

func TestPopAllDropsExpired(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	now := time.UnixMilli(1_700_000_000_000)
	_, err := s.Receive(ctx, []Incoming{
		{MsgID: "1", AppID: "a", ChannelID: "c", Version: "1", Received: now, Expires: now.Add(time.Second)},
		{MsgID: "2", AppID: "a", ChannelID: "c", Version: "2", Received: now},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mustPending(t, s, "a") {
		if err := s.Processed(ctx, m.Seq, []byte(m.MsgID), nil); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.PopAll(ctx, "a", now.Add(time.Second))
	if err != nil || len(got) != 1 || string(got[0]) != "2" {
		t.Fatalf("PopAll = %q, %v; want only the unexpired message", got, err)
	}
	if left, _ := s.Inbox(ctx, "a"); len(left) != 0 {
		t.Fatalf("inbox keeps %d messages", len(left))
	}
}

func TestSteps(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "herald.db")
	s := open(t, path)
	if _, err := s.Receive(ctx, []Incoming{{MsgID: "1", AppID: "a", ChannelID: "c", Version: "1"}}); err != nil {
		t.Fatal(err)
	}
	m := mustPending(t, s, "a")[0]
	if err := s.Processed(ctx, m.Seq, []byte(`{"x":1}`), &app.Notification{Tag: "t", EmblemCounter: &app.EmblemCounter{Count: 3, Visible: true}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, path) // a restart resumes from the processed step
	m = mustPending(t, s, "a")[0]
	if m.Step != app.StepProcessed || m.Notification == nil || m.Notification.Tag != "t" || *m.Notification.EmblemCounter != (app.EmblemCounter{Count: 3, Visible: true}) || string(m.Output) != `{"x":1}` {
		t.Fatalf("after restart: %+v", m)
	}
	if err := s.Presented(ctx, m.Seq); err != nil {
		t.Fatal(err)
	}
	if p := mustPending(t, s, "a"); len(p) != 0 {
		t.Fatalf("pending after presented = %d", len(p))
	}
	h, err := s.Head(ctx, "a")
	if err != nil || h.Step != app.StepQueued {
		t.Fatalf("Head = %+v, %v", h, err)
	}
	if err := s.Done(ctx, m.Seq, "messages_delivered"); err != nil {
		t.Fatal(err)
	}
	if err := s.Done(ctx, m.Seq, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Done: %v", err)
	}
}

func TestNotifications(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	t0 := time.UnixMilli(1_700_000_000_000)
	for _, n := range []Notification{
		{ID: 1, AppID: "_a", Tag: "t", Card: app.Card{Summary: "1", Persist: true, Actions: []string{"chat://1"}}, Shown: t0},
		{ID: 2, AppID: "_a", Tag: "t", Card: app.Card{Summary: "2", Persist: true, Actions: []string{"chat://2"}}, Shown: t0.Add(time.Second)}, // replaces 1
		{ID: 3, AppID: "_a", Card: app.Card{Summary: "3", Persist: true, Actions: []string{"chat://3"}}, Shown: t0.Add(2 * time.Second)},
		{ID: 4, AppID: "_b", Tag: "t", Card: app.Card{Summary: "4", Persist: true, Actions: []string{"chat://4"}}, Shown: t0.Add(3 * time.Second)},
	} {
		if err := s.SaveNotification(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(app string) []uint32 {
		ns, err := s.Notifications(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint32
		for _, n := range ns {
			out = append(out, n.ID)
		}
		return out
	}
	if diff := cmp.Diff([]uint32{2, 3}, ids("_a")); diff != "" {
		t.Fatal(diff)
	}
	if ns, _ := s.Notifications(ctx, "_a"); len(ns) == 0 || !cmp.Equal(ns[0].Card, app.Card{Summary: "2", Persist: true, Actions: []string{"chat://2"}}) {
		t.Fatalf("card not read back: %+v", ns)
	}
	if diff := cmp.Diff([]uint32{2, 3, 4}, ids("")); diff != "" {
		t.Fatal(diff)
	}
	if err := s.DeleteNotification(ctx, "_a", 2); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint32{3}, ids("_a")); diff != "" {
		t.Fatal(diff)
	}
}

func mustPending(t *testing.T, s *Store, app string) []Message {
	t.Helper()
	p, err := s.Pending(context.Background(), app, 100)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func BenchmarkReceiveBatch10(b *testing.B) {
	for _, sync := range []string{"NORMAL", "FULL"} {
		b.Run(sync, func(b *testing.B) { benchReceive(b, sync) })
	}
}

func benchReceive(b *testing.B, sync string) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "herald.db"), Options{Synchronous: sync})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	n := 0
	for b.Loop() {
		batch := make([]Incoming, 10)
		for i := range batch {
			n++
			v := fmt.Sprint(n)
			batch[i] = Incoming{MsgID: v, AppID: "a", ChannelID: "c", Version: v, Body: make([]byte, 100), Received: time.Now()}
		}
		if _, err := s.Receive(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
}

// Queued messages behind one still in the pipeline are not handed out yet.
func TestPopAllKeepsArrivalOrder(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	_, err := s.Receive(ctx, []Incoming{
		{MsgID: "1", AppID: "a", ChannelID: "c", Version: "1"},
		{MsgID: "2", AppID: "a", ChannelID: "c", Version: "2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := mustPending(t, s, "a")
	if err := s.Processed(ctx, p[1].Seq, []byte("2"), nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.PopAll(ctx, "a", time.Now()); len(got) != 0 {
		t.Fatalf("PopAll handed out %q before the older message was queued", got)
	}
	if err := s.Processed(ctx, p[0].Seq, []byte("1"), nil); err != nil {
		t.Fatal(err)
	}
	got, _ := s.PopAll(ctx, "a", time.Now())
	if diff := cmp.Diff([][]byte{[]byte("1"), []byte("2")}, got); diff != "" {
		t.Fatal(diff)
	}
}

func TestInvalidAppIDRefused(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	for _, id := range []string{"", "../x", "a_b", "_", "pkg_app\n"} {
		if err := s.PutRegistration(ctx, Registration{ChannelID: "c", AppID: id, Kind: app.KindLomiri}); err == nil {
			t.Errorf("PutRegistration(%q) succeeded", id)
		}
		if err := s.SaveNotification(ctx, Notification{ID: 1, AppID: id}); err == nil {
			t.Errorf("SaveNotification(%q) succeeded", id)
		}
	}
	if regs, _ := s.Registrations(ctx); len(regs) != 0 {
		t.Errorf("refused registrations were stored: %+v", regs)
	}
}

// TestMigrateRegistrationBackend: a version 2 database's registrations are
// on the autopush backend after the migration to version 3.
func TestMigrateRegistrationBackend(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "herald.db")
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations[:2] {
		if _, err := db.Exec(m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`PRAGMA user_version = 2; INSERT INTO registrations(channel_id, app_id, kind, registered) VALUES('c1', 'pkg_app', 'lomiri', 1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := open(t, path)
	r, err := s.RegistrationByChannel(ctx, "c1")
	if err != nil || r.Backend != app.BackendAutopush || r.AppID != "pkg_app" {
		t.Fatalf("migrated registration = %+v, %v; want backend autopush", r, err)
	}
}

// TestNewUAIDMarksOnlyAutopushStale: a new uaid is the autopush server
// forgetting its channels, not the other backends'.
func TestNewUAIDMarksOnlyAutopushStale(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	for _, r := range []Registration{
		{ChannelID: "c1", AppID: "pkg_app", Kind: app.KindLomiri, Endpoint: "x"},
		{ChannelID: "c2", AppID: "org.example.Up", Kind: app.KindUnifiedPush, UPToken: "t", Endpoint: "y", Backend: app.BackendNtfy},
	} {
		if err := s.PutRegistration(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetUAID(ctx, "0123456789abcdef0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	a, _ := s.RegistrationByChannel(ctx, "c1")
	n, _ := s.RegistrationByChannel(ctx, "c2")
	if !a.Stale || n.Stale || n.Backend != app.BackendNtfy {
		t.Fatalf("after a new uaid: autopush %+v, ntfy %+v; want only the autopush one stale", a, n)
	}
	if err := s.PutRegistration(ctx, Registration{ChannelID: "c3", AppID: "pkg_app2", Kind: app.KindLomiri, Backend: "carrier-pigeon"}); err == nil {
		t.Error("unknown backend stored")
	}
}

func TestBackendState(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "herald.db"))
	if v, err := s.BackendState(ctx, app.BackendNtfy, "last_id"); err != nil || v != "" {
		t.Fatalf("unset state = %q, %v", v, err)
	}
	for _, v := range []string{"a", "b"} {
		if err := s.SetBackendState(ctx, app.BackendNtfy, "last_id", v); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := s.BackendState(ctx, app.BackendNtfy, "last_id"); err != nil || v != "b" {
		t.Fatalf("state = %q, %v; want b", v, err)
	}
	if v, _ := s.BackendState(ctx, app.BackendLomiri, "last_id"); v != "" {
		t.Fatalf("another backend's state leaked: %q", v)
	}
}
