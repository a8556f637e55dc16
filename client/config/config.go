package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultServer is the autopush server UnifiedPush apps use when nothing
// is configured: Mozilla's public push service, the one Firefox uses.
const DefaultServer = "wss://push.services.mozilla.com/"

// DefaultNtfyURL is the ntfy server of [unifiedpush] backend = "ntfy" when
// [ntfy] names none: the public ntfy.sh.
const DefaultNtfyURL = "https://ntfy.sh"

// Config is heraldd's configuration. Every key is optional.
type Config struct {
	// Server is the websocket URL of the autopush server (ws:// or wss://):
	// a herald-server or any autopush server (default DefaultServer).
	Server string `toml:"server"`
	// StateDir holds herald.db (default $XDG_STATE_HOME/herald).
	StateDir           string   `toml:"state_dir"`
	HelperTimeout      Duration `toml:"helper_timeout"`
	HelperConcurrency  int      `toml:"helper_concurrency"`
	RequireConfinement bool     `toml:"require_confinement"`
	LogLevel           string   `toml:"log_level"`
	// PingInterval is the server's keepalive interval and PingGrace the
	// slack after it before the connection is declared dead.
	PingInterval Duration `toml:"ping_interval"`
	PingGrace    Duration `toml:"ping_grace"`
	// RequestTimeout bounds dial, hello, register and unregister.
	RequestTimeout Duration `toml:"request_timeout"`
	// ReconnectMin and ReconnectMax bound the redial backoff (1s, 5m).
	ReconnectMin Duration `toml:"reconnect_min"`
	ReconnectMax Duration `toml:"reconnect_max"`
	// Compression asks the server for permessage-deflate (used only when
	// the server agrees; default true).
	Compression bool `toml:"compression"`
	// Durability is "full" (every commit survives a power loss, default)
	// or "normal" (survives a crash of the daemon; faster).
	Durability string `toml:"durability"`
	// InboxLimit is how many messages one app's inbox keeps; beyond it the
	// oldest are dropped and counted (inbox_full_dropped; default 1000).
	InboxLimit int `toml:"inbox_limit"`
	// UnifiedPushForgetAfter is how long a UnifiedPush connector may stay
	// not activatable (its D-Bus service file gone) at daemon starts before
	// its registration and queue are dropped (default 7 days).
	UnifiedPushForgetAfter Duration `toml:"unifiedpush_forget_after"`
	// Lomiri is the [lomiri] table: the Lomiri push service backend.
	Lomiri LomiriConfig `toml:"lomiri"`
	// Ntfy is the [ntfy] table: the ntfy backend.
	Ntfy NtfyConfig `toml:"ntfy"`
	// UnifiedPush is the [unifiedpush] table: which backend UnifiedPush
	// apps register with.
	UnifiedPush UnifiedPushConfig `toml:"unifiedpush"`
	// Urgency is the [urgency] table: the lowest urgency wanted by device
	// state, and the resume check.
	Urgency UrgencyConfig `toml:"urgency"`
	// AppArmorFS is the AppArmor securityfs directory (default
	// /sys/kernel/security/apparmor): when it exists, AppArmor is enabled and
	// click helpers run under their profile through aa-exec.
	AppArmorFS string `toml:"apparmor_securityfs"`

	// Path is the file the configuration was read from ("" when none).
	Path string `toml:"-"`
	// Env holds what the environment says (session bus, XDG directories).
	Env Env `toml:"-"`
}

// Env is the part of the environment the daemon uses, read only by LoadConfig.
type Env struct {
	SessionBus string   // session bus address
	SystemBus  string   // $DBUS_SYSTEM_BUS_ADDRESS, else the standard socket
	ConfigHome string   // $XDG_CONFIG_HOME
	ConfigDirs []string // $XDG_CONFIG_DIRS
	StateHome  string   // $XDG_STATE_HOME
	DataHome   string   // $XDG_DATA_HOME
	DataDirs   []string // $XDG_DATA_DIRS
	CacheHome  string   // $XDG_CACHE_HOME
	RuntimeDir string   // $XDG_RUNTIME_DIR
	Home       string
	// WatchdogUSec is $WATCHDOG_USEC (systemd), 0 when unset.
	Watchdog time.Duration
}

