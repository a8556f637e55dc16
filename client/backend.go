package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/protocol"
)

var _ dbusapi.Backend = (*Daemon)(nil)

// RegisterLomiri registers appID's channel with the server (connecting if
// needed) and returns its token. It is idempotent.
func (d *Daemon) RegisterLomiri(ctx context.Context, appID string) (string, error) {
	v, err, _ := d.group.Do("lomiri\x00"+appID, func() (any, error) {
		b, err := d.backendFor(app.KindLomiri)
		if err != nil {
			return "", err
		}
		r, err := d.st.LomiriRegistration(ctx, appID)
		if err == nil && r.Backend != b.Name() {
			// The configuration moved Lomiri apps to another push service:
			// register there (the app gets its new token from this call).
			if err := d.drop(ctx, r, false); err != nil {
				return "", err
			}
			err = store.ErrNotFound
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			r = store.Registration{ChannelID: protocol.NewChannelID(), AppID: appID, Kind: app.KindLomiri, Registered: d.now(), Backend: b.Name()}
			if err := d.st.PutRegistration(ctx, r); err != nil {
				return "", err
			}
			d.putReg(r)
		case err != nil:
			return "", err
		}
		if r.Endpoint != "" && !r.Stale {
			return token(r), nil
		}
		ep, err := d.registerChannel(ctx, r)
		if err != nil {
			return "", err
		}
		r.Endpoint = ep
		d.log.Info("app registered", "app_id", appID, "kind", r.Kind, "backend", r.Backend)
		return token(r), nil
	})
	if err != nil {
		return "", fmt.Errorf("cannot register %s: %w", appID, err)
	}
	return v.(string), nil
}

// registerChannel asks r's backend for its endpoint and stores it: the
// URL, or for the Lomiri backend the token.
func (d *Daemon) registerChannel(ctx context.Context, r store.Registration) (string, error) {
	b, ok := d.backends[r.Backend]
	if !ok {
		if r.Backend == app.BackendAutopush {
			return "", errNoServer
		}
		return "", fmt.Errorf("%w: the %s backend is not available in this build of heraldd", errUnavailable, r.Backend)
	}
	e, err := b.Register(ctx, channelOf(r))
	if err != nil {
		return "", wrapBackend(err)
	}
	ep := e.URL
	if r.Backend == app.BackendLomiri {
		ep = e.Token
	}
	if err := d.st.SetEndpoint(ctx, r.ChannelID, ep); err != nil {
		return "", err
	}
	r.Endpoint, r.Stale = ep, false
	d.putReg(r)
	return ep, nil
}

// UnregisterLomiri drops appID's registration and its unread messages.
func (d *Daemon) UnregisterLomiri(ctx context.Context, appID string) error {
	r, err := d.st.LomiriRegistration(ctx, appID)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("cannot unregister %s: %w", appID, dbusapi.ErrNotRegistered)
	}
	if err != nil {
		return fmt.Errorf("cannot unregister %s: %w", appID, err)
	}
	if b, ok := d.backends[r.Backend]; ok && r.Backend == app.BackendLomiri {
		// As upstream: the server revokes the token before the answer
		// (it needs no connection, only its HTTP API).
		if err := b.Unregister(ctx, channelOf(r)); err != nil {
			return fmt.Errorf("cannot unregister %s: %w", appID, wrapBackend(err))
		}
	}
	return d.drop(ctx, r, true)
}

// drop deletes a registration; requested says the app asked for it (a
// UnifiedPush v1 connector is then told with an empty token, as the v1
// text says), else the app is informed with its token.
func (d *Daemon) drop(ctx context.Context, r store.Registration, requested bool) error {
	if err := d.st.DeleteRegistration(ctx, r.ChannelID); err != nil {
		return err
	}
	d.dropReg(r.ChannelID)
	d.unregisterLater(r)
	d.log.Info("app unregistered", "app_id", r.AppID, "kind", r.Kind)
	d.tellUnregistered(r, requested)
	return nil
}

// tellUnregistered confirms to a UnifiedPush connector that its registration
// is gone, after the caller's reply (the connector may be the caller). A
// v1 (or older) connector's confirmation of its own request carries an
// empty token; when it is informed, the token.
func (d *Daemon) tellUnregistered(r store.Registration, requested bool) {
	if r.Kind != app.KindUnifiedPush {
		return
	}
	tok := r.UPToken
	if requested && r.UPVersion < dbusapi.UPVersion2 {
		tok = ""
	}
	bus := d.getBus()
	if bus == nil {
		return
	}
	d.goBackground(func(ctx context.Context) {
		if err := bus.Unregistered(ctx, r.Service, tok, r.UPVersion); err != nil {
			d.log.Warn("cannot tell app it is unregistered", "app_id", r.AppID, "service", r.Service, "err", err)
		}
	})
}

