// Package notifications presents the notifications of push messages on the
// desktop: freedesktop Notifications bubbles with a default action that opens
// the app, persistent cards kept in a Store and re-shown after a restart,
// launcher emblem counters (com.canonical.Unity.LauncherEntry), sounds and
// vibration (feedbackd). It imports no other package of this project.
//
// A Presenter is built with New and driven by Run, which follows the owner of
// org.freedesktop.Notifications and handles its ActionInvoked and
// NotificationClosed signals. Present, ListPersistent, ClearPersistent and
// SetCounter are safe for concurrent use.
package notifications

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

// Names of org.freedesktop.Notifications (Desktop Notifications Specification).
const (
	notifyName  = "org.freedesktop.Notifications"
	notifyPath  = dbus.ObjectPath("/org/freedesktop/Notifications")
	notifyIface = "org.freedesktop.Notifications"
)

// ExpireTimeout is the expire_timeout of every notification: the server's
// default (-1). Persistent cards are additionally marked resident so that the
// server keeps them after an action; expiry by the server does not remove a
// persistent card from the Store.
const ExpireTimeout int32 = -1

// DefaultActionLabel is the label of the "default" action.
const DefaultActionLabel = "Open"

// callTimeout bounds every D-Bus call of the Presenter.
const callTimeout = 5 * time.Second

// Close reasons of NotificationClosed.
const (
	closedExpired   = 1
	closedDismissed = 2
	closedByCall    = 3
)

// Request is one notification to present for an app.
type Request struct {
	AppID, MsgID, Tag string
	Card              *app.Card
	Sound             *app.Sound
	Vibrate           *app.Vibration
	Counter           *app.EmblemCounter
}

// Record is one shown notification, persisted by the daemon's store.
type Record struct {
	ID         uint32
	AppID, Tag string
	MsgID      string
	Card       app.Card
	Shown      time.Time
}

// Store keeps the notifications that have a tag or are persistent.
type Store interface {
	SaveNotification(ctx context.Context, r Record) error // upsert by (AppID, Tag) if Tag != "", else by ID
	DeleteNotification(ctx context.Context, appID string, id uint32) error
	Notifications(ctx context.Context, appID string) ([]Record, error) // "" → all apps
}

// Options configures a Presenter.
type Options struct {
	// Conn is the session bus connection (required).
	Conn *dbus.Conn
	// Store keeps tagged and persistent notifications; nil keeps nothing.
	Store Store
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// DataDirs are the XDG data dirs, data home first: desktop entries are
	// looked up in <dir>/applications, sounds in <dir>/<pkg> and
	// <dir>/sounds.
	DataDirs []string
	// Launch opens apps on an action; nil uses an AppLauncher on Conn.
	Launch Launcher
	// SystemConn is the system bus (AccountsService, hfd-service); nil
	// leaves those out.
	SystemConn *dbus.Conn
	// UID is the user whose AccountsService settings are read.
	UID int
	// Settings reads the per-app Lomiri/Ubuntu GSettings; nil: every app
	// has every switch on.
	Settings *Settings
	// Focused reports whether the app is focused, for upstream's rule that
	// nothing is presented for a focused app while the screen is unlocked
	// (the lock state is the Lomiri greeter's IsActive). nil: the platform
	// cannot tell, nothing is suppressed (Lomiri today).
	Focused func(appID string) bool
}

// shown is a notification this Presenter created on the current server.
type shown struct {
	appID, tag, msgID string
	persist           bool
	action            string // the accepted default action URL, "" for none
}

// Presenter shows notifications. See the package documentation.
type Presenter struct {
	conn     *dbus.Conn
	store    Store
	log      *slog.Logger
	dataDirs []string
	launch   Launcher
	lookPath func(string) (string, error)
	sys      *dbus.Conn
	uid      int
	settings *Settings
	focused  func(appID string) bool

	players sync.WaitGroup // background sound players

	mu sync.Mutex
	// Guarded by mu:
	tracking bool             // Run follows the server's owner
	owner    string           // unique name of the current server ("" none)
	caps     map[string]bool  // capabilities of owner, nil until fetched
	live     map[uint32]shown // ids created on owner
	appOps   map[string]chan struct{}
	// indicatorOwner is the messaging indicator's unique name ("" none),
	// menuApps the exported client objects by app id, menuRegistered the
	// indicator owner each app is registered with.
	indicatorOwner string
	menuApps       map[string]*menuApp
	menuRegistered map[string]string
}

