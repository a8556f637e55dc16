// Package client is the core of heraldd: the Daemon runs one connection per
// push service backend that has registrations (package push: autopush in
// package session, lomiri, ntfy), keeps the durable state (package store)
// and owns the message pipeline
//
//	received → processed (helper) → presented (notification) → queued → taken by the app
//
// Each step is recorded in the store before the next one starts, so that a
// restart resumes every inbox message from the step it reached. Messages of
// one app are handled in arrival order by one worker; different apps run in
// parallel (the helper runner bounds how many helpers run at once). One
// goroutine owns the pipeline's state; owner.go says in what order things
// happen.
//
// The Daemon implements dbusapi.Backend and push.Sink.
package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/client/ntfy"
	"github.com/heraldpush/herald/client/push"
	"github.com/heraldpush/herald/client/session"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/protocol"
)

// Output is the result of the helper step.
type Output struct {
	// Message is what is queued for the app (PopAll returns it as a string).
	Message []byte
	// Notification is what the Presenter shows; nil when nothing is to be
	// shown.
	Notification *app.Notification
}

// Processor is the helper step. Process always returns a usable Output; a
// non-nil error says why the helper failed (the raw payload is then queued).
type Processor interface {
	Process(ctx context.Context, appID, msgID string, payload []byte) (Output, error)
}

// HelperStats is one app's helper cost.
type HelperStats struct {
	Runs, Failures, Timeouts uint64
	Total                    time.Duration
}

// StatsSource is implemented by Processors that measure helper runs.
type StatsSource interface {
	HelperStats() map[string]HelperStats
}

// Presenter is the presentation step and the Postal calls that manage what
// is shown.
type Presenter interface {
	Present(ctx context.Context, appID, msgID string, n *app.Notification) error
	ListPersistent(ctx context.Context, appID string) ([]string, error)
	ClearPersistent(ctx context.Context, appID string, tags []string) (uint32, error)
	SetCounter(ctx context.Context, appID string, count int32, visible bool) error
}

// Bus is what the Daemon drives on D-Bus (*dbusapi.Service).
type Bus interface {
	EmitPost(appID string) error
	DeliverUnifiedPush(ctx context.Context, m dbusapi.UPMessage) (acked bool, err error)
	NewEndpoint(ctx context.Context, service, token, endpoint string, version int) error
	Unregistered(ctx context.Context, service, token string, version int) error
	Activatable(ctx context.Context, service string) (bool, error)
	SetStatus(st dbusapi.Status)
}

// Options are the parts a Daemon is wired from.
type Options struct {
	Config    config.Config
	Store     *store.Store
	Processor Processor // nil: messages pass through unchanged
	Presenter Presenter // nil: nothing is shown
	Logger    *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// SessionConfig, when set, tunes the session (tests).
	SessionConfig func(*session.Config)
}

// Daemon is heraldd's core. It is safe for concurrent use.
type Daemon struct {
	cfg  config.Config
	st   *store.Store
	proc Processor
	pres Presenter
	log  *slog.Logger
	now  func() time.Time
	// backends are the push services, by name; set before Run (New and
	// AddBackend), read-only after.
	backends map[app.Backend]push.Backend
	group    singleflight.Group

	// The owner loop (owner.go): inbox carries functions to run on it,
	// loopDone is closed when it ended, o is its state.
	inbox    chan func(*owned)
	loopDone chan struct{}
	o        owned
	preMu    sync.Mutex // guards looping; o before the loop starts (preRun)
	looping  bool       // the owner loop has started

	wg     sync.WaitGroup  // workers and background tasks
	runMu  sync.Mutex      // guards ctx and active, and orders wg.Go against Wait
	ctx    context.Context // the Run context; workers derive from it
	active bool            // Run is running and accepting work

	busMu sync.Mutex // guards bus
	bus   Bus

	connMu sync.Mutex                  // guards conns
	conns  map[app.Backend]push.Status // each backend's last reported status

	markMu sync.Mutex       // guards marks
	marks  map[string]int64 // app id → pipelineMark
}

