package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/heraldpush/herald/app"
)

// The bounds of issue 11 on the device's inbox.
func TestInboxBounds(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "herald.db")
	s, err := Open(ctx, path, Options{Synchronous: "NORMAL", MaxInbox: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, f := range []string{path, path + "-wal"} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", filepath.Base(f), st.Mode(), err)
		}
	}
	now := time.Now()
	in := func(id string, exp time.Time) Incoming {
		return Incoming{MsgID: id, AppID: "a_b", ChannelID: "c", Version: id, Body: []byte("body " + id), Received: now, Expires: exp}
	}
	// An expired queued message is swept when new ones arrive.
	if _, err := s.Receive(ctx, []Incoming{in("old", now.Add(-time.Second))}); err != nil {
		t.Fatal(err)
	}
	ms, _ := s.Inbox(ctx, "a_b")
	if err := s.Processed(ctx, ms[0].Seq, []byte("out"), nil); err != nil {
		t.Fatal(err)
	}
	// The raw body is gone once the output is stored.
	if ms, _ := s.Inbox(ctx, "a_b"); ms[0].Body != nil || string(ms[0].Output) != "out" {
		t.Errorf("after Processed: body %q, output %q", ms[0].Body, ms[0].Output)
	}
	for _, id := range []string{"m1", "m2", "m3", "m4", "m5"} {
		if _, err := s.Receive(ctx, []Incoming{in(id, now.Add(time.Hour))}); err != nil {
			t.Fatal(err)
		}
	}
	ms, _ = s.Inbox(ctx, "a_b")
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.MsgID)
	}
	c, _ := s.Counters(ctx)
	if len(ids) != 3 || ids[0] != "m3" || c[string(app.CounterInboxFull)] != 2 || c[string(app.CounterMessagesExpired)] != 1 {
		t.Fatalf("inbox %v, counters %v; want m3..m5, 2 dropped, 1 expired", ids, c)
	}
	// Posted messages count too.
	if err := s.Post(ctx, in("p1", time.Time{})); err != nil {
		t.Fatal(err)
	}
	if ms, _ := s.Inbox(ctx, "a_b"); len(ms) != 3 || ms[2].MsgID != "p1" {
		t.Fatalf("after Post: %d messages", len(ms))
	}
	if _, err := s.Receive(ctx, []Incoming{{MsgID: "x", AppID: "a_b", ChannelID: "c", Version: "x", Received: now, Expires: now.Add(time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SweepExpired(ctx, now.Add(time.Second)); err != nil || n != 1 {
		t.Fatalf("SweepExpired = %d, %v", n, err)
	}
}

// A batch for several apps bounds each app that went over its cap, and only
// those; an app's expired queued messages go before unexpired ones.
func TestInboxBoundsBatch(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "herald.db"), Options{Synchronous: "NORMAL", MaxInbox: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	now := time.Now()
	in := func(appID, id string, exp time.Time) Incoming {
		return Incoming{MsgID: appID + id, AppID: appID, ChannelID: appID, Version: id, Body: []byte(id), Received: now, Expires: exp}
	}
	// a: one expired queued message and one unexpired; b: two messages.
	if _, err := s.Receive(ctx, []Incoming{in("a", "old", now.Add(-time.Second)), in("a", "1", time.Time{}), in("b", "1", time.Time{}), in("b", "2", time.Time{})}); err != nil {
		t.Fatal(err)
	}
	ms, _ := s.Inbox(ctx, "a")
	if err := s.Processed(ctx, ms[0].Seq, []byte("out"), nil); err != nil {
		t.Fatal(err)
	}
	// a gets 2 more (4 > 3: its expired queued one goes), b gets 2 more (4
	// > 3: its oldest goes), c gets 1.
	if _, err := s.Receive(ctx, []Incoming{in("a", "2", time.Time{}), in("b", "3", time.Time{}), in("c", "1", time.Time{}), in("a", "3", time.Time{}), in("b", "4", time.Time{})}); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"a": {"a1", "a2", "a3"}, "b": {"b2", "b3", "b4"}, "c": {"c1"}}
	for appID, ids := range want {
		ms, err := s.Inbox(ctx, appID)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range ms {
			got = append(got, m.MsgID)
		}
		if fmt.Sprint(got) != fmt.Sprint(ids) {
			t.Errorf("inbox of %s = %v, want %v", appID, got, ids)
		}
	}
	c, _ := s.Counters(ctx)
	if c[string(app.CounterInboxFull)] != 1 || c[string(app.CounterMessagesExpired)] != 1 || c[string(app.CounterMessagesReceived)] != 9 {
		t.Errorf("counters %v; want 1 dropped (b1), 1 expired (a's old), 9 received", c)
	}
}