// Duration is a time.Duration written as a Go duration string ("5s").
type Duration struct{ time.Duration }

// UnmarshalText parses a duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q: %w", b, err)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: negative", b)
	}
	d.Duration = v
	return nil
}

// MarshalText renders the duration.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultConfig returns the defaults of every key.
func DefaultConfig() Config {
	return Config{
		Server:                 DefaultServer,
		HelperTimeout:          Duration{5 * time.Second},
		HelperConcurrency:      5,
		LogLevel:               "info",
		PingInterval:           Duration{5 * time.Minute},
		PingGrace:              Duration{30 * time.Second},
		RequestTimeout:         Duration{20 * time.Second},
		ReconnectMin:           Duration{time.Second},
		ReconnectMax:           Duration{5 * time.Minute},
		Compression:            true,
		Durability:             "full",
		InboxLimit:             1000,
		UnifiedPushForgetAfter: Duration{7 * 24 * time.Hour},
		AppArmorFS:             "/sys/kernel/security/apparmor",
		Lomiri:                 defaultLomiri(),
		Ntfy:                   NtfyConfig{URL: DefaultNtfyURL, Keepalive: Duration{45 * time.Second}},
		Urgency:                defaultUrgency(),
	}
}

// ReadEnv reads the environment through getenv (os.Getenv in main).
func ReadEnv(getenv func(string) string) Env {
	e := Env{Home: getenv("HOME"), RuntimeDir: getenv("XDG_RUNTIME_DIR")}
	orHome := func(v, rel string) string {
		if v != "" && filepath.IsAbs(v) {
			return v
		}
		if e.Home == "" {
			return ""
		}
		return filepath.Join(e.Home, rel)
	}
	list := func(v, def string) []string {
		if v == "" {
			v = def
		}
		var out []string
		for _, p := range strings.Split(v, ":") {
			if p != "" && filepath.IsAbs(p) {
				out = append(out, p)
			}
		}
		return out
	}
	e.ConfigHome = orHome(getenv("XDG_CONFIG_HOME"), ".config")
	e.StateHome = orHome(getenv("XDG_STATE_HOME"), ".local/state")
	e.DataHome = orHome(getenv("XDG_DATA_HOME"), ".local/share")
	e.CacheHome = orHome(getenv("XDG_CACHE_HOME"), ".cache")
	e.ConfigDirs = list(getenv("XDG_CONFIG_DIRS"), "/etc/xdg")
	e.DataDirs = list(getenv("XDG_DATA_DIRS"), "/usr/local/share:/usr/share")
	e.SessionBus = getenv("DBUS_SESSION_BUS_ADDRESS")
	e.SystemBus = getenv("DBUS_SYSTEM_BUS_ADDRESS")
	if e.SystemBus == "" {
		e.SystemBus = "unix:path=/var/run/dbus/system_bus_socket"
	}
	if e.SessionBus == "" && e.RuntimeDir != "" {
		e.SessionBus = "unix:path=" + filepath.Join(e.RuntimeDir, "bus")
	}
	if us := getenv("WATCHDOG_USEC"); us != "" {
		var n int64
		if _, err := fmt.Sscan(us, &n); err == nil && n > 0 {
			e.Watchdog = time.Duration(n) * time.Microsecond
		}
	}
	return e
}

// ConfigPaths returns the files searched for the configuration, in order.
func (e Env) ConfigPaths() []string {
	var out []string
	if e.ConfigHome != "" {
		out = append(out, filepath.Join(e.ConfigHome, "herald", "config.toml"))
	}
	for _, d := range e.ConfigDirs {
		out = append(out, filepath.Join(d, "herald", "config.toml"))
	}
	return out
}

