package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// IsPostgresURL reports whether db names a PostgreSQL database rather than a
// sqlite file.
func IsPostgresURL(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// Advisory lock keys (first int of the two-int form): "Hrld" and a kind.
const (
	pgLockSpace     = 0x48726c64
	pgLockMigrate   = 1
	pgLockSweep     = 2
	pgLockChannel   = 0x48726c65 // second int: hash of uaid and channel
	pgLockBroadcast = 0x48726c66 // second int: hash of the broadcast channel
)

// pgMigrations are the schema versions in order; a database records the
// number it has applied in herald_schema. Never edit one that was released:
// add the next.
var pgMigrations = []string{
	// 1: the tables of the sqlite store, plus routes and meta. Messages are
	// keyed by (uaid, seq) so that a device's pending messages are one index
	// range; their rows are not TOASTed (payloads are at most 4096 bytes,
	// incompressible when encrypted): toast_tuple_target keeps them inline.
	`CREATE TABLE devices (
		uaid    text PRIMARY KEY,
		created bigint NOT NULL
	);
	CREATE TABLE channels (
		token   text PRIMARY KEY,
		uaid    text NOT NULL,
		chid    text NOT NULL,
		vapid   bytea,
		created bigint NOT NULL,
		UNIQUE (uaid, chid)
	);
	CREATE TABLE messages (
		seq     bigint GENERATED ALWAYS AS IDENTITY,
		id      text NOT NULL UNIQUE,
		uaid    text NOT NULL,
		chid    text NOT NULL,
		version text NOT NULL,
		topic   text NOT NULL DEFAULT '',
		data    bytea,
		headers text,
		expiry  bigint NOT NULL,
		PRIMARY KEY (uaid, seq)
	) WITH (toast_tuple_target = 8160);
	ALTER TABLE messages ALTER COLUMN data SET STORAGE MAIN;
	CREATE INDEX messages_expiry ON messages (expiry);
	CREATE TABLE routes (
		uaid text PRIMARY KEY,
		node text NOT NULL,
		conn bigint NOT NULL
	);
	CREATE INDEX routes_node ON routes (node);
	CREATE TABLE meta (
		key   text PRIMARY KEY,
		value text NOT NULL
	);`,
	// 2: Lomiri broadcast channels.
	`CREATE TABLE broadcasts (
		channel text NOT NULL,
		level   bigint NOT NULL,
		data    bytea NOT NULL,
		expiry  bigint NOT NULL,
		PRIMARY KEY (channel, level)
	);`,
	// 3: bounds (issue 11): when a device was last seen, for deleting idle
	// ones (existing devices count as seen at the upgrade), and the delivery
	// attempts of a message.
	`ALTER TABLE devices ADD COLUMN seen bigint NOT NULL DEFAULT 0;
	UPDATE devices SET seen = (extract(epoch FROM now()) * 1000)::bigint;
	CREATE INDEX devices_seen ON devices (seen);
	ALTER TABLE messages ADD COLUMN attempts int NOT NULL DEFAULT 0;`,
	// 4: receipt watches (RFC 8030 §5.1 push receipts).
	`CREATE TABLE receipt_watches (
		uaid      text NOT NULL,
		chid      text NOT NULL,
		version   text NOT NULL,
		sub       text NOT NULL,
		msg_id    text NOT NULL,
		expiry    bigint NOT NULL,
		delivered boolean NOT NULL,
		PRIMARY KEY (uaid, chid, version)
	);
	CREATE INDEX receipt_watches_expiry ON receipt_watches (expiry);`,
	// 5: Lomiri devices (channels of uaid "L:<device id>" from /register)
	// get device rows, seen at the upgrade, so idle ones are deleted too.
	`INSERT INTO devices (uaid, created, seen)
	SELECT DISTINCT uaid, (extract(epoch FROM now()) * 1000)::bigint, (extract(epoch FROM now()) * 1000)::bigint
	FROM channels WHERE uaid LIKE 'L:%'
	ON CONFLICT (uaid) DO NOTHING;`,
}

// PostgresStore is the Store of any number of server nodes sharing one
// PostgreSQL database. Every call is a statement or a short transaction on
// a pgxpool connection; it has no background writer.
type PostgresStore struct {
	pool *pgxpool.Pool
	// acks is a small pool whose sessions commit without waiting for the
	// WAL flush (synchronous_commit off): deleting acknowledged messages
	// needs no durability, a deletion lost in a crash of PostgreSQL only
	// delivers the message again (at least once; devices dedup). Its
	// commits are visible at once like any other.
	acks *pgxpool.Pool

	mu     sync.Mutex
	closed bool
}

// DefaultPostgresConns is the pool size of a node unless the URL sets
// pool_max_conns.
const DefaultPostgresConns = 16

// OpenPostgres connects to the database at url (postgres://…), applies the
// missing migrations and returns the store.
func OpenPostgres(ctx context.Context, url string) (*PostgresStore, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("invalid database url: %w", err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = DefaultPostgresConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the database: %w", err)
	}
	if err := pgMigrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	acfg := cfg.Copy()
	acfg.MaxConns = max(2, cfg.MaxConns/4)
	acfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	acks, err := pgxpool.NewWithConfig(ctx, acfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot connect to the database: %w", err)
	}
	return &PostgresStore{pool: pool, acks: acks}, nil
}

// PostgresSchemaVersion is the schema version this server brings.
var PostgresSchemaVersion = len(pgMigrations)

// pgMigrate applies the missing migrations in one transaction, under an
// advisory lock so that nodes starting together do not race.
func pgMigrate(ctx context.Context, pool *pgxpool.Pool) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, pgLockSpace, pgLockMigrate); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS herald_schema (
			version int PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		var have int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM herald_schema`).Scan(&have); err != nil {
			return err
		}
		if have > len(pgMigrations) {
			return fmt.Errorf("the database has schema version %d, newer than this herald-server's %d: upgrade herald-server", have, len(pgMigrations))
		}
		for v := have + 1; v <= len(pgMigrations); v++ {
			if _, err := tx.Exec(ctx, pgMigrations[v-1]); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO herald_schema (version) VALUES ($1)`, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot migrate the database schema: %w", err)
	}
	return nil
}

