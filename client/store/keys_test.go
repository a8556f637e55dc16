package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
)

func TestAppKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "h.db")
	s := open(t, path)
	ctx := context.Background()
	if _, _, err := s.AppKeys(ctx, "com.example.a_a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AppKeys of an app without keys: %v, want ErrNotFound", err)
	}
	p1, a1 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 16)
	p, a, err := s.AddAppKeys(ctx, "com.example.a_a", p1, a1)
	if err != nil || !bytes.Equal(p, p1) || !bytes.Equal(a, a1) {
		t.Fatalf("AddAppKeys = %x %x %v", p, a, err)
	}
	// A second caller gets the first keys: an app's keys never change.
	p, a, err = s.AddAppKeys(ctx, "com.example.a_a", bytes.Repeat([]byte{3}, 32), bytes.Repeat([]byte{4}, 16))
	if err != nil || !bytes.Equal(p, p1) || !bytes.Equal(a, a1) {
		t.Fatalf("second AddAppKeys = %x %x %v, want the first keys", p, a, err)
	}
	if _, _, err := s.AppKeys(ctx, "com.example.b_b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another app: %v", err)
	}
	s.Close()
	s = open(t, path)
	if p, a, err := s.AppKeys(ctx, "com.example.a_a"); err != nil || !bytes.Equal(p, p1) || !bytes.Equal(a, a1) {
		t.Fatalf("after reopening: %x %x %v", p, a, err)
	}
}
