package config

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestLomiriConfigResolution(t *testing.T) {
	write := func(p, s string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	upstream := `{"addr": "push.example.org:5001", "registration_url": "https://push.example.org", "cert_pem_file": ""}`
	tests := []struct {
		name     string
		herald   string // config.toml ("" for none)
		upstream bool   // a lomiri-push-service config.json in the system config dir
		use      bool
		addr     string
		regURL   string
		source   string
	}{
		{name: "nothing", use: false},
		{name: "no table", herald: "log_level = \"debug\"\n", use: false},
		{name: "shipped table", herald: "[lomiri]\ndevice_id = \"D\"\n", use: true,
			addr: DefaultLomiriAddr, regURL: DefaultLomiriRegistrationURL, source: LomiriFromDefault},
		{name: "upstream only", upstream: true, herald: "[lomiri]\ndevice_id = \"D\"\n", use: true,
			addr: "push.example.org:5001", regURL: "https://push.example.org", source: LomiriFromUpstream},
		{name: "upstream without table", upstream: true, use: true,
			addr: "push.example.org:5001", regURL: "https://push.example.org", source: LomiriFromUpstream},
		{name: "herald wins", upstream: true, herald: "[lomiri]\ndevice_id = \"D\"\naddr = \"h:1|h:2\"\n", use: true,
			addr: "h:1|h:2", regURL: "https://push.example.org", source: LomiriFromHerald},
		{name: "disabled", upstream: true, herald: "[lomiri]\nenabled = false\n", use: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			env := Env{StateHome: filepath.Join(dir, "state"), ConfigHome: filepath.Join(dir, "home"), ConfigDirs: []string{filepath.Join(dir, "etc")}}
			if tt.herald != "" {
				write(filepath.Join(dir, "home", "herald", "config.toml"), tt.herald)
			}
			if tt.upstream {
				write(filepath.Join(dir, "etc", "lomiri-push-service", "config.json"), upstream)
			}
			c, err := LoadConfig(env, "", slog.New(slog.DiscardHandler), func(c *Config) {
				if c.Lomiri.DeviceID == "" {
					c.Lomiri.DeviceID = "D" // not the machine's
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			l := c.Lomiri
			if l.Use != tt.use {
				t.Fatalf("Use = %v, want %v", l.Use, tt.use)
			}
			if !tt.use {
				return
			}
			if l.Addr != tt.addr || l.RegistrationURL != tt.regURL || l.Source != tt.source || l.DeviceID != "D" {
				t.Fatalf("got addr %q registration_url %q source %q device %q, want %q %q %q", l.Addr, l.RegistrationURL, l.Source, l.DeviceID, tt.addr, tt.regURL, tt.source)
			}
			if tt.upstream && (l.Upstream == nil || l.Upstream.Path != filepath.Join(dir, "etc", "lomiri-push-service", "config.json")) {
				t.Fatalf("Upstream = %+v", l.Upstream)
			}
		})
	}
}

func TestLomiriConfigBadValues(t *testing.T) {
	for _, text := range []string{
		"[lomiri]\ndevice_id = \"D\"\nregistration_url = \"ftp://x\"\n",
		"[lomiri]\ndevice_id = \"D\"\naddr = \"\"\n",
		"[lomiri]\ndevice_id = \"D\"\ncert_pem_file = \"/nonexistent/ca.pem\"\n",
	} {
		dir := t.TempDir()
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte(text), 0o644)
		if _, err := LoadConfig(Env{StateHome: dir}, p, slog.New(slog.DiscardHandler), nil); err == nil {
			t.Errorf("config %q was accepted", text)
		}
	}
}
