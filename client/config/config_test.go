package config

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/google/go-cmp/cmp"

	"github.com/heraldpush/herald/app"
)

func TestReadEnv(t *testing.T) {
	vars := map[string]string{
		"HOME":            "/home/u",
		"XDG_RUNTIME_DIR": "/run/user/1",
		"XDG_DATA_DIRS":   "/a:relative:/b",
		"WATCHDOG_USEC":   "3000000",
	}
	e := ReadEnv(func(k string) string { return vars[k] })
	want := Env{
		SessionBus: "unix:path=/run/user/1/bus", ConfigHome: "/home/u/.config", ConfigDirs: []string{"/etc/xdg"},
		StateHome: "/home/u/.local/state", DataHome: "/home/u/.local/share", DataDirs: []string{"/a", "/b"},
		RuntimeDir: "/run/user/1", Home: "/home/u", Watchdog: 3 * time.Second,
	}
	if e.SessionBus != want.SessionBus || e.ConfigHome != want.ConfigHome || e.StateHome != want.StateHome ||
		e.DataHome != want.DataHome || strings.Join(e.DataDirs, ":") != "/a:/b" || strings.Join(e.ConfigDirs, ":") != "/etc/xdg" ||
		e.Watchdog != want.Watchdog {
		t.Fatalf("ReadEnv = %+v\nwant %+v", e, want)
	}
	vars["DBUS_SESSION_BUS_ADDRESS"] = "unix:path=/x"
	if e := ReadEnv(func(k string) string { return vars[k] }); e.SessionBus != "unix:path=/x" {
		t.Fatalf("SessionBus = %q", e.SessionBus)
	}
}

func testEnv(t *testing.T) Env {
	dir := t.TempDir()
	return Env{ConfigHome: filepath.Join(dir, "config"), ConfigDirs: []string{filepath.Join(dir, "etc")}, StateHome: filepath.Join(dir, "state")}
}