// New builds a Daemon; Run starts it.
func New(o Options) *Daemon {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Processor == nil {
		o.Processor = passThrough{}
	}
	d := &Daemon{
		cfg: o.Config, st: o.Store, proc: o.Processor, pres: o.Presenter, log: o.Logger, now: o.Now,
		inbox:    make(chan func(*owned)),
		loopDone: make(chan struct{}),
		o:        owned{regs: map[string]store.Registration{}, workers: map[string]*worker{}},
		backends: map[app.Backend]push.Backend{},
		conns:    map[app.Backend]push.Status{},
		marks:    map[string]int64{},
	}
	if o.Config.Server != "" {
		sc := session.Config{
			URL:            o.Config.Server,
			Logger:         o.Logger.With("part", "session"),
			PingInterval:   o.Config.PingInterval.Duration,
			PingGrace:      o.Config.PingGrace.Duration,
			RequestTimeout: o.Config.RequestTimeout.Duration,
			Compression:    o.Config.Compression,
			CheckTimeout:   o.Config.Urgency.ResumeCheckTimeout.Duration,
			Backoff:        session.Backoff{Min: o.Config.ReconnectMin.Duration, Max: o.Config.ReconnectMax.Duration, Stable: time.Minute},
		}
		if sc.Backoff.Min <= 0 || sc.Backoff.Max <= 0 {
			sc.Backoff = session.DefaultBackoff
		}
		if o.SessionConfig != nil {
			o.SessionConfig(&sc)
		}
		d.AddBackend(newAutopush(d, sc))
	}
	// The ntfy backend runs when UnifiedPush apps register there, or when
	// registrations from before a switch still live there.
	if n := o.Config.Ntfy; n.URL != "" && (o.Config.UnifiedPush.Backend == app.BackendNtfy || d.hasRegsOn(app.BackendNtfy)) {
		nc := ntfy.Config{URL: n.URL, User: n.User, Password: n.Password, Token: n.Token, Logger: o.Logger.With("part", "ntfy"),
			KeepaliveTimeout: n.Keepalive.Duration + 15*time.Second,
			Backoff:          ntfy.Backoff{Min: o.Config.ReconnectMin.Duration, Max: o.Config.ReconnectMax.Duration, Stable: time.Minute}}
		if nc.Backoff.Min <= 0 || nc.Backoff.Max <= 0 {
			nc.Backoff = ntfy.DefaultBackoff
		}
		if nb, err := ntfy.NewBackend(nc, d); err != nil {
			d.log.Error("ntfy backend cannot start", "err", err)
		} else {
			d.AddBackend(nb)
		}
	}
	if o.Config.Lomiri.Use {
		if lb, err := newLomiriBackend(d, o.Config.Lomiri); err != nil {
			d.log.Error("lomiri backend cannot start", "err", err)
		} else {
			d.AddBackend(lb)
		}
	}
	return d
}

// hasRegsOn reports whether a stored registration lives on backend b.
func (d *Daemon) hasRegsOn(b app.Backend) bool {
	if d.st == nil {
		return false
	}
	regs, err := d.st.Registrations(context.Background())
	if err != nil {
		d.log.Warn("cannot read registrations", "err", err)
		return false
	}
	return slices.ContainsFunc(regs, func(r store.Registration) bool { return r.Backend == b })
}

// AddBackend adds a push service (one per name; a second one with the same
// name replaces the first). Call it before Run; b's Sink is the Daemon.
func (d *Daemon) AddBackend(b push.Backend) {
	d.backends[b.Name()] = b
	d.connMu.Lock()
	d.conns[b.Name()] = b.Status()
	d.connMu.Unlock()
}

// SetBus attaches the D-Bus service (built after the Daemon, as it needs the
// Daemon as its Backend). Call it before Run.
func (d *Daemon) SetBus(b Bus) {
	d.busMu.Lock()
	d.bus = b
	d.busMu.Unlock()
	b.SetStatus(d.Status(context.Background()))
}

func (d *Daemon) getBus() Bus {
	d.busMu.Lock()
	defer d.busMu.Unlock()
	return d.bus
}

// SetOnline tells every backend whether the network is up.
func (d *Daemon) SetOnline(v bool) {
	for _, b := range d.backends {
		b.SetOnline(v)
	}
}

