package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/heraldpush/herald/helpers"
)

// benchHelperThroughput measures helper-processed messages per second: the
// trivial Lomiri helper (`cat "$1" > "$2"` under /bin/sh) installed through
// Herald manifests for 5 apps, 3,000 messages fed through Runner.Process with
// the default concurrency (5), one feeding goroutine per app as the daemon's
// per-app pipeline does.
func benchHelperThroughput(ctx context.Context, env *Env) ([]Result, error) {
	const (
		apps     = 5
		messages = 3000
	)
	data := filepath.Join(env.Tmp, "data")
	dir := filepath.Join(data, "herald", "helpers")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "trivial.sh"), []byte("#!/bin/sh\ncat \"$1\" > \"$2\"\n"), 0o755); err != nil {
		return nil, err
	}
	appIDs := make([]string, apps)
	for i := range appIDs {
		appIDs[i] = fmt.Sprintf("com.example.bench%d_app", i)
		if err := os.WriteFile(filepath.Join(dir, appIDs[i]+".json"), []byte(`{"exec": "trivial.sh"}`), 0o600); err != nil {
			return nil, err
		}
	}
	// The daemon keeps helper files in $XDG_RUNTIME_DIR/herald (tmpfs); do the same.
	runDir, where, err := runtimeDir(env)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(runDir)
	r := helpers.NewRunner(helpers.NewFinder(helpers.Dirs{DataHome: data}, nil), helpers.Config{TempDir: runDir})
	payload := []byte(`{"message": {"id": 1, "text": "hello from the bench"}, "notification": {"card": {"summary": "hi", "popup": true}}}`)

	// Warm up (page cache, first exec).
	if _, err := r.Process(ctx, appIDs[0], "warm", payload); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	start := time.Now()
	for _, appID := range appIDs {
		wg.Go(func() {
			for i := range messages / apps {
				out, err := r.Process(ctx, appID, fmt.Sprint(i), payload)
				if err == nil && (out.Notification == nil || out.Notification.Card == nil) {
					err = errors.New("helper output lost its card")
				}
				if err != nil {
					mu.Lock()
					firstErr = keepFirst(firstErr, fmt.Errorf("%s message %d: %w", appID, i, err))
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return nil, firstErr
	}
	rate := float64(messages) / elapsed.Seconds()
	env.Logf("helper_throughput: %d messages in %s", messages, elapsed.Round(time.Millisecond))
	return []Result{{
		Name:   "helper_msgs_per_s",
		Label:  "helper-processed messages/s",
		Value:  rate,
		Unit:   "msgs/s",
		Target: 500,
		Note: fmt.Sprintf("%d msgs, %d apps, sh+cat helper, concurrency %d, files in %s",
			messages, apps, helpers.DefaultConcurrency, where),
	}}, nil
}

// keepFirst keeps the first non-nil error.
func keepFirst(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// runtimeDir makes a directory for helper files on the user's runtime dir,
// else /dev/shm, else the bench's temp dir, and says which it used.
func runtimeDir(env *Env) (string, string, error) {
	for _, c := range []struct{ dir, name string }{
		{os.Getenv("XDG_RUNTIME_DIR"), "XDG_RUNTIME_DIR"},
		{"/dev/shm", "/dev/shm"},
	} {
		if c.dir == "" {
			continue
		}
		if d, err := os.MkdirTemp(c.dir, "herald-bench-"); err == nil {
			return d, c.name, nil
		}
	}
	d := filepath.Join(env.Tmp, "run")
	return d, "the bench temp dir", os.MkdirAll(d, 0o700)
}
