package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/heraldpush/herald/app"
)

// Registration is one app's channel with the push server.
type Registration struct {
	ChannelID  string
	AppID      string
	Kind       app.Kind
	Endpoint   string // "" until the server answered
	Service    string // UnifiedPush connector bus name
	UPToken    string // UnifiedPush connector token
	UPVersion  int    // UnifiedPush interface version (1 or 2)
	VAPID      string // VAPID public key the channel is restricted to
	Stale      bool   // the server forgot it (new uaid): register again
	Registered time.Time
	// Owner is who may unregister or replace a UnifiedPush registration
	// ("<source>:<app id>" of a confined app, "" for an unconfined one).
	Owner string
	// UPInstance is the service argument the connector sent when it was
	// not a bus name (Service is then the caller's own name).
	UPInstance string
	// Registrant is the bus connection that registered it ("<bus id>/<unique name>").
	Registrant string
	// Backend is the push service the channel lives on ("" is stored as
	// app.BackendAutopush).
	Backend app.Backend
}

const regColumns = "channel_id, app_id, kind, endpoint, service, up_token, up_version, vapid, stale, registered, owner, up_instance, registrant, backend"

func scanRegistration(sc interface{ Scan(...any) error }) (Registration, error) {
	var r Registration
	var reg int64
	err := sc.Scan(&r.ChannelID, &r.AppID, &r.Kind, &r.Endpoint, &r.Service, &r.UPToken, &r.UPVersion, &r.VAPID, &r.Stale, &reg, &r.Owner, &r.UPInstance, &r.Registrant, &r.Backend)
	r.Registered = fromMilli(reg)
	return r, err
}

// PutRegistration inserts r, or replaces the registration with the same
// channel id.
func (s *Store) PutRegistration(ctx context.Context, r Registration) error {
	if r.Kind != app.KindLomiri && r.Kind != app.KindUnifiedPush {
		return fmt.Errorf("cannot store registration of %q: invalid kind %q", r.AppID, r.Kind)
	}
	if _, err := app.ParseID(r.AppID); err != nil {
		return fmt.Errorf("cannot store registration: %w", err)
	}
	switch r.Backend {
	case "":
		r.Backend = app.BackendAutopush
	case app.BackendAutopush, app.BackendLomiri, app.BackendNtfy:
	default:
		return fmt.Errorf("cannot store registration of %q: invalid backend %q", r.AppID, r.Backend)
	}
	if r.Registered.IsZero() {
		r.Registered = time.Now()
	}
	_, err := s.exec(ctx, "INSERT INTO registrations("+regColumns+") VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"+
		" ON CONFLICT(channel_id) DO UPDATE SET app_id = excluded.app_id, kind = excluded.kind, endpoint = excluded.endpoint,"+
		" service = excluded.service, up_token = excluded.up_token, up_version = excluded.up_version, vapid = excluded.vapid,"+
		" stale = excluded.stale, registered = excluded.registered, owner = excluded.owner, up_instance = excluded.up_instance, registrant = excluded.registrant,"+
		" backend = excluded.backend",
		r.ChannelID, r.AppID, r.Kind, r.Endpoint, r.Service, r.UPToken, r.UPVersion, r.VAPID, r.Stale, unixMilli(r.Registered), r.Owner, r.UPInstance, r.Registrant, r.Backend)
	if err != nil {
		return fmt.Errorf("cannot store registration of %q: %w", r.AppID, err)
	}
	return nil
}

// SetEndpoint records the endpoint the server gave a channel and clears its
// stale mark.
func (s *Store) SetEndpoint(ctx context.Context, channelID, endpoint string) error {
	res, err := s.exec(ctx, "UPDATE registrations SET endpoint = ?, stale = 0 WHERE channel_id = ?", endpoint, channelID)
	if err != nil {
		return fmt.Errorf("cannot store endpoint of channel %s: %w", channelID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("cannot store endpoint of channel %s: %w", channelID, ErrNotFound)
	}
	return nil
}

// DeleteRegistration removes a registration and the messages not yet taken
// by its app.
func (s *Store) DeleteRegistration(ctx context.Context, channelID string) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "DELETE FROM inbox WHERE channel_id = ?", channelID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "DELETE FROM registrations WHERE channel_id = ?", channelID)
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot delete registration of channel %s: %w", channelID, err)
	}
	return nil
}

func (s *Store) oneRegistration(ctx context.Context, where string, args ...any) (Registration, error) {
	r, err := scanRegistration(s.relaxed.QueryRowContext(ctx, "SELECT "+regColumns+" FROM registrations WHERE "+where, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return Registration{}, ErrNotFound
	}
	if err != nil {
		return Registration{}, fmt.Errorf("cannot read registration: %w", err)
	}
	return r, nil
}

// LomiriRegistration returns the Lomiri registration of appID.
func (s *Store) LomiriRegistration(ctx context.Context, appID string) (Registration, error) {
	return s.oneRegistration(ctx, "kind = 'lomiri' AND app_id = ?", appID)
}

// UPRegistration returns the UnifiedPush registration with the connector token.
func (s *Store) UPRegistration(ctx context.Context, token string) (Registration, error) {
	return s.oneRegistration(ctx, "kind = 'unifiedpush' AND up_token = ?", token)
}

// RegistrationByChannel returns the registration of a channel.
func (s *Store) RegistrationByChannel(ctx context.Context, channelID string) (Registration, error) {
	return s.oneRegistration(ctx, "channel_id = ?", channelID)
}

// Registrations returns every registration, oldest first.
func (s *Store) Registrations(ctx context.Context) ([]Registration, error) {
	rows, err := s.relaxed.QueryContext(ctx, "SELECT "+regColumns+" FROM registrations ORDER BY registered, channel_id")
	if err != nil {
		return nil, fmt.Errorf("cannot read registrations: %w", err)
	}
	defer rows.Close()
	var out []Registration
	for rows.Next() {
		r, err := scanRegistration(rows)
		if err != nil {
			return nil, fmt.Errorf("cannot read registrations: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

const unreachablePrefix = "up-unreachable/"

// Unreachable returns since when the UnifiedPush connector of channelID was
// found not activatable at daemon start (zero: it was not).
func (s *Store) Unreachable(ctx context.Context, channelID string) (time.Time, error) {
	var v int64
	err := s.relaxed.QueryRowContext(ctx, "SELECT CAST(value AS INTEGER) FROM state WHERE key = ?", unreachablePrefix+channelID).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("cannot read connector state: %w", err)
	}
	return fromMilli(v), nil
}

// SetUnreachable records since when channelID's connector is not
// activatable; the zero time clears it.
func (s *Store) SetUnreachable(ctx context.Context, channelID string, since time.Time) error {
	var err error
	if since.IsZero() {
		_, err = s.exec(ctx, "DELETE FROM state WHERE key = ?", unreachablePrefix+channelID)
	} else {
		_, err = s.exec(ctx, "INSERT INTO state(key, value) VALUES(?, ?) ON CONFLICT(key) DO NOTHING", unreachablePrefix+channelID, unixMilli(since))
	}
	if err != nil {
		return fmt.Errorf("cannot record connector state: %w", err)
	}
	return nil
}
