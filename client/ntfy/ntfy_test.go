package ntfy

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldpush/herald/internal/ntfytest"
)

// The server in these tests is internal/ntfytest, a test double of ntfy's
// documented HTTP API (publish, the /json subscription stream with since=,
// keepalive events, Basic and Bearer auth): Debian ships no ntfy server.

const waitFor = 20 * time.Second

// store is a Handler that records what it was given, like the daemon's
// durable store (without de-duplication: the subscriber's is under test).
type store struct {
	mu       sync.Mutex
	got      []Message
	lastID   string
	saved    []string
	failNext int // Receive fails this many times
	ch       chan Message
}

func newStore() *store { return &store{ch: make(chan Message, 100)} }

func (s *store) Receive(_ context.Context, m Message) error {
	s.mu.Lock()
	if s.failNext > 0 {
		s.failNext--
		s.mu.Unlock()
		return errors.New("disk full")
	}
	s.got = append(s.got, m)
	s.mu.Unlock()
	s.ch <- m
	return nil
}

func (s *store) LastID(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastID, nil
}

func (s *store) SaveLastID(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastID = id
	s.saved = append(s.saved, id)
	return nil
}

func (s *store) next(t *testing.T) Message {
	t.Helper()
	select {
	case m := <-s.ch:
		return m
	case <-time.After(waitFor):
		t.Fatal("no message within the deadline")
		return Message{}
	}
}

func (s *store) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.got {
		if m.ID == id {
			n++
		}
	}
	return n
}

func (s *store) savedIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.saved...)
}

type runner struct {
	sub    *Subscriber
	states chan State
	errs   chan error
}

func run(t *testing.T, cfg Config) *runner {
	t.Helper()
	r := &runner{states: make(chan State, 100), errs: make(chan error, 100)}
	cfg.Backoff = Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond, Stable: time.Minute}
	cfg.OnState = func(st State, err error) {
		select {
		case r.states <- st:
		default:
		}
		if err != nil {
			select {
			case r.errs <- err:
			default:
			}
		}
	}
	sub, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.sub = sub
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitFor):
			t.Error("Run did not return after cancel")
		}
	})
	return r
}

func (r *runner) waitState(t *testing.T, want State) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case st := <-r.states:
			if st == want {
				return
			}
		case <-deadline:
			t.Fatalf("state %s not reached", want)
		}
	}
}

// waitUntil polls cond (the state of another goroutine) under a deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTopics(t *testing.T) {
	seen := map[string]bool{}
	for range 2000 {
		tp := NewTopic()
		if !ValidTopic(tp) || seen[tp] {
			t.Fatalf("NewTopic = %q (valid %v, repeated %v)", tp, ValidTopic(tp), seen[tp])
		}
		seen[tp] = true
	}
	for _, bad := range []string{"", "up", "upABCDEFGHIJK", "upABCDEFGHIJKLM", "xxABCDEFGHIJKL", "upABCDEFGHIJ-L"} {
		if ValidTopic(bad) {
			t.Errorf("ValidTopic(%q) = true", bad)
		}
	}
	sub, err := New(Config{URL: "https://ntfy.example/base/", Handler: newStore()})
	if err != nil {
		t.Fatal(err)
	}
	if ep := sub.Endpoint("upAbCdEfGh1234"); ep != "https://ntfy.example/base/upAbCdEfGh1234?up=1" {
		t.Errorf("Endpoint = %q", ep)
	}
	for _, u := range []string{"", "ws://x/", "https://", "ntfy.sh", "https://x/?a=b"} {
		if _, err := New(Config{URL: u, Handler: newStore()}); err == nil {
			t.Errorf("New accepted url %q", u)
		}
	}
}

// TestStream: one subscription for every topic, text and base64 bodies.
func TestStream(t *testing.T) {
	srv := ntfytest.New()
	defer srv.Close()
	st := newStore()
	r := run(t, Config{URL: srv.URL, Handler: st})
	a, b := NewTopic(), NewTopic()
	r.sub.SetTopics([]string{a, b})
	r.waitState(t, StateConnected)
	cipher := []byte{0x00, 0xff, 0x10, 0x80, 'x'}
	pa := srv.Publish(a, []byte("hello ✓"))
	pb := srv.Publish(b, cipher)
	if pb.Encoding != "base64" {
		t.Fatalf("test double sent a binary body as %q", pb.Encoding)
	}
	m := st.next(t)
	if m.ID != pa.ID || m.Topic != a || string(m.Body) != "hello ✓" {
		t.Errorf("first message %+v", m)
	}
	m = st.next(t)
	if m.ID != pb.ID || m.Topic != b || !bytes.Equal(m.Body, cipher) {
		t.Errorf("base64 message %+v, want body %x", m, cipher)
	}
	subs := srv.Subscriptions()
	if len(subs) != 1 {
		t.Fatalf("subscriptions %q, want one stream for both topics", subs)
	}
	lo, hi := min(a, b), max(a, b)
	if want := "/" + lo + "," + hi + "/json?since=all"; subs[0] != want {
		t.Errorf("subscription %q, want %q", subs[0], want)
	}
}

