// Package store keeps the durable state of the device side of Herald in a
// sqlite database: the server identity (uaid), the apps' registrations, the
// inbox with the pipeline step of each message, the ids already seen (dedup),
// the notifications shown and a few counters.
//
// The schema is migrated by PRAGMA user_version; a database written by a
// newer Herald is refused instead of being damaged.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	_ "github.com/mattn/go-sqlite3" // sqlite driver

	"github.com/heraldpush/herald/app"
)

// SchemaVersion is the user_version this package writes.
const SchemaVersion = 3

// ErrNewerSchema is returned by Open for a database written by a newer version.
var ErrNewerSchema = errors.New("database schema is newer than this program")

// ErrNotFound is returned when a registration or message does not exist.
var ErrNotFound = errors.New("not found")

var migrations = []string{
	// 1: initial schema.
	`
CREATE TABLE state (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
CREATE TABLE registrations (
	channel_id TEXT PRIMARY KEY,
	app_id     TEXT NOT NULL,
	kind       TEXT NOT NULL CHECK (kind IN ('lomiri', 'unifiedpush')),
	endpoint   TEXT NOT NULL DEFAULT '',
	service    TEXT NOT NULL DEFAULT '',
	up_token   TEXT NOT NULL DEFAULT '',
	up_version INTEGER NOT NULL DEFAULT 0,
	vapid      TEXT NOT NULL DEFAULT '',
	stale      INTEGER NOT NULL DEFAULT 0,
	registered INTEGER NOT NULL
);
CREATE UNIQUE INDEX registrations_lomiri ON registrations(app_id) WHERE kind = 'lomiri';
CREATE UNIQUE INDEX registrations_up ON registrations(up_token) WHERE kind = 'unifiedpush';
CREATE TABLE inbox (
	seq          INTEGER PRIMARY KEY AUTOINCREMENT,
	msg_id       TEXT NOT NULL UNIQUE,
	app_id       TEXT NOT NULL,
	channel_id   TEXT NOT NULL,
	version      TEXT NOT NULL,
	body         BLOB,
	received     INTEGER NOT NULL,
	expires      INTEGER NOT NULL DEFAULT 0,
	step         TEXT NOT NULL,
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt INTEGER NOT NULL DEFAULT 0,
	message      BLOB,
	notification BLOB
);
CREATE INDEX inbox_app ON inbox(app_id, seq);
CREATE TABLE seen (
	channel_id TEXT NOT NULL,
	version    TEXT NOT NULL,
	received   INTEGER NOT NULL,
	PRIMARY KEY (channel_id, version)
) WITHOUT ROWID;
CREATE TABLE notifications (
	id     INTEGER PRIMARY KEY,
	app_id TEXT NOT NULL,
	tag    TEXT NOT NULL DEFAULT '',
	msg_id TEXT NOT NULL DEFAULT '',
	card   BLOB,
	shown  INTEGER NOT NULL
);
CREATE UNIQUE INDEX notifications_tag ON notifications(app_id, tag) WHERE tag != '';
CREATE TABLE counters (
	name  TEXT PRIMARY KEY,
	value INTEGER NOT NULL
);
`,
	// 2: who owns a UnifiedPush registration, and the service argument a
	// connector sent when it was not a bus name.
	`
ALTER TABLE registrations ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE registrations ADD COLUMN up_instance TEXT NOT NULL DEFAULT '';
ALTER TABLE registrations ADD COLUMN registrant TEXT NOT NULL DEFAULT '';
`,
	// 3: the backend (push service) each registration lives on; every
	// registration before was on the autopush backend.
	`
ALTER TABLE registrations ADD COLUMN backend TEXT NOT NULL DEFAULT 'autopush';
`,
}

// DefaultMaxInbox is how many messages one app's inbox keeps: beyond it the
// oldest are dropped (queued ones first) and counted (app.CounterInboxFull).
const DefaultMaxInbox = 1000

// Options tune how the database is opened.
type Options struct {
	// Synchronous is the sqlite synchronous mode: "FULL" (default) makes
	// every commit survive a power loss, "NORMAL" only a process crash.
	Synchronous string
	// MaxInbox is how many messages one app's inbox keeps (default
	// DefaultMaxInbox).
	MaxInbox int
}

// Store is an open state database. It is safe for concurrent use.
type Store struct {
	db *sql.DB
	// relaxed is a second pool on the same file with synchronous=NORMAL,
	// for pipeline step records: after a power loss (not a crash) a step
	// may be done again, while received messages and what apps took are
	// committed with the configured (FULL) durability. Reads use it too:
	// db's one idle connection then stays the receiving transaction's, and
	// a read while it commits does not open (and, with one idle connection
	// kept, close again) a connection of its own (a D-Bus Counters poll
	// during a drain cost a sqlite open each time).
	relaxed *sql.DB
	// wmu serializes writers in the process: waiting here is cheaper than
	// sqlite's busy handler, which sleeps.
	wmu sync.Mutex
	// maxInbox is Options.MaxInbox.
	maxInbox int
	// high is, per app, an upper bound of the number of its inbox rows
	// (guarded by wmu): this process alone writes the inbox, inserts add
	// to it and deletes leave it high, so an app whose bound stays within
	// maxInbox after new messages needs no count (boundApps).
	high map[string]int
}

