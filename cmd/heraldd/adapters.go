package main

import (
	"context"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/helpers"
	"github.com/heraldpush/herald/notifications"
)

// processor runs helpers for the daemon's pipeline.
type processor struct{ r *helpers.Runner }

func (p processor) Process(ctx context.Context, appID, msgID string, payload []byte) (client.Output, error) {
	out, err := p.r.Process(ctx, appID, msgID, payload)
	if out == nil {
		return client.Output{Message: payload}, err
	}
	o := client.Output{Message: out.Message, Notification: out.Notification}
	if o.Message == nil {
		o.Message = payload
	}
	return o, err
}

func (p processor) HelperStats() map[string]client.HelperStats {
	out := map[string]client.HelperStats{}
	for app, s := range p.r.Stats() {
		out[app] = client.HelperStats{Runs: s.Runs, Failures: s.Failures, Timeouts: s.Timeouts, Total: s.Total}
	}
	return out
}

// presenter shows the notifications the pipeline kept.
type presenter struct{ p *notifications.Presenter }

func (a presenter) Present(ctx context.Context, appID, msgID string, n *app.Notification) error {
	return a.p.Present(ctx, notifications.Request{AppID: appID, MsgID: msgID, Tag: n.Tag,
		Card: n.Card, Sound: n.Sound, Vibrate: n.Vibrate, Counter: n.EmblemCounter})
}

func (a presenter) ListPersistent(ctx context.Context, appID string) ([]string, error) {
	return a.p.ListPersistent(ctx, appID)
}

func (a presenter) ClearPersistent(ctx context.Context, appID string, tags []string) (uint32, error) {
	return a.p.ClearPersistent(ctx, appID, tags)
}

func (a presenter) SetCounter(ctx context.Context, appID string, count int32, visible bool) error {
	return a.p.SetCounter(ctx, appID, count, visible)
}

// notificationStore keeps the presenter's records in the daemon's store.
type notificationStore struct{ st *store.Store }

func (s notificationStore) SaveNotification(ctx context.Context, r notifications.Record) error {
	return s.st.SaveNotification(ctx, store.Notification{ID: r.ID, AppID: r.AppID, Tag: r.Tag, MsgID: r.MsgID, Card: r.Card, Shown: r.Shown})
}

func (s notificationStore) DeleteNotification(ctx context.Context, appID string, id uint32) error {
	return s.st.DeleteNotification(ctx, appID, id)
}

func (s notificationStore) Notifications(ctx context.Context, appID string) ([]notifications.Record, error) {
	ns, err := s.st.Notifications(ctx, appID)
	if err != nil {
		return nil, err
	}
	out := make([]notifications.Record, 0, len(ns))
	for _, n := range ns {
		out = append(out, notifications.Record{ID: n.ID, AppID: n.AppID, Tag: n.Tag, MsgID: n.MsgID, Card: n.Card, Shown: n.Shown})
	}
	return out, nil
}

// trimmedBackend is the daemon as the D-Bus API's backend; the calls that
// make the daemon work (registrations, messages taken, a reconnect) tell the
// trimmer.
type trimmedBackend struct {
	*client.Daemon
	trim *trimmer
}

func (b trimmedBackend) RegisterLomiri(ctx context.Context, appID string) (string, error) {
	b.trim.poke()
	return b.Daemon.RegisterLomiri(ctx, appID)
}

func (b trimmedBackend) UnregisterLomiri(ctx context.Context, appID string) error {
	b.trim.poke()
	return b.Daemon.UnregisterLomiri(ctx, appID)
}

func (b trimmedBackend) Post(ctx context.Context, appID string, payload []byte) error {
	b.trim.poke()
	return b.Daemon.Post(ctx, appID, payload)
}

func (b trimmedBackend) PopAll(ctx context.Context, appID string) ([]string, error) {
	b.trim.poke()
	return b.Daemon.PopAll(ctx, appID)
}

func (b trimmedBackend) RegisterUnifiedPush(ctx context.Context, r dbusapi.UPRegistration) (string, error) {
	b.trim.poke()
	return b.Daemon.RegisterUnifiedPush(ctx, r)
}

func (b trimmedBackend) UnregisterUnifiedPush(ctx context.Context, token string) error {
	b.trim.poke()
	return b.Daemon.UnregisterUnifiedPush(ctx, token)
}

func (b trimmedBackend) Reconnect(ctx context.Context) error {
	b.trim.poke()
	return b.Daemon.Reconnect(ctx)
}
