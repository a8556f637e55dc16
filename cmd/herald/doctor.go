package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/client/lomiri"
	"github.com/heraldpush/herald/helpers"
)

// check is one doctor check: ok, or a problem and its fix.
type check struct {
	name string
	err  error
	fix  string
}

// warning is a check error that is reported but does not fail the doctor.
type warning struct{ error }

func doctorCmd() *command {
	var configPath *string
	return &command{
		name: "doctor", args: "[--config PATH]",
		help: "Checks the session bus, the daemon, the configuration, the push server, the state\ndirectory, the helper of every registered app and the notification server, and says\nhow to fix each problem. Exits with status 1 when a check fails.",
		flags: func(fs *flag.FlagSet) {
			configPath = fs.String("config", "", "check the configuration in `PATH` instead of the XDG locations")
		},
		run: func(ctx context.Context, e *cli, fs *flag.FlagSet, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%w: unexpected argument %q", errUsage, args[0])
			}
			checks := e.doctor(ctx, *configPath)
			failed := 0
			for _, c := range checks {
				if c.err == nil {
					fmt.Fprintf(e.stdout, "ok    %s\n", c.name)
					continue
				}
				if _, ok := c.err.(warning); ok {
					fmt.Fprintf(e.stdout, "warn  %s: %v\n", c.name, c.err)
					if c.fix != "" {
						fmt.Fprintf(e.stdout, "      fix: %s\n", c.fix)
					}
					continue
				}
				failed++
				fmt.Fprintf(e.stdout, "FAIL  %s: %v\n", c.name, c.err)
				if c.fix != "" {
					fmt.Fprintf(e.stdout, "      fix: %s\n", c.fix)
				}
			}
			if failed > 0 {
				fmt.Fprintf(e.stderr, "herald doctor: %d of %d checks failed\n", failed, len(checks))
				return errFailed
			}
			return nil
		},
	}
}

func (e *cli) doctor(ctx context.Context, configPath string) []check {
	var out []check
	add := func(name string, err error, fix string) { out = append(out, check{name, err, fix}) }
	env := config.ReadEnv(e.getenv)
	quiet := slog.New(slog.DiscardHandler)

	cfg, err := config.LoadConfig(env, configPath, quiet, nil)
	where := cfg.Path
	if where == "" {
		where = "defaults (no config file)"
	}
	add("configuration: "+where, err, "correct the file; the shipped config.toml documents every key")
	if err != nil {
		cfg = config.DefaultConfig()
		cfg.Env = env
		_ = cfg.Validate()
	}

	// Which push server each kind of app uses, and whether it is reachable.
	out = append(out, pushServers(ctx, cfg)...)

	// State directory and store.
	dbPath := filepath.Join(cfg.StateDir, "herald.db")
	add("state "+dbPath, checkStore(dbPath), "make "+cfg.StateDir+" writable, or move a damaged herald.db away")

	// Session bus and daemon.
	conn, err := e.sessionBus()
	add("session bus", err, "run inside a desktop session, or set DBUS_SESSION_BUS_ADDRESS")
	if err != nil {
		return out
	}
	defer conn.Close()
	st, err := getStatus(ctx, conn)
	add("heraldd running", err, "systemctl --user enable --now heraldd")
	if err == nil {
		if len(st.Connections) == 0 {
			var cerr error
			if st.State != "connected" && len(st.Registrations) > 0 {
				cerr = fmt.Errorf("state %s (%s)", st.State, st.LastError)
			}
			add("heraldd connection ("+st.State+")", cerr, "check the network and the server; 'herald status' shows the last error")
		}
		for _, c := range st.Connections {
			apps := 0
			for _, r := range st.Registrations {
				if r.Backend == c.Backend {
					apps++
				}
			}
			var cerr error
			if c.State != "connected" && apps > 0 {
				cerr = fmt.Errorf("state %s (%s)", c.State, c.LastError)
			}
			add(fmt.Sprintf("heraldd %s connection (%s, %d apps)", c.Backend, c.State, apps), cerr, "check the network and the server; 'herald status' shows the last error")
		}
		finder := helpers.NewFinder(helpers.Dirs{DataHome: env.DataHome, DataDirs: env.DataDirs, LomiriDataHome: env.DataHome,
			LegacyDirs: helpers.LegacyDirs()}, quiet)
		for _, r := range st.Registrations {
			if r.Kind != string(app.KindLomiri) {
				continue
			}
			h, ok := finder.Lookup(r.AppID)
			if !ok {
				add("helper of "+r.AppID+" (none: payloads are used as they are)", nil, "")
				continue
			}
			add("helper of "+r.AppID+": "+h.Exec, h.Check(), "reinstall the app, or fix "+h.Source)
			if h.Profile != "" {
				add("confinement of the helper of "+r.AppID, checkProfile(cfg.AppArmorFS, h.Profile),
					"reinstall the app so that click loads its AppArmor profiles (aa-status lists them)")
			}
		}
	}
	var owner string
	err = conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, "org.freedesktop.Notifications").Store(&owner)
	if err != nil {
		err = errors.New("no notification server on the session bus")
	}
	add("notification server", err, "start your desktop's notification daemon (for example dunst or mako)")
	out = append(out, lomiriChecks(ctx, conn, cfg)...)
	return out
}

