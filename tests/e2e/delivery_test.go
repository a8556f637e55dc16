package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// TestConnectorFailingMessage: a message the app fails on is retried while
// later messages still arrive at once, and it is dropped and counted when
// its TTL ends.
func TestConnectorFailingMessage(t *testing.T) {
	w := newWorld(t, worldOptions{})
	const name = "org.example.Flaky"
	a, eps := w.startUPApp(t, name, []string{"tok-flaky"}, "--reply", "empty", "--fail-prefix", "FAIL")
	ep := eps["tok-flaky"]
	failed := func(ev map[string]any) bool { f, _ := ev["failed"].(bool); return f }
	w.push(t, ep, "FAIL for ten minutes", 600)
	a.waitRecords(t, "Message", 1, failed)
	w.push(t, ep, "after the failing one", 600)
	// With the failing message holding the head of the queue, this one
	// would wait for it (ten minutes) instead of arriving now.
	got := a.waitRecords(t, "Message", 1, func(ev map[string]any) bool {
		b, _ := eventBytes(ev, "message")
		return string(b) == "after the failing one"
	})
	if len(got) != 1 {
		t.Errorf("later message delivered %d times", len(got))
	}
	t.Logf("later message arrived while the failing one had %d attempt(s)", len(a.records("Message"))-1)
	// A message that keeps failing is retried until its TTL, then dropped
	// and counted; the ten-minute one is still queued.
	before := w.counters(t)["messages_expired"]
	w.push(t, ep, "FAIL for two seconds", 2)
	waitUntil(t, waitLong, "the short-lived failing message to be dropped and counted", func() bool {
		return w.counters(t)["messages_expired"] == before+1
	})
	if n := w.inboxLen(t, name); n != 1 {
		t.Errorf("queue holds %d messages, want only the ten-minute one", n)
	}
	t.Logf("short-lived failing message dropped: messages_expired %d -> %d; queue %d", before, w.counters(t)["messages_expired"], w.inboxLen(t, name))
	if tries := a.waitRecords(t, "Message", 1, func(ev map[string]any) bool {
		b, _ := eventBytes(ev, "message")
		return string(b) == "FAIL for two seconds"
	}); !failed(tries[0]) {
		t.Errorf("the failing message was recorded as handled: %v", tries[0])
	}
}

// TestConnectorTwoInstances: two instances (two tokens) of one app each get
// only their own messages.
func TestConnectorTwoInstances(t *testing.T) {
	w := newWorld(t, worldOptions{})
	const name = "org.example.TwoInstances"
	toks := []string{"instance-a", "instance-b"}
	a, eps := w.startUPApp(t, name, toks, "--reply", "empty")
	if eps[toks[0]] == eps[toks[1]] {
		t.Fatalf("both instances got endpoint %s", eps[toks[0]])
	}
	for n := range 25 {
		for _, tok := range toks {
			w.push(t, eps[tok], fmt.Sprintf("%s|%d", tok, n), 600)
		}
	}
	recs := a.waitRecords(t, "Message", 50, nil)
	misrouted := 0
	seen := map[string]int{}
	for _, ev := range recs {
		b, _ := eventBytes(ev, "message")
		tok, _ := ev["token"].(string)
		want, _, _ := strings.Cut(string(b), "|")
		if tok != want {
			misrouted++
		}
		seen[string(b)]++
	}
	t.Logf("misrouted %d of %d", misrouted, len(recs))
	if misrouted != 0 || len(seen) != 50 {
		t.Errorf("misrouted %d of %d messages; %d distinct (want 0 and 50)", misrouted, len(recs), len(seen))
	}
}
