package lomiri

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadUpstreamConfig(t *testing.T) {
	home, sys := t.TempDir(), t.TempDir()
	paths := UpstreamConfigPaths(home, []string{sys})
	if c, err := ReadUpstreamConfig(paths); c != nil || err != nil {
		t.Fatalf("no file: %+v, %v", c, err)
	}
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The shipped config of lomiri-push-service (REFERENCE §1.11), in the system dir.
	sysFile := filepath.Join(sys, "lomiri-push-service", "config.json")
	write(sysFile, `{"addr": "https://push.ubports.com/delivery-hosts", "session_url": "https://push.ubports.com:5001",
		"registration_url": "https://push.ubports.com", "connect_timeout": "20s", "cert_pem_file": "", "log_level": "info"}`)
	c, err := ReadUpstreamConfig(paths)
	if err != nil || c.Path != sysFile || c.Addr != "https://push.ubports.com/delivery-hosts" || c.RegistrationURL != "https://push.ubports.com" || c.CertPEMFile != "" {
		t.Fatalf("shipped config: %+v, %v", c, err)
	}
	// The user's ubuntu-push-client config wins, and its cert is relative to it.
	userFile := filepath.Join(home, "ubuntu-push-client", "config.json")
	write(userFile, `{"addr": "push.example.org:5001|push2.example.org:5001", "registration_url": "https://push.example.org", "cert_pem_file": "ca.pem"}`)
	c, err = ReadUpstreamConfig(paths)
	if err != nil || c.Path != userFile || c.Addr != "push.example.org:5001|push2.example.org:5001" || c.CertPEMFile != filepath.Join(home, "ubuntu-push-client", "ca.pem") {
		t.Fatalf("user config: %+v, %v", c, err)
	}
	write(userFile, `{"addr": 5}`)
	if _, err := ReadUpstreamConfig(paths); err == nil {
		t.Fatal("a broken config.json was accepted")
	}
}
