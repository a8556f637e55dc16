package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/heraldpush/herald/app"
)

// Incoming is one message received from the server.
type Incoming struct {
	MsgID     string
	AppID     string
	ChannelID string
	Version   string
	Body      []byte
	Received  time.Time
	Expires   time.Time // zero: no device-side expiry
}

// Message is one inbox row.
type Message struct {
	Seq         int64
	MsgID       string
	AppID       string
	ChannelID   string
	Version     string
	Body        []byte
	Received    time.Time
	Expires     time.Time
	Step        app.Step
	Attempts    int
	NextAttempt time.Time
	Output      []byte // the message queued for the app (helper output "message")
	// Notification is the helper's notification, nil when none (or when
	// its stored form cannot be read: the message is still delivered).
	Notification *app.Notification
}

// Expired reports whether m's TTL has passed at now.
func (m *Message) Expired(now time.Time) bool {
	return !m.Expires.IsZero() && !now.Before(m.Expires)
}

// Receive stores a batch of received messages in one transaction, together
// with their (channel id, version) in the seen set. It returns, for each
// message, whether it was a duplicate (already seen): duplicates are not
// stored again. Either the whole batch is stored or nothing is.
func (s *Store) Receive(ctx context.Context, msgs []Incoming) (dup []bool, err error) {
	dup = make([]bool, len(msgs))
	err = s.tx(ctx, func(tx *sql.Tx) error {
		// Statements without Prepare: the connection's statement cache
		// keeps them prepared across batches.
		n := 0
		added := map[string]int{}
		for i, m := range msgs {
			res, err := tx.ExecContext(ctx, "INSERT OR IGNORE INTO seen(channel_id, version, received) VALUES(?, ?, ?)", m.ChannelID, m.Version, unixMilli(m.Received))
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 0 {
				dup[i] = true
				continue
			}
			if _, err := tx.ExecContext(ctx, insertInboxSQL, m.MsgID, m.AppID, m.ChannelID, m.Version, nonNil(m.Body), unixMilli(m.Received), unixMilli(m.Expires)); err != nil {
				return err
			}
			added[m.AppID]++
			n++
		}
		if err := s.boundApps(ctx, tx, added, msgs[0].Received); err != nil {
			return err
		}
		if n > 0 {
			if _, err := tx.ExecContext(ctx, incrSQL, app.CounterMessagesReceived, n); err != nil {
				return err
			}
		}
		if d := len(msgs) - n; d > 0 {
			if _, err := tx.ExecContext(ctx, incrSQL, app.CounterDuplicates, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot store %d received messages: %w", len(msgs), err)
	}
	return dup, nil
}

const insertInboxSQL = "INSERT INTO inbox(msg_id, app_id, channel_id, version, body, received, expires, step) VALUES(?,?,?,?,?,?,?,'received')"

// Post stores a message that did not come from the server (Postal.Post).
func (s *Store) Post(ctx context.Context, m Incoming) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, insertInboxSQL,
			m.MsgID, m.AppID, m.ChannelID, m.Version, nonNil(m.Body), unixMilli(m.Received), unixMilli(m.Expires))
		if err != nil {
			return err
		}
		return s.boundApps(ctx, tx, map[string]int{m.AppID: 1}, m.Received)
	})
	if err != nil {
		return fmt.Errorf("cannot store posted message for %q: %w", m.AppID, err)
	}
	return nil
}

// boundApps keeps the inboxes of the apps that got new messages (added:
// app id → how many) within their cap. An app is counted only when its
// known upper bound (Store.high) plus what it got could exceed the cap, and
// then bounded only when it does: in steady state a batch costs no inbox
// count. An app within its cap thus keeps its expired queued messages until
// it takes them (PopAll drops them) or the next start sweeps them; bound
// deletes them first, so they never cost an unexpired message. The caller
// holds wmu (a transaction).
func (s *Store) boundApps(ctx context.Context, tx *sql.Tx, added map[string]int, now time.Time) error {
	var check []string
	for a, n := range added {
		if h, ok := s.high[a]; ok && h+n <= s.maxInbox {
			s.high[a] = h + n
			continue
		}
		check = append(check, a)
	}
	if len(check) == 0 {
		return nil
	}
	list, err := json.Marshal(check)
	if err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, "SELECT app_id, count(*) FROM inbox WHERE app_id IN (SELECT value FROM json_each(?)) GROUP BY app_id", string(list))
	if err != nil {
		return err
	}
	counts := map[string]int{}
	for rows.Next() {
		var a string
		var n int
		if err := rows.Scan(&a, &n); err != nil {
			rows.Close()
			return err
		}
		counts[a] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, a := range check {
		if counts[a] > s.maxInbox {
			if err := s.bound(ctx, tx, a, now); err != nil {
				return err
			}
		}
		// A rolled back transaction leaves it high: still an upper bound.
		s.high[a] = min(counts[a], s.maxInbox)
	}
	return nil
}

