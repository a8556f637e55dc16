package notifications

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

const (
	busDaemonName = "org.freedesktop.DBus"
	nameOwnerSig  = "org.freedesktop.DBus.NameOwnerChanged"
	actionSig     = notifyIface + ".ActionInvoked"
	closedSig     = notifyIface + ".NotificationClosed"
)

// Run follows the owner of org.freedesktop.Notifications, handles its
// ActionInvoked and NotificationClosed signals, and re-shows the persistent
// cards of the Store at start and whenever a new notification server appears
// (fresh ids, Store updated). It returns nil when ctx ends, or an error when
// the bus connection is lost or the signals cannot be subscribed.
//
// The signal loop never blocks on slow work: it checks each signal and
// updates what it tracks at once, in arrival order, and hands what takes
// time (re-showing cards, launching an app, store writes) to one worker
// goroutine that does it in the same order.
func (p *Presenter) Run(ctx context.Context) error {
	ch := make(chan *dbus.Signal, 64)
	p.conn.Signal(ch)
	defer p.conn.RemoveSignal(ch)
	rules := [][]dbus.MatchOption{
		{dbus.WithMatchInterface(notifyIface), dbus.WithMatchObjectPath(notifyPath), dbus.WithMatchMember("ActionInvoked")},
		{dbus.WithMatchInterface(notifyIface), dbus.WithMatchObjectPath(notifyPath), dbus.WithMatchMember("NotificationClosed")},
		{dbus.WithMatchSender(busDaemonName), dbus.WithMatchInterface(busDaemonName), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, notifyName)},
		{dbus.WithMatchSender(busDaemonName), dbus.WithMatchInterface(busDaemonName), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, indicatorName)},
		{dbus.WithMatchInterface(dconfWriterIface), dbus.WithMatchMember("Notify")},
	}
	for _, r := range rules {
		if err := p.conn.AddMatchSignalContext(ctx, r...); err != nil {
			return fmt.Errorf("cannot subscribe to notification signals: %w", err)
		}
		defer func() { _ = p.conn.RemoveMatchSignal(r...) }()
	}
	owner, err := p.nameOwner(ctx)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.tracking, p.owner, p.caps = true, owner, nil
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.tracking, p.caps = false, nil
		p.mu.Unlock()
		p.players.Wait()
	}()
	work := make(chan func(context.Context), maxQueuedWork)
	var worker sync.WaitGroup
	worker.Go(func() {
		for f := range work {
			f(ctx)
		}
	})
	defer worker.Wait()
	defer close(work)
	enqueue := func(what string, f func(context.Context)) {
		select {
		case work <- f:
		default:
			p.log.Warn("notification work queue full; dropped", "what", what)
		}
	}
	p.log.Info("notification presenter started", "server", owner)
	enqueue("startup", func(ctx context.Context) {
		if ind, err := p.ownerOf(ctx, indicatorName); err == nil && ind != "" {
			p.indicatorAppeared(ctx, ind)
		}
		p.startup(ctx, owner)
	})
	for {
		select {
		case <-ctx.Done():
			return nil
		case s, ok := <-ch:
			if !ok {
				return errors.New("bus connection closed")
			}
			p.handleSignal(s, enqueue)
		}
	}
}

// maxQueuedWork bounds the slow work waiting behind the signal loop.
const maxQueuedWork = 256

func (p *Presenter) nameOwner(ctx context.Context) (string, error) {
	return p.ownerOf(ctx, notifyName)
}

func (p *Presenter) ownerOf(ctx context.Context, name string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var owner string
	err := p.conn.BusObject().CallWithContext(cctx, busDaemonName+".GetNameOwner", 0, name).Store(&owner)
	var de dbus.Error
	if errors.As(err, &de) && de.Name == "org.freedesktop.DBus.Error.NameHasNoOwner" {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("cannot get the notification server: %w", err)
	}
	return owner, nil
}