// Run loads the registrations, resumes every unfinished inbox message and
// keeps the connection to the push server until ctx ends. It returns after
// every worker stopped; the store stays open (the caller closes it).
func (d *Daemon) Run(ctx context.Context) error {
	loopCtx, stopLoop := context.WithCancel(ctx)
	var loop sync.WaitGroup
	d.preMu.Lock()
	d.looping = true
	d.preMu.Unlock()
	loop.Go(func() { d.loop(loopCtx) })
	defer loop.Wait()
	defer stopLoop()
	if err := d.loadRegistrations(ctx); err != nil {
		return err
	}
	if err := d.st.PruneSeen(ctx, d.now().Add(-protocol.MaxTTL-24*time.Hour)); err != nil {
		d.log.Warn("cannot prune seen ids", "err", err)
	}
	if n, err := d.st.SweepExpired(ctx, d.now()); err != nil {
		d.log.Warn("cannot sweep expired messages", "err", err)
	} else if n > 0 {
		d.log.Info("expired messages dropped", "count", n)
	}
	d.runMu.Lock()
	d.ctx = ctx
	d.active = true
	d.runMu.Unlock()
	d.dropUnreachable(ctx)
	if err := d.resume(ctx); err != nil {
		d.stop()
		return err
	}
	d.updateWanted()
	var g errgroup.Group
	for _, b := range d.backends {
		g.Go(func() error {
			if err := b.Run(ctx); err != nil && ctx.Err() == nil {
				return fmt.Errorf("%s backend: %w", b.Name(), err)
			}
			return nil
		})
	}
	if len(d.backends) == 0 {
		d.publishStatus()
	}
	<-ctx.Done()
	err := g.Wait()
	d.stop()
	return err
}

// stop stops taking work and waits for the workers (the owner loop stops
// its timers when ctx ends).
func (d *Daemon) stop() {
	d.runMu.Lock()
	d.active = false
	d.runMu.Unlock()
	d.wg.Wait()
}

// goBackground runs f in a goroutine owned by the Daemon, unless it stopped.
func (d *Daemon) goBackground(f func(ctx context.Context)) bool {
	d.runMu.Lock()
	defer d.runMu.Unlock()
	if !d.active {
		return false
	}
	ctx := d.ctx
	d.wg.Go(func() { f(ctx) })
	return true
}

// dropUnreachable forgets UnifiedPush registrations whose connector service
// can no longer be activated (the app was removed).
func (d *Daemon) dropUnreachable(ctx context.Context) {
	bus := d.getBus()
	if bus == nil {
		return
	}
	var ups []store.Registration
	d.ask(func(o *owned) {
		for _, r := range o.regs {
			if r.Kind == app.KindUnifiedPush {
				ups = append(ups, r)
			}
		}
	})
	for _, r := range ups {
		ok, err := bus.Activatable(ctx, r.Service)
		if err != nil {
			d.log.Warn("cannot check unifiedpush connector", "service", r.Service, "err", err)
			continue
		}
		if ok {
			if err := d.st.SetUnreachable(ctx, r.ChannelID, time.Time{}); err != nil {
				d.log.Warn("cannot record unifiedpush connector", "service", r.Service, "err", err)
			}
			continue
		}
		// Not activatable now (an update in progress, a service file not
		// yet installed, a broken bus): the registration and its queue are
		// kept until the connector stays gone for UnifiedPushForgetAfter,
		// counted from the first start that missed it. Queued messages
		// expire on their own meanwhile.
		since, err := d.st.Unreachable(ctx, r.ChannelID)
		if err != nil {
			d.log.Warn("cannot read unifiedpush connector state", "service", r.Service, "err", err)
			continue
		}
		if since.IsZero() {
			if err := d.st.SetUnreachable(ctx, r.ChannelID, d.now()); err != nil {
				d.log.Warn("cannot record unifiedpush connector", "service", r.Service, "err", err)
			}
			d.log.Warn("unifiedpush connector not activatable; keeping its registration and queue", "app_id", r.AppID, "service", r.Service, "forget_after", d.cfg.UnifiedPushForgetAfter.Duration)
			continue
		}
		if d.now().Sub(since) < d.cfg.UnifiedPushForgetAfter.Duration {
			d.log.Warn("unifiedpush connector still not activatable; keeping its registration and queue", "app_id", r.AppID, "service", r.Service, "since", since)
			continue
		}
		d.log.Info("dropping registration of removed unifiedpush app", "app_id", r.AppID, "service", r.Service, "gone_since", since)
		if err := d.st.DeleteRegistration(ctx, r.ChannelID); err != nil {
			d.log.Error("cannot drop registration", "app_id", r.AppID, "err", err)
			continue
		}
		_ = d.st.SetUnreachable(ctx, r.ChannelID, time.Time{})
		d.dropReg(r.ChannelID)
		d.unregisterLater(r)
		d.tellUnregistered(r, false)
	}
}

// resume restarts the pipeline of every app with unfinished messages.
// Messages already queued for Lomiri apps are not announced again: Post
// means "a message was queued", and apps read their queue when they start.
func (d *Daemon) resume(ctx context.Context) error {
	apps, err := d.st.AppsWithWork(ctx)
	if err != nil {
		return err
	}
	for app := range apps {
		d.kick(app)
	}
	return nil
}