// Run implements Store: there is no background work; it returns when ctx ends.
func (s *PostgresStore) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Close implements Store.
func (s *PostgresStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.pool.Close()
		s.acks.Close()
	}
	return nil
}

func (s *PostgresStore) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// wrap names an error, and reports a closed store as ErrClosed.
func (s *PostgresStore) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	if s.isClosed() {
		return ErrClosed
	}
	return fmt.Errorf("%s: %w", what, err)
}

// HasDevice implements Store.
func (s *PostgresStore) HasDevice(ctx context.Context, uaid string) (bool, error) {
	var one int
	err := s.pool.QueryRow(ctx, `SELECT 1 FROM devices WHERE uaid = $1`, uaid).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, s.wrap("cannot look up device", err)
	}
	return true, nil
}

// AddDevice implements Store.
func (s *PostgresStore) AddDevice(ctx context.Context, uaid string, now time.Time) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO devices (uaid, created, seen) VALUES ($1, $2, $2)
		ON CONFLICT (uaid) DO UPDATE SET seen = excluded.seen`, uaid, ms(now))
	return s.wrap("cannot add device", err)
}

// Register implements Store.
func (s *PostgresStore) Register(ctx context.Context, ch Channel, maxChannels int) (Channel, error) {
	// Insert unless the pair exists or the device is at the cap, then read
	// what is stored: one round trip for a new channel, correct under
	// concurrent registrations of different devices (two concurrent ones of
	// one device may pass the cap by one each: a bound, not an exact count).
	var token string
	var key []byte
	limit := int64(maxChannels)
	if limit <= 0 {
		limit = math.MaxInt64
	}
	err := s.pool.QueryRow(ctx, `WITH ins AS (
			INSERT INTO channels (token, uaid, chid, vapid, created)
			SELECT $1, $2, $3, $4, $5 WHERE (SELECT count(*) FROM channels WHERE uaid = $2) < $6
			ON CONFLICT (uaid, chid) DO NOTHING RETURNING token, vapid)
		SELECT token, vapid FROM ins`,
		ch.Token, ch.UAID, ch.ChannelID, nilIfEmpty(ch.Key), ms(time.Now()), limit).Scan(&token, &key)
	if errors.Is(err, pgx.ErrNoRows) {
		err = s.pool.QueryRow(ctx, `SELECT token, vapid FROM channels WHERE uaid = $1 AND chid = $2`,
			ch.UAID, ch.ChannelID).Scan(&token, &key)
		if errors.Is(err, pgx.ErrNoRows) {
			return Channel{}, ErrTooManyChannels
		}
	}
	if err != nil {
		return Channel{}, s.wrap("cannot register channel", err)
	}
	if string(key) != string(ch.Key) {
		return Channel{}, ErrConflict
	}
	ch.Token = token
	return ch, nil
}

// Unregister implements Store.
func (s *PostgresStore) Unregister(ctx context.Context, uaid, channelID string) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM channels WHERE uaid = $1 AND chid = $2`, uaid, channelID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM messages WHERE uaid = $1 AND chid = $2`, uaid, channelID)
		return err
	})
	return s.wrap("cannot unregister channel", err)
}

// Channel implements Store.
func (s *PostgresStore) Channel(ctx context.Context, token string) (Channel, error) {
	ch := Channel{Token: token}
	err := s.pool.QueryRow(ctx, `SELECT uaid, chid, vapid FROM channels WHERE token = $1`, token).Scan(&ch.UAID, &ch.ChannelID, &ch.Key)
	if errors.Is(err, pgx.ErrNoRows) {
		return Channel{}, ErrNotFound
	}
	if err != nil {
		return Channel{}, s.wrap("cannot look up token", err)
	}
	return ch, nil
}

// pgQuerier is a pool or a transaction.
type pgQuerier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

const pgInsertMessage = `INSERT INTO messages (id, uaid, chid, version, topic, data, headers, expiry)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq`

// Put implements Store. A plain put (no replacement, no cap to check) is one
// statement that also counts the channel's messages for DropOver; the others
// are a transaction serialised per channel by an advisory lock.
func (s *PostgresStore) Put(ctx context.Context, m *Message, o PutOptions, now time.Time) (bool, int, error) {
	headers, err := encodeHeaders(m)
	if err != nil {
		return false, 0, err
	}
	plain := !o.ClearPending && !o.Replace && !o.KeepNewerVersion && o.RejectAt == 0
	if plain {
		if o.Acked != nil && o.Acked.Load() {
			return false, 0, nil // delivered and acked already
		}
		var n int
		err := s.pool.QueryRow(ctx, `WITH ins AS (`+pgInsertMessage+`)
			SELECT seq, (SELECT count(*) FROM messages WHERE uaid = $2 AND chid = $3) + 1 FROM ins`,
			m.ID, m.UAID, m.ChannelID, m.Version, m.Topic, m.Data, headers, ms(m.Expiry)).Scan(&m.Seq, &n)
		if err != nil {
			return false, 0, s.wrap("cannot store message", err)
		}
		dropped := 0
		if o.DropOver > 0 && n > o.DropOver {
			dropped = s.dropOldest(ctx, s.pool, m, n-o.DropOver)
		}
		return true, dropped, nil
	}
	stored, dropped := true, 0
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		stored, dropped = true, 0
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2 || ' ' || $3))`, pgLockChannel, m.UAID, m.ChannelID); err != nil {
			return err
		}
		if o.ClearPending {
			if _, err := tx.Exec(ctx, `DELETE FROM messages WHERE uaid = $1 AND chid = $2`, m.UAID, m.ChannelID); err != nil {
				return err
			}
		}
		if o.KeepNewerVersion && m.Topic != "" {
			rows, err := tx.Query(ctx, `SELECT version FROM messages WHERE uaid = $1 AND chid = $2 AND topic = $3`, m.UAID, m.ChannelID, m.Topic)
			if err != nil {
				return err
			}
			versions, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			nv, _ := strconv.ParseUint(m.Version, 10, 64)
			for _, v := range versions {
				if pv, err := strconv.ParseUint(v, 10, 64); err == nil && pv >= nv {
					stored = false
					return nil
				}
			}
		}
		if (o.Replace || o.KeepNewerVersion) && m.Topic != "" {
			if _, err := tx.Exec(ctx, `DELETE FROM messages WHERE uaid = $1 AND chid = $2 AND topic = $3`, m.UAID, m.ChannelID, m.Topic); err != nil {
				return err
			}
		}
		if o.RejectAt > 0 {
			var n int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM messages WHERE uaid = $1 AND chid = $2 AND expiry > $3`,
				m.UAID, m.ChannelID, ms(now)).Scan(&n); err != nil {
				return err
			}
			if n >= o.RejectAt {
				var last []byte
				if err := tx.QueryRow(ctx, `SELECT data FROM messages WHERE uaid = $1 AND chid = $2 AND expiry > $3
					ORDER BY seq DESC LIMIT 1`, m.UAID, m.ChannelID, ms(now)).Scan(&last); err != nil {
					return ErrTooManyPending
				}
				return &PendingLimitError{Last: last}
			}
		}
		if o.Acked != nil && o.Acked.Load() {
			stored = false // delivered and acked already
			return nil
		}
		if err := tx.QueryRow(ctx, pgInsertMessage, m.ID, m.UAID, m.ChannelID, m.Version, m.Topic, m.Data, headers, ms(m.Expiry)).Scan(&m.Seq); err != nil {
			return err
		}
		if o.DropOver > 0 {
			var n int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM messages WHERE uaid = $1 AND chid = $2`, m.UAID, m.ChannelID).Scan(&n); err != nil {
				return err
			}
			if n > o.DropOver {
				dropped = s.dropOldest(ctx, tx, m, n-o.DropOver)
			}
		}
		return nil
	})
	if errors.Is(err, ErrTooManyPending) {
		return false, 0, err
	}
	if err != nil {
		return false, 0, s.wrap("cannot store message", err)
	}
	return stored, dropped, nil
}

