package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// herald runs the herald CLI against the world's daemon.
func (w *world) herald(args ...string) (string, error) {
	cmd := exec.Command(built.herald, args...)
	cmd.Env = append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS="+w.bus.Address)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestInboxCap: an app that never takes its messages holds at most
// inbox_limit of them; the oldest are dropped and counted, and `herald
// status` shows the count (issue 11: the inbox grew by gigabytes a day).
func TestInboxCap(t *testing.T) {
	w := newWorld(t, worldOptions{config: "inbox_limit = 20\n"})
	const appID = "com.example.flood_app"
	token := w.registerLomiri(appID)
	const n = 50
	for i := range n {
		if st, err := w.pushWeb(token, []byte(fmt.Sprintf(`{"n":%d}`, i)), 3600, nil); err != nil || st != 201 {
			t.Fatalf("push %d: %d %v", i, st, err)
		}
	}
	// Wait (under a deadline) until the daemon has received all of them.
	var st struct {
		Counters map[string]uint64 `json:"counters"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := w.herald("status", "--json")
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Counters["messages_received"] == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("herald status --json: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := w.herald("status")
	if err != nil {
		t.Fatalf("herald status: %v\n%s", err, out)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "inbox_full_dropped") {
			line = strings.TrimSpace(l)
		}
	}
	t.Logf("%d messages to an app that never takes them, inbox_limit 20: herald status shows %q", n, line)
	if strings.Join(strings.Fields(line), " ") != "inbox_full_dropped 30" {
		t.Fatalf("herald status:\n%s", out)
	}
	// The newest 20 are kept, in order (wait until the pipeline queued them).
	var got []string
	deadline = time.Now().Add(30 * time.Second)
	for len(got) < 20 {
		msgs, err := w.popAll(appID)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, msgs...)
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(got) != 20 || got[0] != `{"n":30}` || got[19] != `{"n":49}` {
		t.Fatalf("PopAll = %d messages %q…, want the newest 20", len(got), got)
	}
}