// newMsgID returns a message id: 32 hex digits, the first 16 the time in
// nanoseconds, the other 16 random. A later message's id sorts later, so the
// inbox's msg_id index grows at its end: a received batch rewrites one page
// of it instead of one random page per message (with random ids that index
// was a quarter of the pages a 10,000-message drain wrote).
func newMsgID() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixNano()))
	_, _ = rand.Read(b[8:])
	return hex.EncodeToString(b[:])
}

// lastPathElement returns the last path element of an endpoint URL: the
// token of a Lomiri app registered on an autopush server.
func lastPathElement(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Path != "" {
		endpoint = u.Path
	}
	return endpoint[strings.LastIndexByte(endpoint, '/')+1:]
}

// token is the token a Lomiri app gets for r: the Lomiri backend stores its
// token as the endpoint; an URL endpoint's token is its last path element.
func token(r store.Registration) string {
	if r.Backend == app.BackendLomiri {
		return r.Endpoint
	}
	return lastPathElement(r.Endpoint)
}

// Status is the daemon's connection state for org.herald.Daemon1: the
// autopush backend's (or, without one, the first connected or the first
// backend's) State, Server, LastError and ConnectedSince, and every
// backend's connection.
func (d *Daemon) Status(ctx context.Context) dbusapi.Status {
	d.connMu.Lock()
	conns := make([]push.Status, 0, len(d.conns))
	for _, c := range d.conns {
		conns = append(conns, c)
	}
	d.connMu.Unlock()
	slices.SortFunc(conns, func(a, b push.Status) int { return strings.Compare(string(a.Backend), string(b.Backend)) })
	st := dbusapi.Status{State: string(push.StateIdle), LastError: "no push server configured"}
	var main *push.Status
	for i := range conns {
		c := &conns[i]
		if c.Backend == app.BackendAutopush || main == nil || (main.Backend != app.BackendAutopush && c.State == push.StateConnected && main.State != push.StateConnected) {
			main = c
		}
		conn := dbusapi.Connection{Backend: string(c.Backend), State: string(c.State), Server: c.Server, LastError: c.LastError}
		if c.State == push.StateConnected {
			conn.ConnectedSince = c.Since
		}
		st.Connections = append(st.Connections, conn)
	}
	if main != nil {
		st.State, st.Server, st.LastError = string(main.State), main.Server, main.LastError
		if main.State == push.StateConnected {
			st.ConnectedSince = main.Since
		}
	}
	return st
}

// publishStatus sends the current Status to the bus (PropertiesChanged).
func (d *Daemon) publishStatus() {
	if bus := d.getBus(); bus != nil {
		bus.SetStatus(d.Status(context.Background()))
	}
}

func (d *Daemon) incr(name app.Counter) {
	if err := d.st.Incr(context.Background(), name, 1); err != nil {
		d.log.Warn("cannot count", "counter", name, "err", err)
	}
}

// The Daemon is every backend's Sink.
var _ push.Sink = (*Daemon)(nil)

// StateChanged records a backend's status (push.Sink).
func (d *Daemon) StateChanged(st push.Status) {
	d.connMu.Lock()
	old := d.conns[st.Backend]
	d.conns[st.Backend] = st
	d.connMu.Unlock()
	if st.State == push.StateConnected && old.State != push.StateConnected {
		d.incr(app.CounterConnections)
	}
	d.publishStatus()
}

// LoadState returns a backend's saved value (push.Sink).
func (d *Daemon) LoadState(ctx context.Context, b app.Backend, key string) (string, error) {
	return d.st.BackendState(ctx, b, key)
}

// SaveState durably saves a backend's value (push.Sink).
func (d *Daemon) SaveState(ctx context.Context, b app.Backend, key, value string) error {
	return d.st.SetBackendState(ctx, b, key, value)
}

