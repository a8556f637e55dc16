package ntfy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/push"
)

// State keys of the backend in the daemon's store.
const (
	stateTopics = "topics"  // JSON {channel id: topic}
	stateLastID = "last_id" // the catch-up point
)

// Backend is an ntfy server as one of the daemon's push backends: each
// registration (channel) gets a topic of its own, and one subscription
// carries them all.
type Backend struct {
	sub  *Subscriber
	sink push.Sink
	log  *slog.Logger

	mu sync.Mutex
	// guarded by mu:
	topics map[string]string // channel id → topic
	byTop  map[string]string // topic → channel id
	loaded bool
	wanted bool
	status push.Status
}

var _ push.Backend = (*Backend)(nil)

// NewBackend builds the ntfy backend; cfg.Handler and cfg.OnState are set
// by it.
func NewBackend(cfg Config, sink push.Sink) (*Backend, error) {
	b := &Backend{sink: sink, log: cfg.Logger, topics: map[string]string{}, byTop: map[string]string{}}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	cfg.Handler = (*handler)(b)
	cfg.OnState = b.onState
	sub, err := New(cfg)
	if err != nil {
		return nil, err
	}
	b.sub = sub
	b.status = push.Status{Backend: app.BackendNtfy, State: push.StateIdle, Server: sub.URL()}
	return b, nil
}

// Name is app.BackendNtfy.
func (b *Backend) Name() app.Backend { return app.BackendNtfy }

func (b *Backend) load(ctx context.Context) error {
	b.mu.Lock()
	loaded := b.loaded
	b.mu.Unlock()
	if loaded {
		return nil
	}
	v, err := b.sink.LoadState(ctx, app.BackendNtfy, stateTopics)
	if err != nil {
		return err
	}
	m := map[string]string{}
	if v != "" {
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return fmt.Errorf("cannot read the ntfy topics: %w", err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.loaded {
		return nil
	}
	for ch, t := range m {
		if ValidTopic(t) {
			b.topics[ch], b.byTop[t] = t, ch
		}
	}
	b.loaded = true
	return nil
}

// subscribe gives the subscriber the topics to carry (none when unwanted).
// Called with mu held.
func (b *Backend) subscribeLocked() {
	var ts []string
	if b.wanted {
		ts = slices.Collect(maps.Values(b.topics))
	}
	b.sub.SetTopics(ts)
}

// Run keeps the subscription until ctx ends.
func (b *Backend) Run(ctx context.Context) error {
	if err := b.load(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	b.subscribeLocked()
	b.mu.Unlock()
	return b.sub.Run(ctx)
}

// SetWanted subscribes while any registration uses the backend.
func (b *Backend) SetWanted(wanted bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.wanted = wanted
	if b.loaded {
		b.subscribeLocked()
	}
}

// SetOnline stops dialing while offline and redials at once when online.
func (b *Backend) SetOnline(online bool) { b.sub.SetOnline(online) }

// Reconnect drops the stream and dials again.
func (b *Backend) Reconnect() { b.sub.Reconnect() }

// Register gives the channel its topic (made up locally: ntfy creates a
// topic when it is first used) and subscribes to it.
func (b *Backend) Register(ctx context.Context, ch push.Channel) (push.Endpoint, error) {
	if err := b.load(ctx); err != nil {
		return push.Endpoint{}, err
	}
	b.mu.Lock()
	t, ok := b.topics[ch.ID]
	var saved string
	if !ok {
		t = NewTopic()
		b.topics[ch.ID], b.byTop[t] = t, ch.ID
		v, _ := json.Marshal(b.topics)
		saved = string(v)
	}
	b.mu.Unlock()
	if saved != "" {
		if err := b.sink.SaveState(ctx, app.BackendNtfy, stateTopics, saved); err != nil {
			b.mu.Lock()
			delete(b.topics, ch.ID)
			delete(b.byTop, t)
			b.mu.Unlock()
			return push.Endpoint{}, fmt.Errorf("cannot save the ntfy topic: %w", err)
		}
	}
	b.mu.Lock()
	b.subscribeLocked()
	b.mu.Unlock()
	return push.Endpoint{URL: b.sub.Endpoint(t), Token: t}, nil
}

// Unregister forgets the channel's topic.
func (b *Backend) Unregister(ctx context.Context, ch push.Channel) error {
	if err := b.load(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	t, ok := b.topics[ch.ID]
	if !ok {
		b.mu.Unlock()
		return nil
	}
	delete(b.topics, ch.ID)
	delete(b.byTop, t)
	v, _ := json.Marshal(b.topics)
	b.subscribeLocked()
	b.mu.Unlock()
	return b.sink.SaveState(ctx, app.BackendNtfy, stateTopics, string(v))
}

// Status is the subscription's status.
func (b *Backend) Status() push.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

func (b *Backend) onState(st State, err error) {
	b.mu.Lock()
	s := b.status
	s.State = push.State(st)
	s.Since = time.Now()
	if st == StateConnected {
		s.LastError = ""
	} else if err != nil {
		s.LastError = err.Error()
	}
	b.status = s
	b.mu.Unlock()
	b.sink.StateChanged(s)
}

// handler is the Backend as its Subscriber's Handler.
type handler Backend

func (h *handler) Receive(ctx context.Context, m Message) error {
	b := (*Backend)(h)
	b.mu.Lock()
	ch, ok := b.byTop[m.Topic]
	b.mu.Unlock()
	if !ok {
		b.log.Info("ntfy message for a topic no app has dropped", "topic", m.Topic)
		return nil
	}
	errs := b.sink.Receive(ctx, push.Batch{Backend: app.BackendNtfy, Messages: []push.Message{{
		ChannelID: ch, ServerID: m.ID, Body: m.Body, Expires: m.Expires,
	}}})
	if len(errs) == 1 && errs[0] != nil && !errors.Is(errs[0], push.ErrUnknownChannel) {
		return errs[0]
	}
	return nil
}

func (h *handler) LastID(ctx context.Context) (string, error) {
	return h.sink.LoadState(ctx, app.BackendNtfy, stateLastID)
}

func (h *handler) SaveLastID(ctx context.Context, id string) error {
	return h.sink.SaveState(ctx, app.BackendNtfy, stateLastID, id)
}