// TestReplayOverlap: a reconnect replays what was published meanwhile and
// the same messages also arrive live; each is given once. The last id is
// saved only at a keepalive, after the messages were stored, and the next
// subscription asks for what came after it.
func TestReplayOverlap(t *testing.T) {
	srv := ntfytest.New()
	defer srv.Close()
	st := newStore()
	r := run(t, Config{URL: srv.URL, Handler: st})
	topic := NewTopic()
	r.sub.SetTopics([]string{topic})
	r.waitState(t, StateConnected)
	first := srv.Publish(topic, []byte("one"))
	st.next(t)
	if s := st.savedIDs(); len(s) != 0 {
		t.Fatalf("last id saved before any keepalive: %q", s)
	}
	srv.Keepalive()
	waitUntil(t, "the last id to be saved", func() bool { return len(st.savedIDs()) == 1 })
	if s := st.savedIDs(); s[0] != first.ID {
		t.Fatalf("saved %q, want %q", s, first.ID)
	}

	// Published while the stream is down; the next subscription gets each
	// of them twice (live, then in the replay).
	srv.OverlapNextReplay()
	srv.DropStreams()
	var ids []string
	for i := range 5 {
		ids = append(ids, srv.Publish(topic, fmt.Appendf(nil, "msg %d", i)).ID)
	}
	for range ids {
		st.next(t)
	}
	srv.Keepalive() // the stream has no later message: each id came twice before it
	waitUntil(t, "the last id after the replay", func() bool { return len(st.savedIDs()) == 2 })
	for _, id := range append(ids, first.ID) {
		if n := st.count(id); n != 1 {
			t.Errorf("message %s given %d times, want once", id, n)
		}
	}
	subs := srv.Subscriptions()
	if len(subs) != 2 || !strings.HasSuffix(subs[1], "since="+first.ID) {
		t.Errorf("subscriptions %q, want the second since=%s", subs, first.ID)
	}
	if s := st.savedIDs(); s[1] != ids[len(ids)-1] {
		t.Errorf("saved %q, want the last replayed id %s", s, ids[len(ids)-1])
	}
}

// TestUnknownSince: a saved id the server no longer knows replays every
// cached message (ntfy's rule); nothing is lost.
func TestUnknownSince(t *testing.T) {
	srv := ntfytest.New()
	defer srv.Close()
	topic := NewTopic()
	var want []string
	for i := range 3 {
		want = append(want, srv.Publish(topic, fmt.Appendf(nil, "old %d", i)).ID)
	}
	st := newStore()
	st.lastID = "expiredID123"
	r := run(t, Config{URL: srv.URL, Handler: st})
	r.sub.SetTopics([]string{topic})
	for _, id := range want {
		if m := st.next(t); m.ID != id {
			t.Errorf("got %s, want %s (cache order)", m.ID, id)
		}
	}
	if subs := srv.Subscriptions(); len(subs) != 1 || !strings.HasSuffix(subs[0], "since=expiredID123") {
		t.Errorf("subscriptions %q", subs)
	}
}

// TestStoreFailure: a message the handler could not store is not skipped:
// no id is saved past it and the reconnect gives it again.
func TestStoreFailure(t *testing.T) {
	srv := ntfytest.New()
	defer srv.Close()
	st := newStore()
	st.failNext = 1
	r := run(t, Config{URL: srv.URL, Handler: st})
	topic := NewTopic()
	r.sub.SetTopics([]string{topic})
	r.waitState(t, StateConnected)
	p := srv.Publish(topic, []byte("precious"))
	if m := st.next(t); m.ID != p.ID {
		t.Fatalf("got %+v", m)
	}
	if subs := srv.Subscriptions(); len(subs) != 2 {
		t.Errorf("subscriptions %q, want a second one after the store failure", subs)
	}
	if s := st.savedIDs(); len(s) != 0 {
		t.Errorf("saved %q without a keepalive", s)
	}
}

