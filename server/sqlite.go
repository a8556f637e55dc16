package server

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	_ "github.com/mattn/go-sqlite3" // database/sql driver "sqlite3"
)

// maxBatch is the most operations one group commit carries.
const maxBatch = 1024

const schema = `
CREATE TABLE IF NOT EXISTS devices (
	uaid    TEXT PRIMARY KEY,
	created INTEGER NOT NULL,
	seen    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channels (
	token   TEXT PRIMARY KEY,
	uaid    TEXT NOT NULL,
	chid    TEXT NOT NULL,
	vapid   BLOB,
	created INTEGER NOT NULL,
	UNIQUE (uaid, chid)
);
CREATE TABLE IF NOT EXISTS messages (
	seq     INTEGER PRIMARY KEY AUTOINCREMENT,
	id      TEXT NOT NULL UNIQUE,
	uaid    TEXT NOT NULL,
	chid    TEXT NOT NULL,
	version TEXT NOT NULL,
	topic   TEXT NOT NULL DEFAULT '',
	data    BLOB,
	headers TEXT,
	expiry  INTEGER NOT NULL,
	attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_uaid ON messages (uaid, seq);
CREATE INDEX IF NOT EXISTS messages_chan ON messages (uaid, chid, version);
CREATE TABLE IF NOT EXISTS routes (
	uaid TEXT PRIMARY KEY,
	node TEXT NOT NULL,
	conn INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipt_watches (
	uaid      TEXT NOT NULL,
	chid      TEXT NOT NULL,
	version   TEXT NOT NULL,
	sub       TEXT NOT NULL,
	msg_id    TEXT NOT NULL,
	expiry    INTEGER NOT NULL,
	delivered INTEGER NOT NULL,
	PRIMARY KEY (uaid, chid, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS receipt_watches_expiry ON receipt_watches (expiry);
CREATE TABLE IF NOT EXISTS broadcasts (
	channel TEXT NOT NULL,
	level   INTEGER NOT NULL,
	data    BLOB NOT NULL,
	expiry  INTEGER NOT NULL,
	PRIMARY KEY (channel, level)
) WITHOUT ROWID;
`

// migrations add the columns of later versions to an older database. seen
// starts at the time of the upgrade, so that no device is idle at once.
var migrations = []struct{ table, column, sql string }{
	{"devices", "seen", `ALTER TABLE devices ADD COLUMN seen INTEGER NOT NULL DEFAULT 0;
		UPDATE devices SET seen = ?`},
	{"messages", "attempts", `ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0`},
}

// indexes need the columns of the migrations.
const indexes = `CREATE INDEX IF NOT EXISTS devices_seen ON devices (seen);`

