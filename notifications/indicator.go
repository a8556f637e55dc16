package notifications

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/heraldpush/herald/app"
)

// The ayatana messaging indicator (plain D-Bus; reference/lomiri-platform.md §5).
const (
	indicatorName     = "org.ayatana.indicator.messages"
	indicatorPath     = dbus.ObjectPath("/org/ayatana/indicator/messages/service")
	indicatorIface    = "org.ayatana.indicator.messages.service"
	menuAppIface      = "org.ayatana.indicator.messages.application"
	menuAppPathPrefix = "/org/ayatana/indicator/messages/"
	menuSource        = "postal"
	menuSourceLabel   = "Postal"
)

// menuIDBit marks the store ids of messaging-menu entries, which have no
// notification server id: 0x80000000 | a hash of app and message id.
const menuIDBit = 1 << 31

func menuRecordID(appID, msgID string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(appID + "\x00" + msgID))
	return menuIDBit | h.Sum32()&^menuIDBit
}

// menuObjectPath is the client object path of a desktop id: every character
// outside [A-Za-z0-9/] replaced by "_".
func menuObjectPath(desktopID string) dbus.ObjectPath {
	b := []byte(desktopID)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '/') {
			b[i] = '_'
		}
	}
	return dbus.ObjectPath(menuAppPathPrefix + string(b))
}

// menuSourceT is a source tuple (ssavuxsb).
type menuSourceT struct {
	ID, Label     string
	Icon          []dbus.Variant
	Count         uint32
	Time          int64
	String        string
	DrawAttention bool
}

// menuMessageT is a message tuple (savsssxaa{sv}b).
type menuMessageT struct {
	ID                    string
	Icon                  []dbus.Variant
	Title, Subtitle, Body string
	Time                  int64
	Actions               []map[string]dbus.Variant
	DrawAttention         bool
}

// serializedIcon is a GIcon serialized as (sv).
type serializedIcon struct {
	Kind  string
	Value dbus.Variant
}

func themedIcon(name string) []dbus.Variant {
	return []dbus.Variant{dbus.MakeVariant(serializedIcon{"themed", dbus.MakeVariant([]string{name})})}
}

func cardIcon(icon string) []dbus.Variant {
	switch {
	case icon == "":
		return []dbus.Variant{}
	case strings.HasPrefix(icon, "/"):
		return []dbus.Variant{dbus.MakeVariant(serializedIcon{"file", dbus.MakeVariant("file://" + icon)})}
	case strings.Contains(icon, "://"):
		return []dbus.Variant{dbus.MakeVariant(serializedIcon{"file", dbus.MakeVariant(icon)})}
	}
	return themedIcon(icon)
}

// menuApp is the exported client object of one app.
type menuApp struct {
	p         *Presenter
	appID     string
	desktopID string // with ".desktop"
}

func (m *menuApp) path() dbus.ObjectPath { return menuObjectPath(m.desktopID) }

// fromIndicator checks that a call comes from the indicator service.
func (m *menuApp) fromIndicator(sender dbus.Sender) *dbus.Error {
	m.p.mu.Lock()
	owner := m.p.indicatorOwner
	m.p.mu.Unlock()
	if owner == "" || string(sender) != owner {
		return dbus.NewError(menuAppIface+".Error.NotAllowed", []any{"only the messaging indicator may call this"})
	}
	return nil
}

func (m *menuApp) records() []Record {
	if m.p.store == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	recs, err := m.p.store.Notifications(ctx, m.appID)
	if err != nil {
		m.p.log.Warn("cannot read persistent notifications", "app_id", m.appID, "err", err)
		return nil
	}
	var out []Record
	for _, r := range recs {
		if r.Card.Persist && r.AppID == m.appID {
			out = append(out, r)
		}
	}
	return out
}

func menuMessageID(r Record) string {
	if r.MsgID != "" {
		return r.MsgID
	}
	return fmt.Sprint(r.ID)
}

func menuMessage(r Record) menuMessageT {
	ts := r.Card.Timestamp
	t := time.Unix(ts, 0)
	if ts == 0 {
		t = r.Shown
	}
	return menuMessageT{ID: menuMessageID(r), Icon: cardIcon(r.Card.Icon), Title: r.Card.Summary, Body: r.Card.Body,
		Time: t.UnixMicro(), Actions: []map[string]dbus.Variant{}, DrawAttention: true}
}

// ListSources answers the indicator: one source "postal" counting the
// app's entries.
func (m *menuApp) ListSources(sender dbus.Sender) ([]menuSourceT, *dbus.Error) {
	if err := m.fromIndicator(sender); err != nil {
		return nil, err // the cards are the app's: only the indicator may read them
	}
	recs := m.records()
	if len(recs) == 0 {
		return []menuSourceT{}, nil
	}
	return []menuSourceT{{ID: menuSource, Label: menuSourceLabel, Icon: themedIcon(strings.TrimSuffix(m.desktopID, ".desktop")),
		Count: uint32(len(recs)), Time: recs[len(recs)-1].Shown.UnixMicro(), DrawAttention: true}}, nil
}

