// Package ntfytest is a test double of an ntfy server's documented HTTP
// API (docs.ntfy.sh "Publishing" and "Subscribing to topics via HTTP"),
// for tests only: Debian ships no ntfy server. It implements what a
// UnifiedPush distributor uses:
//
//   - publish: POST or PUT /<topic> (up=1 and the other UnifiedPush
//     markers make no difference here); a UTF-8 body becomes "message", any
//     other body is standard base64 with "encoding":"base64"; an empty
//     body is "triggered"; the reply is the message as JSON;
//   - subscribe: GET /<t1>,<t2>,…/json: an NDJSON stream that starts with an
//     "open" event, then replays the cache per since= (none by default, all,
//     a message id: the messages after it in cache order for all topics, an
//     unknown id: every cached message), then live messages; "keepalive"
//     events when asked (Keepalive);
//   - GET /v1/health: {"healthy":true};
//   - auth: Basic or Bearer, checked against Users/Tokens when set.
//
// A test can also make a live message arrive during the replay as well
// (ntfy subscribes live before replaying, so a publish during the replay
// can arrive twice), drop every stream, and read what was asked.
package ntfytest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Message is an ntfy event as the JSON stream carries it.
type Message struct {
	ID       string `json:"id"`
	Time     int64  `json:"time"`
	Expires  int64  `json:"expires,omitempty"`
	Event    string `json:"event"`
	Topic    string `json:"topic"`
	Message  string `json:"message,omitempty"`
	Encoding string `json:"encoding,omitempty"`
}

// Server is the test double. Its fields configure it before the first request.
type Server struct {
	*httptest.Server

	// Users maps a Basic user to its password; Tokens are accepted Bearer
	// tokens. With neither set, anyone may publish and subscribe.
	Users  map[string]string
	Tokens []string

	mu sync.Mutex
	// guarded by mu:
	cache    []Message
	streams  map[*stream]bool
	requests []string // "GET /t1,t2/json?since=…" of each subscription
	overlap  bool     // the next replay also sends the next live message twice
	pending  []Message
	closed   bool
}

// Close ends every stream and shuts the server down.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.DropStreams()
	s.Server.Close()
}

type stream struct {
	topics []string
	out    chan Message
	done   chan struct{}
	once   sync.Once
}

func (st *stream) close() { st.once.Do(func() { close(st.done) }) }

var topicRe = regexp.MustCompile(`^[-_A-Za-z0-9]{1,64}$`)