// migrate brings an older schema up to date.
func migrate(db *sql.DB, now time.Time) error {
	for _, m := range migrations {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM pragma_table_info(?) WHERE name = ?`, m.table, m.column).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			continue
		}
		var args []any
		if m.column == "seen" {
			args = append(args, ms(now))
		}
		if _, err := db.Exec(m.sql, args...); err != nil {
			return err
		}
	}
	if _, err := db.Exec(indexes); err != nil {
		return err
	}
	// Lomiri devices registered before they had device rows get one, seen
	// at the upgrade, so that idle ones are deleted like others.
	_, err := db.Exec(lomiriDevices, ms(now), LomiriUAIDPrefix+"%")
	return err
}

// lomiriDevices adds the missing device rows of Lomiri devices' channels.
const lomiriDevices = `INSERT OR IGNORE INTO devices (uaid, created, seen)
	SELECT DISTINCT uaid, ?1, ?1 FROM channels WHERE uaid LIKE ?2
	AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.uaid = channels.uaid)`

// SQLiteStore is the Store of a single server: one sqlite file in WAL mode,
// written by one goroutine (Run) that group-commits batches of operations.
type SQLiteStore struct {
	wdb   *sql.DB // one connection, used only by Run
	rdb   *sql.DB // readers
	ops   chan *writeOp
	stmts map[string]*sql.Stmt // writer statements, prepared on wdb
	rsel  *sql.Stmt            // Pending
	rchan *sql.Stmt            // Channel
	rdev  *sql.Stmt            // HasDevice

	// ObserveCommit, when set before Run, is called after each commit with the
	// batch size and the time the commit took.
	ObserveCommit func(ops int, d time.Duration)

	mu     sync.Mutex // guards closed
	closed bool
	done   chan struct{} // closed when Run has flushed and returned

	// Acks are not one write op each: Delete queues them here and the next
	// commit deletes them all, without anyone waiting for it.
	kick     chan struct{}  // capacity 1: acks are queued
	dmu      sync.Mutex     // guards acks and deleting; taken after mu
	acks     []queuedAck    // guarded by dmu; for the next commit
	deleting map[string]int // guarded by dmu; uaid → queued or committing acks
}

// queuedAck is one Delete waiting for the writer.
type queuedAck struct {
	uaid string
	refs []Ref
}

type writeOp struct {
	fn   func(tx *sql.Tx, st func(string) *sql.Stmt) error
	done chan error // nil: nobody waits
}

var writerSQL = map[string]string{
	"adddev":   `INSERT INTO devices (uaid, created, seen) VALUES (?1, ?2, ?2) ON CONFLICT (uaid) DO UPDATE SET seen = ?2`,
	"chancnt":  `SELECT count(*) FROM channels WHERE uaid = ?`,
	"msgtry":   `UPDATE messages SET attempts = attempts + 1 WHERE uaid = ? AND chid = ? AND version = ?`,
	"devgc":    `DELETE FROM devices WHERE uaid = ? AND seen < ?`,
	"devgcch":  `DELETE FROM channels WHERE uaid = ?`,
	"devgcmsg": `DELETE FROM messages WHERE uaid = ?`,
	"changet":  `SELECT token, vapid FROM channels WHERE uaid = ? AND chid = ?`,
	"chanadd":  `INSERT INTO channels (token, uaid, chid, vapid, created) VALUES (?, ?, ?, ?, ?)`,
	"chandel":  `DELETE FROM channels WHERE uaid = ? AND chid = ?`,
	"msgdelch": `DELETE FROM messages WHERE uaid = ? AND chid = ?`,
	"msgtopic": `SELECT seq, version FROM messages WHERE uaid = ? AND chid = ? AND topic = ?`,
	"msgdelt":  `DELETE FROM messages WHERE uaid = ? AND chid = ? AND topic = ?`,
	"msgcount": `SELECT count(*) FROM messages WHERE uaid = ? AND chid = ? AND expiry > ?`,
	"msgall":   `SELECT count(*) FROM messages WHERE uaid = ? AND chid = ?`, // covered by messages_chan
	"msgdrop":  `DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE uaid = ? AND chid = ? ORDER BY seq LIMIT ?)`,
	"msgput":   `INSERT INTO messages (id, uaid, chid, version, topic, data, headers, expiry) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
	"msgack":   `DELETE FROM messages WHERE uaid = ? AND chid = ? AND version = ?`,
	"msgcanc":  `DELETE FROM messages WHERE id = ?`,
	"sweep":    `DELETE FROM messages WHERE expiry <= ?`,
	"routeget": `SELECT node, conn FROM routes WHERE uaid = ?`,
	"routeset": `INSERT INTO routes (uaid, node, conn) VALUES (?, ?, ?) ON CONFLICT (uaid) DO UPDATE SET node = excluded.node, conn = excluded.conn`,
	"routedel": `DELETE FROM routes WHERE uaid = ? AND node = ? AND conn = ?`,
	"nodedel":  `DELETE FROM routes WHERE node = ?`,
	"metaadd":  `INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)`,
	"metaget":  `SELECT value FROM meta WHERE key = ?`,
	"impmsg":   `INSERT OR IGNORE INTO messages (id, uaid, chid, version, topic, data, headers, expiry) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
	"impchan":  `INSERT OR IGNORE INTO channels (token, uaid, chid, vapid, created) VALUES (?, ?, ?, ?, ?)`,
	"msglast":  `SELECT data FROM messages WHERE uaid = ? AND chid = ? AND expiry > ? ORDER BY seq DESC LIMIT 1`,
	"watchput": `INSERT OR REPLACE INTO receipt_watches (uaid, chid, version, sub, msg_id, expiry, delivered) VALUES (?, ?, ?, ?, ?, ?, ?)`,
	"watchcnt": `SELECT count(*) FROM receipt_watches WHERE uaid = ?`,
	"watchtrim": `DELETE FROM receipt_watches WHERE (uaid, chid, version) IN (SELECT uaid, chid, version FROM receipt_watches
		WHERE uaid = ? ORDER BY expiry LIMIT ?)`,
	"watchget": `SELECT sub, msg_id, expiry, delivered FROM receipt_watches WHERE uaid = ? AND chid = ? AND version = ?`,
	"watchdel": `DELETE FROM receipt_watches WHERE uaid = ? AND chid = ? AND version = ?`,
	"watchexp": `SELECT uaid, chid, version, sub, msg_id, expiry, delivered FROM receipt_watches WHERE expiry <= ? LIMIT 1000`,
	"bctop":    `SELECT coalesce(max(level), 0) FROM broadcasts WHERE channel = ?`,
	"bcput":    `INSERT INTO broadcasts (channel, level, data, expiry) VALUES (?, ?, ?, ?)`,
	"bctrim":   `DELETE FROM broadcasts WHERE channel = ? AND level <= ?`,
}

// Sync says how far a commit goes before Put returns.
type Sync int

const (
	// SyncFull syncs the write-ahead log to disk at every (group) commit: an
	// accepted message survives a crash of the machine or a power loss.
	SyncFull Sync = iota
	// SyncNormal syncs the write-ahead log only at checkpoints: an accepted
	// message survives a crash or kill of the server process, but the last
	// commits before a crash of the machine or a power loss may be lost.
	SyncNormal
)

// ParseSync parses "full" or "normal".
func ParseSync(s string) (Sync, error) {
	switch s {
	case "full":
		return SyncFull, nil
	case "normal":
		return SyncNormal, nil
	}
	return 0, fmt.Errorf("invalid sync mode %q: want full or normal", s)
}

// SQLiteOptions tune a sqlite store.
type SQLiteOptions struct {
	Sync Sync
}

// OpenSQLite opens (creating if needed) the sqlite store at path with the
// default options (SyncFull). It starts no goroutines: call Run.
func OpenSQLite(path string) (*SQLiteStore, error) {
	return OpenSQLiteWith(path, SQLiteOptions{})
}

// OpenSQLiteWith is OpenSQLite with options.
func OpenSQLiteWith(path string, o SQLiteOptions) (*SQLiteStore, error) {
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	switch o.Sync {
	case SyncFull:
		q.Set("_synchronous", "FULL")
	case SyncNormal:
		q.Set("_synchronous", "NORMAL")
	default:
		return nil, fmt.Errorf("invalid sync mode %d", o.Sync)
	}
	q.Set("_busy_timeout", "10000")
	if err := createPrivate(path); err != nil {
		return nil, fmt.Errorf("cannot create store %q: %w", path, err)
	}
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	wdb, err := sql.Open("sqlite3", dsn+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("cannot open store %q: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	if _, err := wdb.Exec(schema); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("cannot create schema in %q: %w", path, err)
	}
	if err := migrate(wdb, time.Now()); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("cannot upgrade schema in %q: %w", path, err)
	}
	rdb, err := sql.Open("sqlite3", dsn)
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("cannot open store %q: %w", path, err)
	}
	rdb.SetMaxOpenConns(4)
	rdb.SetMaxIdleConns(4)
	s := &SQLiteStore{wdb: wdb, rdb: rdb, ops: make(chan *writeOp, maxBatch), stmts: map[string]*sql.Stmt{}, done: make(chan struct{}),
		kick: make(chan struct{}, 1), deleting: map[string]int{}}
	fail := func(err error) (*SQLiteStore, error) {
		wdb.Close()
		rdb.Close()
		return nil, fmt.Errorf("cannot prepare statements of %q: %w", path, err)
	}
	for name, text := range writerSQL {
		st, err := wdb.Prepare(text)
		if err != nil {
			return fail(err)
		}
		s.stmts[name] = st
	}
	if s.rsel, err = rdb.Prepare(`SELECT seq, id, chid, version, topic, data, headers, expiry, attempts FROM messages
		WHERE uaid = ? AND seq > ? AND expiry > ? ORDER BY seq LIMIT ?`); err != nil {
		return fail(err)
	}
	if s.rchan, err = rdb.Prepare(`SELECT uaid, chid, vapid FROM channels WHERE token = ?`); err != nil {
		return fail(err)
	}
	if s.rdev, err = rdb.Prepare(`SELECT 1 FROM devices WHERE uaid = ?`); err != nil {
		return fail(err)
	}
	return s, nil
}

// Run is the writer: it commits queued operations in batches until ctx ends,
// then commits what is still queued and returns.
func (s *SQLiteStore) Run(ctx context.Context) error {
	defer close(s.done)
	batch := make([]*writeOp, 0, maxBatch)
	for {
		batch = batch[:0]
		select {
		case op := <-s.ops:
			batch = append(batch, op)
		case <-s.kick:
		case <-ctx.Done():
			s.mu.Lock()
			s.closed = true
			s.mu.Unlock()
			// Nobody can enqueue any more: flush the rest.
			for {
				select {
				case op := <-s.ops:
					batch = append(batch, op)
					if len(batch) == maxBatch {
						s.commit(batch)
						batch = batch[:0]
					}
				default:
					s.commit(batch)
					return nil
				}
			}
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case op := <-s.ops:
				batch = append(batch, op)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

// commit runs ops and the queued acks in one transaction and reports each
// op's result after the commit. An op with more than one write wraps them in
// atomically, so that a failing op changes nothing (a failing single
// statement changes nothing).
func (s *SQLiteStore) commit(batch []*writeOp) {
	s.dmu.Lock()
	acks := s.acks
	s.acks = nil
	s.dmu.Unlock()
	if len(batch) == 0 && len(acks) == 0 {
		return
	}
	defer s.acked(acks)
	start := time.Now()
	errs := make([]error, len(batch))
	tx, err := s.wdb.Begin()
	if err == nil {
		// Statements bound to tx, made once per commit rather than per use.
		txStmts := make(map[string]*sql.Stmt, 4)
		st := func(name string) *sql.Stmt {
			t := txStmts[name]
			if t == nil {
				t = tx.Stmt(s.stmts[name])
				txStmts[name] = t
			}
			return t
		}
		for i, op := range batch {
			errs[i] = op.fn(tx, st)
		}
		if len(acks) > 0 {
			del := st("msgack")
			for _, a := range acks {
				for _, r := range a.refs {
					// A failed delete leaves the message to be delivered again
					// (at least once); the others go on.
					_, _ = del.Exec(a.uaid, r.ChannelID, r.Version)
				}
			}
		}
		err = tx.Commit()
	}
	if err != nil {
		if tx != nil {
			_ = tx.Rollback()
		}
		for i := range errs {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("cannot commit: %w", err)
			}
		}
	}
	if s.ObserveCommit != nil {
		s.ObserveCommit(len(batch)+len(acks), time.Since(start))
	}
	for i, op := range batch {
		if op.done != nil {
			op.done <- errs[i]
		}
	}
}

// acked forgets acks that a commit has handled.
func (s *SQLiteStore) acked(acks []queuedAck) {
	if len(acks) == 0 {
		return
	}
	s.dmu.Lock()
	for _, a := range acks {
		if s.deleting[a.uaid]--; s.deleting[a.uaid] <= 0 {
			delete(s.deleting, a.uaid)
		}
	}
	s.dmu.Unlock()
}

// write queues fn for the writer and waits for its commit unless async.
func (s *SQLiteStore) write(ctx context.Context, async bool, fn func(tx *sql.Tx, st func(string) *sql.Stmt) error) error {
	op := &writeOp{fn: fn}
	if !async {
		op.done = make(chan error, 1)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	// Enqueue under the lock so that Run's final flush sees every op.
	select {
	case s.ops <- op:
		s.mu.Unlock()
	default:
		s.mu.Unlock()
		select {
		case s.ops <- op:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return ErrClosed
		}
	}
	if async {
		return nil
	}
	select {
	case err := <-op.done:
		return err
	case <-s.done:
		// Run flushed everything before closing done.
		select {
		case err := <-op.done:
			return err
		default:
			return ErrClosed
		}
	}
}

// atomically runs fn under a savepoint: if fn fails, its writes are undone.
func atomically(tx *sql.Tx, fn func() error) error {
	if _, err := tx.Exec("SAVEPOINT op"); err != nil {
		return err
	}
	err := fn()
	if err != nil {
		if _, e := tx.Exec("ROLLBACK TO op"); e != nil {
			err = errors.Join(err, e)
		}
	}
	if _, e := tx.Exec("RELEASE op"); e != nil && err == nil {
		err = e
	}
	return err
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// HasDevice implements Store.
func (s *SQLiteStore) HasDevice(ctx context.Context, uaid string) (bool, error) {
	var one int
	err := s.rdev.QueryRowContext(ctx, uaid).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cannot look up device: %w", err)
	}
	return true, nil
}

// AddDevice implements Store.
func (s *SQLiteStore) AddDevice(ctx context.Context, uaid string, now time.Time) error {
	return s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		_, err := st("adddev").Exec(uaid, ms(now))
		return err
	})
}

// Register implements Store.
func (s *SQLiteStore) Register(ctx context.Context, ch Channel, maxChannels int) (Channel, error) {
	out := ch
	now := time.Now()
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		var token string
		var key []byte
		err := st("changet").QueryRow(ch.UAID, ch.ChannelID).Scan(&token, &key)
		switch {
		case err == nil:
			if string(key) != string(ch.Key) {
				return ErrConflict
			}
			out.Token = token
			return nil
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if maxChannels > 0 {
			var n int
			if err := st("chancnt").QueryRow(ch.UAID).Scan(&n); err != nil {
				return err
			}
			if n >= maxChannels {
				return ErrTooManyChannels
			}
		}
		_, err = st("chanadd").Exec(ch.Token, ch.UAID, ch.ChannelID, nilIfEmpty(ch.Key), ms(now))
		return err
	})
	if err != nil {
		return Channel{}, err
	}
	return out, nil
}

func nilIfEmpty(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// Unregister implements Store.
func (s *SQLiteStore) Unregister(ctx context.Context, uaid, channelID string) error {
	return s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		return atomically(tx, func() error {
			if _, err := st("chandel").Exec(uaid, channelID); err != nil {
				return err
			}
			_, err := st("msgdelch").Exec(uaid, channelID)
			return err
		})
	})
}

// Channel implements Store.
func (s *SQLiteStore) Channel(ctx context.Context, token string) (Channel, error) {
	ch := Channel{Token: token}
	err := s.rchan.QueryRowContext(ctx, token).Scan(&ch.UAID, &ch.ChannelID, &ch.Key)
	if errors.Is(err, sql.ErrNoRows) {
		return Channel{}, ErrNotFound
	}
	if err != nil {
		return Channel{}, fmt.Errorf("cannot look up token: %w", err)
	}
	return ch, nil
}

// Put implements Store.
func (s *SQLiteStore) Put(ctx context.Context, m *Message, o PutOptions, now time.Time) (bool, int, error) {
	headers, err := encodeHeaders(m)
	if err != nil {
		return false, 0, err
	}
	var stored bool
	var dropped int
	put := func(st func(string) *sql.Stmt) error {
		stored, dropped = true, 0
		if o.ClearPending {
			if _, err := st("msgdelch").Exec(m.UAID, m.ChannelID); err != nil {
				return err
			}
		}
		if o.KeepNewerVersion && m.Topic != "" {
			newer, err := hasNewerVersion(st, m)
			if err != nil {
				return err
			}
			if newer {
				stored = false
				return nil
			}
		}
		if (o.Replace || o.KeepNewerVersion) && m.Topic != "" {
			if _, err := st("msgdelt").Exec(m.UAID, m.ChannelID, m.Topic); err != nil {
				return err
			}
		}
		if o.RejectAt > 0 {
			var n int
			if err := st("msgcount").QueryRow(m.UAID, m.ChannelID, ms(now)).Scan(&n); err != nil {
				return err
			}
			if n >= o.RejectAt {
				var last []byte
				if err := st("msglast").QueryRow(m.UAID, m.ChannelID, ms(now)).Scan(&last); err != nil {
					return ErrTooManyPending
				}
				return &PendingLimitError{Last: last}
			}
		}
		if o.Acked != nil && o.Acked.Load() {
			stored = false // delivered and acked while waiting for this commit
			return nil
		}
		res, err := st("msgput").Exec(m.ID, m.UAID, m.ChannelID, m.Version, m.Topic, m.Data, headers, ms(m.Expiry))
		if err != nil {
			return err
		}
		if m.Seq, err = res.LastInsertId(); err != nil {
			return err
		}
		// The message is stored; dropping the oldest beyond the limit is a
		// single statement after it and cannot undo it.
		if o.DropOver > 0 {
			var n int
			if err := st("msgall").QueryRow(m.UAID, m.ChannelID).Scan(&n); err == nil && n > o.DropOver {
				if _, err := st("msgdrop").Exec(m.UAID, m.ChannelID, n-o.DropOver); err == nil {
					dropped = n - o.DropOver
				}
			}
		}
		return nil
	}
	// A plain put has one write that matters (the insert): no savepoint needed.
	plain := !o.ClearPending && !o.Replace && !o.KeepNewerVersion && o.RejectAt == 0
	err = s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		if plain {
			return put(st)
		}
		return atomically(tx, func() error { return put(st) })
	})
	if err != nil {
		return false, 0, err
	}
	return stored, dropped, nil
}

// hasNewerVersion reports whether a message with m's topic and a numeric
// version not older than m's is pending (SimplePush).
func hasNewerVersion(st func(string) *sql.Stmt, m *Message) (bool, error) {
	rows, err := st("msgtopic").Query(m.UAID, m.ChannelID, m.Topic)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	nv, _ := strconv.ParseUint(m.Version, 10, 64)
	newer := false
	for rows.Next() {
		var seq int64
		var v string
		if err := rows.Scan(&seq, &v); err != nil {
			return false, err
		}
		if pv, err := strconv.ParseUint(v, 10, 64); err == nil && pv >= nv {
			newer = true
		}
	}
	return newer, rows.Err()
}

// Pending implements Store. Messages whose ack is queued are not returned:
// Pending first waits for the commit that deletes them.
func (s *SQLiteStore) Pending(ctx context.Context, uaid string, after int64, limit int, now time.Time) ([]*Message, error) {
	s.dmu.Lock()
	acking := s.deleting[uaid] > 0
	s.dmu.Unlock()
	if acking {
		// The writer takes the queued acks after the ops it has gathered, so
		// the commit of this no-op deletes them (or an earlier commit did).
		noop := func(*sql.Tx, func(string) *sql.Stmt) error { return nil }
		if err := s.write(ctx, false, noop); err != nil {
			return nil, fmt.Errorf("cannot read pending messages: %w", err)
		}
	}
	return s.PendingBeyondAcks(ctx, uaid, after, limit, now)
}

// PendingBeyondAcks is Pending without waiting for queued deletions: the
// caller knows none of them has a Seq above after.
func (s *SQLiteStore) PendingBeyondAcks(ctx context.Context, uaid string, after int64, limit int, now time.Time) ([]*Message, error) {
	rows, err := s.rsel.QueryContext(ctx, uaid, after, ms(now), limit)
	if err != nil {
		return nil, fmt.Errorf("cannot read pending messages: %w", err)
	}
	defer rows.Close()
	var out []*Message
	for rows.Next() {
		m := &Message{UAID: uaid}
		var headers sql.NullString
		var exp int64
		if err := rows.Scan(&m.Seq, &m.ID, &m.ChannelID, &m.Version, &m.Topic, &m.Data, &headers, &exp, &m.Attempts); err != nil {
			return nil, fmt.Errorf("cannot read pending messages: %w", err)
		}
		m.Expiry = time.UnixMilli(exp)
		if headers.Valid {
			if err := decodeHeaders(m, headers.String); err != nil {
				return nil, err
			}
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read pending messages: %w", err)
	}
	return out, nil
}

// Delete implements Store. It queues the deletion for the next commit and
// returns at once; until that commit, Pending does not return the messages,
// so a device reconnecting right after its ack is not sent them again. A
// crash before the commit delivers them again (at least once).
func (s *SQLiteStore) Delete(ctx context.Context, uaid string, refs []Ref) error {
	if len(refs) == 0 {
		return nil
	}
	// Queue under mu so that Run's final flush sees every accepted ack.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.dmu.Lock()
	s.acks = append(s.acks, queuedAck{uaid: uaid, refs: refs})
	s.deleting[uaid]++
	s.dmu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default: // the writer is already told
	}
	return nil
}

// Cancel implements Store.
func (s *SQLiteStore) Cancel(ctx context.Context, id string) error {
	return s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		res, err := st("msgcanc").Exec(id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return ErrNotFound
		}
		return nil
	})
}

// Sweep implements Store.
func (s *SQLiteStore) Sweep(ctx context.Context, now time.Time) (int, error) {
	var n int64
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		res, err := st("sweep").Exec(ms(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

// Watch implements Store.
func (s *SQLiteStore) Watch(ctx context.Context, w ReceiptWatch) error {
	return s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		return atomically(tx, func() error {
			if _, err := st("watchput").Exec(w.UAID, w.ChannelID, w.Version, w.Sub, w.MsgID, ms(w.Expiry), w.Delivered); err != nil {
				return err
			}
			var n int
			if err := st("watchcnt").QueryRow(w.UAID).Scan(&n); err != nil {
				return err
			}
			if n > MaxWatchesPerDevice {
				_, err := st("watchtrim").Exec(w.UAID, n-MaxWatchesPerDevice)
				return err
			}
			return nil
		})
	})
}

// TakeWatches implements Store.
func (s *SQLiteStore) TakeWatches(ctx context.Context, uaid string, refs []Ref) ([]ReceiptWatch, error) {
	var out []ReceiptWatch
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		out = out[:0]
		for _, r := range refs {
			w := ReceiptWatch{UAID: uaid, ChannelID: r.ChannelID, Version: r.Version}
			var exp int64
			err := st("watchget").QueryRow(uaid, r.ChannelID, r.Version).Scan(&w.Sub, &w.MsgID, &exp, &w.Delivered)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if _, err := st("watchdel").Exec(uaid, r.ChannelID, r.Version); err != nil {
				return err
			}
			w.Expiry = time.UnixMilli(exp)
			out = append(out, w)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot take receipt watches: %w", err)
	}
	return out, nil
}

// SweepWatches implements Store.
func (s *SQLiteStore) SweepWatches(ctx context.Context, now time.Time) ([]ReceiptWatch, error) {
	var out []ReceiptWatch
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		out = out[:0]
		for {
			rows, err := st("watchexp").Query(ms(now))
			if err != nil {
				return err
			}
			var batch []ReceiptWatch
			err = eachRow(rows, func() error {
				var w ReceiptWatch
				var exp int64
				if err := rows.Scan(&w.UAID, &w.ChannelID, &w.Version, &w.Sub, &w.MsgID, &exp, &w.Delivered); err != nil {
					return err
				}
				w.Expiry = time.UnixMilli(exp)
				batch = append(batch, w)
				return nil
			})
			if err != nil {
				return err
			}
			for _, w := range batch {
				if _, err := st("watchdel").Exec(w.UAID, w.ChannelID, w.Version); err != nil {
					return err
				}
				if !w.Delivered {
					out = append(out, w)
				}
			}
			if len(batch) < 1000 {
				return nil
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("cannot sweep receipt watches: %w", err)
	}
	return out, nil
}

// PutBroadcast implements Store.
func (s *SQLiteStore) PutBroadcast(ctx context.Context, channel string, data []byte, expiry time.Time, keep int) (int64, error) {
	var level int64
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		return atomically(tx, func() error {
			var top int64
			if err := st("bctop").QueryRow(channel).Scan(&top); err != nil {
				return err
			}
			level = top + 1
			if _, err := st("bcput").Exec(channel, level, data, ms(expiry)); err != nil {
				return err
			}
			if keep > 0 {
				_, err := st("bctrim").Exec(channel, level-int64(keep))
				return err
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("cannot store broadcast: %w", err)
	}
	return level, nil
}

// Broadcasts implements Store.
func (s *SQLiteStore) Broadcasts(ctx context.Context, channel string, now time.Time) (int64, []Broadcast, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT level, data, expiry FROM broadcasts WHERE channel = ? ORDER BY level`, channel)
	if err != nil {
		return 0, nil, fmt.Errorf("cannot read broadcasts: %w", err)
	}
	defer rows.Close()
	var top int64
	var out []Broadcast
	for rows.Next() {
		var b Broadcast
		var exp int64
		if err := rows.Scan(&b.Level, &b.Data, &exp); err != nil {
			return 0, nil, fmt.Errorf("cannot read broadcasts: %w", err)
		}
		top = max(top, b.Level)
		b.Expiry = time.UnixMilli(exp)
		if b.Expiry.After(now) {
			out = append(out, b)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("cannot read broadcasts: %w", err)
	}
	return top, out, nil
}