// lockApp serialises the card operations of one app (show, re-show, clear):
// a show saves its record only after the server's Notify reply, so a clear
// running in between would otherwise be undone by that save. It is a token,
// not a data lock: it waits for ctx and guards no fields.
func (p *Presenter) lockApp(ctx context.Context, appID string) (unlock func(), err error) {
	p.mu.Lock()
	if p.appOps == nil {
		p.appOps = map[string]chan struct{}{}
	}
	tok, ok := p.appOps[appID]
	if !ok {
		tok = make(chan struct{}, 1)
		p.appOps[appID] = tok
	}
	p.mu.Unlock()
	select {
	case tok <- struct{}{}:
		return func() { <-tok }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// New returns a Presenter. It starts nothing: call Run.
func New(o Options) *Presenter {
	p := &Presenter{
		conn:     o.Conn,
		store:    o.Store,
		log:      o.Logger,
		dataDirs: slices.Clone(o.DataDirs),
		launch:   o.Launch,
		lookPath: exec.LookPath,
		live:     map[uint32]shown{},
		sys:      o.SystemConn,
		uid:      o.UID,
		settings: o.Settings,
		focused:  o.Focused,
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.launch == nil {
		p.launch = &AppLauncher{Conn: o.Conn, Logger: p.log}
	}
	return p
}

// Present shows r: the emblem counter, the vibration, the card (when it has a
// summary and popup or persist is set) and the sound. A missing notification
// server, player or feedbackd is skipped; errors of the card or the counter
// are returned joined, after everything else was tried.
//
// On Lomiri the platform decides as upstream: the app's GSettings switches
// (enable-notifications off leaves only the counter), AccountsService's
// silent mode, message tone and vibration choices, the URL dispatcher for
// actions, the messaging indicator for persistent cards, hfd-service or
// usensord for vibration.
func (p *Presenter) Present(ctx context.Context, r Request) error {
	if _, err := app.ParseID(r.AppID); err != nil {
		return fmt.Errorf("cannot present: %w", err)
	}
	if p.suppressed(ctx, r.AppID) {
		p.log.Debug("app focused and screen unlocked: nothing presented", "app_id", r.AppID, "msg_id", r.MsgID)
		return nil
	}
	entry := p.desktopEntry(r.AppID)
	var errs []error
	if r.Counter != nil {
		if err := p.setCounter(ctx, r.AppID, entry, r.Counter.Count, r.Counter.Visible); err != nil {
			errs = append(errs, err)
		}
	}
	set := allOn
	if p.settings != nil {
		var err error
		if set, err = p.settings.App(ctx, r.AppID); err != nil {
			p.log.Warn("notification settings unreadable; all on", "app_id", r.AppID, "err", err)
		}
	}
	if !set.Enabled {
		p.log.Debug("notifications off for the app: only the counter", "app_id", r.AppID, "msg_id", r.MsgID)
		return errors.Join(errs...)
	}
	snd := p.soundSettings(ctx)
	if r.Vibrate != nil {
		switch {
		case !set.Vibrations:
		case snd.Found && snd.SilentMode && p.settings != nil && !p.settings.VibrateSilentMode(ctx):
		case !snd.Vibrate():
		default:
			if !p.vibrateLomiri(ctx, r.AppID, *r.Vibrate) {
				p.vibrate(ctx, r.AppID, entry)
			}
		}
	}
	var sf, sn string // sound file, sound name
	if r.Sound != nil && set.Sounds && !(snd.Found && snd.SilentMode) {
		switch {
		case r.Sound.Path != "":
			f, err := ResolveSound(p.dataDirs, r.AppID, r.Sound.Path)
			if err != nil {
				p.log.Warn("sound refused", "app_id", r.AppID, "msg_id", r.MsgID, "err", err)
			}
			sf = f
		case r.Sound.Default:
			if sf = lomiriSound(snd); sf == "" {
				sn = defaultSoundName
			}
		}
	}
	hinted := false
	if r.Card != nil {
		unlock, err := p.lockApp(ctx, r.AppID)
		if err != nil {
			return fmt.Errorf("cannot present: %w", err)
		}
		c := *r.Card
		c.Popup = c.Popup && set.Bubbles
		c.Persist = c.Persist && set.List
		rr := r
		rr.Card = &c
		if c.Persist && c.Summary != "" && p.indicatorRunning() {
			// Where the messaging indicator runs, a persistent card is an
			// entry there; a bubble is shown only for popup, and not kept.
			added, err := p.menuAdd(ctx, rr, entry)
			if err != nil {
				errs = append(errs, err)
			}
			if added {
				// The bubble is transient and not stored: the tag is the
				// menu entry's (the store keeps one record per tag).
				c.Persist, rr.Tag = false, ""
			}
		}
		res, err := p.notify(ctx, rr, entry, sf, sn, false)
		unlock()
		if err != nil {
			errs = append(errs, err)
		}
		hinted = res.soundHinted
	}
	if (sf != "" || sn != "") && !hinted {
		p.play(r.AppID, sf, sn)
	}
	return errors.Join(errs...)
}

func (p *Presenter) desktopEntry(appID string) *app.DesktopEntry {
	e, err := findDesktopEntry(p.dataDirs, appID)
	if err != nil {
		p.log.Warn("desktop entry ignored", "app_id", appID, "err", err)
	}
	return e
}

type notifyResult struct {
	id          uint32
	shown       bool
	soundHinted bool
}

// notify sends the card of r. reshow marks a persistent card shown again
// after a restart: no bubble, no sound.
func (p *Presenter) notify(ctx context.Context, r Request, entry *app.DesktopEntry, soundFile, soundName string, reshow bool) (notifyResult, error) {
	c := r.Card
	if c.Summary == "" || (!c.Popup && !c.Persist) {
		p.log.Debug("card not shown", "app_id", r.AppID, "msg_id", r.MsgID, "popup", c.Popup, "persist", c.Persist)
		return notifyResult{}, nil
	}
	appName, icon, desktopID := r.AppID, c.Icon, r.AppID
	if entry != nil {
		desktopID = entry.ID
		if entry.Name != "" {
			appName = entry.Name
		}
		if icon == "" {
			icon = entry.Icon
		}
	}
	hints := map[string]dbus.Variant{
		"desktop-entry": dbus.MakeVariant(desktopID),
		"urgency":       dbus.MakeVariant(byte(1)),
		"category":      dbus.MakeVariant("im.received"),
	}
	caps := p.capabilities(ctx)
	lomiriHints, canonicalHints := p.hintFamilies(ctx, caps)
	setVendorHint := func(name string, v dbus.Variant) {
		if lomiriHints {
			hints["x-lomiri-"+name] = v
		}
		if canonicalHints {
			hints["x-canonical-"+name] = v
		}
	}
	if entry != nil {
		if s := symbolicIcon(entry); s != "" {
			setVendorHint("secondary-icon", dbus.MakeVariant(s))
		}
	}
	action := ""
	if len(c.Actions) > 0 {
		if err := p.checkAction(ctx, r.AppID, entry, c.Actions[0]); err != nil {
			p.log.Warn("action refused, card shown without it", "app_id", r.AppID, "msg_id", r.MsgID, "err", err)
		} else {
			action = c.Actions[0]
		}
		if len(c.Actions) > 1 {
			p.log.Debug("only the first action is used", "app_id", r.AppID, "msg_id", r.MsgID, "dropped", len(c.Actions)-1)
		}
	}
	actions := []string{}
	if action != "" {
		actions = []string{"default", DefaultActionLabel}
		setVendorHint("switch-to-application", dbus.MakeVariant("true"))
	}
	if c.Persist {
		hints["resident"] = dbus.MakeVariant(true)
	}
	if !c.Popup || reshow {
		hints["transient"] = dbus.MakeVariant(false)
		hints["urgency"] = dbus.MakeVariant(byte(0))
	}
	var res notifyResult
	if reshow {
		hints["suppress-sound"] = dbus.MakeVariant(true)
	} else if (soundFile != "" || soundName != "") && caps["sound"] {
		if soundFile != "" {
			hints["sound-file"] = dbus.MakeVariant(soundFile)
		} else {
			hints["sound-name"] = dbus.MakeVariant(soundName)
		}
		res.soundHinted = true
	}
	replaces := uint32(0)
	if r.Tag != "" {
		replaces = p.liveTag(r.AppID, r.Tag)
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	call := p.conn.Object(notifyName, notifyPath).CallWithContext(cctx, notifyIface+".Notify", 0,
		appName, replaces, icon, c.Summary, c.Body, actions, hints, ExpireTimeout)
	var id uint32
	if err := call.Store(&id); err != nil {
		res.soundHinted = false
		return res, fmt.Errorf("cannot show notification of %q: %w", r.AppID, err)
	}
	if id == 0 {
		res.soundHinted = false
		return res, fmt.Errorf("cannot show notification of %q: server returned id 0", r.AppID)
	}
	res.id, res.shown = id, true
	p.mu.Lock()
	if replaces != 0 && replaces != id {
		delete(p.live, replaces)
	}
	p.live[id] = shown{appID: r.AppID, tag: r.Tag, msgID: r.MsgID, persist: c.Persist, action: action}
	p.mu.Unlock()
	p.log.Debug("notification shown", "app_id", r.AppID, "msg_id", r.MsgID, "id", id, "replaces", replaces)
	if p.store != nil && (r.Tag != "" || c.Persist) {
		rec := Record{ID: id, AppID: r.AppID, Tag: r.Tag, MsgID: r.MsgID, Card: *c, Shown: time.Now()}
		rec.Card.Actions = slices.Clone(c.Actions)
		if err := p.store.SaveNotification(ctx, rec); err != nil {
			return res, fmt.Errorf("cannot save notification %d of %q: %w", id, r.AppID, err)
		}
	}
	return res, nil
}

// symbolicIcon is X-Ubuntu-SymbolicIcon, else "<Icon>-symbolic" for a themed
// icon name.
func symbolicIcon(e *app.DesktopEntry) string {
	if e.SymbolicIcon != "" {
		return e.SymbolicIcon
	}
	if e.Icon != "" && !strings.ContainsRune(e.Icon, '/') {
		return e.Icon + "-symbolic"
	}
	return ""
}

// liveTag returns the id of the app's notification with tag shown on the
// current server, 0 when there is none.
func (p *Presenter) liveTag(appID, tag string) uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, s := range p.live {
		if s.appID == appID && s.tag == tag {
			return id
		}
	}
	return 0
}

// capabilities returns the server's capabilities, cached per owner while Run
// follows the owner.
func (p *Presenter) capabilities(ctx context.Context) map[string]bool {
	p.mu.Lock()
	if p.tracking && p.caps != nil {
		c := p.caps
		p.mu.Unlock()
		return c
	}
	owner, tracking := p.owner, p.tracking
	p.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var list []string
	err := p.conn.Object(notifyName, notifyPath).CallWithContext(cctx, notifyIface+".GetCapabilities", 0).Store(&list)
	if err != nil {
		p.log.Debug("no notification server capabilities", "err", err)
		return map[string]bool{}
	}
	caps := make(map[string]bool, len(list))
	for _, c := range list {
		caps[c] = true
	}
	if tracking && owner != "" {
		p.mu.Lock()
		if p.tracking && p.owner == owner {
			p.caps = caps
		}
		p.mu.Unlock()
	}
	return caps
}

// play runs a sound player in the background; without one it does nothing.
func (p *Presenter) play(appID, file, name string) {
	if file == "" && name != "" {
		file = defaultSoundFile(p.dataDirs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), playTimeout)
	cmd := playerCommand(ctx, p.lookPath, file, name)
	if cmd == nil {
		cancel()
		p.log.Debug("no sound player, sound skipped", "app_id", appID)
		return
	}
	if err := cmd.Start(); err != nil {
		cancel()
		p.log.Debug("cannot start sound player", "app_id", appID, "err", err)
		return
	}
	p.players.Go(func() {
		defer cancel()
		if err := cmd.Wait(); err != nil {
			p.log.Debug("sound player failed", "app_id", appID, "err", err)
		}
	})
}

// vibrate asks feedbackd for the message event when it runs.
func (p *Presenter) vibrate(ctx context.Context, appID string, entry *app.DesktopEntry) {
	const name = "org.sigxcpu.Feedback"
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var has bool
	err := p.conn.BusObject().CallWithContext(cctx, "org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has)
	if err != nil || !has {
		p.log.Debug("feedbackd not running, vibration skipped", "app_id", appID, "err", err)
		return
	}
	id := appID
	if entry != nil {
		id = entry.ID
	}
	var fid uint32
	err = p.conn.Object(name, "/org/sigxcpu/Feedback").CallWithContext(cctx, name+".TriggerFeedback", 0,
		id, defaultSoundName, map[string]dbus.Variant{}, int32(-1)).Store(&fid)
	if err != nil {
		p.log.Debug("vibration failed", "app_id", appID, "err", err)
	}
}

// SetCounter sets the app's launcher emblem counter.
func (p *Presenter) SetCounter(ctx context.Context, appID string, count int32, visible bool) error {
	if _, err := app.ParseID(appID); err != nil {
		return fmt.Errorf("cannot set counter: %w", err)
	}
	return p.setCounter(ctx, appID, p.desktopEntry(appID), count, visible)
}

// LauncherEntryPath is the object path the LauncherEntry Update signal is
// emitted from.
const LauncherEntryPath = dbus.ObjectPath("/org/herald/LauncherEntry")

func (p *Presenter) setCounter(ctx context.Context, appID string, entry *app.DesktopEntry, count int32, visible bool) error {
	id := appID
	if aid, err := app.ParseID(appID); err == nil {
		id = aid.DesktopID()
	}
	if entry != nil {
		id = entry.ID
	}
	err := p.conn.Emit(LauncherEntryPath, "com.canonical.Unity.LauncherEntry.Update",
		"application://"+id+".desktop", map[string]dbus.Variant{
			"count":         dbus.MakeVariant(int64(count)),
			"count-visible": dbus.MakeVariant(visible),
		})
	if err != nil {
		return fmt.Errorf("cannot set counter of %q: %w", appID, err)
	}
	p.launcherCounter(ctx, appID, count, visible)
	return nil
}

// ListPersistent returns the tags of the app's persistent notifications,
// sorted, without duplicates; untagged ones have no tag to list.
func (p *Presenter) ListPersistent(ctx context.Context, appID string) ([]string, error) {
	if _, err := app.ParseID(appID); err != nil {
		return nil, fmt.Errorf("cannot list notifications: %w", err)
	}
	if p.store == nil {
		return []string{}, nil
	}
	recs, err := p.store.Notifications(ctx, appID)
	if err != nil {
		return nil, fmt.Errorf("cannot list notifications of %q: %w", appID, err)
	}
	tags := []string{}
	for _, r := range recs {
		if r.Card.Persist && r.Tag != "" && r.AppID == appID {
			tags = append(tags, r.Tag)
		}
	}
	sort.Strings(tags)
	return slices.Compact(tags), nil
}

// ClearPersistent closes the app's persistent notifications with the given
// tags (none: all of the app's persistent notifications) and deletes them
// from the Store. It returns how many were deleted.
func (p *Presenter) ClearPersistent(ctx context.Context, appID string, tags []string) (uint32, error) {
	if _, err := app.ParseID(appID); err != nil {
		return 0, fmt.Errorf("cannot clear notifications: %w", err)
	}
	if p.store == nil {
		return 0, nil
	}
	unlock, err := p.lockApp(ctx, appID)
	if err != nil {
		return 0, fmt.Errorf("cannot clear notifications of %q: %w", appID, err)
	}
	defer unlock()
	recs, err := p.store.Notifications(ctx, appID)
	if err != nil {
		return 0, fmt.Errorf("cannot clear notifications of %q: %w", appID, err)
	}
	var n uint32
	var errs []error
	for _, r := range recs {
		if !r.Card.Persist || r.AppID != appID || (len(tags) > 0 && !slices.Contains(tags, r.Tag)) {
			continue
		}
		p.mu.Lock()
		s, live := p.live[r.ID]
		live = live && s.appID == appID
		if live {
			delete(p.live, r.ID)
		}
		p.mu.Unlock()
		if live {
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			c := p.conn.Object(notifyName, notifyPath).CallWithContext(cctx, notifyIface+".CloseNotification", 0, r.ID)
			cancel()
			if c.Err != nil {
				p.log.Debug("cannot close notification", "app_id", appID, "id", r.ID, "err", c.Err)
			}
		}
		if err := p.store.DeleteNotification(ctx, appID, r.ID); err != nil {
			errs = append(errs, fmt.Errorf("cannot delete notification %d of %q: %w", r.ID, appID, err))
			continue
		}
		p.menuRemoved(appID, r)
		n++
	}
	return n, errors.Join(errs...)
}