// Post queues a message for appID as if it came from the server.
func (d *Daemon) Post(ctx context.Context, appID string, payload []byte) error {
	if len(payload) > protocol.MaxBodyBytes {
		return fmt.Errorf("%w: message of %d bytes exceeds %d", dbusapi.ErrInvalid, len(payload), protocol.MaxBodyBytes)
	}
	if err := d.st.Post(ctx, store.Incoming{MsgID: newMsgID(), AppID: appID, Body: payload, Received: d.now()}); err != nil {
		return err
	}
	d.kick(appID)
	return nil
}

// PopAll returns and removes appID's queued messages, oldest first.
func (d *Daemon) PopAll(ctx context.Context, appID string) ([]string, error) {
	msgs, refs, err := d.st.PopAllRefs(ctx, appID, d.now())
	if err != nil {
		return nil, err
	}
	d.appTook(refs)
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m)
	}
	return out, nil
}

// ListPersistent returns the tags of appID's persistent notifications.
func (d *Daemon) ListPersistent(ctx context.Context, appID string) ([]string, error) {
	if d.pres == nil {
		return []string{}, nil
	}
	return d.pres.ListPersistent(ctx, appID)
}

// ClearPersistent closes appID's persistent notifications with tags (all when none).
func (d *Daemon) ClearPersistent(ctx context.Context, appID string, tags []string) (uint32, error) {
	if d.pres == nil {
		return 0, nil
	}
	return d.pres.ClearPersistent(ctx, appID, tags)
}

// SetCounter sets appID's emblem counter.
func (d *Daemon) SetCounter(ctx context.Context, appID string, count int32, visible bool) error {
	if d.pres == nil {
		return nil
	}
	return d.pres.SetCounter(ctx, appID, count, visible)
}

// RegisterUnifiedPush registers a connector token and returns its endpoint.
// A registration of the token by another owner is never replaced
// (dbusapi.ErrNotOwner); the owner's own Register with another service or
// key starts over.
func (d *Daemon) RegisterUnifiedPush(ctx context.Context, u dbusapi.UPRegistration) (string, error) {
	v, err, _ := d.group.Do("up\x00"+u.Token, func() (any, error) {
		b, err := d.backendFor(app.KindUnifiedPush)
		if err != nil {
			return "", err
		}
		r, err := d.st.UPRegistration(ctx, u.Token)
		switch {
		case err == nil && r.Owner != u.Owner:
			return "", dbusapi.ErrNotOwner
		case err == nil && (r.Service != u.Service || r.VAPID != u.VAPID || r.Backend != b.Name()):
			// The owner moved the token to another service, the key changed
			// or the configuration moved UnifiedPush apps to another push
			// service: start over.
			if err := d.drop(ctx, r, false); err != nil {
				return "", err
			}
			fallthrough
		case errors.Is(err, store.ErrNotFound):
			r = store.Registration{ChannelID: protocol.NewChannelID(), AppID: u.AppID, Kind: app.KindUnifiedPush,
				Service: u.Service, UPToken: u.Token, UPVersion: u.Version, VAPID: u.VAPID, Registered: d.now(),
				Owner: u.Owner, UPInstance: u.Instance, Registrant: u.Registrant, Backend: b.Name()}
			if r.AppID == "" {
				r.AppID = u.Service
			}
			if err := d.st.PutRegistration(ctx, r); err != nil {
				return "", err
			}
			d.putReg(r)
		case err != nil:
			return "", err
		}
		if r.UPVersion != u.Version || r.UPInstance != u.Instance || r.Registrant != u.Registrant {
			r.UPVersion, r.UPInstance, r.Registrant = u.Version, u.Instance, u.Registrant
			if err := d.st.PutRegistration(ctx, r); err != nil {
				return "", err
			}
			d.putReg(r)
		}
		if r.Endpoint != "" && !r.Stale {
			return r.Endpoint, nil
		}
		ep, err := d.registerChannel(ctx, r)
		if err != nil {
			return "", err
		}
		d.log.Info("app registered", "app_id", r.AppID, "kind", r.Kind, "service", r.Service, "backend", r.Backend)
		return ep, nil
	})
	if err != nil {
		return "", fmt.Errorf("cannot register %s: %w", u.Service, err)
	}
	return v.(string), nil
}

