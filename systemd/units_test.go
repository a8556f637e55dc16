package systemd

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// maxExposure is the highest `systemd-analyze security` exposure level
// accepted for the server unit (0 is best, 10 worst; below 2 is rated "OK").
const maxExposure = 3.0

// systemdAnalyze returns the path of systemd-analyze. It is installed by
// `make test` (scripts/deps.sh); in CI its absence is a failure.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("systemd-analyze not found (scripts/deps.sh test installs package systemd): %v", err)
		}
		t.Skipf("systemd-analyze not found, install package systemd: %v", err)
	}
	return p
}

// unit is a parsed unit file: section → key → values in file order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, name string) unit {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", name, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// withExec copies a unit into a temporary directory with the binary in
// ExecStart replaced by an executable that exists here, so that verify
// checks the unit and not the installation.
func withExec(t *testing.T, name, binary string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	truePath, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("ExecStart="+binary)) {
		t.Fatalf("%s: ExecStart does not run %s", name, binary)
	}
	b = bytes.ReplaceAll(b, []byte("ExecStart="+binary), []byte("ExecStart="+truePath))
	out := filepath.Join(t.TempDir(), filepath.Base(name))
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVerify(t *testing.T) {
	analyze := systemdAnalyze(t)
	tests := []struct {
		unit, binary string
		user         bool
	}{
		{"heraldd.service", "/usr/bin/heraldd", true},
		{"herald-server.service", "/usr/bin/herald-server", false},
	}
	for _, tt := range tests {
		t.Run(tt.unit, func(t *testing.T) {
			file := withExec(t, tt.unit, tt.binary)
			args := []string{"verify", "--man=no", file}
			if tt.user {
				args = append([]string{"--user"}, args...)
			}
			cmd := exec.Command(analyze, args...)
			// A user manager needs a runtime directory; give it a private one.
			rt := t.TempDir()
			cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rt)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			// verify exits 0 on unknown keys and bad values, printing
			// "file:line: …, ignoring": any line about the unit is a failure.
			for line := range strings.Lines(string(out)) {
				if strings.Contains(line, filepath.Base(file)) {
					t.Errorf("systemd-analyze verify: %s", strings.TrimSpace(line))
				}
			}
		})
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

func TestServerSecurity(t *testing.T) {
	analyze := systemdAnalyze(t)
	file := withExec(t, "herald-server.service", "/usr/bin/herald-server")
	// The exit status reports the threshold; the score is read from the text.
	out, _ := exec.Command(analyze, "security", "--offline=yes", "--no-pager", file).CombinedOutput()
	m := exposureRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in systemd-analyze security output:\n%s", out)
	}
	score, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("exposure level %q: %v", m[1], err)
	}
	t.Logf("herald-server.service exposure level: %.1f", score)
	if score > maxExposure {
		t.Errorf("exposure level %.1f > %.1f:\n%s", score, maxExposure, out)
	}
}

// TestUnitContract checks the settings that the design and the daemon rely
// on: they are easy to lose in an edit and systemd accepts a unit without them.
func TestUnitContract(t *testing.T) {
	tests := []struct {
		unit    string
		section string
		key     string
		want    string // "" means: present, any value
	}{
		{"heraldd.service", "Unit", "PartOf", "graphical-session.target"},
		{"heraldd.service", "Unit", "After", "graphical-session.target"},
		{"heraldd.service", "Service", "Type", "notify"},
		{"heraldd.service", "Service", "NotifyAccess", "main"},
		{"heraldd.service", "Service", "ExecStart", "/usr/bin/heraldd"},
		{"heraldd.service", "Service", "WatchdogSec", ""},
		{"heraldd.service", "Service", "Restart", "on-failure"},
		{"heraldd.service", "Service", "Slice", "background.slice"},
		{"heraldd.service", "Install", "WantedBy", "graphical-session.target"},
		{"herald-server.service", "Service", "Type", "notify"},
		{"herald-server.service", "Service", "DynamicUser", "yes"},
		{"herald-server.service", "Service", "StateDirectory", "herald-server"},
		{"herald-server.service", "Service", "ExecStart", "/usr/bin/herald-server --db %S/herald-server/herald-server.db $HERALD_SERVER_OPTS"},
		{"herald-server.service", "Service", "EnvironmentFile", "-/etc/default/herald-server"},
		{"herald-server.service", "Service", "ProtectSystem", "strict"},
		{"herald-server.service", "Service", "ProtectHome", "yes"},
		{"herald-server.service", "Service", "PrivateTmp", "yes"},
		{"herald-server.service", "Service", "NoNewPrivileges", "yes"},
		{"herald-server.service", "Service", "RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
		{"herald-server.service", "Service", "CapabilityBoundingSet", ""},
		{"herald-server.service", "Service", "UMask", "0077"},
		{"herald-server.service", "Install", "WantedBy", "multi-user.target"},
	}
	units := map[string]unit{}
	for _, tt := range tests {
		t.Run(tt.unit+"/"+tt.key, func(t *testing.T) {
			u, ok := units[tt.unit]
			if !ok {
				u = parseUnit(t, tt.unit)
				units[tt.unit] = u
			}
			vals, ok := u[tt.section][tt.key]
			if !ok {
				t.Fatalf("[%s] %s= missing", tt.section, tt.key)
			}
			if tt.want != "" && vals[len(vals)-1] != tt.want {
				t.Errorf("[%s] %s=%s, want %s", tt.section, tt.key, vals[len(vals)-1], tt.want)
			}
		})
	}
}
