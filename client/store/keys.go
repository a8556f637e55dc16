package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// appKeysPrefix namespaces the Web Push keys of Lomiri-API apps in the
// state table: "webpush/<app id>" → "<private key>.<auth secret>", both
// base64url (the database file is 0600).
const appKeysPrefix = "webpush/"

// AppKeys returns the RFC 8291 private key (32 octets) and auth secret (16
// octets) kept for appID; ErrNotFound when it has none.
func (s *Store) AppKeys(ctx context.Context, appID string) (private, auth []byte, err error) {
	var v string
	err = s.relaxed.QueryRowContext(ctx, "SELECT value FROM state WHERE key = ?", appKeysPrefix+appID).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cannot read the keys of %q: %w", appID, err)
	}
	p, a, ok := strings.Cut(v, ".")
	if ok {
		private, err = base64.RawURLEncoding.DecodeString(p)
	}
	if ok && err == nil {
		auth, err = base64.RawURLEncoding.DecodeString(a)
	}
	if !ok || err != nil {
		return nil, nil, fmt.Errorf("cannot read the keys of %q: malformed", appID)
	}
	return private, auth, nil
}

// AddAppKeys durably keeps appID's keys unless it has some already; it
// returns the keys kept (the existing ones when another caller was first).
func (s *Store) AddAppKeys(ctx context.Context, appID string, private, auth []byte) ([]byte, []byte, error) {
	v := base64.RawURLEncoding.EncodeToString(private) + "." + base64.RawURLEncoding.EncodeToString(auth)
	if _, err := s.exec(ctx, "INSERT INTO state(key, value) VALUES(?, ?) ON CONFLICT(key) DO NOTHING", appKeysPrefix+appID, v); err != nil {
		return nil, nil, fmt.Errorf("cannot save the keys of %q: %w", appID, err)
	}
	return s.AppKeys(ctx, appID)
}
