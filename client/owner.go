package client

import (
	"context"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/push"
	"github.com/heraldpush/herald/client/store"
)

// The daemon's pipeline is owned by one goroutine, the owner loop (run by
// Daemon.Run). It alone touches the owned state below: the registration
// map, the per-app workers, the burst deferral and the retry timers.
// Everything else — D-Bus calls, backends handing in messages, workers
// finishing, timers firing — sends it a function to run (send, or ask to
// wait for the result); nothing holds a lock across the pipeline.
//
// The order of things, for each message:
//
//  1. A backend hands a batch to Daemon.Receive: the messages are stored in
//     the inbox (one FULL transaction, dedup by channel + server id); only
//     then does the backend ack them.
//  2. Receive tells the loop which apps got work (schedule). During a drain
//     (the server flushing stored messages) the loop defers them until
//     burstQuiet passes without a new full batch; else it kicks them now.
//  3. kick starts the app's worker unless it runs (then it runs once more).
//     One worker per app at a time, so an app's messages keep their order;
//     helpers of different apps run in parallel, at most helper_concurrency.
//  4. The worker (pass) moves each message received → processed (helper) →
//     presented (notification) → queued, recording each step in the store
//     before the next, then announces it: Post for Lomiri apps; a UnifiedPush
//     message is given to the connector with its own registration's token
//     (deliverUP); one that is not acknowledged is retried with backoff
//     until its TTL while the ones after it go on.
//  5. The worker reports when it must run again (a delivery to retry); the
//     loop arms that app's retry timer, whose firing is a kick.
//
// At start Run loads the registrations and kicks every app with unfinished
// inbox messages: a restart resumes each message from the step it reached.

// owned is the owner loop's state. Only functions run by the loop touch it.
type owned struct {
	regs     map[string]store.Registration // channel id → registration
	workers  map[string]*worker            // app id → worker state
	deferred map[string]bool               // apps whose kick waits for the end of a burst
	flushing *time.Timer                   // ends the current burst
	burstN   int                           // messages of the current burst (draining batches)
	stopped  bool                          // Run is ending: start no worker
}

type worker struct {
	running bool
	dirty   bool        // more work arrived while running
	timer   *time.Timer // the next retry
}

// preRun runs f at once when the owner loop has not started yet (calls
// before Run, e.g. in tests or from D-Bus before the daemon runs): the
// caller then owns the state, under preMu, until Run starts the loop.
func (d *Daemon) preRun(f func(o *owned)) bool {
	d.preMu.Lock()
	defer d.preMu.Unlock()
	if d.looping {
		return false
	}
	f(&d.o)
	return true
}

// send runs f on the owner loop, without waiting. It is dropped when the
// loop has ended.
func (d *Daemon) send(f func(o *owned)) {
	if d.preRun(f) {
		return
	}
	select {
	case d.inbox <- f:
	case <-d.loopDone:
	}
}

// ask runs f on the owner loop and waits for it (before Run: at once, see
// preRun); after the loop ended ask reports false.
func (d *Daemon) ask(f func(o *owned)) bool {
	if d.preRun(f) {
		return true
	}
	done := make(chan struct{})
	select {
	case d.inbox <- func(o *owned) { f(o); close(done) }:
	case <-d.loopDone:
		return false
	}
	select {
	case <-done:
		return true
	case <-d.loopDone:
		return false
	}
}

// loop is the owner loop; it returns when ctx ends, after stopping every
// timer. Workers still running finish on their own (Run waits for them).
func (d *Daemon) loop(ctx context.Context) {
	defer close(d.loopDone)
	o := &d.o
	for {
		select {
		case f := <-d.inbox:
			f(o)
		case <-ctx.Done():
			o.stopped = true
			if o.flushing != nil {
				o.flushing.Stop()
			}
			for _, w := range o.workers {
				if w.timer != nil {
					w.timer.Stop()
				}
			}
			return
		}
	}
}

