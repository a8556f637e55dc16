package client

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/push"
	"github.com/heraldpush/herald/client/session"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/protocol"
)

// autopush is the autopush backend (herald-server or any autopush server):
// package session behind push.Backend. Its session.Handler side turns the
// protocol's notifications into push messages for the Sink, and keeps the
// autopush-only state (the uaid, the channels to announce in hello).
type autopush struct {
	sess *session.Session
	sink push.Sink
	d    *Daemon // hello's channels and the uaid (autopush-only state)
	url  string

	mu     sync.Mutex // guards status
	status push.Status
}

var _ push.Backend = (*autopush)(nil)

func newAutopush(d *Daemon, sc session.Config) *autopush {
	a := &autopush{sink: d, d: d, url: sc.URL,
		status: push.Status{Backend: app.BackendAutopush, State: push.StateIdle, Server: sc.URL}}
	sc.Handler = (*autopushHandler)(a)
	if d.st != nil {
		// What this server supported last time: the first hello of this
		// run already states the wanted urgency.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if v, err := d.st.BackendState(ctx, app.BackendAutopush, extensionsKey(sc.URL)); err == nil && v != "" {
			sc.Extensions = strings.Split(v, ",")
		}
		cancel()
	}
	a.sess = session.New(sc)
	return a
}

// extensionsKey is the backend state key of the extensions a server named.
func extensionsKey(url string) string { return "extensions " + url }

func (a *autopush) Name() app.Backend             { return app.BackendAutopush }
func (a *autopush) Run(ctx context.Context) error { return a.sess.Run(ctx) }
func (a *autopush) SetWanted(v bool)              { a.sess.SetWanted(v) }
func (a *autopush) SetOnline(v bool)              { a.sess.SetOnline(v) }
func (a *autopush) Reconnect()                    { a.sess.Reconnect() }
func (a *autopush) Unregister(ctx context.Context, ch push.Channel) error {
	if !a.sess.Connected() {
		// The server's next message for it gets it unregistered.
		return push.ErrNotConnected
	}
	return mapSessionErr(a.sess.Unregister(ctx, ch.ID))
}

func (a *autopush) Register(ctx context.Context, ch push.Channel) (push.Endpoint, error) {
	ep, err := a.sess.Register(ctx, ch.ID, ch.VAPID)
	if err != nil {
		return push.Endpoint{}, mapSessionErr(err)
	}
	return push.Endpoint{URL: ep, Token: lastPathElement(ep)}, nil
}

func (a *autopush) Status() push.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

func mapSessionErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, session.ErrNotConnected):
		return errors.Join(push.ErrNotConnected, err)
	case errors.Is(err, session.ErrRejected):
		return errors.Join(push.ErrRejected, err)
	}
	return err
}

// autopushHandler is the autopush backend seen by its session.
type autopushHandler autopush

func (h *autopushHandler) Hello(ctx context.Context) (string, []string, error) {
	d := h.d
	uaid, err := d.st.UAID(ctx)
	if err != nil {
		return "", nil, err
	}
	var ids []string
	for _, r := range d.regsOf(app.BackendAutopush) {
		if r.Endpoint != "" && !r.Stale {
			ids = append(ids, r.ChannelID)
		}
	}
	return uaid, ids, nil
}

func (h *autopushHandler) Welcome(ctx context.Context, uaid string) error {
	d := h.d
	key := extensionsKey(h.url)
	exts := strings.Join(h.sess.Extensions(), ",")
	if old, err := d.st.BackendState(ctx, app.BackendAutopush, key); err == nil && old != exts {
		if err := d.st.SetBackendState(ctx, app.BackendAutopush, key, exts); err != nil {
			d.log.Warn("cannot save the server's extensions", "err", err)
		}
	}
	changed, err := d.st.SetUAID(ctx, uaid)
	if err != nil {
		return err
	}
	if changed {
		d.log.Info("push server assigned a new device id; registering every app again")
		if err := d.loadRegistrations(ctx); err != nil {
			return err
		}
	}
	var stale []store.Registration
	for _, r := range d.regsOf(app.BackendAutopush) {
		if r.Stale && r.Endpoint != "" {
			stale = append(stale, r)
		}
	}
	if len(stale) > 0 {
		d.goBackground(func(ctx context.Context) { d.reregister(ctx, stale) })
	}
	return nil
}

func (h *autopushHandler) Receive(ctx context.Context, batch []*protocol.Notification, kind session.Kind) []int {
	a := (*autopush)(h)
	codes := make([]int, len(batch))
	now := a.d.now()
	msgs := make([]push.Message, 0, len(batch))
	idx := make([]int, 0, len(batch))
	for i, n := range batch {
		codes[i] = protocol.AckDelivered
		body, err := n.Body()
		if err != nil { // Decode validated it; keep the guard anyway
			codes[i] = protocol.AckDecryptError
			continue
		}
		m := push.Message{ChannelID: n.ChannelID, ServerID: n.Version, Body: body}
		if n.TTL > 0 {
			m.Expires = now.Add(time.Duration(n.TTL) * time.Second)
		}
		msgs = append(msgs, m)
		idx = append(idx, i)
	}
	if len(msgs) == 0 {
		return codes
	}
	res := a.sink.Receive(ctx, push.Batch{Backend: app.BackendAutopush, Messages: msgs,
		Draining: kind != session.Live, Reconnect: kind == session.Reconnect})
	for j, err := range res {
		switch {
		case err == nil:
		case errors.Is(err, push.ErrUnknownChannel):
			a.d.unregisterLater(store.Registration{ChannelID: msgs[j].ChannelID, Backend: app.BackendAutopush})
		default:
			codes[idx[j]] = protocol.AckNotDelivered
		}
	}
	return codes
}

func (h *autopushHandler) StateChanged(st session.State, since time.Time, err error) {
	a := (*autopush)(h)
	a.mu.Lock()
	s := &a.status
	if st == session.StateConnected && s.State != push.StateConnected {
		s.LastError = ""
	}
	s.State, s.Since = push.State(st), since
	if err != nil && st != session.StateConnected {
		s.LastError = err.Error()
	}
	cur := *s
	a.mu.Unlock()
	a.sink.StateChanged(cur)
}
