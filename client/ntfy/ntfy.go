// Package ntfy is heraldd's backend for an ntfy server
// (https://ntfy.sh, self-hosted or public) used as a UnifiedPush push
// server, the way ntfy's own Android distributor uses it:
//
//   - a registration is a topic "up" + 12 random [A-Za-z0-9] characters,
//     made up locally (ntfy creates topics on first use); its endpoint is
//     <url>/<topic>?up=1;
//   - one streaming subscription carries every topic: GET
//     <url>/<t1>,<t2>,…/json, ntfy's newline-delimited JSON stream;
//   - catch-up after a reconnect or restart with since=<last id>. ntfy
//     subscribes live before it replays its cache, so a replay can overlap
//     live messages, and an unknown or expired id replays every cached
//     message: messages are de-duplicated by id here (recent ids) and by the
//     daemon's durable store (seen ids), so each is given to the app once;
//   - the last id is saved only at a keepalive event, when every message
//     before it was durably stored and the replay is long over (a message
//     stored after a saved id is at worst replayed and dropped as a
//     duplicate, never skipped);
//   - bodies ntfy sent as base64 ("encoding":"base64", a body that is not
//     UTF-8, such as RFC 8291 ciphertext) are decoded;
//   - keepalive: ntfy sends a "keepalive" event every 45 s by default; a
//     stream silent for longer than KeepaliveTimeout is dead and dialled
//     again, with exponential backoff and full jitter on failures;
//   - optional auth: Basic (user and password) or Bearer (an access token).
package ntfy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// TopicPrefix and TopicLength are ntfy's UnifiedPush topic shape
// (unifiedPushTopicPrefix, unifiedPushTopicLength in ntfy's server).
const (
	TopicPrefix = "up"
	TopicLength = 14
)

// Defaults.
const (
	// DefaultKeepaliveTimeout is ntfy's keepalive-interval (45 s) and the
	// 15 s grace ntfy itself gives websocket pongs.
	DefaultKeepaliveTimeout = 60 * time.Second
	// maxLine bounds one JSON event (a 4096-byte body is ~5.5 KB of base64).
	maxLine = 64 * 1024
	// recentIDs is how many message ids are remembered for de-duplication.
	recentIDs = 4096
)

// State is the subscription's state.
type State string

// States.
const (
	StateIdle       State = "idle" // no topic to subscribe to, or offline
	StateConnecting State = "connecting"
	StateConnected  State = "connected"
	StateBackoff    State = "backoff"
)

// Message is one UnifiedPush message from the server.
type Message struct {
	ID      string // ntfy's message id (12 characters), unique per server
	Topic   string
	Time    time.Time
	Expires time.Time // zero when the server gave none
	Body    []byte    // decoded
}

// Handler is what the subscriber needs from the daemon.
type Handler interface {
	// Receive stores m durably and returns nil only then; an error makes
	// the subscriber drop the stream and catch up later.
	Receive(ctx context.Context, m Message) error
	// LastID returns the saved catch-up point ("" when none).
	LastID(ctx context.Context) (string, error)
	// SaveLastID saves the catch-up point.
	SaveLastID(ctx context.Context, id string) error
}

// Backoff is the redial policy: the n-th consecutive failure waits a
// uniform random time in [0, min(Max, Min·2ⁿ)); a stream that lasted Stable
// resets n.
type Backoff struct {
	Min, Max, Stable time.Duration
}

// DefaultBackoff is 1 s doubling to 5 min, reset after a stable minute.
var DefaultBackoff = Backoff{Min: time.Second, Max: 5 * time.Minute, Stable: time.Minute}

