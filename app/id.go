package app

import (
	"errors"
	"fmt"
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
	if pkg, app, ver, ok := parseClick(s); ok {
		return ID{Package: pkg, App: app, Version: ver, Form: FormClick}, nil
	}
	if name, ok := parseLegacy(s); ok {
		// Glob metacharacters are refused too: names are looked up with
		// filepath.Glob patterns ("<name>_*"), and "_*" would match any file.
		if !utf8.ValidString(name) || strings.ContainsFunc(name, isControl) || strings.ContainsAny(name, `*?[]\`) {
			return ID{}, fmt.Errorf("%w: %q", ErrInvalidID, s)
		}
		return ID{App: name, Form: FormLegacy}, nil
	}
	if isDesktopID(s) {
		return ID{Package: s, App: s, Form: FormDesktop}, nil
	}
	return ID{}, fmt.Errorf("%w: %q", ErrInvalidID, s)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// The three grammars, written out instead of as regular expressions (heraldd
// links no regexp: issue 17, less binary mapped and no compile at start-up).
// Their regular expressions, which id_test.go checks them against:
//
//	click:   ^([a-z0-9][a-z0-9+.-]+)_([a-zA-Z0-9+.-]+)(?:_([0-9][a-zA-Z0-9.+:~-]*))?$
//	legacy:  ^_([^./\x00][^/\x00]*)$
//	desktop: ^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*)+$

// parseClick matches the click grammar. No part may hold "_", so the id
// splits at its underscores into two or three parts.
func parseClick(s string) (pkg, app, ver string, ok bool) {
	pkg, rest, found := strings.Cut(s, "_")
	if !found {
		return "", "", "", false
	}
	app, ver, versioned := strings.Cut(rest, "_")
	if len(pkg) < 2 || !isLowerDigit(pkg[0]) || !allBytes(pkg[1:], isClickPkg) {
		return "", "", "", false
	}
	if app == "" || !allBytes(app, isClickApp) {
		return "", "", "", false
	}
	if versioned && (ver == "" || !isDigit(ver[0]) || !allBytes(ver[1:], isClickVersion)) {
		return "", "", "", false
	}
	return pkg, app, ver, true
}

// parseLegacy matches the legacy grammar and returns the name after "_".
func parseLegacy(s string) (string, bool) {
	name, ok := strings.CutPrefix(s, "_")
	if !ok || name == "" || name[0] == '.' || strings.ContainsAny(name, "/\x00") {
		return "", false
	}
	return name, true
}

// isDesktopID matches the desktop grammar: two or more dot-separated
// elements, each a letter followed by letters, digits, "_" and "-".
func isDesktopID(s string) bool {
	n := 0
	for elem := range strings.SplitSeq(s, ".") {
		if elem == "" || !isLetter(elem[0]) || !allBytes(elem[1:], isDesktopElem) {
			return false
		}
		n++
	}
	return n >= 2
}

func allBytes(s string, f func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !f(s[i]) {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool      { return '0' <= c && c <= '9' }
func isLetter(c byte) bool     { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isLowerDigit(c byte) bool { return 'a' <= c && c <= 'z' || isDigit(c) }
func isClickPkg(c byte) bool   { return isLowerDigit(c) || c == '+' || c == '.' || c == '-' }
func isClickApp(c byte) bool {
	return isLetter(c) || isDigit(c) || c == '+' || c == '.' || c == '-'
}
func isClickVersion(c byte) bool { return isClickApp(c) || c == ':' || c == '~' }
func isDesktopElem(c byte) bool  { return isLetter(c) || isDigit(c) || c == '_' || c == '-' }

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
