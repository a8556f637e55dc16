package notifications

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

// Names of the Lomiri platform services (reference/lomiri-platform.md).
const (
	accountsName       = "org.freedesktop.Accounts"
	lomiriSoundIface   = "com.lomiri.touch.AccountsService.Sound"
	ubuntuSoundIface   = "com.ubuntu.touch.AccountsService.Sound"
	greeterName        = "com.lomiri.LomiriGreeter"
	greeterPath        = dbus.ObjectPath("/com/lomiri/LomiriGreeter")
	dispatcherName     = "com.lomiri.URLDispatcher"
	dispatcherPath     = dbus.ObjectPath("/com/lomiri/URLDispatcher")
	hfdName            = "com.lomiri.hfd"
	hfdPath            = dbus.ObjectPath("/com/lomiri/hfd")
	usensordName       = "com.canonical.usensord"
	usensordPath       = dbus.ObjectPath("/com/canonical/usensord/haptic")
	lomiriLauncherName = "com.lomiri.Shell.Launcher"
	unityLauncherName  = "com.canonical.Unity.Launcher"
)

// fallbackVibration is upstream's fallback_vibration for "vibrate": true.
var fallbackVibration = app.Vibration{Pattern: []uint32{100, 100}, Repeat: 2}

// SoundSettings are the user's AccountsService sound settings.
type SoundSettings struct {
	// Found is false when AccountsService has neither Lomiri's nor Ubuntu's
	// sound interface (any desktop): then nothing is silenced.
	Found                         bool
	SilentMode                    bool
	IncomingMessageSound          string
	IncomingMessageVibrate        bool
	IncomingMessageVibrateSilentM bool
}

// Vibrate is upstream's Vibrate(): the silent-mode switch in silent mode,
// else the normal one.
func (s SoundSettings) Vibrate() bool {
	if !s.Found {
		return true
	}
	if s.SilentMode {
		return s.IncomingMessageVibrateSilentM
	}
	return s.IncomingMessageVibrate
}

