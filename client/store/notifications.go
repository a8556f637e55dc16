package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Notification is one shown notification (see the notifications package's
// Store interface; the daemon adapts between the two).
type Notification struct {
	ID    uint32
	AppID string
	Tag   string
	MsgID string
	Card  []byte // the card, JSON
	Shown time.Time
}

// SaveNotification inserts n, replacing the app's notification with the same
// tag when Tag is not empty, else the one with the same id.
func (s *Store) SaveNotification(ctx context.Context, n Notification) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if n.Tag != "" {
			if _, err := tx.ExecContext(ctx, "DELETE FROM notifications WHERE app_id = ? AND tag = ?", n.AppID, n.Tag); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, "INSERT OR REPLACE INTO notifications(id, app_id, tag, msg_id, card, shown) VALUES(?,?,?,?,?,?)",
			int64(n.ID), n.AppID, n.Tag, n.MsgID, nonNil(n.Card), unixMilli(n.Shown))
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot save notification %d of %q: %w", n.ID, n.AppID, err)
	}
	return nil
}

// DeleteNotification forgets a notification.
func (s *Store) DeleteNotification(ctx context.Context, appID string, id uint32) error {
	_, err := s.exec(ctx, "DELETE FROM notifications WHERE app_id = ? AND id = ?", appID, int64(id))
	if err != nil {
		return fmt.Errorf("cannot delete notification %d of %q: %w", id, appID, err)
	}
	return nil
}

// Notifications returns appID's notifications ("" → all apps), oldest first.
func (s *Store) Notifications(ctx context.Context, appID string) ([]Notification, error) {
	q := "SELECT id, app_id, tag, msg_id, card, shown FROM notifications"
	var args []any
	if appID != "" {
		q += " WHERE app_id = ?"
		args = append(args, appID)
	}
	rows, err := s.db.QueryContext(ctx, q+" ORDER BY shown, id", args...)
	if err != nil {
		return nil, fmt.Errorf("cannot read notifications: %w", err)
	}
	defer rows.Close()
	var out []Notification
	for rows.Next() {
		var n Notification
		var id, shown int64
		if err := rows.Scan(&id, &n.AppID, &n.Tag, &n.MsgID, &n.Card, &shown); err != nil {
			return nil, fmt.Errorf("cannot read notifications: %w", err)
		}
		n.ID, n.Shown = uint32(id), fromMilli(shown)
		out = append(out, n)
	}
	return out, rows.Err()
}
