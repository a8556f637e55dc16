package notifications

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// The per-app notification settings of Lomiri's System Settings
// (lomiri-schemas) and of Ubuntu Touch before it.
const (
	lomiriAppSchema    = "com.lomiri.notifications.settings"
	lomiriAppPath      = "/com/lomiri/NotificationSettings/"
	lomiriGlobalSchema = "com.lomiri.notifications.settings.applications"
	ubuntuAppSchema    = "com.ubuntu.notifications.settings"
	ubuntuAppPath      = "/com/ubuntu/NotificationSettings/"
	ubuntuGlobalSchema = "com.ubuntu.notifications.settings.applications"
	// dconfWriterIface is the interface of dconf-service's change signal
	// Notify(s prefix, as changes, s tag), sent for every write.
	dconfWriterIface = "ca.desrt.dconf.Writer"
)

// gsettingsTimeout bounds one gsettings run.
const gsettingsTimeout = 5 * time.Second

// AppSettings are an app's switches in System Settings ▸ Notifications.
// Every one is true unless the user turned it off; a missing schema means
// all true, as upstream.
type AppSettings struct {
	Enabled    bool // enable-notifications: off → only the emblem counter
	Bubbles    bool // use-bubbles-notifications: off → no bubble (the sound is played without one)
	Sounds     bool // use-sounds-notifications: off → no sound
	Vibrations bool // use-vibrations-notifications: off → no vibration
	List       bool // use-list-notifications: off → no messaging-menu entry
}

// allOn is the setting of an app without a schema or key.
var allOn = AppSettings{Enabled: true, Bubbles: true, Sounds: true, Vibrations: true, List: true}

// Settings reads the per-app GSettings with the gsettings program, Lomiri's
// schema first and Ubuntu's as the fallback, and caches them until dconf
// reports a change (Run listens for dconf-service's Notify signal). It is
// safe for concurrent use.
type Settings struct {
	// Gsettings is the gsettings program ("" → looked up on PATH; when it
	// is missing every app has every switch on).
	Gsettings string

	mu sync.Mutex
	// Guarded by mu:
	apps          map[string]AppSettings
	vibrateSilent *bool
	gen           uint64 // bumped by Changed: a read that began before is not cached
}

// settingsPath is the relocatable schema path of appID's settings below
// base: <pkg>/<app>/ for click ids (no version, as upstream), dpkg/<name>/
// for legacy and desktop-style ids.
func settingsPath(base, appID string) string {
	p := idParts(appID)
	if p.click && p.pkg != "" {
		return base + p.pkg + "/" + p.app + "/"
	}
	return base + "dpkg/" + strings.TrimPrefix(appID, "_") + "/"
}

// errNoSchema is returned by list when the schema is not installed.
var errNoSchema = errors.New("no such schema")

// list runs gsettings list-recursively on schema (with an optional path)
// and returns key → value.
func (s *Settings) list(ctx context.Context, schema string) (map[string]string, error) {
	prog := s.Gsettings
	if prog == "" {
		prog = "gsettings"
	}
	path, err := exec.LookPath(prog)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoSchema, err)
	}
	ctx, cancel := context.WithTimeout(ctx, gsettingsTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "list-recursively", schema)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if e := stderr.String(); strings.Contains(e, "No such schema") || strings.Contains(e, "No schemas installed") {
			return nil, errNoSchema
		}
		return nil, fmt.Errorf("gsettings list-recursively %s: %w: %s", schema, err, strings.TrimSpace(stderr.String()))
	}
	kv := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		if len(f) == 3 {
			kv[f[1]] = f[2]
		}
	}
	return kv, nil
}

// App returns appID's settings: Lomiri's schema, else Ubuntu's, else all on.
func (s *Settings) App(ctx context.Context, appID string) (AppSettings, error) {
	s.mu.Lock()
	if a, ok := s.apps[appID]; ok {
		s.mu.Unlock()
		return a, nil
	}
	gen := s.gen
	s.mu.Unlock()
	a := allOn
	var err error
	for _, sc := range []struct{ schema, base string }{{lomiriAppSchema, lomiriAppPath}, {ubuntuAppSchema, ubuntuAppPath}} {
		var kv map[string]string
		kv, err = s.list(ctx, sc.schema+":"+settingsPath(sc.base, appID))
		if errors.Is(err, errNoSchema) {
			err = nil
			continue
		}
		if err != nil {
			break
		}
		a = AppSettings{
			Enabled:    kv["enable-notifications"] != "false",
			Bubbles:    kv["use-bubbles-notifications"] != "false",
			Sounds:     kv["use-sounds-notifications"] != "false",
			Vibrations: kv["use-vibrations-notifications"] != "false",
			List:       kv["use-list-notifications"] != "false",
		}
		break
	}
	if err != nil {
		return allOn, fmt.Errorf("cannot read notification settings of %q: %w", appID, err)
	}
	s.mu.Lock()
	if s.apps == nil {
		s.apps = map[string]AppSettings{}
	}
	if s.gen == gen {
		s.apps[appID] = a
	}
	s.mu.Unlock()
	return a, nil
}

