// Package examples tests the example helper shipped in data/examples: a
// POSIX sh script that turns {"title","body"} into a notification card.
package examples

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// output is the part of the helper output schema the example writes.
type output struct {
	Message      json.RawMessage `json:"message"`
	Notification struct {
		Card struct {
			Summary string `json:"summary"`
			Body    string `json:"body"`
			Popup   bool   `json:"popup"`
			Persist bool   `json:"persist"`
		} `json:"card"`
	} `json:"notification"`
}

// runHelper runs the example helper on payload as heraldd does and returns
// its output file, or an error when the helper failed.
func runHelper(t *testing.T, payload []byte) ([]byte, error) {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	if err := os.WriteFile(in, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("./helper", in, out)
	cmd.Env = append(os.Environ(), "HERALD_APP_ID=com.example.hello_hello", "HERALD_MESSAGE_ID=m1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, &helperError{err: err, stderr: stderr.String()}
	}
	return os.ReadFile(out)
}

type helperError struct {
	err    error
	stderr string
}

func (e *helperError) Error() string { return e.err.Error() + ": " + e.stderr }

func TestHelper(t *testing.T) {
	tests := []struct {
		name        string
		payload     string
		wantErr     bool
		summary     string
		body        string
		wantMessage string // "" means: the payload itself
	}{
		{name: "title and body", payload: `{"title":"Hello","body":"World"}`, summary: "Hello", body: "World"},
		{name: "escapes kept", payload: `{"title":"Say \"hi\" \\ now","body":"a\nb \u00e9 ✓"}`, summary: `Say "hi" \ now`, body: "a\nb é ✓"},
		{name: "multi-line payload", payload: "{\n\t\"body\": \"b\",\n\t\"title\": \"t\"\n}\n", summary: "t", body: "b"},
		{name: "nested title ignored", payload: `{"x":{"title":"no","body":"no"},"title":"yes","body":"ok"}`, summary: "yes", body: "ok"},
		{name: "title in a string ignored", payload: `{"body":"\"title\":\"no\"","y":["title"]}`, summary: "New message", body: `"title":"no"`},
		{name: "no title", payload: `{"body":"only body"}`, summary: "New message", body: "only body"},
		{name: "non-string title", payload: `{"title":42,"body":null}`, summary: "New message", body: ""},
		{name: "empty object", payload: `{}`, summary: "New message", body: ""},
		{name: "array", payload: `["title","body"]`, wantErr: true},
		{name: "not json", payload: `hello`, wantErr: true},
		{name: "empty", payload: ``, wantErr: true},
		{name: "unterminated string", payload: `{"title":"abc`, wantErr: true},
		{name: "unbalanced", payload: `{"title":"abc"`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := runHelper(t, []byte(tt.payload))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("helper succeeded on %q with %s, want failure", tt.payload, b)
				}
				return
			}
			if err != nil {
				t.Fatalf("helper: %v", err)
			}
			var o output
			if err := json.Unmarshal(b, &o); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, b)
			}
			c := o.Notification.Card
			if c.Summary != tt.summary || c.Body != tt.body || !c.Popup || !c.Persist {
				t.Errorf("card = %+v, want summary %q body %q popup persist", c, tt.summary, tt.body)
			}
			if !jsonEqual(t, o.Message, []byte(tt.payload)) {
				t.Errorf("message = %s, want the payload %s", o.Message, tt.payload)
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		return false
	}
	if err := json.Unmarshal(b, &y); err != nil {
		return false
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return bytes.Equal(ja, jb)
}

// FuzzHelper checks the helper's promise: for every JSON object payload it
// succeeds, queues the payload unchanged and shows the top-level "title" and
// "body" strings. Other payloads may fail, which heraldd handles.
func FuzzHelper(f *testing.F) {
	f.Add([]byte(`{"title":"Hello","body":"World"}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		var top map[string]json.RawMessage
		if json.Unmarshal(payload, &top) != nil || top == nil {
			return
		}
		b, err := runHelper(t, payload)
		if err != nil {
			t.Fatalf("helper failed on a JSON object %q: %v", payload, err)
		}
		var o output
		if err := json.Unmarshal(b, &o); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, b)
		}
		if !jsonEqual(t, o.Message, payload) {
			t.Errorf("message = %s, want the payload %s", o.Message, payload)
		}
		want := map[string]string{"title": "New message", "body": ""}
		for k := range want {
			var s string
			if raw, ok := top[k]; ok && json.Unmarshal(raw, &s) == nil && raw[0] == '"' {
				if k == "title" && s == "" {
					continue
				}
				want[k] = s
			}
		}
		if got := o.Notification.Card; got.Summary != want["title"] || got.Body != want["body"] {
			t.Errorf("card summary %q body %q, want %q %q (payload %q)", got.Summary, got.Body, want["title"], want["body"], payload)
		}
	})
}