// schedule starts the pipeline of apps that got new messages (step 2).
func (d *Daemon) schedule(apps []string, draining, reconnect bool) {
	if len(apps) == 0 && !draining {
		return
	}
	d.send(func(o *owned) {
		if !draining && o.flushing == nil {
			for _, a := range apps {
				d.kickOwned(o, a)
			}
			return
		}
		if o.deferred == nil {
			o.deferred = map[string]bool{}
		}
		for _, a := range apps {
			o.deferred[a] = true
		}
		quiet := burstQuiet
		if draining {
			o.burstN += len(apps)
		}
		if o.burstN >= longBurst || reconnect {
			quiet = drainQuiet
		}
		switch {
		case o.flushing == nil:
			o.flushing = time.AfterFunc(quiet, func() { d.send(d.flushDeferred) })
		case draining:
			// Only further full batches extend a burst, so a steady stream
			// of live messages cannot hold the pipeline back.
			o.flushing.Reset(quiet)
		}
	})
}

// flushDeferred ends a burst: every deferred app is kicked.
func (d *Daemon) flushDeferred(o *owned) {
	apps := o.deferred
	o.deferred = nil
	o.burstN = 0
	if o.flushing != nil {
		o.flushing.Stop()
		o.flushing = nil
	}
	for a := range apps {
		d.kickOwned(o, a)
	}
}

// kick makes sure appID's worker runs (or runs again after its current pass).
func (d *Daemon) kick(appID string) {
	d.send(func(o *owned) { d.kickOwned(o, appID) })
}

func (d *Daemon) kickOwned(o *owned, appID string) {
	if o.stopped {
		return
	}
	w := o.workers[appID]
	if w == nil {
		w = &worker{}
		o.workers[appID] = w
	}
	if w.running {
		w.dirty = true
		return
	}
	w.running = true
	isUP := hasUPReg(o, appID) // here, not by a second call into the loop from the worker
	if !d.goBackground(func(ctx context.Context) {
		retryAt := d.pass(ctx, appID, isUP)
		d.send(func(o *owned) { d.workerDone(o, appID, retryAt) })
	}) {
		w.running = false
	}
}

// workerDone handles the end of a worker's pass (step 5).
func (d *Daemon) workerDone(o *owned, appID string, retryAt time.Time) {
	w := o.workers[appID]
	w.running = false
	if o.stopped {
		return
	}
	if w.dirty {
		w.dirty = false
		d.kickOwned(o, appID)
		return
	}
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	if !retryAt.IsZero() {
		w.timer = time.AfterFunc(max(retryAt.Sub(d.now()), 0), func() { d.kick(appID) })
		return
	}
	delete(o.workers, appID)
}

// The registration map, read and changed through the loop.

func (d *Daemon) loadRegistrations(ctx context.Context) error {
	regs, err := d.st.Registrations(ctx)
	if err != nil {
		return err
	}
	d.ask(func(o *owned) {
		for _, r := range regs {
			o.regs[r.ChannelID] = r
		}
	})
	return nil
}

// updateWanted tells each backend whether a registration uses it: one
// connection per backend that has registrations.
func (d *Daemon) updateWanted() {
	used := map[app.Backend]bool{}
	d.ask(func(o *owned) {
		for _, r := range o.regs {
			used[r.Backend] = true
		}
	})
	for name, b := range d.backends {
		b.SetWanted(used[name])
	}
}

// regsOf returns the registrations on backend b.
func (d *Daemon) regsOf(b app.Backend) []store.Registration {
	var out []store.Registration
	d.ask(func(o *owned) {
		for _, r := range o.regs {
			if r.Backend == b {
				out = append(out, r)
			}
		}
	})
	return out
}

// hasUPReg reports whether appID has a UnifiedPush registration (owner loop).
func hasUPReg(o *owned, appID string) bool {
	for _, r := range o.regs {
		if r.AppID == appID && r.Kind == app.KindUnifiedPush {
			return true
		}
	}
	return false
}

func (d *Daemon) putReg(r store.Registration) {
	d.ask(func(o *owned) { o.regs[r.ChannelID] = r })
	d.updateWanted()
}

func (d *Daemon) dropReg(channelID string) {
	d.ask(func(o *owned) { delete(o.regs, channelID) })
	d.updateWanted()
}

// regsByChannel returns the registration of each message's channel (the
// zero Registration when none), asking the loop once for a whole batch.
func (d *Daemon) regsByChannel(msgs []push.Message) []store.Registration {
	out := make([]store.Registration, len(msgs))
	d.ask(func(o *owned) {
		for i, m := range msgs {
			out[i] = o.regs[m.ChannelID]
		}
	})
	return out
}

func (d *Daemon) regByChannel(channelID string) (store.Registration, bool) {
	var r store.Registration
	var ok bool
	d.ask(func(o *owned) { r, ok = o.regs[channelID] })
	return r, ok
}
