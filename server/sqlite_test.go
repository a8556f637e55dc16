package server

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// runStore opens a store in a temp dir and runs it; stop ends Run and closes it.
func runStore(t *testing.T, path string) (st *SQLiteStore, stop func()) {
	t.Helper()
	st, err := OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	t.Cleanup(stop)
	return st, stop
}

func putMessage(t *testing.T, st *SQLiteStore, uaid, chid string) *Message {
	t.Helper()
	id := newMessageID()
	m := &Message{ID: id, UAID: uaid, ChannelID: chid, Version: id, Data: []byte("x"), Expiry: time.Now().Add(time.Hour)}
	if _, _, err := st.Put(context.Background(), m, PutOptions{}, time.Now()); err != nil {
		t.Fatal(err)
	}
	return m
}

// Acks are committed in the background, yet a message is never pending again
// once its ack has been handed to Delete.
func TestSQLiteAckedNeverPending(t *testing.T) {
	st, _ := runStore(t, filepath.Join(t.TempDir(), "s.db"))
	ctx := context.Background()
	uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
	for i := range 100 {
		m := putMessage(t, st, uaid, chid)
		if err := st.Delete(ctx, uaid, []Ref{{ChannelID: chid, Version: m.Version}}); err != nil {
			t.Fatal(err)
		}
		ms, err := st.Pending(ctx, uaid, 0, 10, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 0 {
			t.Fatalf("round %d: acked message still pending", i)
		}
	}
}

// Acks queued when the store stops are committed by Run's final flush.
func TestSQLiteAcksFlushedOnStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	st, stop := runStore(t, path)
	ctx := context.Background()
	uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
	var refs []Ref
	for range 20 {
		m := putMessage(t, st, uaid, chid)
		refs = append(refs, Ref{ChannelID: chid, Version: m.Version})
	}
	keep := putMessage(t, st, uaid, chid)
	for _, r := range refs {
		if err := st.Delete(ctx, uaid, []Ref{r}); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	if err := st.Delete(ctx, uaid, refs); err != ErrClosed {
		t.Errorf("Delete after stop = %v, want ErrClosed", err)
	}

	st2, _ := runStore(t, path)
	ms, err := st2.Pending(ctx, uaid, 0, 100, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].ID != keep.ID {
		t.Fatalf("after restart %d pending, want only the unacked one", len(ms))
	}
}

// Put with DropOver keeps the newest messages of the channel and says how
// many older ones it dropped.
func TestSQLiteDropOver(t *testing.T) {
	st, _ := runStore(t, filepath.Join(t.TempDir(), "s.db"))
	ctx := context.Background()
	uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
	const limit = 5
	var ids []string
	total := 0
	for i := range limit + 3 {
		id := newMessageID()
		m := &Message{ID: id, UAID: uaid, ChannelID: chid, Version: id, Expiry: time.Now().Add(time.Hour)}
		_, dropped, err := st.Put(ctx, m, PutOptions{DropOver: limit}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if want := max(0, i+1-limit); dropped != min(want, 1) {
			t.Errorf("put %d dropped %d", i, dropped)
		}
		total += dropped
		ids = append(ids, id)
	}
	ms, err := st.Pending(ctx, uaid, 0, 100, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.ID)
	}
	if want := ids[len(ids)-limit:]; total != 3 || !slices.Equal(got, want) {
		t.Fatalf("dropped %d, pending %v, want 3 and %v", total, got, want)
	}
}
