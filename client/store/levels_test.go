package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

func TestLevelsDurableWithMessage(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.db")
	s := open(t, path)
	if l, err := s.Levels(ctx); err != nil || len(l) != 0 {
		t.Fatalf("fresh Levels = %v, %v", l, err)
	}
	msg := &Incoming{MsgID: "m1", AppID: "_ubuntu-system-settings", ChannelID: "broadcast/0", Version: "3", Body: []byte(`{"a/b":[3,""]}`), Received: time.Now()}
	if err := s.SetLevel(ctx, "0", 3, msg); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLevel(ctx, "0", 4, nil); err != nil {
		t.Fatal(err)
	}
	// A failing message insert (same msg id) leaves the level unchanged.
	if err := s.SetLevel(ctx, "0", 9, msg); err == nil {
		t.Fatal("SetLevel with a duplicate message succeeded")
	}
	s.Close()
	s = open(t, path)
	l, err := s.Levels(ctx)
	if err != nil || l["0"] != 4 || len(l) != 1 {
		t.Fatalf("Levels after reopen = %v, %v; want 0:4", l, err)
	}
	if p := mustPending(t, s, "_ubuntu-system-settings"); len(p) != 1 || string(p[0].Body) != `{"a/b":[3,""]}` {
		t.Fatalf("queued broadcast = %+v", p)
	}
}