// UnifiedPushRegistration returns the registration of a connector token.
func (d *Daemon) UnifiedPushRegistration(ctx context.Context, tok string) (dbusapi.UPRegistration, error) {
	r, err := d.st.UPRegistration(ctx, tok)
	if errors.Is(err, store.ErrNotFound) {
		return dbusapi.UPRegistration{}, dbusapi.ErrNotRegistered
	}
	if err != nil {
		return dbusapi.UPRegistration{}, err
	}
	return dbusapi.UPRegistration{AppID: r.AppID, Service: r.Service, Token: r.UPToken, VAPID: r.VAPID,
		Version: r.UPVersion, Owner: r.Owner, Instance: r.UPInstance, Registrant: r.Registrant}, nil
}

// UnregisterUnifiedPush drops the registration of a connector token at the
// app's request.
func (d *Daemon) UnregisterUnifiedPush(ctx context.Context, tok string) error {
	r, err := d.st.UPRegistration(ctx, tok)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("cannot unregister token: %w", dbusapi.ErrNotRegistered)
	}
	if err != nil {
		return fmt.Errorf("cannot unregister token: %w", err)
	}
	return d.drop(ctx, r, true)
}

// Registrations lists every registration with its queue depth.
func (d *Daemon) Registrations(ctx context.Context) ([]dbusapi.Registration, error) {
	regs, err := d.st.Registrations(ctx)
	if err != nil {
		return nil, err
	}
	queued, err := d.st.AppsWithWork(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]dbusapi.Registration, 0, len(regs))
	for _, r := range regs {
		out = append(out, dbusapi.Registration{
			AppID: r.AppID, Kind: r.Kind, Backend: r.Backend, Endpoint: r.Endpoint, Service: r.Service,
			Version: r.UPVersion, Queued: queued[r.AppID], Registered: r.Registered,
		})
	}
	return out, nil
}

// Inbox lists appID's messages not yet taken, without consuming them.
func (d *Daemon) Inbox(ctx context.Context, appID string) ([]dbusapi.InboxEntry, error) {
	msgs, err := d.st.Inbox(ctx, appID)
	if err != nil {
		return nil, err
	}
	out := make([]dbusapi.InboxEntry, 0, len(msgs))
	for _, m := range msgs {
		size := len(m.Body)
		if m.Step != app.StepReceived {
			size = len(m.Output) // the body is dropped once the output is stored
		}
		out = append(out, dbusapi.InboxEntry{MsgID: m.MsgID, AppID: m.AppID, Step: m.Step, Received: m.Received, Size: size})
	}
	return out, nil
}

// Counters returns the stored counters and the helpers' cost per app.
func (d *Daemon) Counters(ctx context.Context) (map[string]uint64, error) {
	c, err := d.st.Counters(ctx)
	if err != nil {
		return nil, err
	}
	if src, ok := d.proc.(StatsSource); ok {
		var runs, fails, timeouts uint64
		for app, s := range src.HelperStats() {
			c["helper."+app+".runs"] = s.Runs
			c["helper."+app+".failures"] = s.Failures
			c["helper."+app+".timeouts"] = s.Timeouts
			c["helper."+app+".time_ms"] = uint64(s.Total / time.Millisecond)
			runs, fails, timeouts = runs+s.Runs, fails+s.Failures, timeouts+s.Timeouts
		}
		c["helper_runs"], c["helper_failures"], c["helper_timeouts"] = runs, fails, timeouts
	}
	for _, k := range []string{"messages_received", "messages_delivered", "duplicates", "redeliveries", "connections"} {
		if _, ok := c[k]; !ok {
			c[k] = 0
		}
	}
	if n := c["connections"]; n > 0 {
		c["reconnects"] = n - 1
	}
	return c, nil
}

// Reconnect drops the connection and dials again at once.
func (d *Daemon) Reconnect(ctx context.Context) error {
	if len(d.backends) == 0 {
		return errNoServer
	}
	for _, b := range d.backends {
		b.Reconnect()
	}
	return nil
}

// Alive checks that the daemon can still use its store (for the watchdog).
func (d *Daemon) Alive(ctx context.Context) error {
	_, err := d.st.UAID(ctx)
	return err
}