// dropOldest deletes the n oldest messages of m's channel (not m) and
// returns how many it deleted; the message is stored already, a failure
// here only leaves more pending.
func (s *PostgresStore) dropOldest(ctx context.Context, q pgQuerier, m *Message, n int) int {
	tag, err := q.Exec(ctx, `DELETE FROM messages WHERE uaid = $1 AND seq IN (
		SELECT seq FROM messages WHERE uaid = $1 AND chid = $2 AND seq <> $3 ORDER BY seq LIMIT $4)`,
		m.UAID, m.ChannelID, m.Seq, n)
	if err != nil {
		return 0
	}
	return int(tag.RowsAffected())
}

// Pending implements Store.
func (s *PostgresStore) Pending(ctx context.Context, uaid string, after int64, limit int, now time.Time) ([]*Message, error) {
	rows, err := s.pool.Query(ctx, `SELECT seq, id, chid, version, topic, data, headers, expiry, attempts FROM messages
		WHERE uaid = $1 AND seq > $2 AND expiry > $3 ORDER BY seq LIMIT $4`, uaid, after, ms(now), limit)
	if err != nil {
		return nil, s.wrap("cannot read pending messages", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Message, error) {
		m := &Message{UAID: uaid}
		var headers *string
		var exp int64
		if err := row.Scan(&m.Seq, &m.ID, &m.ChannelID, &m.Version, &m.Topic, &m.Data, &headers, &exp, &m.Attempts); err != nil {
			return nil, err
		}
		m.Expiry = time.UnixMilli(exp)
		if headers != nil {
			if err := decodeHeaders(m, *headers); err != nil {
				return nil, err
			}
		}
		return m, nil
	})
	if err != nil {
		return nil, s.wrap("cannot read pending messages", err)
	}
	return out, nil
}

