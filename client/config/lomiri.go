package config

import (
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/heraldpush/herald/client/lomiri"
)

// UBports' push service, as lomiri-push-service's shipped config.json names it.
const (
	DefaultLomiriAddr            = "https://push.ubports.com/delivery-hosts"
	DefaultLomiriRegistrationURL = "https://push.ubports.com"
)

// Where the Lomiri backend's addr and registration_url came from.
const (
	LomiriFromHerald   = "herald config"
	LomiriFromUpstream = "lomiri-push-service config"
	LomiriFromDefault  = "default (UBports)"
)

// LomiriConfig is the [lomiri] table: the Lomiri push service that apps of
// the Lomiri API (com.lomiri.PushNotifications) register with. It is used
// when the table is present (the shipped config.toml has it) or when a
// lomiri-push-service / ubuntu-push-client config.json exists, unless
// enabled is false; otherwise Lomiri apps use server.
type LomiriConfig struct {
	Enabled bool `toml:"enabled"`
	// Addr, RegistrationURL and CertPEMFile are upstream's keys: a URL
	// answering {domain, hosts} or a |-separated host:port list; the base
	// of /register and /unregister; a PEM certificate that is then the only
	// trusted root of the delivery hosts. Keys not set here come from an
	// existing lomiri-push-service config.json, else UBports' service.
	Addr            string `toml:"addr"`
	RegistrationURL string `toml:"registration_url"`
	CertPEMFile     string `toml:"cert_pem_file"`
	// DeviceID is sent to the server; by default it is derived from the
	// machine id as lomiri-push-service does, so tokens stay the same.
	DeviceID string `toml:"device_id"`
	// Device, ImageChannel and BuildNumber are the connect Info that
	// system-image reports on Ubuntu Touch; the server sends system-update
	// broadcasts only to devices naming them.
	Device       string `toml:"device"`
	ImageChannel string `toml:"image_channel"`
	BuildNumber  int64  `toml:"build_number"`

	// Use says the Lomiri backend is on (resolved by LoadConfig).
	Use bool `toml:"-"`
	// Source says where Addr and RegistrationURL came from.
	Source string `toml:"-"`
	// Upstream is the lomiri-push-service config.json found, if any.
	Upstream *lomiri.UpstreamConfig `toml:"-"`
	// CertPEM is the content of CertPEMFile.
	CertPEM []byte `toml:"-"`
}

func defaultLomiri() LomiriConfig {
	return LomiriConfig{Enabled: true, Addr: DefaultLomiriAddr, RegistrationURL: DefaultLomiriRegistrationURL}
}

// resolveLomiri decides whether the Lomiri backend is on and fills the keys
// the herald config did not set from an upstream config.json. md is nil
// when no config file was read.
func (c *Config) resolveLomiri(md *toml.MetaData) error {
	l := &c.Lomiri
	defined := func(keys ...string) bool { return md != nil && md.IsDefined(keys...) }
	up, err := lomiri.ReadUpstreamConfig(lomiri.UpstreamConfigPaths(c.Env.ConfigHome, c.Env.ConfigDirs))
	if err != nil {
		return fmt.Errorf("invalid lomiri-push-service config: %w", err)
	}
	l.Upstream = up
	l.Use = l.Enabled && (defined("lomiri") || up != nil)
	if !l.Use {
		return nil
	}
	l.Source = LomiriFromDefault
	if up != nil {
		if !defined("lomiri", "addr") && up.Addr != "" {
			l.Addr, l.Source = up.Addr, LomiriFromUpstream
		}
		if !defined("lomiri", "registration_url") && up.RegistrationURL != "" {
			l.RegistrationURL, l.Source = up.RegistrationURL, LomiriFromUpstream
		}
		if !defined("lomiri", "cert_pem_file") && up.CertPEMFile != "" {
			l.CertPEMFile = up.CertPEMFile
		}
	}
	if defined("lomiri", "addr") || defined("lomiri", "registration_url") {
		l.Source = LomiriFromHerald
	}
	return nil
}

// validateLomiri checks the resolved [lomiri] values and reads what they name.
func (c *Config) validateLomiri() error {
	l := &c.Lomiri
	if !l.Use {
		return nil
	}
	if l.Addr == "" {
		return fmt.Errorf("invalid [lomiri] addr: empty")
	}
	if strings.HasPrefix(l.Addr, "http") {
		if u, err := url.Parse(l.Addr); err != nil || u.Host == "" {
			return fmt.Errorf("invalid [lomiri] addr %q: want an http(s) URL or host:port|host:port", l.Addr)
		}
	}
	if u, err := url.Parse(l.RegistrationURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("invalid [lomiri] registration_url %q: want an http(s) URL", l.RegistrationURL)
	}
	if l.CertPEMFile != "" {
		b, err := os.ReadFile(l.CertPEMFile)
		if err != nil {
			return fmt.Errorf("invalid [lomiri] cert_pem_file: %w", err)
		}
		if _, _, err := lomiri.ParseCertPEM(b); err != nil {
			return fmt.Errorf("invalid [lomiri] cert_pem_file %s: %w", l.CertPEMFile, err)
		}
		l.CertPEM = b
	}
	if l.DeviceID == "" {
		id, err := lomiri.ReadDeviceID(lomiri.MachineIDFiles)
		if err != nil {
			return fmt.Errorf("no [lomiri] device_id: %w", err)
		}
		l.DeviceID = id
	}
	if len(l.DeviceID) > 256 {
		return fmt.Errorf("invalid [lomiri] device_id: longer than 256 bytes")
	}
	return nil
}

// Info is the connect Info of the Lomiri backend (nil when none is known).
func (l LomiriConfig) Info() map[string]any {
	if l.Device == "" && l.ImageChannel == "" && l.BuildNumber == 0 {
		return nil
	}
	return map[string]any{"device": l.Device, "channel": l.ImageChannel, "build_number": l.BuildNumber}
}