// LoadConfig reads the configuration: path when not empty (it must exist),
// else the first of env.ConfigPaths that exists, else the defaults. Then
// override (flags; may be nil) changes it, and it is validated. Unknown keys
// are logged as warnings; bad values are errors.
func LoadConfig(env Env, path string, logger *slog.Logger, override func(*Config)) (Config, error) {
	cfg := DefaultConfig()
	cfg.Env = env
	paths := env.ConfigPaths()
	var md *toml.MetaData
	if path != "" {
		paths = []string{path}
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) && path == "" {
			continue
		}
		if err != nil {
			return Config{}, fmt.Errorf("cannot read config: %w", err)
		}
		m, err := toml.Decode(string(b), &cfg)
		if err != nil {
			return Config{}, fmt.Errorf("cannot parse config %s: %w", p, err)
		}
		md = &m
		var unknown []string
		for _, k := range md.Undecoded() {
			unknown = append(unknown, k.String())
		}
		sort.Strings(unknown)
		for _, k := range unknown {
			logger.Warn("unknown key in config", "path", p, "key", k)
		}
		cfg.Path = p
		break
	}
	if override != nil {
		override(&cfg)
	}
	if err := cfg.resolveLomiri(md); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// Validate checks the values (after flags were applied) and fills the
// defaults that depend on the environment.
func (c *Config) Validate() error {
	if c.Server != "" {
		u, err := url.Parse(c.Server)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			return fmt.Errorf("invalid server %q: want a ws:// or wss:// URL", c.Server)
		}
	}
	if c.StateDir == "" {
		if c.Env.StateHome == "" {
			return errors.New("no state directory: set state_dir, XDG_STATE_HOME or HOME")
		}
		c.StateDir = filepath.Join(c.Env.StateHome, "herald")
	}
	if c.HelperConcurrency < 1 || c.HelperConcurrency > 64 {
		return fmt.Errorf("invalid helper_concurrency %d: want 1..64", c.HelperConcurrency)
	}
	if c.HelperTimeout.Duration <= 0 {
		return fmt.Errorf("invalid helper_timeout %s: want > 0", c.HelperTimeout)
	}
	if _, err := ParseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.PingInterval.Duration < time.Second {
		return fmt.Errorf("invalid ping_interval %s: want ≥ 1s", c.PingInterval)
	}
	if c.RequestTimeout.Duration <= 0 {
		return fmt.Errorf("invalid request_timeout %s: want > 0", c.RequestTimeout)
	}
	if c.ReconnectMin.Duration <= 0 || c.ReconnectMax.Duration < c.ReconnectMin.Duration {
		return fmt.Errorf("invalid reconnect_min %s / reconnect_max %s: want 0 < min ≤ max", c.ReconnectMin, c.ReconnectMax)
	}
	switch strings.ToLower(c.Durability) {
	case "full", "normal":
	default:
		return fmt.Errorf("invalid durability %q: want full or normal", c.Durability)
	}
	if err := c.Urgency.validate(); err != nil {
		return err
	}
	if err := c.validateBackends(); err != nil {
		return err
	}
	if c.InboxLimit < 1 {
		return fmt.Errorf("invalid inbox_limit %d: want ≥ 1", c.InboxLimit)
	}
	return c.validateLomiri()
}

// ParseLevel parses a log level name.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("invalid log_level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// HTTPOrigin returns the http(s) origin of the websocket server URL, for
// health checks.
func HTTPOrigin(server string) (string, error) {
	u, err := url.Parse(server)
	if err != nil {
		return "", fmt.Errorf("invalid server %q: %w", server, err)
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	default:
		return "", fmt.Errorf("invalid server %q: want a ws:// or wss:// URL", server)
	}
	return u.Scheme + "://" + u.Host, nil
}
