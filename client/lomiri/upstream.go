package lomiri

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// UpstreamConfig is what heraldd takes from an existing lomiri-push-service
// or ubuntu-push-client config.json: where that client connected.
type UpstreamConfig struct {
	Path            string // the file it came from
	Addr            string // addr
	RegistrationURL string // registration_url
	// CertPEMFile is cert_pem_file made absolute (upstream resolves it
	// relative to the config file); "" when unset.
	CertPEMFile string
}

// UpstreamConfigPaths are the config.json files of lomiri-push-service and
// ubuntu-push-client, in the order upstream's xdg lookup finds them: the
// user's config dir first, then each system config dir.
func UpstreamConfigPaths(configHome string, configDirs []string) []string {
	var out []string
	for _, d := range append([]string{configHome}, configDirs...) {
		if d == "" {
			continue
		}
		out = append(out, filepath.Join(d, "lomiri-push-service", "config.json"), filepath.Join(d, "ubuntu-push-client", "config.json"))
	}
	return out
}

// ReadUpstreamConfig reads the first existing file of paths. It returns nil
// (and no error) when none exists. A file that exists but does not parse,
// or names neither addr nor registration_url, is an error.
func ReadUpstreamConfig(paths []string) (*UpstreamConfig, error) {
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cannot read %s: %w", p, err)
		}
		var raw struct {
			Addr            *string `json:"addr"`
			RegistrationURL *string `json:"registration_url"`
			CertPEMFile     *string `json:"cert_pem_file"`
		}
		if err := json.Unmarshal(b, &raw); err != nil {
			return nil, fmt.Errorf("cannot parse %s: %w", p, err)
		}
		c := &UpstreamConfig{Path: p}
		if raw.Addr != nil {
			c.Addr = *raw.Addr
		}
		if raw.RegistrationURL != nil {
			c.RegistrationURL = *raw.RegistrationURL
		}
		if raw.CertPEMFile != nil && *raw.CertPEMFile != "" {
			c.CertPEMFile = *raw.CertPEMFile
			if !filepath.IsAbs(c.CertPEMFile) {
				c.CertPEMFile = filepath.Join(filepath.Dir(p), c.CertPEMFile)
			}
		}
		if c.Addr == "" && c.RegistrationURL == "" {
			return nil, fmt.Errorf("%s has neither addr nor registration_url", p)
		}
		return c, nil
	}
	return nil, nil
}
