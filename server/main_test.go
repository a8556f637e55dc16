package server

import (
	"context"
	"os"
	"testing"

	"github.com/heraldpush/herald/internal/pgtest"
)

// TestMain stops the PostgreSQL cluster that the tests share (started on
// first use by pgtest.Database).
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

// runPostgres opens a PostgresStore on a fresh database and runs it until
// the test ends.
func runPostgres(t *testing.T) *PostgresStore {
	t.Helper()
	st, err := OpenPostgres(context.Background(), pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		st.Close()
	})
	return st
}