// bound keeps appID's inbox within its cap after new messages: queued
// messages expired at now are deleted (counted as expired), then the oldest
// beyond maxInbox, queued ones first (counted as CounterInboxFull). An app
// that never takes its messages thus holds at most maxInbox of them.
func (s *Store) bound(ctx context.Context, tx *sql.Tx, appID string, now time.Time) error {
	res, err := tx.ExecContext(ctx, "DELETE FROM inbox WHERE app_id = ? AND step = 'queued' AND expires != 0 AND expires <= ?", appID, unixMilli(now))
	if err != nil {
		return err
	}
	if k, _ := res.RowsAffected(); k > 0 {
		if _, err := tx.ExecContext(ctx, incrSQL, app.CounterMessagesExpired, k); err != nil {
			return err
		}
	}
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM inbox WHERE app_id = ?", appID).Scan(&n); err != nil {
		return err
	}
	if n <= s.maxInbox {
		return nil
	}
	res, err = tx.ExecContext(ctx, "DELETE FROM inbox WHERE seq IN (SELECT seq FROM inbox WHERE app_id = ? ORDER BY step != 'queued', seq LIMIT ?)", appID, n-s.maxInbox)
	if err != nil {
		return err
	}
	k, _ := res.RowsAffected()
	_, err = tx.ExecContext(ctx, incrSQL, app.CounterInboxFull, k)
	return err
}

