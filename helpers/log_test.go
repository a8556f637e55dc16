package helpers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestProcessLogsFailure(t *testing.T) {
	e := newTestEnv(t)
	e.install(t, "org.example.fail", "failempty.sh")
	var buf bytes.Buffer
	r := e.runner(Config{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if _, err := r.Process(context.Background(), "org.example.fail", "m7", []byte("secret-payload")); !errors.Is(err, ErrExit) {
		t.Fatalf("Process error = %v, want ErrExit", err)
	}
	var warned, debugged bool
	for line := range strings.Lines(buf.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["level"] != "DEBUG" && strings.Contains(line, "secret-payload") {
			t.Errorf("payload logged above Debug: %s", line)
		}
		switch rec["level"] {
		case "WARN":
			warned = true
			if rec["app_id"] != "org.example.fail" || rec["msg_id"] != "m7" || !strings.Contains(rec["err"].(string), "exit status 3") {
				t.Errorf("warning lacks app_id, msg_id or the reason: %s", line)
			}
		case "DEBUG":
			if strings.Contains(line, "something broke") {
				debugged = true
			}
		}
	}
	if !warned || !debugged {
		t.Errorf("want a warning and the helper's stderr at Debug; log:\n%s", buf.String())
	}
}

func TestCappedBuffer(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   string
		n      int
	}{
		{"under", []string{"ab", "c"}, "abc", 3},
		{"exact", []string{"abcd"}, "abcd", 4},
		{"over in one write", []string{"abcdef"}, "abcd", 6},
		{"over across writes", []string{"abc", "def", "gh"}, "abcd", 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &cappedBuffer{max: 4}
			for _, w := range tt.writes {
				if n, err := c.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if c.String() != tt.want || c.n != tt.n {
				t.Errorf("kept %q of %d bytes, want %q of %d", c.String(), c.n, tt.want, tt.n)
			}
		})
	}
}