// soundSettings reads the user's sound settings from AccountsService on the
// system bus, Lomiri's interface first, for every message (changes are
// picked up at once, as upstream's PropertiesChanged handling does).
func (p *Presenter) soundSettings(ctx context.Context) SoundSettings {
	if p.sys == nil {
		return SoundSettings{}
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	path := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/Accounts/User%d", p.uid))
	for _, iface := range []string{lomiriSoundIface, ubuntuSoundIface} {
		var props map[string]dbus.Variant
		err := p.sys.Object(accountsName, path).CallWithContext(cctx, "org.freedesktop.DBus.Properties.GetAll", 0, iface).Store(&props)
		if err != nil || len(props) == 0 {
			continue
		}
		s := SoundSettings{Found: true, IncomingMessageVibrate: true, IncomingMessageVibrateSilentM: true}
		s.SilentMode, _ = props["SilentMode"].Value().(bool)
		if v, ok := props["IncomingMessageVibrate"].Value().(bool); ok {
			s.IncomingMessageVibrate = v
		}
		if v, ok := props["IncomingMessageVibrateSilentMode"].Value().(bool); ok {
			s.IncomingMessageVibrateSilentM = v
		}
		s.IncomingMessageSound, _ = props["IncomingMessageSound"].Value().(string)
		return s
	}
	return SoundSettings{}
}

// locked reads the Lomiri greeter's IsActive for every message, as
// upstream read Unity's; false when there is no greeter.
func (p *Presenter) locked(ctx context.Context) (locked, known bool) {
	if !hasOwner(ctx, p.conn, greeterName) {
		return false, false
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var v dbus.Variant
	err := p.conn.Object(greeterName, greeterPath).CallWithContext(cctx, "org.freedesktop.DBus.Properties.Get", 0, greeterName, "IsActive").Store(&v)
	if err != nil {
		return false, false
	}
	b, ok := v.Value().(bool)
	return b && ok, ok
}

// hasOwner reports whether name has an owner on conn.
func hasOwner(ctx context.Context, conn *dbus.Conn, name string) bool {
	if conn == nil {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var has bool
	err := conn.BusObject().CallWithContext(cctx, "org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has)
	return err == nil && has
}

// activatable reports whether name has an owner or can be started by conn's
// bus.
func activatable(ctx context.Context, conn *dbus.Conn, name string) bool {
	if hasOwner(ctx, conn, name) {
		return true
	}
	if conn == nil {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var names []string
	if err := conn.BusObject().CallWithContext(cctx, "org.freedesktop.DBus.ListActivatableNames", 0).Store(&names); err != nil {
		return false
	}
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// ErrDispatcherRefused wraps a URL the URL dispatcher maps to another app
// (or to none).
var ErrDispatcherRefused = errors.New("the URL dispatcher does not map the action URL to the app")

// testURL validates an action URL with the URL dispatcher's TestURL, as
// upstream: the URL must map to appID (same pkg_app; a versioned app id
// must also match the version).
func (p *Presenter) testURL(ctx context.Context, appID string, entry *app.DesktopEntry, u string) error {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var ids []string
	err := p.conn.Object(dispatcherName, dispatcherPath).CallWithContext(cctx, dispatcherName+".TestURL", 0, []string{u}).Store(&ids)
	if err != nil {
		return fmt.Errorf("%w: %q: %w", ErrDispatcherRefused, u, err)
	}
	if len(ids) != 1 || !sameApp(appID, entry, ids[0]) {
		return fmt.Errorf("%w: %q goes to %q, not %q", ErrDispatcherRefused, u, ids, appID)
	}
	return nil
}

// sameApp reports whether the dispatcher's app id got names appID.
func sameApp(appID string, entry *app.DesktopEntry, got string) bool {
	a, g := idParts(appID), idParts(got)
	if a.click && g.click && a.pkg != "" {
		return a.pkg == g.pkg && a.app == g.app && (a.version == "" || g.version == "" || a.version == g.version)
	}
	return got == appID || entry != nil && got == entry.ID
}

// dispatch sends an accepted action URL to the URL dispatcher, restricted
// to the app's click package (upstream passed no package).
func (p *Presenter) dispatch(ctx context.Context, appID, u string) error {
	pkg := ""
	if a := idParts(appID); a.click {
		pkg = a.pkg
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	c := p.conn.Object(dispatcherName, dispatcherPath).CallWithContext(cctx, dispatcherName+".DispatchURL", 0, u, pkg)
	if c.Err != nil {
		return fmt.Errorf("cannot dispatch the action of %q: %w", appID, c.Err)
	}
	return nil
}

// useDispatcher reports whether actions go through the URL dispatcher.
func (p *Presenter) useDispatcher(ctx context.Context) bool {
	return activatable(ctx, p.conn, dispatcherName)
}

// vibrateLomiri plays v on hfd-service (system bus) or usensord (session
// bus). It reports false when neither runs.
func (p *Presenter) vibrateLomiri(ctx context.Context, appID string, v app.Vibration) bool {
	if v.Default || len(v.Pattern) == 0 {
		v = fallbackVibration
	}
	if v.Repeat == 0 {
		v.Repeat = 1
	}
	if activatable(ctx, p.sys, hfdName) {
		// hfd has no pattern method: the pattern (on, off, on, …
		// milliseconds) is played with one vibrate(i ms) per "on".
		var total time.Duration
		for range v.Repeat {
			for _, ms := range v.Pattern {
				total += time.Duration(ms) * time.Millisecond
			}
		}
		vctx, cancel := context.WithTimeout(context.Background(), total+callTimeout)
		p.players.Go(func() {
			defer cancel()
			obj := p.sys.Object(hfdName, hfdPath)
			for range v.Repeat {
				for i, ms := range v.Pattern {
					if i%2 == 0 && ms > 0 {
						if c := obj.CallWithContext(vctx, hfdName+".Vibrator.vibrate", 0, int32(min(ms, 1<<31-1))); c.Err != nil {
							p.log.Debug("hfd vibration failed", "app_id", appID, "err", c.Err)
							return
						}
					}
					t := time.NewTimer(time.Duration(ms) * time.Millisecond)
					select {
					case <-t.C:
					case <-vctx.Done():
						t.Stop()
						return
					}
				}
			}
		})
		return true
	}
	if hasOwner(ctx, p.conn, usensordName) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		c := p.conn.Object(usensordName, usensordPath).CallWithContext(cctx, usensordName+".haptic.VibratePattern", 0, v.Pattern, v.Repeat)
		if c.Err != nil {
			p.log.Debug("usensord vibration failed", "app_id", appID, "err", c.Err)
		}
		return true
	}
	return false
}

// lomiriSound is the user's message tone (AccountsService
// IncomingMessageSound) when it is a readable file.
func lomiriSound(s SoundSettings) string {
	f := s.IncomingMessageSound
	if !s.Found || f == "" || !filepath.IsAbs(f) {
		return ""
	}
	if st, err := os.Stat(f); err != nil || !st.Mode().IsRegular() {
		return ""
	}
	return f
}

// launcherCounter sets the counter on Lomiri's launcher
// (com.lomiri.Shell.Launcher) or, on older shells, Unity 8's. The path
// element is pkg_app quoted as libnih.
func (p *Presenter) launcherCounter(ctx context.Context, appID string, count int32, visible bool) {
	ap := idParts(appID)
	id := appID
	if ap.click {
		id = ap.pkg + "_" + ap.app
	}
	for _, l := range []struct{ name, base string }{
		{lomiriLauncherName, "/com/lomiri/Shell/Launcher/"},
		{unityLauncherName, "/com/canonical/Unity/Launcher/"},
	} {
		if !hasOwner(ctx, p.conn, l.name) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		obj := p.conn.Object(l.name, dbus.ObjectPath(l.base+app.Quote(id)))
		for _, kv := range []struct {
			k string
			v any
		}{{"count", count}, {"countVisible", visible}} {
			c := obj.CallWithContext(cctx, "org.freedesktop.DBus.Properties.Set", 0, l.name+".Item", kv.k, dbus.MakeVariant(kv.v))
			if c.Err != nil {
				p.log.Debug("launcher counter failed", "app_id", appID, "launcher", l.name, "err", c.Err)
				break
			}
		}
		cancel()
		return
	}
}

// hintFamilies says which vendor hints the notification server takes:
// x-lomiri-* on Lomiri (the server advertises an x-lomiri- capability, or
// the Lomiri greeter runs), x-canonical-* where the server advertises one
// or elsewhere (as before).
func (p *Presenter) hintFamilies(ctx context.Context, caps map[string]bool) (lomiri, canonical bool) {
	for c := range caps {
		lomiri = lomiri || strings.HasPrefix(c, "x-lomiri-")
		canonical = canonical || strings.HasPrefix(c, "x-canonical-")
	}
	if !lomiri {
		lomiri = hasOwner(ctx, p.conn, greeterName)
	}
	return lomiri, canonical || !lomiri
}

// suppressed is upstream's focus rule: nothing is presented while the screen
// is unlocked and the app is focused. Lomiri has had no way to ask which app
// is focused since Unity's WindowStack was removed in 2016, so without an
// Options.Focused source nothing is suppressed and the greeter is not asked.
func (p *Presenter) suppressed(ctx context.Context, appID string) bool {
	if p.focused == nil || !p.focused(appID) {
		return false
	}
	locked, _ := p.locked(ctx)
	return !locked
}

// appParts is an app id split for the platform's paths.
type appParts struct {
	pkg, app, version string
	click             bool
}

// idParts splits a click id into package, app and version; other ids have
// click false and pkg the whole id ("" for legacy ids).
func idParts(appID string) appParts {
	a, err := app.ParseID(appID)
	if err != nil {
		return appParts{}
	}
	return appParts{pkg: a.Package, app: a.App, version: a.Version, click: a.Form == app.FormClick}
}