// Attempted implements Store: the update is queued for the next commit.
func (s *SQLiteStore) Attempted(ctx context.Context, uaid string, refs []Ref) error {
	if len(refs) == 0 {
		return nil
	}
	return s.write(ctx, true, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		up := st("msgtry")
		for _, r := range refs {
			if _, err := up.Exec(uaid, r.ChannelID, r.Version); err != nil {
				return err
			}
		}
		return nil
	})
}

// IdleDevices implements Store.
func (s *SQLiteStore) IdleDevices(ctx context.Context, idleSince time.Time, limit int) ([]string, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT uaid FROM devices WHERE seen < ? ORDER BY seen LIMIT ?`, ms(idleSince), limit)
	if err != nil {
		return nil, fmt.Errorf("cannot look up idle devices: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, fmt.Errorf("cannot look up idle devices: %w", err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// DeleteDevices implements Store.
func (s *SQLiteStore) DeleteDevices(ctx context.Context, uaids []string, idleSince time.Time) (int, error) {
	if len(uaids) == 0 {
		return 0, nil
	}
	n := 0
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		n = 0
		return atomically(tx, func() error {
			for _, u := range uaids {
				res, err := st("devgc").Exec(u, ms(idleSince))
				if err != nil {
					return err
				}
				if k, _ := res.RowsAffected(); k == 0 {
					continue // seen again meanwhile
				}
				n++
				for _, name := range []string{"devgcch", "devgcmsg"} {
					if _, err := st(name).Exec(u); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
	return n, err
}

// createPrivate creates the database file readable by its owner only (the
// write-ahead log and shared-memory files sqlite makes take its mode). An
// existing file is left as it is.
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// Close implements Store.
func (s *SQLiteStore) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	for _, st := range s.stmts {
		st.Close()
	}
	for _, st := range []*sql.Stmt{s.rsel, s.rchan, s.rdev} {
		st.Close()
	}
	return errors.Join(s.rdb.Close(), s.wdb.Close())
}

// ClaimRoute implements Store.
func (s *SQLiteStore) ClaimRoute(ctx context.Context, uaid string, r Route) (Route, error) {
	var prev Route
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		prev = Route{}
		err := st("routeget").QueryRow(uaid).Scan(&prev.Node, &prev.Conn)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = st("routeset").Exec(uaid, r.Node, r.Conn)
		return err
	})
	if err != nil {
		return Route{}, fmt.Errorf("cannot claim route: %w", err)
	}
	return prev, nil
}

// Route implements Store.
func (s *SQLiteStore) Route(ctx context.Context, uaid string) (Route, error) {
	var r Route
	err := s.rdb.QueryRowContext(ctx, `SELECT node, conn FROM routes WHERE uaid = ?`, uaid).Scan(&r.Node, &r.Conn)
	if errors.Is(err, sql.ErrNoRows) {
		return Route{}, ErrNotFound
	}
	if err != nil {
		return Route{}, fmt.Errorf("cannot look up route: %w", err)
	}
	return r, nil
}

// ClearRoute implements Store.
func (s *SQLiteStore) ClearRoute(ctx context.Context, uaid string, r Route) error {
	return s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		_, err := st("routedel").Exec(uaid, r.Node, r.Conn)
		return err
	})
}

// ClearNode implements Store.
func (s *SQLiteStore) ClearNode(ctx context.Context, node string) (int, error) {
	var n int64
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		res, err := st("nodedel").Exec(node)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

// Nodes implements Store.
func (s *SQLiteStore) Nodes(ctx context.Context) ([]string, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT DISTINCT node FROM routes ORDER BY node`)
	if err != nil {
		return nil, fmt.Errorf("cannot list nodes: %w", err)
	}
	var out []string
	err = eachRow(rows, func() error {
		var n string
		if err := rows.Scan(&n); err != nil {
			return err
		}
		out = append(out, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot list nodes: %w", err)
	}
	return out, nil
}

// NodeSecret implements Store.
func (s *SQLiteStore) NodeSecret(ctx context.Context) (string, error) {
	var secret string
	err := s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		if _, err := st("metaadd").Exec(metaNodeSecret, newNodeSecret()); err != nil {
			return err
		}
		return st("metaget").QueryRow(metaNodeSecret).Scan(&secret)
	})
	if err != nil {
		return "", fmt.Errorf("cannot read node secret: %w", err)
	}
	return secret, nil
}