// ListMessages answers the indicator with the app's persistent cards.
func (m *menuApp) ListMessages(sender dbus.Sender) ([]menuMessageT, *dbus.Error) {
	if err := m.fromIndicator(sender); err != nil {
		return nil, err
	}
	out := []menuMessageT{}
	for _, r := range m.records() {
		out = append(out, menuMessage(r))
	}
	return out, nil
}

// ActivateSource is a tap on the source: nothing to do.
func (m *menuApp) ActivateSource(sender dbus.Sender, id string) *dbus.Error {
	return m.fromIndicator(sender)
}

// ActivateMessage is a tap on an entry: its first action is dispatched and
// the entry is gone (the indicator removes it itself).
func (m *menuApp) ActivateMessage(sender dbus.Sender, id, action string, params []dbus.Variant) *dbus.Error {
	if err := m.fromIndicator(sender); err != nil {
		return err
	}
	for _, r := range m.records() {
		if menuMessageID(r) != id {
			continue
		}
		m.p.forgetMenuRecord(m.appID, r)
		if len(r.Card.Actions) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*callTimeout)
			m.p.activate(ctx, m.appID, r.MsgID, r.Card.Actions[0], 0)
			cancel()
		}
		return nil
	}
	return nil
}

// Dismiss is a swipe: the entries are forgotten.
func (m *menuApp) Dismiss(sender dbus.Sender, sources, messages []string) *dbus.Error {
	if err := m.fromIndicator(sender); err != nil {
		return err
	}
	for _, r := range m.records() {
		if slices.Contains(messages, menuMessageID(r)) || slices.Contains(sources, menuSource) {
			m.p.forgetMenuRecord(m.appID, r)
		}
	}
	return nil
}

// methods is the method table of the exported client object. A table, not
// conn.Export: Export finds the methods by reflection (reflect.Type.Method),
// and a reachable call of that keeps every exported method of every type in
// the binary (the linker cannot tell which are used); heraldd was 1.9 MB
// larger with it (issue 17).
func (m *menuApp) methods() map[string]any {
	return map[string]any{
		"ListSources":     m.ListSources,
		"ListMessages":    m.ListMessages,
		"ActivateSource":  m.ActivateSource,
		"ActivateMessage": m.ActivateMessage,
		"Dismiss":         m.Dismiss,
	}
}

const menuAppIntrospection = `<node>
 <interface name="org.ayatana.indicator.messages.application">
  <method name="ListSources"><arg type="a(ssavuxsb)" name="sources" direction="out"/></method>
  <method name="ListMessages"><arg type="a(savsssxaa{sv}b)" name="messages" direction="out"/></method>
  <method name="ActivateSource"><arg type="s" name="source_id" direction="in"/></method>
  <method name="ActivateMessage"><arg type="s" name="message_id" direction="in"/><arg type="s" name="action_id" direction="in"/><arg type="av" name="parameter" direction="in"/></method>
  <method name="Dismiss"><arg type="as" name="sources" direction="in"/><arg type="as" name="messages" direction="in"/></method>
  <signal name="SourceAdded"><arg type="u" name="position"/><arg type="(ssavuxsb)" name="source"/></signal>
  <signal name="SourceChanged"><arg type="(ssavuxsb)" name="source"/></signal>
  <signal name="SourceRemoved"><arg type="s" name="source_id"/></signal>
  <signal name="MessageAdded"><arg type="(savsssxaa{sv}b)" name="message"/></signal>
  <signal name="MessageRemoved"><arg type="s" name="message_id"/></signal>
 </interface>` + introspect.IntrospectDeclarationString + `</node>`

// forgetMenuRecord deletes an entry the indicator already removed.
func (p *Presenter) forgetMenuRecord(appID string, r Record) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := p.store.DeleteNotification(ctx, appID, r.ID); err != nil {
		p.log.Error("cannot delete menu entry", "app_id", appID, "id", r.ID, "err", err)
	}
}

// indicatorRunning reports whether the messaging indicator is on the bus.
func (p *Presenter) indicatorRunning() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.indicatorOwner != ""
}

