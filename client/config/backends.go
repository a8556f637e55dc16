package config

import (
	"fmt"
	"net/url"
	"time"

	"github.com/heraldpush/herald/app"
)

// NtfyConfig is the [ntfy] table: an ntfy server that UnifiedPush apps can
// register with ([unifiedpush] backend = "ntfy").
type NtfyConfig struct {
	// URL is the server's base URL (http:// or https://).
	URL string `toml:"url"`
	// User and Password select HTTP Basic auth; Token (alone) an access
	// token (Bearer).
	User     string `toml:"user"`
	Password string `toml:"password"`
	Token    string `toml:"token"`
	// Keepalive is the server's keepalive-interval (ntfy's default 45s): a
	// stream silent for Keepalive + 15s is dead and dialled again.
	Keepalive Duration `toml:"keepalive"`
}

// UnifiedPushConfig is the [unifiedpush] table.
type UnifiedPushConfig struct {
	// Backend is where UnifiedPush apps register: "autopush" (the top-level
	// server, default) or "ntfy" (the [ntfy] server).
	Backend app.Backend `toml:"backend"`
}

// validateBackends checks [ntfy] and [unifiedpush] and fills the default
// UnifiedPush backend.
func (c *Config) validateBackends() error {
	if n := c.Ntfy; n.URL != "" {
		u, err := url.Parse(n.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("invalid [ntfy] url %q: want an http:// or https:// URL", n.URL)
		}
		if u.User != nil {
			return fmt.Errorf("invalid [ntfy] url: put credentials in user/password or token, not in the URL")
		}
		if n.Token != "" && (n.User != "" || n.Password != "") {
			return fmt.Errorf("invalid [ntfy]: token and user/password exclude each other")
		}
		if (n.User == "") != (n.Password == "") {
			return fmt.Errorf("invalid [ntfy]: user and password go together")
		}
	} else if n.User != "" || n.Password != "" || n.Token != "" {
		return fmt.Errorf("invalid [ntfy]: credentials without url")
	}
	if k := c.Ntfy.Keepalive.Duration; k < time.Second || k > time.Hour {
		return fmt.Errorf("invalid [ntfy] keepalive %s: want 1s to 1h", c.Ntfy.Keepalive)
	}
	switch c.UnifiedPush.Backend {
	case "":
		c.UnifiedPush.Backend = app.BackendAutopush
	case app.BackendAutopush:
	case app.BackendNtfy:
		if c.Ntfy.URL == "" {
			return fmt.Errorf("invalid [unifiedpush] backend %q: [ntfy] has no url", c.UnifiedPush.Backend)
		}
	default:
		return fmt.Errorf("invalid [unifiedpush] backend %q: want %q or %q", c.UnifiedPush.Backend, app.BackendAutopush, app.BackendNtfy)
	}
	return nil
}

// LomiriBackend is the backend Lomiri-API apps register with: the Lomiri
// push service when [lomiri] is on, else the autopush server.
func (c Config) LomiriBackend() app.Backend {
	if c.Lomiri.Use {
		return app.BackendLomiri
	}
	return app.BackendAutopush
}
