// Package client is the core of heraldd: the Daemon owns the connection to
// the push server (package session), the durable state (package store) and
// the message pipeline
//
//	received → processed (helper) → presented (notification) → queued → delivered
//
// Each step is recorded in the store before the next one starts, so that a
// restart resumes every inbox message from the step it reached. Messages of
// one app are handled in arrival order by one worker; different apps run in
// parallel, at most Config.HelperConcurrency helpers at once.
//
// The Daemon implements dbusapi.Backend.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
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
	cfg   config.Config
	st    *store.Store
	proc  Processor
	pres  Presenter
	log   *slog.Logger
	now   func() time.Time
	sess  *session.Session // nil when no server is configured
	sem   chan struct{}    // bounds concurrent helper runs
	group singleflight.Group

	// ctx is the Run context, set before workers start; workers derive from it.
	ctx    context.Context
	wg     sync.WaitGroup // workers and background tasks
	runMu  sync.Mutex     // guards started, stopping, and orders wg.Add against Wait
	active bool           // Run is running and accepting work

	busMu sync.Mutex // guards bus
	bus   Bus

	regMu sync.Mutex                    // guards regs
	regs  map[string]store.Registration // channel id → registration

	workMu   sync.Mutex         // guards workers, deferred, flushing
	workers  map[string]*worker // app id → worker state
	deferred map[string]bool    // apps whose kick waits for the end of a burst
	flushing *time.Timer        // flushes deferred at the end of a burst

	statusMu sync.Mutex // guards status
	status   dbusapi.Status
}