// Receive stores a backend's batch in the inbox in one transaction and
// starts the pipeline of the apps it is for (push.Sink). A message whose
// channel has no registration on that backend gets push.ErrUnknownChannel.
func (d *Daemon) Receive(ctx context.Context, b push.Batch) []error {
	res := make([]error, len(b.Messages))
	now := d.now()
	var in []store.Incoming
	var idx []int
	regs := d.regsByChannel(b.Messages)
	for i, m := range b.Messages {
		r, ok := regs[i], regs[i].ChannelID != ""
		if !ok || r.Backend != b.Backend {
			d.log.Info("message for an unknown channel dropped", "backend", b.Backend, "channel_id", m.ChannelID)
			res[i] = push.ErrUnknownChannel
			continue
		}
		in = append(in, store.Incoming{MsgID: newMsgID(), AppID: r.AppID, ChannelID: m.ChannelID, Version: m.ServerID,
			Body: m.Body, Received: now, Expires: m.Expires})
		idx = append(idx, i)
	}
	if len(in) == 0 {
		return res
	}
	dup, err := d.st.Receive(ctx, in)
	if err != nil {
		d.log.Error("cannot store received messages", "backend", b.Backend, "count", len(in), "err", err)
		for _, i := range idx {
			res[i] = fmt.Errorf("%w: %w", push.ErrNotStored, err)
		}
		return res
	}
	var apps []string
	for j, m := range in {
		if dup[j] {
			d.log.Debug("duplicate message acked again", "channel_id", m.ChannelID)
			continue
		}
		apps = append(apps, m.AppID)
	}
	// A draining server's batch is taken in (and acked) first, the pipeline
	// runs when the burst ends. Other batches are live messages, a few of
	// which may be read together under load: processed now (during a burst
	// they join it without extending it).
	d.schedule(apps, b.Draining, b.Reconnect)
	return res
}

// reregister registers channels the server forgot and tells apps their new
// endpoints.
func (d *Daemon) reregister(ctx context.Context, regs []store.Registration) {
	for _, r := range regs {
		ep, err := d.registerChannel(ctx, r)
		if err != nil {
			d.log.Warn("cannot register again", "app_id", r.AppID, "backend", r.Backend, "err", err)
			continue
		}
		if r.Endpoint == "" || r.Endpoint == ep {
			continue
		}
		d.incr(app.CounterEndpointChanges)
		d.log.Info("endpoint changed", "app_id", r.AppID, "kind", r.Kind, "backend", r.Backend)
		if r.Kind == app.KindUnifiedPush {
			if bus := d.getBus(); bus != nil {
				if err := bus.NewEndpoint(ctx, r.Service, r.UPToken, ep, r.UPVersion); err != nil {
					d.log.Warn("cannot tell app its new endpoint", "app_id", r.AppID, "err", err)
				}
			}
		}
	}
}

// unregisterLater tells r's backend to drop its channel, in the background.
// A backend that is not connected is not waited for: its server's next
// message for the channel gets it unregistered.
func (d *Daemon) unregisterLater(r store.Registration) {
	b, ok := d.backends[r.Backend]
	if !ok || b.Status().State != push.StateConnected {
		return
	}
	d.goBackground(func(ctx context.Context) {
		if err := b.Unregister(ctx, channelOf(r)); err != nil {
			d.log.Debug("cannot unregister channel", "backend", r.Backend, "channel_id", r.ChannelID, "err", err)
		}
	})
}

func channelOf(r store.Registration) push.Channel {
	return push.Channel{ID: r.ChannelID, AppID: r.AppID, Kind: r.Kind, VAPID: r.VAPID}
}

// errUnavailable is returned when the backend a registration needs is not
// running in this daemon.
var errUnavailable = errors.New("push service not available")

// backendFor returns the backend that new registrations of kind use: for
// Lomiri apps the Lomiri push service when [lomiri] is on, else the
// autopush server; for UnifiedPush apps [unifiedpush] backend.
func (d *Daemon) backendFor(kind app.Kind) (push.Backend, error) {
	name := d.cfg.LomiriBackend()
	if kind == app.KindUnifiedPush {
		name = d.cfg.UnifiedPush.Backend
		if name == "" {
			name = app.BackendAutopush
		}
	}
	b, ok := d.backends[name]
	if !ok {
		if name == app.BackendAutopush {
			return nil, errNoServer
		}
		return nil, fmt.Errorf("%w: the %s backend is not available in this build of heraldd", errUnavailable, name)
	}
	return b, nil
}

// errNoServer is returned when a registration needs a server and none is configured.
var errNoServer = fmt.Errorf("%w: no push server configured (set server in config.toml)", dbusapi.ErrOffline)

func wrapBackend(err error) error {
	if errors.Is(err, push.ErrNotConnected) {
		return fmt.Errorf("%w: %w", dbusapi.ErrOffline, err)
	}
	return err
}

// passThrough is the Processor when no helper runner is wired.
type passThrough struct{}

func (passThrough) Process(ctx context.Context, appID, msgID string, payload []byte) (Output, error) {
	return Output{Message: payload}, nil
}
