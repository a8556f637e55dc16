package server

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldpush/herald/internal/pgtest"
	"github.com/heraldpush/herald/protocol"
)

// One node sweeps at a time: while another session holds the sweep lock,
// Sweep deletes nothing; once it is free, Sweep deletes the expired rows.
func TestPostgresSweepOneNodeAtATime(t *testing.T) {
	url := pgtest.Database(t)
	st, err := OpenPostgres(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
	for range 3 {
		mustPut(t, st, newMsg(uaid, chid, "", time.Minute), PutOptions{})
	}
	later := time.Now().Add(time.Hour)
	other, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	if _, err := other.Exec(ctx, `SELECT pg_advisory_lock($1, $2)`, pgLockSpace, pgLockSweep); err != nil {
		t.Fatal(err)
	}
	if n, err := st.Sweep(ctx, later); err != nil || n != 0 {
		t.Fatalf("Sweep while another node sweeps = %d, %v; want 0", n, err)
	}
	var left int
	other.QueryRow(ctx, `SELECT count(*) FROM messages`).Scan(&left)
	if left != 3 {
		t.Fatalf("%d messages left, want 3", left)
	}
	if _, err := other.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, pgLockSpace, pgLockSweep); err != nil {
		t.Fatal(err)
	}
	if n, err := st.Sweep(ctx, later); err != nil || n != 3 {
		t.Fatalf("Sweep = %d, %v; want 3", n, err)
	}
	// The lock is released after a sweep: the other session can take it.
	var got bool
	if err := other.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, pgLockSpace, pgLockSweep).Scan(&got); err != nil || !got {
		t.Fatalf("sweep lock still held after Sweep (%v)", err)
	}
	other.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, pgLockSpace, pgLockSweep)
	// More than one batch is swept in one call.
	if _, err := other.Exec(ctx, `INSERT INTO messages (id, uaid, chid, version, expiry)
		SELECT 'x' || i, $1, 'c', 'v' || i, 1 FROM generate_series(1, $2::int) i`, uaid, sweepBatch+10); err != nil {
		t.Fatal(err)
	}
	if n, err := st.Sweep(ctx, later); err != nil || n != sweepBatch+10 {
		t.Fatalf("Sweep of %d = %d, %v", sweepBatch+10, n, err)
	}
}

// Migrations run once however many nodes open the database, and a database
// of a newer herald-server is refused rather than used.
func TestPostgresMigrations(t *testing.T) {
	url := pgtest.Database(t)
	ctx := context.Background()
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			st, err := OpenPostgres(ctx, url)
			if err == nil {
				st.Close()
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent open: %v", err)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n, top int
	conn.QueryRow(ctx, `SELECT count(*), max(version) FROM herald_schema`).Scan(&n, &top)
	if n != PostgresSchemaVersion || top != PostgresSchemaVersion {
		t.Fatalf("herald_schema has %d rows up to %d, want %d", n, top, PostgresSchemaVersion)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO herald_schema (version) VALUES ($1)`, PostgresSchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenPostgres(ctx, url); err == nil || !strings.Contains(err.Error(), "newer than this herald-server") {
		t.Fatalf("open of a newer schema: %v", err)
	}
}

// A 4 KB payload stays in the message row: nothing is TOASTed.
func TestPostgresPayloadNotToasted(t *testing.T) {
	st := runPostgres(t)
	uaid, chid := protocol.NewUAID(), protocol.NewChannelID()
	for range 20 {
		m := newMsg(uaid, chid, "", time.Hour)
		m.Data = make([]byte, protocol.MaxBodyBytes)
		rand.Read(m.Data) // incompressible, like an encrypted payload: TOAST would move it out of line
		m.Headers = map[string]string{"encoding": "aesgcm", "encryption": strings.Repeat("s", 100), "crypto_key": strings.Repeat("k", 200)}
		mustPut(t, st, m, PutOptions{})
	}
	var toast int64
	err := st.pool.QueryRow(context.Background(), `SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'messages'`).Scan(&toast)
	if err != nil {
		t.Fatal(err)
	}
	if toast != 0 {
		t.Fatalf("TOAST table of messages holds %d bytes, want 0", toast)
	}
	if ms, err := st.Pending(context.Background(), uaid, 0, 100, time.Now()); err != nil || len(ms) != 20 || len(ms[0].Data) != protocol.MaxBodyBytes {
		t.Fatalf("pending = %d, %v", len(ms), err)
	}
}