// Config configures a Subscriber.
type Config struct {
	// URL is the server's base URL (http:// or https://, maybe with a path).
	URL string
	// User and Password select Basic auth; Token (alone) Bearer auth.
	User, Password, Token string
	Handler               Handler
	Logger                *slog.Logger
	// Client makes the requests (a client without a timeout when nil:
	// the stream is long-lived; dialling is bounded by DialTimeout).
	Client *http.Client
	// DialTimeout bounds connecting and the response headers (20 s).
	DialTimeout time.Duration
	// KeepaliveTimeout is how long the stream may be silent.
	KeepaliveTimeout time.Duration
	Backoff          Backoff
	// OnState is told every state change (may be nil). It must not block.
	OnState func(State, error)
	// Rand returns a uniform integer in [0, n) for the jitter (nil:
	// math/rand/v2).
	Rand func(n int64) int64
}

// Subscriber keeps the one subscription of a device. It is safe for
// concurrent use.
type Subscriber struct {
	cfg  Config
	base string // URL without a trailing slash
	log  *slog.Logger
	kick chan struct{}

	mu sync.Mutex
	// guarded by mu:
	topics    []string // sorted
	online    bool
	state     State
	since     time.Time // connected since
	cancelCur context.CancelFunc
	recent    map[string]bool
	order     []string // recent ids, oldest first
}

// New checks cfg and builds a Subscriber; Run starts it.
func New(cfg Config) (*Subscriber, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("invalid ntfy url %q: want http:// or https:// and a host", cfg.URL)
	}
	if cfg.Handler == nil {
		return nil, errors.New("ntfy: config has no handler")
	}
	if cfg.Token != "" && (cfg.User != "" || cfg.Password != "") {
		return nil, errors.New("ntfy: set a token or a user and password, not both")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 20 * time.Second
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if cfg.Backoff == (Backoff{}) {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.Rand == nil {
		cfg.Rand = mrand.Int64N
	}
	return &Subscriber{
		cfg: cfg, base: strings.TrimRight(cfg.URL, "/"), log: cfg.Logger,
		kick: make(chan struct{}, 1), online: true, state: StateIdle, recent: map[string]bool{},
	}, nil
}

// NewTopic returns a fresh UnifiedPush topic: "up" and 12 random
// characters of [A-Za-z0-9] (~71 bits, like ntfy's Android distributor).
func NewTopic() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 0, TopicLength)
	b = append(b, TopicPrefix...)
	var buf [32]byte
	for len(b) < TopicLength {
		_, _ = rand.Read(buf[:])
		for _, c := range buf {
			// Rejection sampling keeps the 62 characters uniform.
			if int(c) < 248 && len(b) < TopicLength {
				b = append(b, alphabet[int(c)%len(alphabet)])
			}
		}
	}
	return string(b)
}

// ValidTopic reports whether t has the shape NewTopic makes.
func ValidTopic(t string) bool {
	if len(t) != TopicLength || !strings.HasPrefix(t, TopicPrefix) {
		return false
	}
	for i := len(TopicPrefix); i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// Endpoint is the UnifiedPush endpoint of topic: <url>/<topic>?up=1.
func (s *Subscriber) Endpoint(topic string) string {
	return s.base + "/" + topic + "?up=1"
}

// URL is the server's base URL.
func (s *Subscriber) URL() string { return s.base }

// SetTopics sets the topics to subscribe to; a change reconnects at once.
// With none the subscriber stays disconnected.
func (s *Subscriber) SetTopics(topics []string) {
	t := slices.Clone(topics)
	slices.Sort(t)
	t = slices.Compact(t)
	s.mu.Lock()
	changed := !slices.Equal(t, s.topics)
	s.topics = t
	cancel := s.cancelCur
	s.mu.Unlock()
	if changed {
		if cancel != nil {
			cancel()
		}
		s.poke()
	}
}

// SetOnline tells whether the network is up; offline never dials.
func (s *Subscriber) SetOnline(v bool) {
	s.mu.Lock()
	changed := s.online != v
	s.online = v
	cancel := s.cancelCur
	s.mu.Unlock()
	if changed {
		if !v && cancel != nil {
			cancel()
		}
		s.poke()
	}
}

// Reconnect drops the stream and dials again at once.
func (s *Subscriber) Reconnect() {
	s.mu.Lock()
	cancel := s.cancelCur
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	s.poke()
}

// Connected reports whether the stream is open.
func (s *Subscriber) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == StateConnected
}