// PendingBeyondAcks implements Store: Delete commits before it returns, so
// this is Pending.
func (s *PostgresStore) PendingBeyondAcks(ctx context.Context, uaid string, after int64, limit int, now time.Time) ([]*Message, error) {
	return s.Pending(ctx, uaid, after, limit, now)
}

// Delete implements Store: one statement for the whole ack frame, committed
// (visible to every node, not yet flushed) before it returns.
func (s *PostgresStore) Delete(ctx context.Context, uaid string, refs []Ref) error {
	if len(refs) == 0 {
		return nil
	}
	chids := make([]string, len(refs))
	versions := make([]string, len(refs))
	for i, r := range refs {
		chids[i], versions[i] = r.ChannelID, r.Version
	}
	_, err := s.acks.Exec(ctx, `DELETE FROM messages WHERE uaid = $1
		AND (chid, version) IN (SELECT * FROM unnest($2::text[], $3::text[]))`, uaid, chids, versions)
	return s.wrap("cannot delete acknowledged messages", err)
}

// Attempted implements Store: one statement on the asynchronous-commit pool
// (a count lost in a crash of PostgreSQL only allows one attempt more).
func (s *PostgresStore) Attempted(ctx context.Context, uaid string, refs []Ref) error {
	if len(refs) == 0 {
		return nil
	}
	chids := make([]string, len(refs))
	versions := make([]string, len(refs))
	for i, r := range refs {
		chids[i], versions[i] = r.ChannelID, r.Version
	}
	_, err := s.acks.Exec(ctx, `UPDATE messages SET attempts = attempts + 1 WHERE uaid = $1
		AND (chid, version) IN (SELECT * FROM unnest($2::text[], $3::text[]))`, uaid, chids, versions)
	return s.wrap("cannot count delivery attempts", err)
}