// Export implements Store.
func (s *SQLiteStore) Export(ctx context.Context, now time.Time, fn func(Record) error) error {
	rows, err := s.rdb.QueryContext(ctx, `SELECT uaid FROM devices ORDER BY uaid`)
	if err != nil {
		return fmt.Errorf("cannot export devices: %w", err)
	}
	err = eachRow(rows, func() error {
		var uaid string
		if err := rows.Scan(&uaid); err != nil {
			return err
		}
		return fn(Record{Device: uaid})
	})
	if err != nil {
		return fmt.Errorf("cannot export devices: %w", err)
	}
	rows, err = s.rdb.QueryContext(ctx, `SELECT token, uaid, chid, vapid FROM channels ORDER BY rowid`)
	if err != nil {
		return fmt.Errorf("cannot export channels: %w", err)
	}
	err = eachRow(rows, func() error {
		ch := &Channel{}
		if err := rows.Scan(&ch.Token, &ch.UAID, &ch.ChannelID, &ch.Key); err != nil {
			return err
		}
		return fn(Record{Channel: ch})
	})
	if err != nil {
		return fmt.Errorf("cannot export channels: %w", err)
	}
	rows, err = s.rdb.QueryContext(ctx, `SELECT seq, id, uaid, chid, version, topic, data, headers, expiry FROM messages
		WHERE expiry > ? ORDER BY seq`, ms(now))
	if err != nil {
		return fmt.Errorf("cannot export messages: %w", err)
	}
	err = eachRow(rows, func() error {
		m := &Message{}
		var headers sql.NullString
		var exp int64
		if err := rows.Scan(&m.Seq, &m.ID, &m.UAID, &m.ChannelID, &m.Version, &m.Topic, &m.Data, &headers, &exp); err != nil {
			return err
		}
		m.Expiry = time.UnixMilli(exp)
		if headers.Valid {
			if err := decodeHeaders(m, headers.String); err != nil {
				return err
			}
		}
		return fn(Record{Message: m})
	})
	if err != nil {
		return fmt.Errorf("cannot export messages: %w", err)
	}
	return nil
}

