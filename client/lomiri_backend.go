package client

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/client/lomiri"
	"github.com/heraldpush/herald/client/push"
	"github.com/heraldpush/herald/client/store"
	wire "github.com/heraldpush/herald/protocol/lomiri"
)

// The Lomiri backend: package client/lomiri (the wire protocol session and
// the /register client) behind push.Backend. When [lomiri] is on, apps of
// the Lomiri API register with a Lomiri push service (UBports' or
// herald-server's Lomiri listener): /register gives their token, and their
// messages come over the Lomiri wire protocol into the same inbox and
// pipeline as every other backend's.

const (
	// SystemSettingsApp gets the system-update broadcasts, as upstream.
	SystemSettingsApp = "_ubuntu-system-settings"
	// lomiriBroadcastChannel is the inbox channel of system-update notices.
	lomiriBroadcastChannel = "lomiri-broadcast:"
)

type lomiriBackend struct {
	d    *Daemon
	cfg  config.LomiriConfig
	sess *lomiri.Session
	reg  *lomiri.Registrar

	mu     sync.Mutex // guards status
	status push.Status
}

var _ push.Backend = (*lomiriBackend)(nil)

func newLomiriBackend(d *Daemon, c config.LomiriConfig) (*lomiriBackend, error) {
	b := &lomiriBackend{d: d, cfg: c,
		status: push.Status{Backend: app.BackendLomiri, State: push.StateIdle, Server: c.Addr}}
	client := lomiri.HTTPClient(c.CertPEM, 30*time.Second)
	b.reg = &lomiri.Registrar{URL: c.RegistrationURL, DeviceID: c.DeviceID, Client: client}
	var err error
	b.sess, err = lomiri.New(lomiri.Config{
		Addr: c.Addr, CertPEM: c.CertPEM, DeviceID: c.DeviceID, Info: c.Info(), HTTPClient: client,
		Handler: (*lomiriHandler)(b), Logger: d.log.With("part", "lomiri"),
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (b *lomiriBackend) Name() app.Backend             { return app.BackendLomiri }
func (b *lomiriBackend) Run(ctx context.Context) error { return b.sess.Run(ctx) }
func (b *lomiriBackend) SetWanted(v bool)              { b.sess.SetWanted(v) }
func (b *lomiriBackend) SetOnline(v bool)              { b.sess.SetOnline(v) }
func (b *lomiriBackend) Reconnect()                    { b.sess.Reconnect() }

func (b *lomiriBackend) Status() push.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

// Register asks /register for the app's token; it needs no connection (the
// connection is made once an app uses the backend).
func (b *lomiriBackend) Register(ctx context.Context, ch push.Channel) (push.Endpoint, error) {
	tok, err := b.reg.Register(ctx, ch.AppID)
	if err != nil {
		return push.Endpoint{}, mapRegistrarErr(err)
	}
	return push.Endpoint{URL: strings.TrimRight(b.cfg.RegistrationURL, "/") + "/notify", Token: tok}, nil
}

// Unregister revokes the app's token at the server (/unregister).
func (b *lomiriBackend) Unregister(ctx context.Context, ch push.Channel) error {
	return mapRegistrarErr(b.reg.Unregister(ctx, ch.AppID))
}

// mapRegistrarErr maps upstream's registration errors: an unreachable or
// failing server is "not connected" (the app may retry), the others are
// refusals.
func mapRegistrarErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, lomiri.ErrBadServer):
		return errors.Join(push.ErrNotConnected, err)
	}
	return errors.Join(push.ErrRejected, err)
}

// lomiriHandler is the Lomiri backend seen by its session.
type lomiriHandler lomiriBackend

func (h *lomiriHandler) Levels(ctx context.Context) (map[string]int64, error) {
	return h.d.st.Levels(ctx)
}

// channelOfApp finds the Lomiri-backend registration a message addresses by
// app id (as registered, or the same app with or without its version).
func (h *lomiriHandler) channelOfApp(appID string) (string, bool) {
	norm, _ := app.NormalizeID(appID)
	for _, r := range h.d.regsOf(app.BackendLomiri) {
		if r.AppID == appID || (norm != "" && r.AppID == norm) {
			return r.ChannelID, true
		}
	}
	return "", false
}

// Notifications hands a batch to the core, which stores it in the inbox
// (deduplicated by message id) before the session acks it.
func (h *lomiriHandler) Notifications(ctx context.Context, ns []wire.Notification) error {
	d := h.d
	msgs := make([]push.Message, 0, len(ns))
	for _, n := range ns {
		ch, ok := h.channelOfApp(n.AppID)
		if !ok {
			// Acked and dropped: nothing would ever take it (upstream drops
			// messages for apps that are not installed, too).
			d.log.Info("lomiri message for an app that is not registered dropped", "app_id", n.AppID)
			continue
		}
		msgs = append(msgs, push.Message{ChannelID: ch, ServerID: n.MsgID, Body: n.Payload})
	}
	if len(msgs) == 0 {
		return nil
	}
	for _, err := range d.Receive(ctx, push.Batch{Backend: app.BackendLomiri, Messages: msgs}) {
		if err != nil && !errors.Is(err, push.ErrUnknownChannel) {
			return err
		}
	}
	return nil
}

// Broadcast stores the new level and, for a system-image update newer than
// this device's build, queues the payload for the system settings app, in
// one transaction, before the session acks it.
func (h *lomiriHandler) Broadcast(ctx context.Context, b *wire.Broadcast) error {
	d := h.d
	var msg *store.Incoming
	if b.ChanId == wire.SystemChannel && len(b.Payloads) > 0 {
		last := b.Payloads[len(b.Payloads)-1]
		if h.newerBuild(last) {
			msg = &store.Incoming{MsgID: newMsgID(), AppID: SystemSettingsApp, ChannelID: lomiriBroadcastChannel + b.ChanId,
				Version: strconv.FormatInt(b.TopLevel, 10), Body: last, Received: d.now()}
		}
	}
	if err := d.st.SetLevel(ctx, b.ChanId, b.TopLevel, msg); err != nil {
		return err
	}
	if msg != nil {
		d.log.Info("system update broadcast queued", "app_id", SystemSettingsApp, "level", b.TopLevel)
		d.kick(SystemSettingsApp)
	}
	return nil
}

// newerBuild reports whether a system payload {"<channel>/<device>":
// [build, alias]} names a build newer than this device's.
func (h *lomiriHandler) newerBuild(payload []byte) bool {
	var m map[string][]json.RawMessage
	if json.Unmarshal(payload, &m) != nil {
		return false
	}
	v := m[h.cfg.ImageChannel+"/"+h.cfg.Device]
	if len(v) == 0 {
		return false
	}
	var build float64
	if json.Unmarshal(v[0], &build) != nil {
		return false
	}
	return int64(build) > h.cfg.BuildNumber
}

func (h *lomiriHandler) StateChanged(st lomiri.State, since time.Time, err error) {
	b := (*lomiriBackend)(h)
	b.mu.Lock()
	s := &b.status
	if st == lomiri.StateConnected {
		s.LastError = ""
	} else if err != nil {
		s.LastError = err.Error()
	}
	s.State, s.Since = push.State(st), since
	cur := *s
	b.mu.Unlock()
	b.d.StateChanged(cur)
}