// SweepExpired deletes the inbox messages of every app expired at now
// (counted as expired) and returns how many.
func (s *Store) SweepExpired(ctx context.Context, now time.Time) (int, error) {
	var k int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM inbox WHERE expires != 0 AND expires <= ?", unixMilli(now))
		if err != nil {
			return err
		}
		if k, _ = res.RowsAffected(); k > 0 {
			_, err = tx.ExecContext(ctx, incrSQL, app.CounterMessagesExpired, k)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("cannot sweep expired messages: %w", err)
	}
	return int(k), nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// PruneSeen forgets seen ids received before t (older than any TTL).
func (s *Store) PruneSeen(ctx context.Context, before time.Time) error {
	_, err := s.exec(ctx, "DELETE FROM seen WHERE received < ?", unixMilli(before))
	if err != nil {
		return fmt.Errorf("cannot prune seen ids: %w", err)
	}
	return nil
}

const msgColumns = "seq, msg_id, app_id, channel_id, version, body, received, expires, step, attempts, next_attempt, message, notification"

func scanMessage(sc interface{ Scan(...any) error }) (Message, error) {
	var m Message
	var rec, exp, next int64
	var n []byte
	err := sc.Scan(&m.Seq, &m.MsgID, &m.AppID, &m.ChannelID, &m.Version, &m.Body, &rec, &exp, &m.Step, &m.Attempts, &next, &m.Output, &n)
	m.Received, m.Expires, m.NextAttempt = fromMilli(rec), fromMilli(exp), fromMilli(next)
	if err == nil && n != nil {
		m.Notification, _ = app.DecodeNotification(n)
	}
	return m, err
}

func (s *Store) messages(ctx context.Context, query string, args ...any) ([]Message, error) {
	rows, err := s.relaxed.QueryContext(ctx, "SELECT "+msgColumns+" FROM inbox "+query, args...)
	if err != nil {
		return nil, fmt.Errorf("cannot read inbox: %w", err)
	}
	defer rows.Close()
	var out []Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, fmt.Errorf("cannot read inbox: %w", err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Inbox returns appID's messages not yet delivered, oldest first ("" → all apps).
func (s *Store) Inbox(ctx context.Context, appID string) ([]Message, error) {
	if appID == "" {
		return s.messages(ctx, "ORDER BY seq")
	}
	return s.messages(ctx, "WHERE app_id = ? ORDER BY seq", appID)
}

// Pending returns up to limit messages of appID that still have pipeline work
// before the queued step, oldest first.
func (s *Store) Pending(ctx context.Context, appID string, limit int) ([]Message, error) {
	return s.PendingAfter(ctx, appID, 0, limit)
}

// PendingAfter is Pending for the messages with a seq above after (the
// index on app and seq starts there, past the messages known queued).
func (s *Store) PendingAfter(ctx context.Context, appID string, after int64, limit int) ([]Message, error) {
	return s.messages(ctx, "WHERE app_id = ? AND seq > ? AND step IN ('received','processed','presented') ORDER BY seq LIMIT ?", appID, after, limit)
}

// QueuedAfter returns up to limit of appID's queued messages with a seq
// above after, oldest first.
func (s *Store) QueuedAfter(ctx context.Context, appID string, after int64, limit int) ([]Message, error) {
	return s.messages(ctx, "WHERE app_id = ? AND step = 'queued' AND seq > ? ORDER BY seq LIMIT ?", appID, after, limit)
}

// Head returns appID's oldest message (any step), for apps whose queue is
// delivered one message at a time.
func (s *Store) Head(ctx context.Context, appID string) (Message, error) {
	ms, err := s.messages(ctx, "WHERE app_id = ? ORDER BY seq LIMIT 1", appID)
	if err != nil {
		return Message{}, err
	}
	if len(ms) == 0 {
		return Message{}, ErrNotFound
	}
	return ms[0], nil
}

// AppsWithWork returns the app ids having messages in the inbox, and for
// each the number of queued messages.
func (s *Store) AppsWithWork(ctx context.Context) (map[string]int, error) {
	rows, err := s.relaxed.QueryContext(ctx, "SELECT app_id, SUM(step = 'queued') FROM inbox GROUP BY app_id")
	if err != nil {
		return nil, fmt.Errorf("cannot read inbox: %w", err)
	}
	defer rows.Close()
	m := map[string]int{}
	for rows.Next() {
		var app string
		var n int
		if err := rows.Scan(&app, &n); err != nil {
			return nil, fmt.Errorf("cannot read inbox: %w", err)
		}
		m[app] = n
	}
	return m, rows.Err()
}

// Processed records the helper's output of a message: the message to queue
// and the notification to present (nil: none). With no notification the
// message goes straight to the queued step.
func (s *Store) Processed(ctx context.Context, seq int64, output []byte, notification *app.Notification) error {
	step := app.StepQueued
	var n []byte
	if notification != nil {
		var err error
		if n, err = app.EncodeNotification(notification); err != nil {
			return fmt.Errorf("cannot record output of message %d: %w", seq, err)
		}
		step = app.StepProcessed
	}
	// The raw body is not needed once the output is stored.
	return s.advance(ctx, seq, step, "message = ?, notification = ?, body = NULL", nonNil(output), n)
}

// Output is the helper output of one message, for ProcessedBatch.
type Output struct {
	Seq          int64
	Message      []byte
	Notification *app.Notification
}

// ProcessedBatch records the helper output of several messages in one
// transaction (see Processed).
func (s *Store) ProcessedBatch(ctx context.Context, outs []Output) error {
	if len(outs) == 0 {
		return nil
	}
	err := s.txRelaxed(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, "UPDATE inbox SET step = ?, message = ?, notification = ?, body = NULL WHERE seq = ?")
		if err != nil {
			return err
		}
		defer st.Close()
		for _, o := range outs {
			step := app.StepQueued
			var n []byte
			if o.Notification != nil {
				if n, err = app.EncodeNotification(o.Notification); err != nil {
					return err
				}
				step = app.StepProcessed
			}
			if _, err := st.ExecContext(ctx, step, nonNil(o.Message), n, o.Seq); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot record output of %d messages: %w", len(outs), err)
	}
	return nil
}

// Presented records that a message's notification was shown (or skipped),
// and queues it for its app.
func (s *Store) Presented(ctx context.Context, seq int64) error {
	return s.advance(ctx, seq, app.StepQueued, "")
}

// SetStep moves a message to step.
func (s *Store) SetStep(ctx context.Context, seq int64, step app.Step) error {
	return s.advance(ctx, seq, step, "")
}

func (s *Store) advance(ctx context.Context, seq int64, step app.Step, set string, args ...any) error {
	q := "UPDATE inbox SET step = ?"
	if set != "" {
		q += ", " + set
	}
	q += " WHERE seq = ?"
	a := append([]any{step}, args...)
	a = append(a, seq)
	res, err := s.execRelaxed(ctx, q, a...)
	if err != nil {
		return fmt.Errorf("cannot move message %d to %s: %w", seq, step, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("cannot move message %d to %s: %w", seq, step, ErrNotFound)
	}
	return nil
}

// Retry records a failed delivery attempt and when to try again.
func (s *Store) Retry(ctx context.Context, seq int64, next time.Time) error {
	_, err := s.execRelaxed(ctx, "UPDATE inbox SET attempts = attempts + 1, next_attempt = ? WHERE seq = ?", unixMilli(next), seq)
	if err != nil {
		return fmt.Errorf("cannot record retry of message %d: %w", seq, err)
	}
	return nil
}

// Done removes a message that was delivered to its app, or dropped, and
// counts it under counter (when not "").
func (s *Store) Done(ctx context.Context, seq int64, counter app.Counter) error {
	err := s.txRelaxed(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM inbox WHERE seq = ?", seq)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		if counter != "" {
			_, err = tx.ExecContext(ctx, incrSQL, counter, 1)
		}
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("cannot remove message %d: %w", seq, err)
	}
	return err
}

// PopAll returns and removes appID's queued messages, oldest first, in one
// transaction. Queued messages behind a message still in the pipeline wait
// for it, so that the app gets them in arrival order. Messages expired at now are removed but not returned.
func (s *Store) PopAll(ctx context.Context, appID string, now time.Time) ([][]byte, error) {
	out, _, err := s.PopAllRefs(ctx, appID, now)
	return out, err
}

// Ref names a message by the (channel id, version) its server gave it.
type Ref struct {
	ChannelID string
	Version   string
}

// PopAllRefs is PopAll that also returns the (channel id, version) of each
// returned message, in the same order.
func (s *Store) PopAllRefs(ctx context.Context, appID string, now time.Time) ([][]byte, []Ref, error) {
	var out [][]byte
	var refs []Ref
	err := s.tx(ctx, func(tx *sql.Tx) error {
		// Only the queued messages older than every message still in the
		// pipeline: the app sees its messages in arrival order.
		var limit int64
		err := tx.QueryRowContext(ctx, "SELECT IFNULL(MIN(seq), -1) FROM inbox WHERE app_id = ? AND step IN ('received','processed','presented')", appID).Scan(&limit)
		if err != nil {
			return err
		}
		if limit < 0 {
			limit = math.MaxInt64
		}
		rows, err := tx.QueryContext(ctx, "SELECT seq, expires, message, channel_id, version FROM inbox WHERE app_id = ? AND step = 'queued' AND seq < ? ORDER BY seq", appID, limit)
		if err != nil {
			return err
		}
		var seqs []int64
		expired := 0
		for rows.Next() {
			var seq, exp int64
			var msg []byte
			var ref Ref
			if err := rows.Scan(&seq, &exp, &msg, &ref.ChannelID, &ref.Version); err != nil {
				rows.Close()
				return err
			}
			seqs = append(seqs, seq)
			if exp != 0 && now.UnixMilli() >= exp {
				expired++
				continue
			}
			out = append(out, msg)
			refs = append(refs, ref)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(seqs) == 0 {
			return nil
		}
		del, err := tx.PrepareContext(ctx, "DELETE FROM inbox WHERE seq = ?")
		if err != nil {
			return err
		}
		defer del.Close()
		for _, seq := range seqs {
			if _, err := del.ExecContext(ctx, seq); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, incrSQL, app.CounterMessagesDelivered, len(out)); err != nil {
			return err
		}
		if expired > 0 {
			_, err = tx.ExecContext(ctx, incrSQL, app.CounterMessagesExpired, expired)
		}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("cannot take queued messages of %q: %w", appID, err)
	}
	return out, refs, nil
}