// New starts the test double on loopback.
func New() *Server {
	s := &Server{streams: map[*stream]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

func newID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, 12)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func (s *Server) authorized(r *http.Request) bool {
	if len(s.Users) == 0 && len(s.Tokens) == 0 {
		return true
	}
	h := r.Header.Get("Authorization")
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		return slices.Contains(s.Tokens, tok)
	}
	if u, p, ok := r.BasicAuth(); ok {
		if u == "" {
			return slices.Contains(s.Tokens, p)
		}
		want, found := s.Users[u]
		return found && want == p
	}
	return false
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"code":40101,"http":401,"error":"unauthorized"}`+"\n")
		return
	}
	path := strings.Trim(r.URL.Path, "/")
	switch {
	case (r.Method == http.MethodPost || r.Method == http.MethodPut) && topicRe.MatchString(path):
		s.publish(w, r, path)
	case r.Method == http.MethodGet && path == "v1/health":
		io.WriteString(w, `{"healthy":true}`+"\n")
	case r.Method == http.MethodGet && strings.HasSuffix(path, "/json"):
		s.subscribe(w, r, strings.Split(strings.TrimSuffix(path, "/json"), ","))
	case r.Method == http.MethodGet && topicRe.MatchString(path) && r.URL.Query().Get("up") == "1":
		io.WriteString(w, `{"unifiedpush":{"version":1}}`+"\n")
	default:
		http.Error(w, `{"code":40401,"http":404,"error":"page not found"}`, http.StatusNotFound)
	}
}

func (s *Server) publish(w http.ResponseWriter, r *http.Request, topic string) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	m := s.Publish(topic, body)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(m)
}

// Publish stores body in the cache of topic and sends it to the streams
// subscribed to it, as a POST would.
func (s *Server) Publish(topic string, body []byte) Message {
	now := time.Now().Unix()
	m := Message{ID: newID(), Time: now, Expires: now + 12*3600, Event: "message", Topic: topic}
	switch {
	case len(body) == 0:
		m.Message = "triggered"
	case utf8.Valid(body):
		m.Message = string(body)
	default:
		m.Message = base64.StdEncoding.EncodeToString(body)
		m.Encoding = "base64"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache = append(s.cache, m)
	if s.overlap {
		// Held back: the next replay sends it live first, then in the cache.
		s.pending = append(s.pending, m)
		return m
	}
	s.sendLocked(m)
	return m
}

func (s *Server) sendLocked(m Message) {
	for st := range s.streams {
		if slices.Contains(st.topics, m.Topic) {
			select {
			case st.out <- m:
			case <-st.done:
			}
		}
	}
}

// OverlapNextReplay makes messages published from now on wait for the next
// subscription, which then gets each of them twice: live right after
// "open", then again in the replay of the cache.
func (s *Server) OverlapNextReplay() {
	s.mu.Lock()
	s.overlap = true
	s.mu.Unlock()
}

// Keepalive sends a keepalive event on every stream.
func (s *Server) Keepalive() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for st := range s.streams {
		select {
		case st.out <- Message{ID: newID(), Time: time.Now().Unix(), Event: "keepalive", Topic: strings.Join(st.topics, ",")}:
		case <-st.done:
		}
	}
}

// DropStreams ends every open subscription (the client must reconnect).
func (s *Server) DropStreams() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for st := range s.streams {
		st.close()
		delete(s.streams, st)
	}
}

// Subscriptions returns the request line of each subscription so far
// ("/t1,t2/json?since=…").
func (s *Server) Subscriptions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Streams returns how many subscriptions are open.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// since returns the cached messages of topics that a subscription with
// since= replays (ntfy's parseSince and messagesSinceID).
func (s *Server) sinceLocked(since string, topics []string) []Message {
	var from int
	switch since {
	case "", "none":
		return nil
	case "all":
		from = 0
	default:
		from = 0 // unknown or expired id: everything
		for i, m := range s.cache {
			if m.ID == since {
				from = i + 1
				break
			}
		}
	}
	var out []Message
	for _, m := range s.cache[from:] {
		if slices.Contains(topics, m.Topic) {
			out = append(out, m)
		}
	}
	return out
}

func (s *Server) subscribe(w http.ResponseWriter, r *http.Request, topics []string) {
	for _, t := range topics {
		if !topicRe.MatchString(t) {
			http.Error(w, `{"code":40009,"http":400,"error":"invalid topic"}`, http.StatusBadRequest)
			return
		}
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "no flusher", http.StatusInternalServerError)
		return
	}
	st := &stream{topics: topics, out: make(chan Message, 64), done: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	s.requests = append(s.requests, r.URL.RequestURI())
	// Subscribe live first, then replay: what is published meanwhile may
	// come twice, as with ntfy.
	s.streams[st] = true
	defer func() {
		st.close() // first: a sender holding mu waits on done
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
	}()
	pending := s.pending
	s.pending, s.overlap = nil, false
	replay := s.sinceLocked(r.URL.Query().Get("since"), topics)
	s.mu.Unlock()

	w.Header().Set("Content-Type", "application/x-ndjson; charset=utf-8")
	enc := json.NewEncoder(w)
	write := func(m Message) bool {
		if err := enc.Encode(m); err != nil {
			return false
		}
		fl.Flush()
		return true
	}
	if !write(Message{ID: newID(), Time: time.Now().Unix(), Event: "open", Topic: strings.Join(topics, ",")}) {
		return
	}
	for _, m := range pending {
		if slices.Contains(topics, m.Topic) && !write(m) {
			return
		}
	}
	for _, m := range replay {
		if !write(m) {
			return
		}
	}
	for {
		select {
		case m := <-st.out:
			if !write(m) {
				return
			}
		case <-st.done:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// Endpoint is the UnifiedPush endpoint of topic at this server.
func (s *Server) Endpoint(topic string) string {
	return fmt.Sprintf("%s/%s?up=1", s.URL, topic)
}
