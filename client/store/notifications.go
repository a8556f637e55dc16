package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/heraldpush/herald/app"
)

// Notification is one shown notification (the notifications package's
// Record). The card is stored in app's versioned stored form.
type Notification struct {
	ID    uint32
	AppID string
	Tag   string
	MsgID string
	Card  app.Card
	Shown time.Time
}

// SaveNotification inserts n, replacing the app's notification with the same
// tag when Tag is not empty, else the one with the same id.
func (s *Store) SaveNotification(ctx context.Context, n Notification) error {
	if _, err := app.ParseID(n.AppID); err != nil {
		return fmt.Errorf("cannot save notification %d: %w", n.ID, err)
	}
	card, err := app.EncodeCard(n.Card)
	if err != nil {
		return fmt.Errorf("cannot save notification %d of %q: %w", n.ID, n.AppID, err)
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if n.Tag != "" {
			if _, err := tx.ExecContext(ctx, "DELETE FROM notifications WHERE app_id = ? AND tag = ?", n.AppID, n.Tag); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, "INSERT OR REPLACE INTO notifications(id, app_id, tag, msg_id, card, shown) VALUES(?,?,?,?,?,?)",
			int64(n.ID), n.AppID, n.Tag, n.MsgID, card, unixMilli(n.Shown))
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
// A row whose card cannot be read is left out (it is not re-shown).
func (s *Store) Notifications(ctx context.Context, appID string) ([]Notification, error) {
	q := "SELECT id, app_id, tag, msg_id, card, shown FROM notifications"
	var args []any
	if appID != "" {
		q += " WHERE app_id = ?"
		args = append(args, appID)
	}
	rows, err := s.relaxed.QueryContext(ctx, q+" ORDER BY shown, id", args...)
	if err != nil {
		return nil, fmt.Errorf("cannot read notifications: %w", err)
	}
	defer rows.Close()
	var out []Notification
	for rows.Next() {
		var n Notification
		var id, shown int64
		var card []byte
		if err := rows.Scan(&id, &n.AppID, &n.Tag, &n.MsgID, &card, &shown); err != nil {
			return nil, fmt.Errorf("cannot read notifications: %w", err)
		}
		if n.Card, err = app.DecodeCard(card); err != nil {
			continue
		}
		n.ID, n.Shown = uint32(id), fromMilli(shown)
		out = append(out, n)
	}
	return out, rows.Err()
}