// pushServers says which push server each kind of app uses and checks
// that it answers.
func pushServers(ctx context.Context, cfg config.Config) []check {
	var out []check
	autopush := func(kind string) check {
		if cfg.Server == "" {
			return check{kind + ": no autopush server", errors.New(`server = "" turns the autopush backend off`),
				`remove the server line to use Mozilla's public push service, or set server = "wss://…/"`}
		}
		name := kind + ": autopush server " + cfg.Server
		if cfg.Server == config.DefaultServer {
			name += " (Mozilla's public push service, the default)"
		}
		return check{name, checkAutopush(ctx, cfg.Server), "check the network and the URL; 'herald status' shows the daemon's last error"}
	}
	if c, ok := plainWebsocket(cfg.Server); ok {
		out = append(out, c)
	}
	if cfg.UnifiedPush.Backend == app.BackendNtfy {
		out = append(out, check{"UnifiedPush apps: ntfy server " + cfg.Ntfy.URL, checkNtfy(ctx, cfg.Ntfy),
			"check the network, and url (and user/password or token) in [ntfy]"})
	} else {
		out = append(out, autopush("UnifiedPush apps"))
	}
	if l := cfg.Lomiri; l.Use {
		from := l.Source
		if l.Source == config.LomiriFromUpstream && l.Upstream != nil {
			from += " " + l.Upstream.Path
		}
		out = append(out, check{"Lomiri apps: Lomiri push service " + l.Addr + ", registration " + l.RegistrationURL + " (from " + from + ")",
			errors.Join(checkLomiri(ctx, l), checkHTTP(ctx, l.RegistrationURL)),
			"check the network, and addr, registration_url and cert_pem_file in [lomiri] (or in the lomiri-push-service config.json named)"})
	} else {
		name := "Lomiri apps"
		if l.Upstream != nil {
			name += " (lomiri-push-service config " + l.Upstream.Path + " ignored: [lomiri] enabled = false)"
		}
		out = append(out, autopush(name))
	}
	return out
}

// plainWebsocket warns about a ws:// server that is not on this machine: the
// uaid (a bearer secret: whoever has it takes the device's place) and every
// message's metadata would cross the network in clear.
func plainWebsocket(server string) (check, bool) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "ws" {
		return check{}, false
	}
	host := u.Hostname()
	if host == "localhost" {
		return check{}, false
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return check{}, false
	}
	return check{"autopush server " + server + " is not encrypted",
		warning{errors.New("plain ws:// to a host that is not this machine: the device identity (a bearer secret) and message metadata travel in clear")},
		`use wss:// (herald-server --tls-cert/--tls-key, or TLS at a proxy)`}, true
}

