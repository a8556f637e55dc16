package dbusapi

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/heraldpush/herald/app"
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
			if a, err := app.ParseID(parts[1] + "_" + parts[2]); err == nil && a.Form == app.FormClick {
				return a.Base(), SourceSnap, true
			}
		}
		return "", SourceSnap, true
	}
	if a, err := app.ParseID(profile); err == nil && a.Form == app.FormClick && a.Version != "" {
		return a.Base(), SourceAppArmor, true
	}
	return "", SourceAppArmor, confined
}

// ParseFlatpakInfo reads the application id from a .flatpak-info file
// (`[Application] name=…`). ok is false when the file names no valid app.
func ParseFlatpakInfo(b []byte) (appID string, ok bool) {
	kf, err := app.ParseKeyFile(b)
	if err != nil {
		return "", false
	}
	v, found := kf.Get("Application", "name")
	if !found {
		return "", false
	}
	if a, err := app.ParseID(v); err == nil && a.Form == app.FormDesktop {
		return a.Base(), true
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
	id := app.UnescapeSystemd(rest)
	a, err := app.ParseID(id)
	if err != nil || a.Form == app.FormLegacy {
		return "", false
	}
	return a.Base(), true
}

// maxProcFile bounds what is read from /proc files.
const maxProcFile = 64 * 1024

// identify computes a caller's Identity from its credentials and the
// process tree under procRoot: the AppArmor label first, then Flatpak, then
// the systemd unit.
//
// A Flatpak app is one that flatpakIdentity accepts (runtimeDir is the
// user's $XDG_RUNTIME_DIR, samePID re-checks the caller's pid on the bus);
// anything else with a .flatpak-info is treated as unconfined.
func identify(procRoot, runtimeDir string, uid, pid uint32, label string, samePID func() bool) Identity {
	id := Identity{UID: uid, PID: pid, Label: strings.TrimRight(label, "\x00")}
	if appID, src, confined := ParseAppArmorLabel(label); confined {
		id.AppID, id.Source, id.Confined = appID, src, true
		return id
	}
	if pid == 0 {
		return id
	}
	dir := filepath.Join(procRoot, strconv.FormatUint(uint64(pid), 10))
	if b, err := flatpakIdentity(procRoot, runtimeDir, int(pid), samePID); err == nil {
		appID, _ := ParseFlatpakInfo(b)
		id.AppID, id.Source, id.Confined = appID, SourceFlatpak, true
		return id
	}
	if b, err := app.ReadFile(filepath.Join(dir, "cgroup"), maxProcFile); err == nil {
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