type worker struct {
	running bool
	dirty   bool // more work arrived while running
	timer   *time.Timer
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
	conc := o.Config.HelperConcurrency
	if conc < 1 {
		conc = 1
	}
	d := &Daemon{
		cfg: o.Config, st: o.Store, proc: o.Processor, pres: o.Presenter, log: o.Logger, now: o.Now,
		sem:     make(chan struct{}, conc),
		regs:    map[string]store.Registration{},
		workers: map[string]*worker{},
		status:  dbusapi.Status{State: string(session.StateIdle), Server: o.Config.Server},
	}
	if o.Config.Server != "" {
		sc := session.Config{
			URL:            o.Config.Server,
			Handler:        (*handler)(d),
			Logger:         o.Logger.With("part", "session"),
			PingInterval:   o.Config.PingInterval.Duration,
			PingGrace:      o.Config.PingGrace.Duration,
			RequestTimeout: o.Config.RequestTimeout.Duration,
			Compression:    o.Config.Compression,
			Backoff:        session.Backoff{Min: o.Config.ReconnectMin.Duration, Max: o.Config.ReconnectMax.Duration, Stable: time.Minute},
		}
		if sc.Backoff.Min <= 0 || sc.Backoff.Max <= 0 {
			sc.Backoff = session.DefaultBackoff
		}
		if o.SessionConfig != nil {
			o.SessionConfig(&sc)
		}
		d.sess = session.New(sc)
	}
	return d
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

// SetOnline tells the session whether the network is up.
func (d *Daemon) SetOnline(v bool) {
	if d.sess != nil {
		d.sess.SetOnline(v)
	}
}

// Run loads the registrations, resumes every unfinished inbox message and
// keeps the connection to the push server until ctx ends. It returns after
// every worker stopped; the store stays open (the caller closes it).
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.loadRegistrations(ctx); err != nil {
		return err
	}
	if err := d.st.PruneSeen(ctx, d.now().Add(-protocol.MaxTTL-24*time.Hour)); err != nil {
		d.log.Warn("cannot prune seen ids", "err", err)
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
	if d.sess != nil {
		d.sess.SetWanted(d.registered())
		err := d.sess.Run(ctx)
		d.stop()
		return err
	}
	d.setStatus(func(s *dbusapi.Status) {
		s.State = string(session.StateIdle)
		s.LastError = "no push server configured"
	})
	<-ctx.Done()
	d.stop()
	return nil
}

// stop stops taking work and waits for the workers.
func (d *Daemon) stop() {
	d.runMu.Lock()
	d.active = false
	d.runMu.Unlock()
	d.workMu.Lock()
	for _, w := range d.workers {
		if w.timer != nil {
			w.timer.Stop()
		}
	}
	d.workMu.Unlock()
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

func (d *Daemon) loadRegistrations(ctx context.Context) error {
	regs, err := d.st.Registrations(ctx)
	if err != nil {
		return err
	}
	d.regMu.Lock()
	defer d.regMu.Unlock()
	for _, r := range regs {
		d.regs[r.ChannelID] = r
	}
	return nil
}

func (d *Daemon) registered() bool {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	return len(d.regs) > 0
}

func (d *Daemon) putReg(r store.Registration) {
	d.regMu.Lock()
	d.regs[r.ChannelID] = r
	n := len(d.regs)
	d.regMu.Unlock()
	if d.sess != nil {
		d.sess.SetWanted(n > 0)
	}
}

func (d *Daemon) dropReg(channelID string) {
	d.regMu.Lock()
	delete(d.regs, channelID)
	n := len(d.regs)
	d.regMu.Unlock()
	if d.sess != nil {
		d.sess.SetWanted(n > 0)
	}
}

func (d *Daemon) regByChannel(channelID string) (store.Registration, bool) {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	r, ok := d.regs[channelID]
	return r, ok
}

// upRegOfApp returns the UnifiedPush registration of appID, if it has one.
func (d *Daemon) upRegOfApp(appID string) (store.Registration, bool) {
	d.regMu.Lock()
	defer d.regMu.Unlock()
	for _, r := range d.regs {
		if r.AppID == appID && r.Kind == app.KindUnifiedPush {
			return r, true
		}
	}
	return store.Registration{}, false
}

// dropUnreachable forgets UnifiedPush registrations whose connector service
// can no longer be activated (the app was removed).
func (d *Daemon) dropUnreachable(ctx context.Context) {
	bus := d.getBus()
	if bus == nil {
		return
	}
	d.regMu.Lock()
	var ups []store.Registration
	for _, r := range d.regs {
		if r.Kind == app.KindUnifiedPush {
			ups = append(ups, r)
		}
	}
	d.regMu.Unlock()
	for _, r := range ups {
		ok, err := bus.Activatable(ctx, r.Service)
		if err != nil {
			d.log.Warn("cannot check unifiedpush connector", "service", r.Service, "err", err)
			continue
		}
		if ok {
			continue
		}
		d.log.Info("dropping registration of removed unifiedpush app", "app_id", r.AppID, "service", r.Service)
		if err := d.st.DeleteRegistration(ctx, r.ChannelID); err != nil {
			d.log.Error("cannot drop registration", "app_id", r.AppID, "err", err)
			continue
		}
		d.dropReg(r.ChannelID)
		d.unregisterLater(r.ChannelID)
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

func newMsgID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// token returns the last path element of an endpoint URL.
func token(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Path != "" {
		endpoint = u.Path
	}
	return endpoint[strings.LastIndexByte(endpoint, '/')+1:]
}

func (d *Daemon) setStatus(f func(*dbusapi.Status)) {
	d.statusMu.Lock()
	f(&d.status)
	st := d.status
	d.statusMu.Unlock()
	if bus := d.getBus(); bus != nil {
		bus.SetStatus(st)
	}
}

func (d *Daemon) incr(name app.Counter) {
	if err := d.st.Incr(context.Background(), name, 1); err != nil {
		d.log.Warn("cannot count", "counter", name, "err", err)
	}
}

// handler is the Daemon seen by its session.
type handler Daemon

func (h *handler) Hello(ctx context.Context) (string, []string, error) {
	d := (*Daemon)(h)
	uaid, err := d.st.UAID(ctx)
	if err != nil {
		return "", nil, err
	}
	d.regMu.Lock()
	var ids []string
	for id, r := range d.regs {
		if r.Endpoint != "" && !r.Stale {
			ids = append(ids, id)
		}
	}
	d.regMu.Unlock()
	return uaid, ids, nil
}

func (h *handler) Welcome(ctx context.Context, uaid string) error {
	d := (*Daemon)(h)
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
	d.regMu.Lock()
	for _, r := range d.regs {
		if r.Stale && r.Endpoint != "" {
			stale = append(stale, r)
		}
	}
	d.regMu.Unlock()
	if len(stale) > 0 {
		d.goBackground(func(ctx context.Context) { d.reregister(ctx, stale) })
	}
	return nil
}

// reregister registers channels the server forgot and tells apps their new
// endpoints.
func (d *Daemon) reregister(ctx context.Context, regs []store.Registration) {
	for _, r := range regs {
		ep, err := d.sess.Register(ctx, r.ChannelID, r.VAPID)
		if err != nil {
			d.log.Warn("cannot register again", "app_id", r.AppID, "err", err)
			continue
		}
		if err := d.st.SetEndpoint(ctx, r.ChannelID, ep); err != nil {
			d.log.Warn("cannot store new endpoint", "app_id", r.AppID, "err", err)
			continue
		}
		changed := r.Endpoint != "" && r.Endpoint != ep
		r.Endpoint, r.Stale = ep, false
		d.putReg(r)
		if !changed {
			continue
		}
		d.incr(app.CounterEndpointChanges)
		d.log.Info("endpoint changed", "app_id", r.AppID, "kind", r.Kind)
		if r.Kind == app.KindUnifiedPush {
			if bus := d.getBus(); bus != nil {
				if err := bus.NewEndpoint(ctx, r.Service, r.UPToken, ep, r.UPVersion); err != nil {
					d.log.Warn("cannot tell app its new endpoint", "app_id", r.AppID, "err", err)
				}
			}
		}
	}
}

// unregisterLater tells the server to drop a channel, in the background.
func (d *Daemon) unregisterLater(channelID string) {
	if d.sess == nil || !d.sess.Connected() {
		return // the server's next notification for it gets it unregistered
	}
	d.goBackground(func(ctx context.Context) {
		if err := d.sess.Unregister(ctx, channelID); err != nil {
			d.log.Debug("cannot unregister channel", "channel_id", channelID, "err", err)
		}
	})
}

func (h *handler) Receive(ctx context.Context, batch []*protocol.Notification) []int {
	d := (*Daemon)(h)
	codes := make([]int, len(batch))
	now := d.now()
	var in []store.Incoming
	var idx []int
	for i, n := range batch {
		codes[i] = protocol.AckDelivered
		r, ok := d.regByChannel(n.ChannelID)
		if !ok {
			d.log.Info("message for an unknown channel dropped", "channel_id", n.ChannelID)
			d.unregisterLater(n.ChannelID)
			continue
		}
		body, err := n.Body()
		if err != nil { // Decode validated it; keep the guard anyway
			codes[i] = protocol.AckDecryptError
			continue
		}
		m := store.Incoming{MsgID: newMsgID(), AppID: r.AppID, ChannelID: n.ChannelID, Version: n.Version, Body: body, Received: now}
		if n.TTL > 0 {
			m.Expires = now.Add(time.Duration(n.TTL) * time.Second)
		}
		in = append(in, m)
		idx = append(idx, i)
	}
	if len(in) == 0 {
		return codes
	}
	dup, err := d.st.Receive(ctx, in)
	if err != nil {
		d.log.Error("cannot store received messages", "count", len(in), "err", err)
		for _, i := range idx {
			codes[i] = protocol.AckNotDelivered
		}
		return codes
	}
	var apps []string
	for j, m := range in {
		if dup[j] {
			d.log.Debug("duplicate message acked again", "channel_id", m.ChannelID)
			continue
		}
		apps = append(apps, m.AppID)
	}
	// A full batch is the server flushing stored messages (it sends them
	// protocol.BatchSize at a time): taking them in (and acking) goes first,
	// the pipeline runs when the burst ends. Smaller batches are live
	// messages, a few of which may be read together under load: process
	// them now (during a burst they join it without extending it).
	if !d.deferKicks(apps, len(batch) >= protocol.BatchSize) {
		for _, app := range apps {
			d.kick(app)
		}
	}
	return codes
}

func (h *handler) StateChanged(st session.State, since time.Time, err error) {
	d := (*Daemon)(h)
	d.setStatus(func(s *dbusapi.Status) {
		if st == session.StateConnected && s.State != string(session.StateConnected) {
			s.ConnectedSince = since
		} else if st != session.StateConnected {
			s.ConnectedSince = time.Time{}
		}
		if st == session.StateConnected && s.State != string(session.StateConnected) {
			s.LastError = ""
		}
		s.State = string(st)
		if err != nil && st != session.StateConnected {
			s.LastError = err.Error()
		}
	})
	if st == session.StateConnected {
		d.incr(app.CounterConnections)
	}
}

// errNoServer is returned when a registration needs a server and none is configured.
var errNoServer = fmt.Errorf("%w: no push server configured (set server in config.toml)", dbusapi.ErrOffline)

func wrapSession(err error) error {
	if errors.Is(err, session.ErrNotConnected) {
		return fmt.Errorf("%w: %w", dbusapi.ErrOffline, err)
	}
	return err
}

// passThrough is the Processor when no helper runner is wired.
type passThrough struct{}

func (passThrough) Process(ctx context.Context, appID, msgID string, payload []byte) (Output, error) {
	return Output{Message: payload}, nil
}