// IdleDevices implements Store.
func (s *PostgresStore) IdleDevices(ctx context.Context, idleSince time.Time, limit int) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT uaid FROM devices WHERE seen < $1 ORDER BY seen LIMIT $2`, ms(idleSince), limit)
	if err != nil {
		return nil, s.wrap("cannot look up idle devices", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return out, s.wrap("cannot look up idle devices", err)
}

// DeleteDevices implements Store: the devices still idle, their channels and
// messages, in one transaction.
func (s *PostgresStore) DeleteDevices(ctx context.Context, uaids []string, idleSince time.Time) (int, error) {
	if len(uaids) == 0 {
		return 0, nil
	}
	var n int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `DELETE FROM devices WHERE uaid = ANY($1) AND seen < $2 RETURNING uaid`, uaids, ms(idleSince))
		if err != nil {
			return err
		}
		gone, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		n = len(gone)
		if n == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `DELETE FROM channels WHERE uaid = ANY($1)`, gone); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM messages WHERE uaid = ANY($1)`, gone)
		return err
	})
	if err != nil {
		return 0, s.wrap("cannot delete idle devices", err)
	}
	return n, nil
}

// Cancel implements Store.
func (s *PostgresStore) Cancel(ctx context.Context, id string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM messages WHERE id = $1`, id)
	if err != nil {
		return s.wrap("cannot cancel message", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// sweepBatch is how many expired rows one sweep statement deletes, so that no
// statement holds many row locks or runs long.
const sweepBatch = 5000

// Sweep implements Store. Each batch of expired messages is deleted in a
// transaction that first takes the sweep advisory lock (transaction-scoped,
// so it also works through PgBouncer's transaction pooling); a node that
// does not get it stops and returns what it deleted so far (0: another node
// is sweeping).
func (s *PostgresStore) Sweep(ctx context.Context, now time.Time) (int, error) {
	total := 0
	for {
		var n int64
		got := false
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, $2)`, pgLockSpace, pgLockSweep).Scan(&got); err != nil || !got {
				return err
			}
			tag, err := tx.Exec(ctx, `DELETE FROM messages WHERE (uaid, seq) IN (
				SELECT uaid, seq FROM messages WHERE expiry <= $1 LIMIT $2)`, ms(now), sweepBatch)
			n = tag.RowsAffected()
			return err
		})
		if err != nil {
			return total, s.wrap("cannot sweep", err)
		}
		total += int(n)
		if !got || n < sweepBatch {
			return total, nil
		}
	}
}