// TestKeepaliveTimeout: a stream silent for longer than KeepaliveTimeout
// is dropped and dialled again; keepalive events keep it open.
func TestKeepaliveTimeout(t *testing.T) {
	var mu sync.Mutex
	dials := 0
	redialed := make(chan struct{})
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		dials++
		if dials == 2 {
			close(redialed)
		}
		mu.Unlock()
		io.WriteString(w, `{"id":"a","event":"open","topic":"x"}`+"\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer silent.Close()
	r := run(t, Config{URL: silent.URL, Handler: newStore(), KeepaliveTimeout: 200 * time.Millisecond})
	r.sub.SetTopics([]string{NewTopic()})
	select {
	case <-redialed:
	case <-time.After(waitFor):
		t.Fatal("a silent stream was not dialled again")
	}
	select {
	case err := <-r.errs:
		if !strings.Contains(err.Error(), "silent") {
			t.Errorf("error %v, want the stream silent", err)
		}
	case <-time.After(waitFor):
		t.Error("no error reported")
	}
}

func TestAuth(t *testing.T) {
	srv := ntfytest.New()
	defer srv.Close()
	srv.Users = map[string]string{"phil": "secret"}
	srv.Tokens = []string{"tk_abcdefghijklmnopqrstuvwxyz012"}
	for _, tt := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"basic", Config{User: "phil", Password: "secret"}, true},
		{"bearer", Config{Token: "tk_abcdefghijklmnopqrstuvwxyz012"}, true},
		{"wrong password", Config{User: "phil", Password: "nope"}, false},
		{"none", Config{}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.URL, cfg.Handler = srv.URL, newStore()
			r := run(t, cfg)
			r.sub.SetTopics([]string{NewTopic()})
			if tt.ok {
				r.waitState(t, StateConnected)
				return
			}
			select {
			case err := <-r.errs:
				if !strings.Contains(err.Error(), "401") {
					t.Errorf("error %v, want 401", err)
				}
			case <-time.After(waitFor):
				t.Fatal("no error for refused credentials")
			}
		})
	}
	if _, err := New(Config{URL: srv.URL, Handler: newStore(), User: "a", Token: "b"}); err == nil {
		t.Error("New accepted a token and a user")
	}
}

// TestTopicsChangeResubscribes: a new topic reconnects with both at once;
// no topic disconnects.
func TestTopicsChangeResubscribes(t *testing.T) {
	srv := ntfytest.New()
	defer srv.Close()
	st := newStore()
	r := run(t, Config{URL: srv.URL, Handler: st})
	a, b := NewTopic(), NewTopic()
	r.sub.SetTopics([]string{a})
	r.waitState(t, StateConnected)
	r.sub.SetTopics([]string{a, b})
	waitUntil(t, "a subscription with both topics", func() bool {
		s := srv.Subscriptions()
		return len(s) == 2 && strings.Contains(s[1], a) && strings.Contains(s[1], b)
	})
	p := srv.Publish(b, []byte("to b"))
	if m := st.next(t); m.ID != p.ID {
		t.Errorf("got %+v", m)
	}
	r.sub.SetTopics(nil)
	r.waitState(t, StateIdle)
	waitUntil(t, "the stream to close", func() bool { return srv.Streams() == 0 })
}

// FuzzDecodeMessage: any line of the stream decodes or is refused, never
// panics; a text body is the message verbatim, a base64 body survives a
// round trip.
func FuzzDecodeMessage(f *testing.F) {
	for _, seed := range []string{
		`{"id":"abcdefABCDEF","time":1700000000,"event":"message","topic":"upAbCdEfGh1234","message":"hello"}`,
		`{"id":"x","event":"message","topic":"t","message":"AP8QgHg=","encoding":"base64"}`,
		`{"id":"x","event":"message","topic":"t","message":"AP8","encoding":"base64"}`,
		`{"id":"x","event":"message","topic":"t","message":"m","attachment":{"name":"a","url":"https://x/a"}}`,
		`{"id":"x","event":"message","topic":"t","message":"m","encoding":"gzip"}`,
		`{"id":"x","event":"keepalive","topic":"a,b"}`,
		`not json`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var ev event
		if json.Unmarshal(line, &ev) != nil {
			return
		}
		m, err := decodeMessage(ev)
		if err != nil {
			return
		}
		switch ev.Encoding {
		case "":
			if string(m.Body) != ev.Message {
				t.Fatalf("text body %q, want %q", m.Body, ev.Message)
			}
		case "base64":
			again, err := base64.StdEncoding.DecodeString(base64.StdEncoding.EncodeToString(m.Body))
			if err != nil || !bytes.Equal(again, m.Body) {
				t.Fatalf("base64 body does not round-trip")
			}
		default:
			t.Fatalf("encoding %q accepted", ev.Encoding)
		}
		if m.ID != ev.ID || m.Topic != ev.Topic {
			t.Fatalf("id/topic changed")
		}
	})
}