// VibrateSilentMode is the global vibrate-silent-mode key (default true).
func (s *Settings) VibrateSilentMode(ctx context.Context) bool {
	s.mu.Lock()
	if v := s.vibrateSilent; v != nil {
		s.mu.Unlock()
		return *v
	}
	gen := s.gen
	s.mu.Unlock()
	v := true
	for _, schema := range []string{lomiriGlobalSchema, ubuntuGlobalSchema} {
		kv, err := s.list(ctx, schema)
		if err != nil {
			continue
		}
		v = kv["vibrate-silent-mode"] != "false"
		break
	}
	s.mu.Lock()
	if s.gen == gen {
		s.vibrateSilent = &v
	}
	s.mu.Unlock()
	return v
}

// Changed forgets every cached setting; Run calls it when dconf reports a
// write.
func (s *Settings) Changed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apps, s.vibrateSilent = nil, nil
	s.gen++
}

// SetApplications writes the global "applications" list (entries
// pkg/app/version, and dpkg/<name>/0 for legacy helpers) that System
// Settings ▸ Notifications shows, in every installed schema of Lomiri and
// Ubuntu. It returns the schemas written; none is not an error.
func SetApplications(ctx context.Context, gsettings string, apps []string) ([]string, error) {
	if gsettings == "" {
		gsettings = "gsettings"
	}
	path, err := exec.LookPath(gsettings)
	if err != nil {
		return nil, nil
	}
	var quoted []string
	for _, a := range apps {
		if strings.ContainsAny(a, "'\\\n") {
			return nil, fmt.Errorf("invalid application entry %q", a)
		}
		quoted = append(quoted, "'"+a+"'")
	}
	value := "@as [" + strings.Join(quoted, ", ") + "]"
	run := func(args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, gsettingsTimeout)
		defer cancel()
		out, err := exec.CommandContext(cctx, path, args...).CombinedOutput()
		return string(out), err
	}
	var written []string
	var errs []error
	for _, g := range []struct{ global, app, base string }{
		{lomiriGlobalSchema, lomiriAppSchema, lomiriAppPath},
		{ubuntuGlobalSchema, ubuntuAppSchema, ubuntuAppPath},
	} {
		old, _ := run("get", g.global, "applications")
		out, err := run("set", g.global, "applications", value)
		switch {
		case err == nil:
			written = append(written, g.global)
		case strings.Contains(out, "No such schema"), strings.Contains(out, "No schemas installed"):
			continue
		default:
			errs = append(errs, fmt.Errorf("cannot set %s applications: %w: %s", g.global, err, strings.TrimSpace(out)))
			continue
		}
		// As upstream: an app that left the list (uninstalled) has its
		// switches reset.
		for _, gone := range removedApps(old, apps) {
			f := strings.Split(gone, "/")
			if len(f) != 3 || f[0] == "" || f[1] == "" {
				continue
			}
			if out, err := run("reset-recursively", g.app+":"+g.base+f[0]+"/"+f[1]+"/"); err != nil {
				errs = append(errs, fmt.Errorf("cannot reset the settings of %s: %w: %s", gone, err, strings.TrimSpace(out)))
			}
		}
	}
	return written, errors.Join(errs...)
}

// removedApps returns the entries of the printed GVariant string array old
// ("['a', 'b']" or "@as []") that are not in apps.
func removedApps(old string, apps []string) []string {
	old = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(old), "@as"))
	old = strings.TrimSuffix(strings.TrimPrefix(old, "["), "]")
	var gone []string
	for _, e := range strings.Split(old, ",") {
		e = strings.Trim(strings.TrimSpace(e), "'")
		if e != "" && !strings.ContainsAny(e, "'\\") && !slices.Contains(apps, e) {
			gone = append(gone, e)
		}
	}
	return gone
}