// ClaimRoute implements Store: an update that returns the row it replaced,
// or an insert when the device has no route.
func (s *PostgresStore) ClaimRoute(ctx context.Context, uaid string, r Route) (Route, error) {
	for range 10 {
		var prev Route
		err := s.pool.QueryRow(ctx, `UPDATE routes r SET node = $2, conn = $3
			FROM (SELECT node, conn FROM routes WHERE uaid = $1 FOR UPDATE) old
			WHERE r.uaid = $1 RETURNING old.node, old.conn`, uaid, r.Node, r.Conn).Scan(&prev.Node, &prev.Conn)
		if err == nil {
			return prev, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return Route{}, s.wrap("cannot claim route", err)
		}
		tag, err := s.pool.Exec(ctx, `INSERT INTO routes (uaid, node, conn) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, uaid, r.Node, r.Conn)
		if err != nil {
			return Route{}, s.wrap("cannot claim route", err)
		}
		if tag.RowsAffected() == 1 {
			return Route{}, nil
		}
		// Another node inserted the route meanwhile: update it.
	}
	return Route{}, errors.New("cannot claim route: it keeps changing")
}

// Route implements Store.
func (s *PostgresStore) Route(ctx context.Context, uaid string) (Route, error) {
	var r Route
	err := s.pool.QueryRow(ctx, `SELECT node, conn FROM routes WHERE uaid = $1`, uaid).Scan(&r.Node, &r.Conn)
	if errors.Is(err, pgx.ErrNoRows) {
		return Route{}, ErrNotFound
	}
	if err != nil {
		return Route{}, s.wrap("cannot look up route", err)
	}
	return r, nil
}

// ClearRoute implements Store.
func (s *PostgresStore) ClearRoute(ctx context.Context, uaid string, r Route) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM routes WHERE uaid = $1 AND node = $2 AND conn = $3`, uaid, r.Node, r.Conn)
	return s.wrap("cannot clear route", err)
}

// ClearNode implements Store.
func (s *PostgresStore) ClearNode(ctx context.Context, node string) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM routes WHERE node = $1`, node)
	if err != nil {
		return 0, s.wrap("cannot clear routes", err)
	}
	return int(tag.RowsAffected()), nil
}

// Nodes implements Store: one index probe per node (a loose index scan on
// routes_node), not a scan of every route.
func (s *PostgresStore) Nodes(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `WITH RECURSIVE n AS (
			SELECT min(node) AS node FROM routes
			UNION ALL
			SELECT (SELECT min(node) FROM routes WHERE node > n.node) FROM n WHERE n.node IS NOT NULL)
		SELECT node FROM n WHERE node IS NOT NULL`)
	if err != nil {
		return nil, s.wrap("cannot list nodes", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return out, s.wrap("cannot list nodes", err)
}

// NodeSecret implements Store.
func (s *PostgresStore) NodeSecret(ctx context.Context) (string, error) {
	if _, err := s.pool.Exec(ctx, `INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING`, metaNodeSecret, newNodeSecret()); err != nil {
		return "", s.wrap("cannot read node secret", err)
	}
	var secret string
	if err := s.pool.QueryRow(ctx, `SELECT value FROM meta WHERE key = $1`, metaNodeSecret).Scan(&secret); err != nil {
		return "", s.wrap("cannot read node secret", err)
	}
	return secret, nil
}

// Export implements Store. It reads in one repeatable-read transaction, a
// consistent snapshot.
func (s *PostgresStore) Export(ctx context.Context, now time.Time, fn func(Record) error) error {
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT uaid FROM devices ORDER BY uaid`)
		if err != nil {
			return err
		}
		var uaid string
		if _, err := pgx.ForEachRow(rows, []any{&uaid}, func() error { return fn(Record{Device: uaid}) }); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT token, uaid, chid, vapid FROM channels ORDER BY uaid, chid`)
		if err != nil {
			return err
		}
		var ch Channel
		if _, err := pgx.ForEachRow(rows, []any{&ch.Token, &ch.UAID, &ch.ChannelID, &ch.Key}, func() error {
			c := ch
			return fn(Record{Channel: &c})
		}); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT seq, id, uaid, chid, version, topic, data, headers, expiry FROM messages
			WHERE expiry > $1 ORDER BY seq`, ms(now))
		if err != nil {
			return err
		}
		var m Message
		var headers *string
		var exp int64
		_, err = pgx.ForEachRow(rows, []any{&m.Seq, &m.ID, &m.UAID, &m.ChannelID, &m.Version, &m.Topic, &m.Data, &headers, &exp}, func() error {
			c := m
			c.Expiry = time.UnixMilli(exp)
			c.Headers = nil
			if headers != nil {
				if err := decodeHeaders(&c, *headers); err != nil {
					return err
				}
			}
			return fn(Record{Message: &c})
		})
		return err
	})
	return s.wrap("cannot export", err)
}