// eachRow calls fn for every row and closes rows.
func eachRow(rows *sql.Rows, fn func() error) error {
	defer rows.Close()
	for rows.Next() {
		if err := fn(); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Import implements Store.
func (s *SQLiteStore) Import(ctx context.Context, recs []Record) error {
	now := time.Now()
	return s.write(ctx, false, func(tx *sql.Tx, st func(string) *sql.Stmt) error {
		return atomically(tx, func() error {
			for _, r := range recs {
				var err error
				switch {
				case r.Device != "":
					_, err = st("adddev").Exec(r.Device, ms(now))
				case r.Channel != nil:
					ch := r.Channel
					_, err = st("impchan").Exec(ch.Token, ch.UAID, ch.ChannelID, nilIfEmpty(ch.Key), ms(now))
				case r.Message != nil:
					m := r.Message
					var headers any
					if headers, err = encodeHeaders(m); err == nil {
						_, err = st("impmsg").Exec(m.ID, m.UAID, m.ChannelID, m.Version, m.Topic, m.Data, headers, ms(m.Expiry))
					}
				}
				if err != nil {
					return fmt.Errorf("cannot import: %w", err)
				}
			}
			return nil
		})
	})
}

// Keys under which a stored message's Urgency and Receipt live in its
// headers column; "~" keys are never headers sent to a device. Both stores
// keep them there, so that no column is added for these rare values.
const (
	headerUrgency = "~urgency"
	headerReceipt = "~receipt"
)

// encodeHeaders returns the JSON text of m's headers with its Urgency and
// Receipt, or nil for none.
func encodeHeaders(m *Message) (any, error) {
	h := m.Headers
	if (m.Urgency != "" && m.Urgency != "normal") || m.Receipt != "" {
		h = make(map[string]string, len(m.Headers)+2)
		for k, v := range m.Headers {
			h[k] = v
		}
		if m.Urgency != "" && m.Urgency != "normal" {
			h[headerUrgency] = m.Urgency
		}
		if m.Receipt != "" {
			h[headerReceipt] = m.Receipt
		}
	}
	if len(h) == 0 {
		return nil, nil
	}
	if len(h) == 1 && h["encoding"] == "aes128gcm" {
		return `{"encoding":"aes128gcm"}`, nil // what json.Marshal writes, without it
	}
	b, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("cannot encode headers: %w", err)
	}
	return string(b), nil
}

// decodeHeaders sets m's Headers, Urgency and Receipt from the JSON text of
// its headers column.
func decodeHeaders(m *Message, text string) error {
	m.Headers = nil
	if text == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(text), &m.Headers); err != nil {
		return fmt.Errorf("cannot decode headers of message %d: %w", m.Seq, err)
	}
	if u, ok := m.Headers[headerUrgency]; ok {
		m.Urgency = u
		delete(m.Headers, headerUrgency)
	}
	if r, ok := m.Headers[headerReceipt]; ok {
		m.Receipt = r
		delete(m.Headers, headerReceipt)
	}
	if len(m.Headers) == 0 {
		m.Headers = nil
	}
	return nil
}
