package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/heraldpush/herald/client"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/helpers"
	"github.com/heraldpush/herald/notifications"
)

// processor runs helpers for the daemon's pipeline. The notification is
// kept as helper output JSON (helpers.Output round-trips through it).
type processor struct{ r *helpers.Runner }

func (p processor) Process(ctx context.Context, appID, msgID string, payload []byte) (client.Output, error) {
	out, err := p.r.Process(ctx, appID, msgID, payload)
	if out == nil {
		return client.Output{Message: payload}, err
	}
	o := client.Output{Message: out.Message}
	if o.Message == nil {
		o.Message = payload
	}
	if out.Notification != nil {
		b, merr := json.Marshal(helpers.Output{Notification: out.Notification})
		if merr != nil {
			return o, fmt.Errorf("cannot keep helper notification: %w", merr)
		}
		o.Notification = b
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

func (a presenter) Present(ctx context.Context, appID, msgID string, b []byte) error {
	out, err := helpers.ParseOutput(b)
	if err != nil {
		return fmt.Errorf("cannot read kept notification: %w", err)
	}
	n := out.Notification
	if n == nil {
		return nil
	}
	r := notifications.Request{AppID: appID, MsgID: msgID, Tag: n.Tag}
	if c := n.Card; c != nil {
		r.Card = &notifications.Card{Summary: c.Summary, Body: c.Body, Icon: c.Icon, Actions: c.Actions,
			Timestamp: c.Timestamp, Persist: c.Persist, Popup: c.Popup}
	}
	if s := n.Sound; s != nil {
		r.Sound = &notifications.Sound{Default: s.Default, Path: s.Path}
	}
	if v := n.Vibrate; v != nil {
		r.Vibrate = &notifications.Vibration{Default: v.Default, Pattern: v.Pattern, Repeat: v.Repeat}
	}
	if e := n.EmblemCounter; e != nil {
		r.Counter = &notifications.Counter{Count: e.Count, Visible: e.Visible}
	}
	return a.p.Present(ctx, r)
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
	card, err := json.Marshal(r.Card)
	if err != nil {
		return err
	}
	return s.st.SaveNotification(ctx, store.Notification{ID: r.ID, AppID: r.AppID, Tag: r.Tag, MsgID: r.MsgID, Card: card, Shown: r.Shown})
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
		r := notifications.Record{ID: n.ID, AppID: n.AppID, Tag: n.Tag, MsgID: n.MsgID, Shown: n.Shown}
		if err := json.Unmarshal(n.Card, &r.Card); err != nil {
			continue // a damaged record is not re-shown
		}
		out = append(out, r)
	}
	return out, nil
}
