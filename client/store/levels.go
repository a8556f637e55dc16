package store

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
)

// Broadcast levels of a Lomiri push server, kept in the state table under
// "level/<channel>": the level of each broadcast channel the device has
// seen, sent in every connect so that the server sends only newer ones.

const levelPrefix = "level/"

// Levels returns the stored broadcast levels.
func (s *Store) Levels(ctx context.Context) (map[string]int64, error) {
	rows, err := s.relaxed.QueryContext(ctx, "SELECT key, value FROM state WHERE key >= ? AND key < ?", levelPrefix, levelPrefix+"\xff")
	if err != nil {
		return nil, fmt.Errorf("cannot read broadcast levels: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, fmt.Errorf("cannot read broadcast levels: %w", err)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue // not ours to fail on
		}
		out[strings.TrimPrefix(k, levelPrefix)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read broadcast levels: %w", err)
	}
	return out, nil
}

// SetLevel stores a broadcast channel's level durably and, in the same
// transaction, queues msg (when not nil) in the inbox (the system-update
// notice for its app), so that the level and the message are one step.
func (s *Store) SetLevel(ctx context.Context, channel string, level int64, msg *Incoming) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO state(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
			levelPrefix+channel, strconv.FormatInt(level, 10)); err != nil {
			return fmt.Errorf("cannot store broadcast level: %w", err)
		}
		if msg == nil {
			return nil
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO inbox(msg_id, app_id, channel_id, version, body, received, expires, step) VALUES(?,?,?,?,?,?,?,'received')",
			msg.MsgID, msg.AppID, msg.ChannelID, msg.Version, nonNil(msg.Body), unixMilli(msg.Received), unixMilli(msg.Expires))
		if err != nil {
			return fmt.Errorf("cannot queue broadcast for %q: %w", msg.AppID, err)
		}
		return nil
	})
}