// Open opens (creating if needed) the database at path and migrates it.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	sync := opts.Synchronous
	if sync == "" {
		sync = "FULL"
	}
	switch sync {
	case "FULL", "NORMAL", "OFF", "EXTRA":
	default:
		return nil, fmt.Errorf("invalid synchronous mode %q", sync)
	}
	if err := createPrivate(path); err != nil {
		return nil, fmt.Errorf("cannot create state database %q: %w", path, err)
	}
	open := func(sync string) (*sql.DB, error) {
		q := url.Values{}
		q.Set("_busy_timeout", "10000")
		q.Set("_journal_mode", "WAL")
		q.Set("_synchronous", sync)
		q.Set("_txlock", "immediate")
		q.Set("_foreign_keys", "on")
		// Prepared statements are kept per connection: the inbox's hot
		// statements are not compiled again for every message or batch.
		q.Set("_stmt_cache_size", "32")
		db, err := sql.Open("sqlite3", "file:"+url.PathEscape(path)+"?"+q.Encode())
		if err != nil {
			return nil, fmt.Errorf("cannot open state database %q: %w", path, err)
		}
		db.SetMaxOpenConns(4)
		db.SetMaxIdleConns(1)
		return db, nil
	}
	db, err := open(sync)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, relaxed: db, maxInbox: opts.MaxInbox, high: map[string]int{}}
	if s.maxInbox <= 0 {
		s.maxInbox = DefaultMaxInbox
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("cannot open state database %q: %w", path, err)
	}
	if sync == "FULL" || sync == "EXTRA" {
		if s.relaxed, err = open("NORMAL"); err != nil {
			db.Close()
			return nil, err
		}
	}
	return s, nil
}

// createPrivate creates the database file readable by its owner only (its
// -wal and -shm files take its mode); an existing file is left alone.
func createPrivate(path string) error {
	if path == "" || path == ":memory:" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// Close closes the database.
func (s *Store) Close() error {
	var err error
	if s.relaxed != s.db {
		err = s.relaxed.Close()
	}
	return errors.Join(err, s.db.Close())
}

func (s *Store) migrate(ctx context.Context) error {
	var v int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("cannot read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("%w: schema version %d, this program knows up to %d", ErrNewerSchema, v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1))
			return err
		})
		if err != nil {
			return fmt.Errorf("cannot migrate schema to version %d: %w", i+1, err)
		}
	}
	return nil
}

func (s *Store) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.db.ExecContext(ctx, q, args...)
}

// execRelaxed is exec on the relaxed pool (pipeline steps).
func (s *Store) execRelaxed(ctx context.Context, q string, args ...any) (sql.Result, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.relaxed.ExecContext(ctx, q, args...)
}

func (s *Store) tx(ctx context.Context, f func(tx *sql.Tx) error) error {
	return s.txOn(ctx, s.db, f)
}

func (s *Store) txRelaxed(ctx context.Context, f func(tx *sql.Tx) error) error {
	return s.txOn(ctx, s.relaxed, f)
}

func (s *Store) txOn(ctx context.Context, db *sql.DB, f func(tx *sql.Tx) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// UAID returns the stored uaid, "" when none.
func (s *Store) UAID(ctx context.Context) (string, error) {
	var v string
	err := s.relaxed.QueryRowContext(ctx, "SELECT value FROM state WHERE key = 'uaid'").Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("cannot read uaid: %w", err)
	}
	return v, nil
}

// SetUAID stores a new uaid of the autopush backend. When it differs from
// the stored one, every autopush registration is marked stale in the same
// transaction: the server forgot them and they must be registered again. It
// reports whether the uaid changed.
func (s *Store) SetUAID(ctx context.Context, uaid string) (changed bool, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var old string
		err := tx.QueryRowContext(ctx, "SELECT value FROM state WHERE key = 'uaid'").Scan(&old)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if old == uaid {
			return nil
		}
		changed = true
		if _, err := tx.ExecContext(ctx, "INSERT INTO state(key, value) VALUES('uaid', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", uaid); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "UPDATE registrations SET stale = 1 WHERE backend = ?", app.BackendAutopush)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("cannot store uaid: %w", err)
	}
	return changed, nil
}

// backendStatePrefix namespaces the values backends keep in the state table.
const backendStatePrefix = "backend/"

// BackendState returns the value a backend saved under key ("" when none).
func (s *Store) BackendState(ctx context.Context, b app.Backend, key string) (string, error) {
	var v string
	err := s.relaxed.QueryRowContext(ctx, "SELECT value FROM state WHERE key = ?", backendStatePrefix+string(b)+"/"+key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("cannot read %s state %q: %w", b, key, err)
	}
	return v, nil
}

// SetBackendState durably saves a backend's value under key.
func (s *Store) SetBackendState(ctx context.Context, b app.Backend, key, value string) error {
	_, err := s.exec(ctx, "INSERT INTO state(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
		backendStatePrefix+string(b)+"/"+key, value)
	if err != nil {
		return fmt.Errorf("cannot save %s state %q: %w", b, key, err)
	}
	return nil
}

func unixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMilli(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// Incr adds delta to the named counter.
func (s *Store) Incr(ctx context.Context, name app.Counter, delta uint64) error {
	_, err := s.execRelaxed(ctx, incrSQL, name, delta)
	if err != nil {
		return fmt.Errorf("cannot update counter %q: %w", name, err)
	}
	return nil
}

const incrSQL = "INSERT INTO counters(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"

// Counters returns every counter.
func (s *Store) Counters(ctx context.Context) (map[string]uint64, error) {
	rows, err := s.relaxed.QueryContext(ctx, "SELECT name, value FROM counters")
	if err != nil {
		return nil, fmt.Errorf("cannot read counters: %w", err)
	}
	defer rows.Close()
	m := map[string]uint64{}
	for rows.Next() {
		var n string
		var v int64
		if err := rows.Scan(&n, &v); err != nil {
			return nil, fmt.Errorf("cannot read counters: %w", err)
		}
		m[n] = uint64(v)
	}
	return m, rows.Err()
}
