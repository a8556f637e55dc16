package client

import (
	"context"
	"errors"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
)

// pendingBatch is how many inbox rows a worker reads at once.
const pendingBatch = 64

// Redelivery backoff of unacked UnifiedPush messages.
const (
	redeliverMin = 2 * time.Second
	redeliverMax = 10 * time.Minute
)

// burstQuiet is how long after the last batch of a burst of stored
// messages the pipeline starts on them.
const burstQuiet = 20 * time.Millisecond

// A reconnect drain (every batch the server sends right after the hello,
// push.Batch.Reconnect, however small: the first ones often come one by
// one) and any burst past longBurst messages wait drainQuiet instead: their
// batches come with gaps that, on a loaded machine, exceed tens of
// milliseconds, and a pipeline started in such a gap competes with the
// drain for the CPU and the store (perf of a 10,000-message drain: the
// pipeline took 22 % of heraldd, taking in and acking 8 %). A short burst —
// live messages read together because heraldd fell behind — keeps
// burstQuiet, so it does not hold their latency.
const (
	longBurst  = 500
	drainQuiet = 250 * time.Millisecond
)

// pass handles what appID's inbox holds now; isUP says the app has a
// UnifiedPush registration. It returns when a queued UnifiedPush message
// must be delivered again later.
func (d *Daemon) pass(ctx context.Context, appID string, isUP bool) (retryAt time.Time) {
	dropped := false
	// Every message of the app up to mark is queued or gone: the inbox is
	// read after it, not through the queued messages the app has not
	// taken yet (up to the inbox cap). mark advances over the messages that
	// reach the queue in order; one that stays behind holds it.
	after := d.pipelineMark(appID)
	mark, held := after, false
	defer func() { d.setPipelineMark(appID, mark) }()
	for ctx.Err() == nil {
		msgs, err := d.st.PendingAfter(ctx, appID, after, pendingBatch)
		if err != nil {
			d.log.Error("cannot read inbox", "app_id", appID, "err", err)
			return d.now().Add(redeliverMin)
		}
		dr, failed := d.processBatch(ctx, msgs, isUP)
		dropped = dropped || dr
		if failed {
			return d.now().Add(redeliverMin)
		}
		for i := range msgs {
			if ctx.Err() != nil {
				return time.Time{}
			}
			done := msgs[i].Step == "" // dropped by processBatch
			if !done {
				dr := d.advance(ctx, &msgs[i], isUP)
				dropped = dropped || dr
				done = dr || msgs[i].Step == app.StepQueued
			}
			if !done {
				held = true
			}
			if !held {
				mark = msgs[i].Seq
			}
		}
		if len(msgs) < pendingBatch {
			break
		}
		after = msgs[len(msgs)-1].Seq
	}
	if isUP {
		return d.deliverUP(ctx, appID)
	}
	if dropped {
		// Queued messages may have waited behind the dropped one.
		if bus := d.getBus(); bus != nil {
			if err := bus.EmitPost(appID); err != nil {
				d.log.Warn("cannot emit Post", "app_id", appID, "err", err)
			}
		}
	}
	return time.Time{}
}

// pipelineMark returns the seq up to which every message of appID is known
// to be queued or gone (0: none known). Only the app's worker (one at a
// time) reads and sets it; seqs only grow and steps only advance, so what
// is queued stays behind the mark.
func (d *Daemon) pipelineMark(appID string) int64 {
	d.markMu.Lock()
	defer d.markMu.Unlock()
	return d.marks[appID]
}

func (d *Daemon) setPipelineMark(appID string, seq int64) {
	d.markMu.Lock()
	defer d.markMu.Unlock()
	if seq > d.marks[appID] {
		d.marks[appID] = seq
	}
}