// Import implements Store: one transaction, the statements pipelined in a
// batch.
func (s *PostgresStore) Import(ctx context.Context, recs []Record) error {
	now := ms(time.Now())
	b := &pgx.Batch{}
	for _, r := range recs {
		switch {
		case r.Device != "":
			b.Queue(`INSERT INTO devices (uaid, created, seen) VALUES ($1, $2, $2) ON CONFLICT DO NOTHING`, r.Device, now)
		case r.Channel != nil:
			ch := r.Channel
			b.Queue(`INSERT INTO channels (token, uaid, chid, vapid, created) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`,
				ch.Token, ch.UAID, ch.ChannelID, nilIfEmpty(ch.Key), now)
		case r.Message != nil:
			m := r.Message
			headers, err := encodeHeaders(m)
			if err != nil {
				return err
			}
			b.Queue(`INSERT INTO messages (id, uaid, chid, version, topic, data, headers, expiry)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING`,
				m.ID, m.UAID, m.ChannelID, m.Version, m.Topic, m.Data, headers, ms(m.Expiry))
		}
	}
	if b.Len() == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return tx.SendBatch(ctx, b).Close()
	})
	return s.wrap("cannot import", err)
}

// Watch implements Store.
func (s *PostgresStore) Watch(ctx context.Context, w ReceiptWatch) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO receipt_watches (uaid, chid, version, sub, msg_id, expiry, delivered)
			VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (uaid, chid, version) DO UPDATE
			SET sub = excluded.sub, msg_id = excluded.msg_id, expiry = excluded.expiry, delivered = excluded.delivered`,
			w.UAID, w.ChannelID, w.Version, w.Sub, w.MsgID, ms(w.Expiry), w.Delivered); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM receipt_watches WHERE uaid = $1`, w.UAID).Scan(&n); err != nil {
			return err
		}
		if n > MaxWatchesPerDevice {
			_, err := tx.Exec(ctx, `DELETE FROM receipt_watches WHERE (uaid, chid, version) IN (
				SELECT uaid, chid, version FROM receipt_watches WHERE uaid = $1 ORDER BY expiry LIMIT $2)`,
				w.UAID, n-MaxWatchesPerDevice)
			return err
		}
		return nil
	})
	return s.wrap("cannot store receipt watch", err)
}