// startup drops records of non-persistent notifications that cannot be shown
// any more and re-shows the persistent ones. Without a server it asks the bus
// to start one; its appearance re-shows them.
func (p *Presenter) startup(ctx context.Context, owner string) {
	if p.store == nil {
		return
	}
	recs, err := p.store.Notifications(ctx, "")
	if err != nil {
		p.log.Error("cannot read stored notifications", "err", err)
		return
	}
	persistent := 0
	menu := p.indicatorRunning()
	for _, r := range recs {
		if r.Card.Persist && menu {
			continue // an entry of the messaging indicator: never a bubble again
		}
		if r.Card.Persist {
			persistent++
			continue
		}
		if p.isLive(r.AppID, r.ID) {
			continue
		}
		if err := p.store.DeleteNotification(ctx, r.AppID, r.ID); err != nil {
			p.log.Warn("cannot delete stale notification", "app_id", r.AppID, "id", r.ID, "err", err)
		}
	}
	if persistent == 0 {
		return
	}
	if owner != "" {
		p.reshow(ctx)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var res uint32
	err = p.conn.BusObject().CallWithContext(cctx, busDaemonName+".StartServiceByName", 0, notifyName, uint32(0)).Store(&res)
	p.log.Debug("no notification server yet; persistent cards wait for one", "err", err)
}

func (p *Presenter) isLive(appID string, id uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.live[id]
	return ok && s.appID == appID
}

// reshow shows every persistent card of the Store that is not live on the
// current server, without a bubble, and stores its new id.
func (p *Presenter) reshow(ctx context.Context) {
	recs, err := p.store.Notifications(ctx, "")
	if err != nil {
		p.log.Error("cannot read stored notifications", "err", err)
		return
	}
	n := 0
	if p.indicatorRunning() {
		return // persistent cards are the messaging indicator's entries
	}
	for _, rec := range recs {
		if !rec.Card.Persist || p.isLive(rec.AppID, rec.ID) {
			continue
		}
		if _, err := app.ParseID(rec.AppID); err != nil {
			p.log.Warn("stored notification ignored", "err", err)
			continue
		}
		unlock, err := p.lockApp(ctx, rec.AppID)
		if err != nil {
			return
		}
		if !p.stillStored(ctx, rec) {
			unlock() // cleared since the list was read
			continue
		}
		card := rec.Card
		r := Request{AppID: rec.AppID, MsgID: rec.MsgID, Tag: rec.Tag, Card: &card}
		res, err := p.notify(ctx, r, p.desktopEntry(rec.AppID), "", "", true)
		unlock()
		if err != nil {
			p.log.Warn("cannot show persistent notification again", "app_id", rec.AppID, "msg_id", rec.MsgID, "err", err)
			continue
		}
		if res.shown && rec.Tag == "" && res.id != rec.ID {
			if err := p.store.DeleteNotification(ctx, rec.AppID, rec.ID); err != nil {
				p.log.Warn("cannot delete old notification id", "app_id", rec.AppID, "id", rec.ID, "err", err)
			}
		}
		n++
	}
	if n > 0 {
		p.log.Info("persistent notifications shown again", "count", n)
	}
}

// stillStored reports whether rec is still in the store (not cleared since
// the caller listed it).
func (p *Presenter) stillStored(ctx context.Context, rec Record) bool {
	recs, err := p.store.Notifications(ctx, rec.AppID)
	if err != nil {
		return false
	}
	for _, r := range recs {
		if r.ID == rec.ID && r.Tag == rec.Tag {
			return true
		}
	}
	return false
}

// handleSignal checks s and updates the tracked state at once; slow work
// goes to enqueue.
func (p *Presenter) handleSignal(s *dbus.Signal, enqueue func(what string, f func(context.Context))) {
	switch s.Name {
	case nameOwnerSig:
		if s.Sender != busDaemonName {
			p.log.Warn("forged NameOwnerChanged ignored", "sender", s.Sender)
			return
		}
		name, _, newOwner, err := parseNameOwnerChanged(s.Body)
		if err == nil && name == indicatorName {
			if newOwner == "" {
				p.log.Info("messaging indicator gone")
			}
			enqueue("indicator", func(ctx context.Context) { p.indicatorAppeared(ctx, newOwner) })
			return
		}
		if err != nil || name != notifyName {
			return
		}
		p.mu.Lock()
		changed := p.owner != newOwner
		if changed {
			p.owner, p.caps = newOwner, nil
			clear(p.live)
		}
		p.mu.Unlock()
		if !changed {
			return
		}
		p.log.Info("notification server changed", "server", newOwner)
		if newOwner != "" && p.store != nil {
			enqueue("reshow", p.reshow)
		}
	case dconfWriterIface + ".Notify":
		if p.settings != nil {
			p.settings.Changed()
			p.log.Debug("settings changed", "sender", s.Sender)
		}
	case actionSig:
		id, key, err := checkSignalBody(p, s, parseActionInvoked)
		if err != nil {
			p.log.Warn("ActionInvoked ignored", "sender", s.Sender, "err", err)
			return
		}
		sh, ok := p.liveShown(id)
		if !ok {
			p.log.Debug("ActionInvoked for a foreign notification ignored", "id", id)
			return
		}
		if key != "default" || sh.action == "" {
			p.log.Debug("unknown action ignored", "app_id", sh.appID, "id", id, "key", key)
			return
		}
		enqueue("launch", func(ctx context.Context) {
			lctx, cancel := context.WithTimeout(ctx, 2*callTimeout)
			defer cancel()
			p.activate(lctx, sh.appID, sh.msgID, sh.action, id)
		})
	case closedSig:
		id, reason, err := checkSignalBody(p, s, parseNotificationClosed)
		if err != nil {
			p.log.Warn("NotificationClosed ignored", "sender", s.Sender, "err", err)
			return
		}
		p.mu.Lock()
		sh, ok := p.live[id]
		delete(p.live, id)
		p.mu.Unlock()
		if !ok {
			p.log.Debug("NotificationClosed for a foreign notification ignored", "id", id)
			return
		}
		p.log.Debug("notification closed", "app_id", sh.appID, "id", id, "reason", reason)
		if p.store == nil || (sh.persist && reason != closedDismissed) {
			return
		}
		if !sh.persist && sh.tag == "" {
			return
		}
		enqueue("forget closed", func(ctx context.Context) {
			if err := p.store.DeleteNotification(ctx, sh.appID, id); err != nil {
				p.log.Error("cannot delete closed notification", "app_id", sh.appID, "id", id, "err", err)
			}
		})
	}
}

func (p *Presenter) liveShown(id uint32) (shown, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.live[id]
	return s, ok
}

// checkSignalBody accepts a notification server signal only from the current
// owner and at the specification's path, and parses its body.
func checkSignalBody[T any](p *Presenter, s *dbus.Signal, parse func([]any) (uint32, T, error)) (uint32, T, error) {
	var zero T
	if s.Path != notifyPath {
		return 0, zero, fmt.Errorf("wrong path %q", s.Path)
	}
	p.mu.Lock()
	owner := p.owner
	p.mu.Unlock()
	if owner == "" || s.Sender != owner {
		return 0, zero, fmt.Errorf("sender %q is not the notification server %q", s.Sender, owner)
	}
	return parse(s.Body)
}
