package app

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// ID is a parsed application id. Three forms are accepted:
//   - click style "pkg_app" or "pkg_app_version" (Lomiri/Ubuntu Touch, also
//     used for snaps as "snap_app");
//   - legacy "_name" (Ubuntu deb apps), whose package is empty;
//   - desktop style reverse-DNS ids such as "org.example.App" (Flatpak and
//     other non-click apps), whose package is the whole id.
type ID struct {
	Package string // "" for legacy apps; the whole id for desktop ids
	App     string // the app part; the name for legacy apps; the id for desktop ids
	Version string // click only, may be empty
	Form    Form
}

// Form tells which grammar an ID matched.
type Form int

// The forms of an ID.
const (
	FormClick Form = iota + 1
	FormLegacy
	FormDesktop
)

// MaxIDLen bounds every app id: "<id>.desktop" and "<id>.json" must stay
// a valid file name (255 bytes).
const MaxIDLen = 240

var (
	clickRE   = regexp.MustCompile(`^([a-z0-9][a-z0-9+.-]+)_([a-zA-Z0-9+.-]+)(?:_([0-9][a-zA-Z0-9.+:~-]*))?$`)
	legacyRE  = regexp.MustCompile(`^_([^./\x00][^/\x00]*)$`)
	desktopRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*)+$`)
)

// ErrInvalidID is wrapped by every ParseID error.
var ErrInvalidID = errors.New("invalid application id")

// ParseID parses s as a click, legacy or desktop-style app id.
func ParseID(s string) (ID, error) {
	if s == "" {
		return ID{}, fmt.Errorf("%w: empty", ErrInvalidID)
	}
	if len(s) > MaxIDLen {
		return ID{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalidID, MaxIDLen)
	}
	if m := clickRE.FindStringSubmatch(s); m != nil {
		return ID{Package: m[1], App: m[2], Version: m[3], Form: FormClick}, nil
	}
	if m := legacyRE.FindStringSubmatch(s); m != nil {
		// Glob metacharacters are refused too: names are looked up with
		// filepath.Glob patterns ("<name>_*"), and "_*" would match any file.
		if !utf8.ValidString(m[1]) || strings.ContainsFunc(m[1], isControl) || strings.ContainsAny(m[1], `*?[]\`) {
			return ID{}, fmt.Errorf("%w: %q", ErrInvalidID, s)
		}
		return ID{App: m[1], Form: FormLegacy}, nil
	}
	if desktopRE.MatchString(s) {
		return ID{Package: s, App: s, Form: FormDesktop}, nil
	}
	return ID{}, fmt.Errorf("%w: %q", ErrInvalidID, s)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// Base is the id without version: "pkg_app", "_name" or the desktop id. The
// versioned and unversioned ids of one app have the same Base: it is the id
// the daemon keys registrations, inboxes, notifications and counters by.
func (a ID) Base() string {
	switch a.Form {
	case FormClick:
		return a.Package + "_" + a.App
	case FormLegacy:
		return "_" + a.App
	default:
		return a.App
	}
}

// String is the id as it was written (with its version, if any).
func (a ID) String() string {
	if a.Form == FormClick && a.Version != "" {
		return a.Base() + "_" + a.Version
	}
	return a.Base()
}

// DesktopID is the desktop file id of the app's desktop entry (without
// ".desktop"): "pkg_app" for click apps (whose installed entry may also
// carry the version, see DesktopIDs), the name for legacy apps and the id
// itself for desktop ids.
func (a ID) DesktopID() string {
	switch a.Form {
	case FormClick:
		return a.Package + "_" + a.App
	default:
		return a.App
	}
}

// DesktopIDs are the desktop file ids to try for the app, most specific
// first; a trailing "*" is a glob over installed versions.
func (a ID) DesktopIDs() []string {
	if a.Form != FormClick {
		return []string{a.App}
	}
	ids := []string{a.String()}
	if a.Version != "" {
		ids = append(ids, a.Base())
	}
	return append(ids, a.Base()+"_*")
}

// HelperNames are the helper manifest names tried for the app, most
// specific first: the id as written, then "pkg_app" and "pkg" for click
// ids. Legacy and desktop ids are looked up only as written.
func (a ID) HelperNames() []string {
	names := []string{a.String()}
	if a.Form == FormClick {
		if a.Version != "" {
			names = append(names, a.Base())
		}
		names = append(names, a.Package)
	}
	return names
}

// NormalizeID parses s and returns its Base form.
func NormalizeID(s string) (string, error) {
	a, err := ParseID(s)
	if err != nil {
		return "", err
	}
	return a.Base(), nil
}