// TakeWatches implements Store.
func (s *PostgresStore) TakeWatches(ctx context.Context, uaid string, refs []Ref) ([]ReceiptWatch, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	chids := make([]string, len(refs))
	versions := make([]string, len(refs))
	for i, r := range refs {
		chids[i], versions[i] = r.ChannelID, r.Version
	}
	rows, err := s.pool.Query(ctx, `DELETE FROM receipt_watches WHERE uaid = $1
		AND (chid, version) IN (SELECT * FROM unnest($2::text[], $3::text[]))
		RETURNING uaid, chid, version, sub, msg_id, expiry, delivered`, uaid, chids, versions)
	if err != nil {
		return nil, s.wrap("cannot take receipt watches", err)
	}
	out, err := pgx.CollectRows(rows, scanWatch)
	return out, s.wrap("cannot take receipt watches", err)
}

func scanWatch(row pgx.CollectableRow) (ReceiptWatch, error) {
	var w ReceiptWatch
	var exp int64
	err := row.Scan(&w.UAID, &w.ChannelID, &w.Version, &w.Sub, &w.MsgID, &exp, &w.Delivered)
	w.Expiry = time.UnixMilli(exp)
	return w, err
}

// SweepWatches implements Store. Each expired watch is deleted by one
// statement of one node, so only that node reports it.
func (s *PostgresStore) SweepWatches(ctx context.Context, now time.Time) ([]ReceiptWatch, error) {
	var out []ReceiptWatch
	for {
		rows, err := s.pool.Query(ctx, `DELETE FROM receipt_watches WHERE (uaid, chid, version) IN (
			SELECT uaid, chid, version FROM receipt_watches WHERE expiry <= $1 LIMIT $2)
			RETURNING uaid, chid, version, sub, msg_id, expiry, delivered`, ms(now), sweepBatch)
		if err != nil {
			return out, s.wrap("cannot sweep receipt watches", err)
		}
		ws, err := pgx.CollectRows(rows, scanWatch)
		if err != nil {
			return out, s.wrap("cannot sweep receipt watches", err)
		}
		for _, w := range ws {
			if !w.Delivered {
				out = append(out, w)
			}
		}
		if len(ws) < sweepBatch {
			return out, nil
		}
	}
}

// PutBroadcast implements Store. Levels of a channel are serialised by an
// advisory lock on the channel.
func (s *PostgresStore) PutBroadcast(ctx context.Context, channel string, data []byte, expiry time.Time, keep int) (int64, error) {
	var level int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, pgLockBroadcast, channel); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO broadcasts (channel, level, data, expiry)
			SELECT $1, coalesce(max(level), 0) + 1, $2, $3 FROM broadcasts WHERE channel = $1 RETURNING level`,
			channel, data, ms(expiry)).Scan(&level); err != nil {
			return err
		}
		if keep > 0 {
			_, err := tx.Exec(ctx, `DELETE FROM broadcasts WHERE channel = $1 AND level <= $2`, channel, level-int64(keep))
			return err
		}
		return nil
	})
	if err != nil {
		return 0, s.wrap("cannot store broadcast", err)
	}
	return level, nil
}

// Broadcasts implements Store.
func (s *PostgresStore) Broadcasts(ctx context.Context, channel string, now time.Time) (int64, []Broadcast, error) {
	rows, err := s.pool.Query(ctx, `SELECT level, data, expiry FROM broadcasts WHERE channel = $1 ORDER BY level`, channel)
	if err != nil {
		return 0, nil, s.wrap("cannot read broadcasts", err)
	}
	var top int64
	var out []Broadcast
	var b Broadcast
	var exp int64
	_, err = pgx.ForEachRow(rows, []any{&b.Level, &b.Data, &exp}, func() error {
		top = max(top, b.Level)
		if e := time.UnixMilli(exp); e.After(now) {
			out = append(out, Broadcast{Level: b.Level, Data: b.Data, Expiry: e})
		}
		return nil
	})
	if err != nil {
		return 0, nil, s.wrap("cannot read broadcasts", err)
	}
	return top, out, nil
}
