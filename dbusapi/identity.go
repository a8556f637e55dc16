package dbusapi

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Source tells where a caller's app id came from.
type Source string

const (
	SourceNone     Source = ""         // unconfined, not identified
	SourceAppArmor Source = "apparmor" // click app label pkg_app_ver
	SourceSnap     Source = "snap"     // snap.name.app label
	SourceFlatpak  Source = "flatpak"  // .flatpak-info
	SourceSystemd  Source = "systemd"  // app-…-<id>-….scope / app-<id>@….service
)

// Identity is what the Service knows about a caller.
type Identity struct {
	UID      uint32
	PID      uint32
	AppID    string // Base form; "" when not identified
	Source   Source
	Confined bool   // sandboxed: may act only for AppID
	Label    string // raw security label, for messages
}

// ParseAppArmorLabel maps a LinuxSecurityLabel to an app id. confined is
// true for any label in enforce mode (also when it maps to no app); appID is
// the Base form of the click id or snap app ("snapname_app"), else "".
// Trailing NUL bytes are ignored.
func ParseAppArmorLabel(label string) (appID string, src Source, confined bool) {
	label = strings.TrimRight(label, "\x00\n ")
	if label == "" || label == "unconfined" {
		return "", SourceNone, false
	}
	profile, mode := label, ""
	if i := strings.LastIndex(label, " ("); i >= 0 && strings.HasSuffix(label, ")") {
		profile, mode = label[:i], label[i+2:len(label)-1]
	}
	switch mode {
	case "enforce", "kill", "":
		confined = true
	default: // complain, unconfined, prompt…: not a sandbox
		return "", SourceNone, false
	}
	if strings.HasPrefix(profile, "snap.") {
		parts := strings.Split(profile, ".")
		if len(parts) == 3 {
			if a, err := ParseAppID(parts[1] + "_" + parts[2]); err == nil && a.Kind == AppIDClick {
				return a.Base(), SourceSnap, true
			}
		}
		return "", SourceSnap, true
	}
	if a, err := ParseAppID(profile); err == nil && a.Kind == AppIDClick && a.Version != "" {
		return a.Base(), SourceAppArmor, true
	}
	return "", SourceAppArmor, confined
}

// ParseFlatpakInfo reads the application id from a .flatpak-info file
// (`[Application] name=…`). ok is false when the file names no valid app.
func ParseFlatpakInfo(b []byte) (appID string, ok bool) {
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' && line[len(line)-1] == ']' {
			section = line[1 : len(line)-1]
			continue
		}
		if section != "Application" {
			continue
		}
		k, v, found := strings.Cut(line, "=")
		if !found || strings.TrimSpace(k) != "name" {
			continue
		}
		v = strings.TrimSpace(v)
		if a, err := ParseAppID(v); err == nil && a.Kind == AppIDDesktop {
			return a.Base(), true
		}
		return "", false
	}
	return "", false
}

// ParseCgroup finds an app id in the contents of /proc/<pid>/cgroup: the
// last path element of the unified (or name=systemd) hierarchy that is a
// systemd app unit: "app[-<launcher>]-<id>-<random>.scope" or
// "app[-<launcher>]-<id>[@<random>].service", "\x2d" unescaped to "-".
func ParseCgroup(b []byte) (appID string, ok bool) {
	for line := range strings.SplitSeq(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || (parts[0] != "0" && parts[1] != "name=systemd") {
			continue
		}
		elems := strings.Split(parts[2], "/")
		for i := len(elems) - 1; i >= 0; i-- {
			if id, ok := parseAppUnit(elems[i]); ok {
				return id, true
			}
		}
	}
	return "", false
}

func parseAppUnit(unit string) (string, bool) {
	rest, ok := strings.CutPrefix(unit, "app-")
	if !ok {
		return "", false
	}
	switch {
	case strings.HasSuffix(rest, ".scope"):
		rest = strings.TrimSuffix(rest, ".scope")
		i := strings.LastIndexByte(rest, '-')
		if i < 0 {
			return "", false
		}
		rest = rest[:i]
	case strings.HasSuffix(rest, ".service"):
		rest = strings.TrimSuffix(rest, ".service")
		rest, _, _ = strings.Cut(rest, "@")
	default:
		return "", false
	}
	// What is left is "[<launcher>-]<escaped id>"; the id's own dashes are
	// escaped as \x2d, so a remaining dash separates the launcher.
	if i := strings.LastIndexByte(rest, '-'); i >= 0 {
		rest = rest[i+1:]
	}
	id := unescapeSystemd(rest)
	a, err := ParseAppID(id)
	if err != nil || a.Kind == AppIDLegacy {
		return "", false
	}
	return a.Base(), true
}

// unescapeSystemd undoes systemd's \xNN unit name escaping.
func unescapeSystemd(s string) string {
	if !strings.Contains(s, `\x`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' && isHex(s[i+2]) && isHex(s[i+3]) {
			b.WriteByte(unhex(s[i+2])<<4 | unhex(s[i+3]))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// maxProcFile bounds what is read from /proc files.
const maxProcFile = 64 * 1024

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, maxProcFile)
	n, err := f.Read(b)
	if n > 0 {
		return b[:n], nil
	}
	return nil, err
}

// identify computes a caller's Identity from its credentials and the
// process tree under procRoot: the AppArmor label first, then Flatpak, then
// the systemd unit.
func identify(procRoot string, uid, pid uint32, label string) Identity {
	id := Identity{UID: uid, PID: pid, Label: strings.TrimRight(label, "\x00")}
	if appID, src, confined := ParseAppArmorLabel(label); confined {
		id.AppID, id.Source, id.Confined = appID, src, true
		return id
	}
	if pid == 0 {
		return id
	}
	dir := filepath.Join(procRoot, strconv.FormatUint(uint64(pid), 10))
	if b, err := readLimited(filepath.Join(dir, "root", ".flatpak-info")); err == nil {
		appID, _ := ParseFlatpakInfo(b)
		id.AppID, id.Source, id.Confined = appID, SourceFlatpak, true
		return id
	}
	if b, err := readLimited(filepath.Join(dir, "cgroup")); err == nil {
		if appID, ok := ParseCgroup(b); ok {
			id.AppID, id.Source = appID, SourceSystemd
		}
	}
	return id
}

// String describes the identity for error messages.
func (id Identity) String() string {
	switch {
	case id.Confined && id.AppID == "":
		return fmt.Sprintf("confined caller (%s %q) with no app id", id.Source, id.Label)
	case id.Confined:
		return fmt.Sprintf("confined app %q (%s)", id.AppID, id.Source)
	case id.AppID != "":
		return fmt.Sprintf("unconfined app %q (%s)", id.AppID, id.Source)
	default:
		return "unconfined caller"
	}
}
