package notifications

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

// maxActionURL bounds an action URL.
const maxActionURL = 2048

// ErrForeignURL is returned by CheckActionURL for a URL that does not belong
// to the app.
var ErrForeignURL = errors.New("action url does not belong to the app")

// CheckActionURL reports whether raw is an action URL that belongs to appID,
// whose desktop entry is e (nil when it has none). Accepted are:
//   - appid://<pkg>/<app>/<version> for a click id pkg_app[_version]
//     (any version, e.g. current-user-version), and appid://<app_id>/… for
//     other ids;
//   - application:///<desktop id>.desktop naming the app's own entry;
//   - any other scheme (http and https included) only when the app's desktop
//     entry declares it with MimeType x-scheme-handler/<scheme>.
//
// Everything else, including a URL with control characters or longer than
// 2048 bytes, is refused with an error wrapping ErrForeignURL.
func CheckActionURL(appID string, e *app.DesktopEntry, raw string) error {
	if raw == "" || len(raw) > maxActionURL {
		return fmt.Errorf("%w: empty or longer than %d bytes", ErrForeignURL, maxActionURL)
	}
	for _, c := range raw {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: control character in %q", ErrForeignURL, raw)
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrForeignURL, err)
	}
	scheme := strings.ToLower(u.Scheme)
	aid, err := app.ParseID(appID)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrForeignURL, err)
	}
	switch scheme {
	case "":
		return fmt.Errorf("%w: %q has no scheme", ErrForeignURL, raw)
	case "appid":
		switch aid.Form {
		case app.FormClick, app.FormLegacy: // appid://<pkg>/<app>/<version>, legacy package "_"
			pkg := aid.Package
			if aid.Form == app.FormLegacy {
				pkg = "_"
			}
			parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
			if u.Host == pkg && len(parts) >= 1 && parts[0] == aid.App {
				return nil
			}
		default:
			if u.Host == appID {
				return nil
			}
		}
		return fmt.Errorf("%w: %q names another app than %q", ErrForeignURL, raw, appID)
	case "application":
		id := strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), ".desktop")
		if u.Host == "" && (id == appID || e != nil && id == e.ID) {
			return nil
		}
		return fmt.Errorf("%w: %q names another app than %q", ErrForeignURL, raw, appID)
	}
	if e != nil && slices.Contains(e.Schemes, scheme) {
		return nil
	}
	return fmt.Errorf("%w: scheme %q is not handled by %q", ErrForeignURL, scheme, appID)
}

// LaunchRequest is one activated notification action.
type LaunchRequest struct {
	AppID string
	URL   string
	// Entry is the app's desktop entry, nil when none was found.
	Entry *app.DesktopEntry
}

// Launcher opens an app on an action URL. Implementations must be safe for
// concurrent use.
type Launcher interface {
	Launch(ctx context.Context, r LaunchRequest) error
}

// AppLauncher is the default Launcher: org.freedesktop.Application.Open on
// the entry's D-Bus name when the entry is DBusActivatable, else the entry's
// Exec (no shell, field codes expanded), else xdg-open URL. Started programs
// are reaped by a goroutine per program; Wait waits for them.
type AppLauncher struct {
	Conn   *dbus.Conn
	Logger *slog.Logger
	wg     sync.WaitGroup
}

// Launch implements Launcher.
func (l *AppLauncher) Launch(ctx context.Context, r LaunchRequest) error {
	e := r.Entry
	if e != nil && e.DBusActivatable && l.Conn != nil {
		return l.open(ctx, e, r.URL)
	}
	var argv []string
	if e != nil && e.Exec != "" {
		var err error
		if argv, err = ExpandExec(e, r.URL); err != nil {
			return fmt.Errorf("cannot launch %q: %w", r.AppID, err)
		}
	} else {
		argv = []string{"xdg-open", r.URL}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("cannot launch %q: %w", r.AppID, err)
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Args[0] = argv[0]
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot launch %q: %w", r.AppID, err)
	}
	l.wg.Go(func() {
		err := cmd.Wait()
		if l.Logger != nil {
			l.Logger.Debug("launched program exited", "app_id", r.AppID, "err", err)
		}
	})
	return nil
}

// Wait waits until every program this launcher started has exited.
func (l *AppLauncher) Wait() { l.wg.Wait() }

// dbusAppPath is the object path of a D-Bus activatable app: its name with
// "." → "/" and "-" → "_" (Desktop Entry Specification, D-Bus Activation).
func dbusAppPath(id string) dbus.ObjectPath {
	return dbus.ObjectPath("/" + strings.ReplaceAll(strings.ReplaceAll(id, ".", "/"), "-", "_"))
}

func (l *AppLauncher) open(ctx context.Context, e *app.DesktopEntry, u string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	path := dbusAppPath(e.ID)
	if !path.IsValid() || !app.ValidBusName(e.ID) {
		return fmt.Errorf("cannot open %q: invalid bus name", e.ID)
	}
	obj := l.Conn.Object(e.ID, path)
	platform := map[string]dbus.Variant{}
	var call *dbus.Call
	if u != "" {
		call = obj.CallWithContext(ctx, "org.freedesktop.Application.Open", 0, []string{u}, platform)
	} else {
		call = obj.CallWithContext(ctx, "org.freedesktop.Application.Activate", 0, platform)
	}
	if call.Err != nil {
		return fmt.Errorf("cannot open %q: %w", e.ID, call.Err)
	}
	return nil
}

// checkAction accepts an action URL of appID: through the URL dispatcher's
// TestURL where it runs (as upstream), else CheckActionURL.
func (p *Presenter) checkAction(ctx context.Context, appID string, e *app.DesktopEntry, u string) error {
	if p.useDispatcher(ctx) {
		return p.testURL(ctx, appID, e, u)
	}
	return CheckActionURL(appID, e, u)
}

// activate opens an accepted action URL: DispatchURL restricted to the app's
// package where the URL dispatcher runs, else the Launcher.
//
// id is the notification id of a bubble, 0 for a messaging-menu entry.
func (p *Presenter) activate(ctx context.Context, appID, msgID, u string, id uint32) {
	entry := p.desktopEntry(appID)
	if err := p.checkAction(ctx, appID, entry, u); err != nil {
		p.log.Warn("action refused", "app_id", appID, "msg_id", msgID, "id", id, "err", err)
		return
	}
	p.log.Info("notification action", "app_id", appID, "msg_id", msgID, "id", id)
	p.log.Debug("launching", "app_id", appID, "url", u)
	if p.useDispatcher(ctx) {
		if err := p.dispatch(ctx, appID, u); err != nil {
			p.log.Error("cannot dispatch notification action", "app_id", appID, "err", err)
		} else {
			p.log.Info("action dispatched by the URL dispatcher", "app_id", appID, "msg_id", msgID)
		}
		return
	}
	if err := p.launch.Launch(ctx, LaunchRequest{AppID: appID, URL: u, Entry: entry}); err != nil {
		p.log.Error("cannot launch app for notification action", "app_id", appID, "err", err)
	}
}