// processBatch runs the helper step of every received message of msgs and
// records the outputs in one transaction (a crash before the commit runs
// those helpers again). Processed messages get their new step; expired ones
// are dropped (reported) and get Step "". failed reports that the outputs
// could not be recorded (the pass is retried later).
func (d *Daemon) processBatch(ctx context.Context, msgs []store.Message, isUP bool) (dropped, failed bool) {
	var outs []store.Output
	var idx []int
	now := d.now()
	for i := range msgs {
		m := &msgs[i]
		if m.Step != app.StepReceived {
			continue
		}
		if d.dropIfExpired(ctx, m, now) {
			m.Step = ""
			dropped = true
			continue
		}
		out := Output{Message: m.Body} // UnifiedPush: raw, byte for byte
		if !isUP {
			var err error
			out, err = d.process(ctx, m)
			if ctx.Err() != nil {
				break // shutting down: what ran is recorded below
			}
			if err != nil {
				d.log.Warn("helper failed; queueing the raw payload", "app_id", m.AppID, "msg_id", m.MsgID, "err", err)
			}
		}
		outs = append(outs, store.Output{Seq: m.Seq, Message: out.Message, Notification: out.Notification})
		idx = append(idx, i)
	}
	if len(outs) == 0 {
		return dropped, false
	}
	if err := d.st.ProcessedBatch(context.WithoutCancel(ctx), outs); err != nil {
		d.log.Error("cannot record helper output", "count", len(outs), "err", err)
		return dropped, true
	}
	for j, i := range idx {
		m := &msgs[i]
		m.Output, m.Notification = outs[j].Message, outs[j].Notification
		m.Step = app.StepProcessed
		if m.Notification == nil {
			m.Step = app.StepQueued
		}
	}
	return dropped, false
}

// dropIfExpired drops m, counted as expired, when its TTL ended at now. It
// is the one place an expired message leaves the pipeline.
func (d *Daemon) dropIfExpired(ctx context.Context, m *store.Message, now time.Time) bool {
	if !m.Expired(now) {
		return false
	}
	d.log.Info("expired message dropped", "app_id", m.AppID, "msg_id", m.MsgID, "step", m.Step, "attempts", m.Attempts)
	if err := d.st.Done(ctx, m.Seq, app.CounterMessagesExpired); err != nil && !errors.Is(err, store.ErrNotFound) {
		d.log.Error("cannot drop expired message", "app_id", m.AppID, "msg_id", m.MsgID, "err", err)
	}
	return true
}

// advance moves one processed message (processBatch ran its helper) to the
// queued step, or drops it when it expired (reporting true). TTL is checked
// again right before presentation.
func (d *Daemon) advance(ctx context.Context, m *store.Message, isUP bool) (dropped bool) {
	log := d.log.With("app_id", m.AppID, "msg_id", m.MsgID)
	if d.dropIfExpired(ctx, m, d.now()) {
		return true
	}
	if m.Step == app.StepProcessed {
		if d.pres != nil && m.Notification != nil {
			if err := d.pres.Present(ctx, m.AppID, m.MsgID, m.Notification); err != nil {
				if ctx.Err() != nil {
					return false
				}
				log.Warn("cannot show notification", "err", err)
				d.incr(app.CounterPresentFailures)
			}
		}
		m.Step = app.StepPresented
	}
	if m.Step == app.StepPresented {
		if err := d.st.Presented(ctx, m.Seq); err != nil {
			log.Error("cannot queue message", "err", err)
			return false
		}
		m.Step = app.StepQueued
	}
	if m.Step == app.StepQueued && !isUP {
		if bus := d.getBus(); bus != nil {
			if err := bus.EmitPost(m.AppID); err != nil {
				log.Warn("cannot emit Post", "err", err)
			}
		}
	}
	return false
}

// process runs the helper step. Helper concurrency (helper_concurrency, one
// per app) is the Processor's to bound: helpers.Runner does.
func (d *Daemon) process(ctx context.Context, m *store.Message) (Output, error) {
	return d.proc.Process(ctx, m.AppID, m.MsgID, d.decryptForApp(ctx, m.AppID, m.MsgID, m.Body))
}