// checkNtfy checks that the ntfy server answers its documented health
// check, GET /v1/health → {"healthy":true}, with the configured
// credentials.
func checkNtfy(ctx context.Context, n config.NtfyConfig) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := strings.TrimRight(n.URL, "/") + "/v1/health"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	switch {
	case n.Token != "":
		req.Header.Set("Authorization", "Bearer "+n.Token)
	case n.User != "":
		req.SetBasicAuth(n.User, n.Password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach %s: %w", n.URL, err)
	}
	defer resp.Body.Close()
	var h struct {
		Healthy bool `json:"healthy"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&h) != nil || !h.Healthy {
		return fmt.Errorf("%s answered %s, not {\"healthy\":true}", u, resp.Status)
	}
	return nil
}

// checkAutopush checks that an autopush server answers HTTP at its origin:
// a herald-server answers GET /healthz with 200; any other autopush server
// (Mozilla's) answers something, which is enough to know it is reachable.
func checkAutopush(ctx context.Context, server string) error {
	origin, err := config.HTTPOrigin(server)
	if err != nil {
		return err
	}
	status, err := httpGet(ctx, origin+"/healthz")
	if err != nil {
		return err
	}
	if status >= 500 {
		return fmt.Errorf("%s/healthz answered %d", origin, status)
	}
	return nil
}

// checkHTTP checks that url answers HTTP below 500.
func checkHTTP(ctx context.Context, url string) error {
	status, err := httpGet(ctx, url)
	if err != nil {
		return err
	}
	if status >= 500 {
		return fmt.Errorf("%s answered %d", url, status)
	}
	return nil
}

func httpGet(ctx context.Context, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("cannot reach %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, nil
}

// checkStore checks that the daemon's database, when it exists, is a
// readable sqlite file (its header; the CLI links no sqlite: heraldd owns the
// database and migrates it); a missing one is fine (it is created at the
// first start) if its directory can be created.
func checkStore(path string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		dir := filepath.Dir(path)
		for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
			if fi, err := os.Stat(d); err == nil {
				if !fi.IsDir() {
					return fmt.Errorf("%s is not a directory", d)
				}
				if err := unixAccessW(d); err != nil {
					return fmt.Errorf("%s is not writable", d)
				}
				return nil
			}
		}
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	hdr := make([]byte, len(sqliteMagic))
	if _, err := io.ReadFull(f, hdr); err != nil || string(hdr) != sqliteMagic {
		return fmt.Errorf("%s is not a sqlite database", path)
	}
	return nil
}

// sqliteMagic starts every sqlite 3 database file.
const sqliteMagic = "SQLite format 3\x00"

// checkLomiri checks that the Lomiri push service's delivery hosts can be
// found: GET addr for a hosts URL, else a TCP dial of the first host.
func checkLomiri(ctx context.Context, l config.LomiriConfig) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !strings.HasPrefix(l.Addr, "http") {
		host, _, _ := strings.Cut(l.Addr, "|")
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			return fmt.Errorf("cannot reach %s: %w", host, err)
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.Addr, nil)
	if err != nil {
		return err
	}
	resp, err := lomiri.HTTPClient(l.CertPEM, 10*time.Second).Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach %s: %w", l.Addr, err)
	}
	defer resp.Body.Close()
	var hosts struct {
		Hosts []string `json:"hosts"`
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", l.Addr, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&hosts); err != nil || len(hosts.Hosts) == 0 {
		return fmt.Errorf("%s answered no delivery hosts", l.Addr)
	}
	return nil
}

// lomiriChecks are the checks of the Lomiri platform (issue 15): who owns
// the Lomiri/Ubuntu push names, the click hook, AppArmor, and which Lomiri
// services heraldd will use.
func lomiriChecks(ctx context.Context, conn *dbus.Conn, cfg config.Config) []check {
	var out []check
	add := func(name string, err error, fix string) { out = append(out, check{name, err, fix}) }
	owner := func(name string) string {
		var o string
		_ = conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, name).Store(&o)
		return o
	}
	herald := owner("org.herald.Daemon")
	for _, name := range []string{"com.lomiri.Postal", "com.ubuntu.Postal"} {
		var err error
		if o := owner(name); o != "" && o != herald {
			err = fmt.Errorf("%s is owned by %s, not heraldd (lomiri-push-service or ubuntu-push-client runs)", name, o)
		}
		add("bus name "+name, err, "stop the other push daemon (systemctl --user disable --now lomiri-push-service) and restart heraldd")
	}
	const hook = "/usr/share/click/hooks/push-helper.hook"
	if _, err := exec.LookPath("click"); err == nil {
		b, err := os.ReadFile(hook)
		if err == nil && !strings.Contains(string(b), "/usr/libexec/herald/click-hook-wrapper") {
			err = fmt.Errorf("%s is not Herald's (another push service's hook is installed)", hook)
		}
		add("click push-helper hook", err, "reinstall the herald package; then run 'herald click-hook'")
	} else {
		add("click push-helper hook (no click: only Herald manifests and helpers_data.json)", nil, "")
	}
	if _, err := os.Stat(cfg.AppArmorFS); err == nil {
		_, err := exec.LookPath("aa-exec")
		add("AppArmor enabled: confined click helpers run with aa-exec", err, "install the apparmor package (aa-exec)")
	} else {
		add("AppArmor not enabled: click helpers run unconfined", nil, "")
	}
	schemas := "none: every app has every switch on"
	// The per-app schemas are relocatable: list-schemas does not show them.
	if out, err := exec.CommandContext(ctx, "gsettings", "list-relocatable-schemas").Output(); err == nil {
		switch {
		case strings.Contains(string(out), "com.lomiri.notifications.settings\n"):
			schemas = "com.lomiri.notifications.settings"
		case strings.Contains(string(out), "com.ubuntu.notifications.settings\n"):
			schemas = "com.ubuntu.notifications.settings"
		}
	}
	add("per-app notification settings: "+schemas, nil, "")
	for _, s := range []struct{ name, what string }{
		{"org.ayatana.indicator.messages", "messaging indicator (persistent cards)"},
		{"com.lomiri.URLDispatcher", "URL dispatcher (actions)"},
		{"com.lomiri.Shell.Launcher", "Lomiri launcher (counters)"},
		{"com.lomiri.LomiriGreeter", "Lomiri greeter (x-lomiri hints)"},
	} {
		state := "not running"
		if owner(s.name) != "" {
			state = "running"
		}
		add(s.what+": "+state, nil, "")
	}
	return out
}

// checkProfile reports whether a confined helper's AppArmor profile is
// loaded when AppArmor is enabled.
func checkProfile(securityFS, profile string) error {
	b, err := os.ReadFile(filepath.Join(securityFS, "profiles"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // AppArmor not enabled: the helper runs unconfined
	}
	if err != nil {
		return fmt.Errorf("cannot read the loaded AppArmor profiles: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if n, _, ok := strings.Cut(line, " ("); ok && n == profile {
			return nil
		}
	}
	return fmt.Errorf("AppArmor profile %s is not loaded: heraldd refuses to run the helper", profile)
}