func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		user    string // "" = no user file
		system  string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			if c.HelperTimeout.Duration != 5*time.Second || c.HelperConcurrency != 5 || c.RequireConfinement || c.LogLevel != "info" || c.Server != "wss://push.services.mozilla.com/" {
				t.Errorf("defaults = %+v", c)
			}
			if !strings.HasSuffix(c.StateDir, filepath.Join("state", "herald")) {
				t.Errorf("StateDir = %q", c.StateDir)
			}
		}},
		{name: "system file", system: `server = "wss://push.example.org/"`, check: func(t *testing.T, c Config) {
			if c.Server != "wss://push.example.org/" {
				t.Errorf("Server = %q", c.Server)
			}
		}},
		{name: "user file wins", user: `server = "ws://user/"`, system: `server = "ws://system/"`, check: func(t *testing.T, c Config) {
			if c.Server != "ws://user/" {
				t.Errorf("Server = %q", c.Server)
			}
		}},
		{name: "all keys", user: `
server = "ws://127.0.0.1:8080/"
state_dir = "/var/tmp/h"
helper_timeout = "2s"
helper_concurrency = 3
require_confinement = true
log_level = "debug"
ping_interval = "1m"
ping_grace = "5s"
request_timeout = "3s"
reconnect_min = "2s"
reconnect_max = "1m"
compression = true
durability = "normal"
`, check: func(t *testing.T, c Config) {
			if c.StateDir != "/var/tmp/h" || c.HelperTimeout.Duration != 2*time.Second || c.HelperConcurrency != 3 || !c.RequireConfinement ||
				c.LogLevel != "debug" || c.PingInterval.Duration != time.Minute || c.ReconnectMax.Duration != time.Minute || !c.Compression || c.Durability != "normal" {
				t.Errorf("config = %+v", c)
			}
		}},
		{name: "bad duration", user: `helper_timeout = "soon"`, wantErr: "invalid duration"},
		{name: "bad type", user: `helper_concurrency = "five"`, wantErr: "helper_concurrency"},
		{name: "bad concurrency", user: `helper_concurrency = 0`, wantErr: "helper_concurrency"},
		{name: "bad server", user: `server = "http://example.org/"`, wantErr: "ws:// or wss://"},
		{name: "bad level", user: `log_level = "loud"`, wantErr: "log_level"},
		{name: "bad durability", user: `durability = "maybe"`, wantErr: "durability"},
		{name: "min above max", user: "reconnect_min = \"10m\"\nreconnect_max = \"1m\"", wantErr: "reconnect"},
		{name: "not toml", user: `server = `, wantErr: "cannot parse config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := testEnv(t)
			if tt.user != "" {
				writeConfig(t, env.ConfigPaths()[0], tt.user)
			}
			if tt.system != "" {
				writeConfig(t, env.ConfigPaths()[1], tt.system)
			}
			c, err := LoadConfig(env, "", slog.New(slog.DiscardHandler), nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadConfigUnknownKeyWarnsAndFlagsOverride(t *testing.T) {
	env := testEnv(t)
	path := filepath.Join(t.TempDir(), "c.toml")
	writeConfig(t, path, "server = \"ws://file/\"\ncolour = \"blue\"\n")
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	c, err := LoadConfig(env, path, logger, func(c *Config) { c.Server = "ws://flag/" })
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "ws://flag/" || c.Path != path {
		t.Fatalf("config = %+v", c)
	}
	if !strings.Contains(logs.String(), "unknown key in config") || !strings.Contains(logs.String(), "colour") {
		t.Fatalf("no warning for the unknown key: %q", logs.String())
	}
	// A named file that does not exist is an error (the XDG files may be missing).
	if _, err := LoadConfig(env, filepath.Join(t.TempDir(), "missing.toml"), logger, nil); err == nil {
		t.Fatal("LoadConfig of a missing --config file succeeded")
	}
}

func TestHTTPOrigin(t *testing.T) {
	tests := []struct{ in, want string }{
		{"ws://127.0.0.1:8080/", "http://127.0.0.1:8080"},
		{"wss://push.example.org/x", "https://push.example.org"},
		{"http://x/", ""},
	}
	for _, tt := range tests {
		got, err := HTTPOrigin(tt.in)
		if got != tt.want || (tt.want == "") != (err != nil) {
			t.Errorf("HTTPOrigin(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// FuzzConfig checks that any config file either fails with an error or
// loads into a valid configuration that survives a round trip through TOML.
func FuzzConfig(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.toml"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, text string) {
		env := Env{StateHome: "/state"}
		path := filepath.Join(t.TempDir(), "c.toml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := LoadConfig(env, path, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("loaded config does not validate: %v", err)
		}
		// The [lomiri] table is always written; an unused one as disabled.
		enc := c
		if !c.Lomiri.Use {
			enc.Lomiri.Enabled = false
		}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(enc); err != nil {
			t.Fatalf("cannot encode loaded config: %v", err)
		}
		path2 := filepath.Join(t.TempDir(), "c2.toml")
		if err := os.WriteFile(path2, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		c2, err := LoadConfig(env, path2, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Fatalf("re-encoded config fails: %v\n%s", err, buf.String())
		}
		c.Path, c2.Path = "", ""
		if !c.Lomiri.Use {
			c2.Lomiri.Enabled = c.Lomiri.Enabled
		}
		if diff := cmp.Diff(c, c2); diff != "" {
			t.Fatalf("round trip changed the config (-first +second):\n%s", diff)
		}
	})
}

func TestBackendTables(t *testing.T) {
	tests := []struct {
		name, toml string
		want       app.Backend // [unifiedpush] backend after validation; "" = error
	}{
		{"default", "", app.BackendAutopush},
		{"autopush", "[unifiedpush]\nbackend = \"autopush\"\n", app.BackendAutopush},
		{"ntfy", "[ntfy]\nurl = \"https://ntfy.example\"\ntoken = \"tk\"\n[unifiedpush]\nbackend = \"ntfy\"\n", app.BackendNtfy},
		{"ntfy basic auth", "[ntfy]\nurl = \"http://127.0.0.1:1\"\nuser = \"u\"\npassword = \"p\"\n", app.BackendAutopush},
		{"ntfy without url: ntfy.sh", "[unifiedpush]\nbackend = \"ntfy\"\n", app.BackendNtfy},
		{"ntfy in one line", "unifiedpush.backend = \"ntfy\"\n[lomiri]\nenabled = false\n", app.BackendNtfy},
		{"ntfy without url, explicitly empty", "[ntfy]\nurl = \"\"\n[unifiedpush]\nbackend = \"ntfy\"\n", ""},
		{"unknown backend", "[unifiedpush]\nbackend = \"gcm\"\n", ""},
		{"ntfy keepalive", "[ntfy]\nkeepalive = \"2m\"\n", app.BackendAutopush},
		{"ntfy keepalive zero", "[ntfy]\nkeepalive = \"0s\"\n", ""},
		{"ntfy bad url", "[ntfy]\nurl = \"ws://x\"\n", ""},
		{"ntfy credentials in url", "[ntfy]\nurl = \"https://u:p@ntfy.example\"\n", ""},
		{"ntfy token and user", "[ntfy]\nurl = \"https://ntfy.example\"\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"\n", ""},
		{"ntfy user without password", "[ntfy]\nurl = \"https://ntfy.example\"\nuser = \"u\"\n", ""},
		{"ntfy credentials for ntfy.sh", "[ntfy]\ntoken = \"t\"\n", app.BackendAutopush},
		{"ntfy credentials without url", "[ntfy]\nurl = \"\"\ntoken = \"t\"\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "config.toml")
			if err := os.WriteFile(path, []byte(tt.toml), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := LoadConfig(Env{StateHome: dir, ConfigHome: dir}, path, slog.New(slog.DiscardHandler), nil)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("LoadConfig accepted %q", tt.toml)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.UnifiedPush.Backend != tt.want {
				t.Errorf("[unifiedpush] backend = %q, want %q", cfg.UnifiedPush.Backend, tt.want)
			}
			if cfg.LomiriBackend() != app.BackendAutopush {
				t.Errorf("Lomiri apps use %q without [lomiri], want autopush", cfg.LomiriBackend())
			}
		})
	}
}
