package server

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/heraldpush/herald/internal/pgtest"
	"github.com/heraldpush/herald/protocol"
)

// testStoreBounds checks the bounds every Store keeps (issue 11): the
// channel cap of Register, delivery attempts, and idle devices.
func testStoreBounds(t *testing.T, st Store) {
	ctx := context.Background()
	now := time.Now()
	uaid := protocol.NewUAID()
	if err := st.AddDevice(ctx, uaid, now); err != nil {
		t.Fatal(err)
	}

	// Channel cap: a new channel beyond it fails; an existing one is returned.
	var chids []string
	for range 3 {
		ch := Channel{Token: newToken(), UAID: uaid, ChannelID: protocol.NewChannelID()}
		if _, err := st.Register(ctx, ch, 3); err != nil {
			t.Fatal(err)
		}
		chids = append(chids, ch.ChannelID)
	}
	if _, err := st.Register(ctx, Channel{Token: newToken(), UAID: uaid, ChannelID: protocol.NewChannelID()}, 3); !errors.Is(err, ErrTooManyChannels) {
		t.Fatalf("4th channel: %v, want ErrTooManyChannels", err)
	}
	if _, err := st.Register(ctx, Channel{Token: newToken(), UAID: uaid, ChannelID: chids[0]}, 3); err != nil {
		t.Fatalf("existing channel at the cap: %v", err)
	}
	if err := st.Unregister(ctx, uaid, chids[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Register(ctx, Channel{Token: newToken(), UAID: uaid, ChannelID: protocol.NewChannelID()}, 3); err != nil {
		t.Fatalf("after unregister: %v", err)
	}

	// Attempts: counted per message, returned by Pending.
	id := newMessageID()
	m := &Message{ID: id, UAID: uaid, ChannelID: chids[0], Version: id, Data: []byte("x"), Expiry: now.Add(time.Hour)}
	if _, _, err := st.Put(ctx, m, PutOptions{}, now); err != nil {
		t.Fatal(err)
	}
	ref := []Ref{{ChannelID: chids[0], Version: id}}
	for range 2 {
		if err := st.Attempted(ctx, uaid, ref); err != nil {
			t.Fatal(err)
		}
	}
	// Attempted may be queued: a write through Put commits after it.
	id2 := newMessageID()
	if _, _, err := st.Put(ctx, &Message{ID: id2, UAID: uaid, ChannelID: chids[1], Version: id2, Expiry: now.Add(time.Hour)}, PutOptions{}, now); err != nil {
		t.Fatal(err)
	}
	msgs, err := st.Pending(ctx, uaid, 0, 10, now)
	if err != nil || len(msgs) != 2 || msgs[0].Attempts != 2 || msgs[1].Attempts != 0 {
		t.Fatalf("Pending = %v, %v; want attempts 2 and 0", msgs, err)
	}

	// Idle devices: listed once not seen since; seen again, they stay.
	idle, other := protocol.NewUAID(), protocol.NewUAID()
	old := now.Add(-48 * time.Hour)
	for _, u := range []string{idle, other} {
		if err := st.AddDevice(ctx, u, old); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Register(ctx, Channel{Token: newToken(), UAID: u, ChannelID: protocol.NewChannelID()}, 0); err != nil {
			t.Fatal(err)
		}
	}
	since := now.Add(-24 * time.Hour)
	got, err := st.IdleDevices(ctx, since, 100)
	slices.Sort(got)
	want := []string{idle, other}
	slices.Sort(want)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("IdleDevices = %v, %v; want %v", got, err, want)
	}
	if err := st.AddDevice(ctx, other, now); err != nil { // seen again meanwhile
		t.Fatal(err)
	}
	if n, err := st.DeleteDevices(ctx, []string{idle, other}, since); err != nil || n != 1 {
		t.Fatalf("DeleteDevices = %d, %v; want 1", n, err)
	}
	for u, known := range map[string]bool{idle: false, other: true, uaid: true} {
		if ok, err := st.HasDevice(ctx, u); err != nil || ok != known {
			t.Errorf("HasDevice = %v, %v; want %v", ok, err, known)
		}
	}
	if got, _ := st.IdleDevices(ctx, since, 100); len(got) != 0 {
		t.Errorf("still idle: %v", got)
	}
}

func TestStoreBounds(t *testing.T) { forEachStore(t, testStoreBounds) }

// A database of the previous schema gets the new columns; its devices count
// as seen at the upgrade, not idle at once.
func TestSQLiteMigratesOldSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	uaid := protocol.NewUAID()
	if _, err := db.Exec(`CREATE TABLE devices (uaid TEXT PRIMARY KEY, created INTEGER NOT NULL) WITHOUT ROWID;
		CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, uaid TEXT NOT NULL,
			chid TEXT NOT NULL, version TEXT NOT NULL, topic TEXT NOT NULL DEFAULT '', data BLOB, headers TEXT, expiry INTEGER NOT NULL);
		INSERT INTO devices VALUES (?, 0)`, uaid); err != nil {
		t.Fatal(err)
	}
	db.Close()
	st, _ := runStore(t, path)
	ctx := context.Background()
	if got, err := st.IdleDevices(ctx, time.Now().Add(-time.Hour), 10); err != nil || len(got) != 0 {
		t.Fatalf("IdleDevices after upgrade = %v, %v", got, err)
	}
	if got, err := st.IdleDevices(ctx, time.Now().Add(time.Hour), 10); err != nil || !slices.Equal(got, []string{uaid}) {
		t.Fatalf("IdleDevices = %v, %v", got, err)
	}
	testStoreBounds(t, st)
}