func (s *Subscriber) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Subscriber) setState(st State, err error) {
	s.mu.Lock()
	changed := s.state != st
	s.state = st
	if st == StateConnected {
		s.since = time.Now()
	}
	s.mu.Unlock()
	if changed || err != nil {
		if s.cfg.OnState != nil {
			s.cfg.OnState(st, err)
		}
	}
}

// Run keeps the subscription until ctx ends.
func (s *Subscriber) Run(ctx context.Context) error {
	attempt := 0
	for ctx.Err() == nil {
		s.mu.Lock()
		topics, online := s.topics, s.online
		s.mu.Unlock()
		if len(topics) == 0 || !online {
			s.setState(StateIdle, nil)
			select {
			case <-s.kick:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		// Drain a stale kick: this dial already sees the latest topics.
		select {
		case <-s.kick:
		default:
		}
		connected, kicked, err := s.stream(ctx, topics)
		if ctx.Err() != nil {
			s.setState(StateIdle, nil)
			return nil
		}
		if kicked {
			continue // topics changed or a reconnect was asked: dial at once
		}
		if connected >= s.cfg.Backoff.Stable {
			attempt = 0
		}
		ceil := min(s.cfg.Backoff.Min<<min(attempt, 30), s.cfg.Backoff.Max)
		if ceil <= 0 {
			ceil = s.cfg.Backoff.Max
		}
		wait := time.Duration(s.cfg.Rand(int64(ceil)))
		attempt++
		s.log.Warn("ntfy stream ended; will reconnect", "server", s.base, "retry_in", wait, "err", err)
		s.setState(StateBackoff, err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.kick:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			s.setState(StateIdle, nil)
			return nil
		}
	}
	return nil
}

// event is one line of ntfy's JSON stream.
type event struct {
	ID         string          `json:"id"`
	Time       int64           `json:"time"`
	Expires    int64           `json:"expires"`
	Event      string          `json:"event"`
	Topic      string          `json:"topic"`
	Message    string          `json:"message"`
	Encoding   string          `json:"encoding"`
	Attachment json.RawMessage `json:"attachment"`
}

// errKicked ends a stream that was dropped on purpose.
var errKicked = errors.New("stream dropped to resubscribe")

// stream runs one subscription until it ends. connected is how long it was
// open; kicked says it was dropped on purpose (no backoff).
func (s *Subscriber) stream(ctx context.Context, topics []string) (connected time.Duration, kicked bool, err error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.mu.Lock()
	s.cancelCur = func() { cancel(errKicked) }
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.cancelCur = nil
		s.mu.Unlock()
	}()

	since, err := s.cfg.Handler.LastID(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("cannot read the last ntfy message id: %w", err)
	}
	if since == "" {
		since = "all"
	}
	q := url.Values{"since": {since}}
	u := s.base + "/" + strings.Join(topics, ",") + "/json?" + q.Encode()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, false, err
	}
	switch {
	case s.cfg.Token != "":
		req.Header.Set("Authorization", "Bearer "+s.cfg.Token)
	case s.cfg.User != "":
		req.SetBasicAuth(s.cfg.User, s.cfg.Password)
	}
	s.setState(StateConnecting, nil)
	// The dial and the headers are bounded; the stream itself by keepalive.
	watchdog := time.AfterFunc(s.cfg.DialTimeout, func() { cancel(errors.New("no answer from the ntfy server")) })
	defer watchdog.Stop()
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return 0, context.Cause(sctx) == errKicked, causeOr(sctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, false, fmt.Errorf("ntfy server answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	silent := func() { cancel(fmt.Errorf("ntfy stream silent for %s", s.cfg.KeepaliveTimeout)) }
	watchdog.Stop()
	watchdog = time.AfterFunc(s.cfg.KeepaliveTimeout, silent)

	var opened time.Time
	defer func() {
		if !opened.IsZero() {
			connected = time.Since(opened)
		}
	}()
	lastStored := "" // id of the last message stored since the last save
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	for sc.Scan() {
		watchdog.Reset(s.cfg.KeepaliveTimeout)
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil {
			s.log.Warn("bad line in ntfy stream ignored", "err", err)
			continue
		}
		switch ev.Event {
		case "open":
			if opened.IsZero() {
				opened = time.Now()
				s.log.Info("subscribed to ntfy server", "server", s.base, "topics", len(topics))
				s.setState(StateConnected, nil)
			}
		case "keepalive":
			if lastStored != "" {
				if err := s.cfg.Handler.SaveLastID(ctx, lastStored); err != nil {
					s.log.Warn("cannot save the last ntfy message id", "err", err)
				} else {
					lastStored = ""
				}
			}
		case "message":
			stored, err := s.message(ctx, topics, ev)
			if err != nil {
				return 0, false, err
			}
			if stored {
				lastStored = ev.ID
			}
		default:
			// poll_request, message_delete, message_clear, newer events: not for UnifiedPush.
		}
	}
	err = sc.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return 0, context.Cause(sctx) == errKicked, causeOr(sctx, err)
}

// causeOr returns the cause of ctx's end when it ended, else err.
func causeOr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil {
		return c
	}
	return err
}

// message handles one message event; stored says it was given to the
// handler now (false for a duplicate or an unusable message).
func (s *Subscriber) message(ctx context.Context, topics []string, ev event) (stored bool, err error) {
	log := s.log.With("msg_id", ev.ID, "topic", ev.Topic)
	if ev.ID == "" || !slices.Contains(topics, ev.Topic) {
		log.Warn("ntfy message without an id or for a topic not subscribed ignored")
		return false, nil
	}
	if s.seen(ev.ID) {
		log.Debug("duplicate ntfy message ignored")
		return false, nil
	}
	m, err := decodeMessage(ev)
	if err != nil {
		log.Warn("unusable ntfy message ignored", "err", err)
		s.remember(ev.ID)
		return false, nil
	}
	if err := s.cfg.Handler.Receive(ctx, m); err != nil {
		return false, fmt.Errorf("cannot store ntfy message: %w", err)
	}
	s.remember(ev.ID)
	return true, nil
}

// decodeMessage turns a message event into a Message: a base64 body
// ("encoding":"base64") is decoded; a message with an attachment is
// refused (UnifiedPush bodies are inline).
func decodeMessage(ev event) (Message, error) {
	if len(ev.Attachment) > 0 && string(ev.Attachment) != "null" {
		return Message{}, errors.New("message with an attachment")
	}
	body := []byte(ev.Message)
	switch ev.Encoding {
	case "":
	case "base64":
		b, err := base64.StdEncoding.DecodeString(ev.Message)
		if err != nil {
			return Message{}, fmt.Errorf("bad base64 body: %w", err)
		}
		body = b
	default:
		return Message{}, fmt.Errorf("unknown encoding %q", ev.Encoding)
	}
	m := Message{ID: ev.ID, Topic: ev.Topic, Time: time.Unix(ev.Time, 0), Body: body}
	if ev.Expires > 0 {
		m.Expires = time.Unix(ev.Expires, 0)
	}
	return m, nil
}

func (s *Subscriber) seen(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recent[id]
}

func (s *Subscriber) remember(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recent[id] {
		return
	}
	s.recent[id] = true
	s.order = append(s.order, id)
	if len(s.order) > recentIDs {
		delete(s.recent, s.order[0])
		s.order = s.order[1:]
	}
}
