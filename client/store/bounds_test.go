package store

import (
	"context"
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