// A database from before Lomiri devices had device rows: their channels
// ("L:<device id>") get a row at the upgrade, seen then, so they are
// idle-collected like others. SQLite and PostgreSQL (migration 5).
func TestLomiriDevicesUpgrade(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, st Store) {
		t.Helper()
		uaid := LomiriUAIDPrefix + "OLD"
		if known, err := st.HasDevice(ctx, uaid); err != nil || !known {
			t.Fatalf("HasDevice(%s) after the upgrade = %v, %v", uaid, known, err)
		}
		if got, err := st.IdleDevices(ctx, time.Now().Add(-time.Hour), 10); err != nil || len(got) != 0 {
			t.Fatalf("IdleDevices an hour before the upgrade = %v, %v", got, err)
		}
		got, err := st.IdleDevices(ctx, time.Now().Add(time.Hour), 10)
		if err != nil || !slices.Equal(got, []string{uaid}) {
			t.Fatalf("IdleDevices an hour after = %v, %v", got, err)
		}
		if n, err := st.DeleteDevices(ctx, got, time.Now().Add(time.Hour)); err != nil || n != 1 {
			t.Fatalf("DeleteDevices = %d, %v", n, err)
		}
		if _, err := st.Channel(ctx, "tok-old"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("channel of the deleted Lomiri device: %v", err)
		}
	}
	// Register alone makes no device row: the old /register.
	old := Channel{Token: "tok-old", UAID: LomiriUAIDPrefix + "OLD", ChannelID: "com.example.app_app"}
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "s.db")
		st, stop := runStore(t, path)
		if _, err := st.Register(ctx, old, 0); err != nil {
			t.Fatal(err)
		}
		stop()
		st, _ = runStore(t, path)
		check(t, st)
	})
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.Database(t)
		st, err := OpenPostgres(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Register(ctx, old, 0); err != nil {
			t.Fatal(err)
		}
		// Back to schema 4: migration 5 runs again at the next open.
		if _, err := st.pool.Exec(ctx, `DELETE FROM herald_schema WHERE version = 5`); err != nil {
			t.Fatal(err)
		}
		st.Close()
		st, err = OpenPostgres(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		check(t, st)
	})
}