// menuAppFor exports appID's client object (once) and registers it with
// the indicator (once per indicator owner). It returns nil when the app has
// no desktop entry, which the indicator needs.
func (p *Presenter) menuAppFor(ctx context.Context, appID string, entry *app.DesktopEntry) *menuApp {
	if entry == nil {
		return nil
	}
	p.mu.Lock()
	m, ok := p.menuApps[appID]
	if !ok {
		m = &menuApp{p: p, appID: appID, desktopID: entry.ID + ".desktop"}
		if p.menuApps == nil {
			p.menuApps = map[string]*menuApp{}
		}
		p.menuApps[appID] = m
	}
	owner := p.indicatorOwner
	registered := p.menuRegistered[appID] == owner
	p.mu.Unlock()
	if !ok {
		if err := p.conn.ExportMethodTable(m.methods(), m.path(), menuAppIface); err != nil {
			p.log.Warn("cannot export messaging menu object", "app_id", appID, "err", err)
			return nil
		}
		_ = p.conn.ExportMethodTable(map[string]any{"Introspect": introspect.Introspectable(menuAppIntrospection).Introspect},
			m.path(), "org.freedesktop.DBus.Introspectable")
	}
	if owner != "" && !registered {
		p.registerMenuApp(ctx, m, owner)
	}
	return m
}

func (p *Presenter) registerMenuApp(ctx context.Context, m *menuApp, owner string) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	c := p.conn.Object(indicatorName, indicatorPath).CallWithContext(cctx, indicatorIface+".RegisterApplication", 0, m.desktopID, m.path())
	if c.Err != nil {
		p.log.Warn("cannot register with the messaging indicator", "app_id", m.appID, "desktop_id", m.desktopID, "err", c.Err)
		return
	}
	p.mu.Lock()
	if p.menuRegistered == nil {
		p.menuRegistered = map[string]string{}
	}
	p.menuRegistered[m.appID] = owner
	p.mu.Unlock()
	p.log.Debug("registered with the messaging indicator", "app_id", m.appID, "desktop_id", m.desktopID)
}

// menuAdd saves a persistent card as a messaging-menu entry and tells the
// indicator.
func (p *Presenter) menuAdd(ctx context.Context, r Request, entry *app.DesktopEntry) (bool, error) {
	m := p.menuAppFor(ctx, r.AppID, entry)
	if m == nil || p.store == nil {
		return false, nil
	}
	rec := Record{ID: menuRecordID(r.AppID, r.MsgID), AppID: r.AppID, Tag: r.Tag, MsgID: r.MsgID, Card: *r.Card, Shown: time.Now()}
	rec.Card.Actions = slices.Clone(r.Card.Actions)
	var replaced []Record
	if r.Tag != "" {
		for _, old := range m.records() {
			if old.Tag == r.Tag {
				replaced = append(replaced, old)
			}
		}
	}
	if err := p.store.SaveNotification(ctx, rec); err != nil {
		return false, fmt.Errorf("cannot save menu entry of %q: %w", r.AppID, err)
	}
	for _, old := range replaced {
		if old.ID != rec.ID || old.MsgID != rec.MsgID {
			p.menuRemoved(r.AppID, old)
		}
	}
	if err := p.conn.Emit(m.path(), menuAppIface+".MessageAdded", menuMessage(rec)); err != nil {
		p.log.Debug("cannot emit MessageAdded", "app_id", r.AppID, "err", err)
	}
	p.log.Debug("messaging menu entry added", "app_id", r.AppID, "msg_id", r.MsgID)
	return true, nil
}

// menuRemoved tells the indicator an entry is gone.
func (p *Presenter) menuRemoved(appID string, r Record) {
	p.mu.Lock()
	m := p.menuApps[appID]
	p.mu.Unlock()
	if m == nil {
		return
	}
	if err := p.conn.Emit(m.path(), menuAppIface+".MessageRemoved", menuMessageID(r)); err != nil {
		p.log.Debug("cannot emit MessageRemoved", "app_id", appID, "err", err)
	}
}

// indicatorAppeared registers every app with persistent cards with a new
// indicator owner (also at start).
func (p *Presenter) indicatorAppeared(ctx context.Context, owner string) {
	p.mu.Lock()
	p.indicatorOwner = owner
	p.menuRegistered = nil
	p.mu.Unlock()
	if owner == "" || p.store == nil {
		return
	}
	p.log.Info("messaging indicator found", "owner", owner)
	// Persistent cards shown as resident notifications before the indicator
	// came (it may start after heraldd) are entries now: close the bubbles.
	p.mu.Lock()
	var resident []uint32
	for id, sh := range p.live {
		if sh.persist {
			resident = append(resident, id)
			delete(p.live, id)
		}
	}
	p.mu.Unlock()
	for _, id := range resident {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		if c := p.conn.Object(notifyName, notifyPath).CallWithContext(cctx, notifyIface+".CloseNotification", 0, id); c.Err != nil {
			p.log.Debug("cannot close resident notification", "id", id, "err", c.Err)
		}
		cancel()
	}
	recs, err := p.store.Notifications(ctx, "")
	if err != nil {
		p.log.Error("cannot read stored notifications", "err", err)
		return
	}
	seen := map[string]bool{}
	for _, r := range recs {
		if _, err := app.ParseID(r.AppID); !r.Card.Persist || seen[r.AppID] || err != nil {
			continue
		}
		seen[r.AppID] = true
		p.menuAppFor(ctx, r.AppID, p.desktopEntry(r.AppID))
	}
}
