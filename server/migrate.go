package server

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"
)

var parseURL = url.Parse

// OpenStore opens the store db names: a postgres:// or postgresql:// URL, or
// a sqlite file (created if missing, with the default options).
func OpenStore(ctx context.Context, db string) (Store, error) {
	if IsPostgresURL(db) {
		return OpenPostgres(ctx, db)
	}
	return OpenSQLite(db)
}

// MigrateCounts says what Migrate copied.
type MigrateCounts struct {
	Devices, Channels, Messages int
}

// importBatch is how many records one Import carries.
const importBatch = 1000

// Migrate copies every device, channel and message pending at now from the
// store at from to the store at to (each a sqlite file or a postgres URL).
// Nothing else may use either store meanwhile. Running it again copies
// nothing twice.
func Migrate(ctx context.Context, from, to string, now time.Time) (MigrateCounts, error) {
	var counts MigrateCounts
	src, err := OpenStore(ctx, from)
	if err != nil {
		return counts, fmt.Errorf("cannot open %s: %w", redactURL(from), err)
	}
	dst, err := OpenStore(ctx, to)
	if err != nil {
		src.Close()
		return counts, fmt.Errorf("cannot open %s: %w", redactURL(to), err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- src.Run(runCtx) }()
	go func() { done <- dst.Run(runCtx) }()

	batch := make([]Record, 0, importBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := dst.Import(ctx, batch)
		batch = batch[:0]
		return err
	}
	err = src.Export(ctx, now, func(r Record) error {
		switch {
		case r.Device != "":
			counts.Devices++
		case r.Channel != nil:
			counts.Channels++
		case r.Message != nil:
			counts.Messages++
		}
		batch = append(batch, r)
		if len(batch) == importBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	stop()
	err = errors.Join(err, <-done, <-done, src.Close(), dst.Close())
	return counts, err
}

// redactURL hides the password of a database URL for messages.
func redactURL(db string) string {
	if !IsPostgresURL(db) {
		return db
	}
	if u, err := parseURL(db); err == nil {
		return u.Redacted()
	}
	return "the database"
}