// deliverUP gives appID's queued messages to its UnifiedPush connector,
// each with the token of its own registration (an app may hold several).
// Messages go in order; one that is not delivered is retried with backoff
// while the ones after it go on (no head-of-line blocking), until its TTL.
// It returns when the earliest retry is due (zero: nothing waits).
func (d *Daemon) deliverUP(ctx context.Context, appID string) (retryAt time.Time) {
	bus := d.getBus()
	if bus == nil {
		return time.Time{}
	}
	earliest := func(t time.Time) {
		if retryAt.IsZero() || t.Before(retryAt) {
			retryAt = t
		}
	}
	var after int64
	for ctx.Err() == nil {
		msgs, err := d.st.QueuedAfter(ctx, appID, after, pendingBatch)
		if err != nil {
			d.log.Error("cannot read queue", "app_id", appID, "err", err)
			return d.now().Add(redeliverMin)
		}
		for i := range msgs {
			if ctx.Err() != nil {
				return time.Time{}
			}
			m := &msgs[i]
			after = m.Seq
			if next, wait := d.deliverOneUP(ctx, bus, m); wait {
				earliest(next)
			}
		}
		if len(msgs) < pendingBatch {
			break
		}
	}
	return retryAt
}

// deliverOneUP delivers one queued message; wait says it stays queued
// until next.
func (d *Daemon) deliverOneUP(ctx context.Context, bus Bus, m *store.Message) (next time.Time, wait bool) {
	log := d.log.With("app_id", m.AppID, "msg_id", m.MsgID)
	now := d.now()
	if d.dropIfExpired(ctx, m, now) {
		return time.Time{}, false
	}
	r, ok := d.regByChannel(m.ChannelID)
	if !ok || r.Kind != app.KindUnifiedPush || len(m.Output) == 0 {
		// No registration to route it by (it was dropped), or a data-less
		// (SimplePush) message: nothing a connector can take.
		log.Warn("unifiedpush message without a registration or body dropped", "channel_id", m.ChannelID)
		_ = d.st.Done(ctx, m.Seq, app.CounterMessagesDropped)
		return time.Time{}, false
	}
	if m.NextAttempt.After(now) {
		return m.NextAttempt, true
	}
	acked, err := bus.DeliverUnifiedPush(ctx, dbusapi.UPMessage{
		Service: r.Service, Token: r.UPToken, Version: r.UPVersion, ID: m.MsgID, Body: m.Output,
	})
	if ctx.Err() != nil {
		return time.Time{}, false
	}
	if err == nil && acked {
		if r.UPVersion >= dbusapi.UPVersion2 {
			// Connector2 answers: the app itself has taken the message.
			d.appTook([]store.Ref{{ChannelID: m.ChannelID, Version: m.Version}})
		}
		if err := d.st.Done(ctx, m.Seq, app.CounterMessagesDelivered); err != nil && !errors.Is(err, store.ErrNotFound) {
			log.Error("cannot record delivery", "err", err)
			return d.now().Add(redeliverMin), true
		}
		return time.Time{}, false
	}
	if errors.Is(err, dbusapi.ErrInvalid) {
		log.Warn("undeliverable unifiedpush message dropped", "err", err)
		_ = d.st.Done(ctx, m.Seq, app.CounterMessagesDropped)
		return time.Time{}, false
	}
	backoff := min(redeliverMin<<min(m.Attempts, 20), redeliverMax)
	next = now.Add(backoff)
	if !m.Expires.IsZero() && next.After(m.Expires) {
		next = m.Expires // dropped (and counted) as soon as it expires
	}
	log.Info("unifiedpush message not delivered; will retry", "retry_in", next.Sub(now), "err", err)
	if err := d.st.Retry(ctx, m.Seq, next); err != nil {
		log.Error("cannot record retry", "err", err)
	}
	d.incr(app.CounterRedeliveries)
	return next, true
}
