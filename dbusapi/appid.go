package dbusapi

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// AppID is a parsed application id.
//
// Three forms are accepted:
//   - click style "pkg_app" or "pkg_app_version" (Lomiri/Ubuntu Touch, also
//     used for snaps as "snap_app");
//   - legacy "_name" (Ubuntu deb apps), whose package is empty;
//   - desktop style reverse-DNS ids such as "org.example.App" (Flatpak and
//     other non-click apps), whose package is the whole id.
type AppID struct {
	Package string // "" for legacy apps
	App     string // the app part; the name for legacy apps; the id for desktop ids
	Version string // click only, may be empty
	Kind    AppIDKind
}

// AppIDKind tells which grammar an AppID matched.
type AppIDKind int

const (
	AppIDClick AppIDKind = iota + 1
	AppIDLegacy
	AppIDDesktop
)

// MaxAppIDLen bounds every app id accepted on the bus.
const MaxAppIDLen = 255

var (
	clickRE   = regexp.MustCompile(`^([a-z0-9][a-z0-9+.-]+)_([a-zA-Z0-9+.-]+)(?:_([0-9][a-zA-Z0-9.+:~-]*))?$`)
	legacyRE  = regexp.MustCompile(`^_([^./][^/]*)$`)
	desktopRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*)+$`)
)

// errInvalidAppID is wrapped by ParseAppID errors.
var errInvalidAppID = errors.New("invalid application id")

// ParseAppID parses s as a click, legacy or desktop-style app id.
func ParseAppID(s string) (AppID, error) {
	if s == "" {
		return AppID{}, fmt.Errorf("%w: empty", errInvalidAppID)
	}
	if len(s) > MaxAppIDLen {
		return AppID{}, fmt.Errorf("%w: longer than %d bytes", errInvalidAppID, MaxAppIDLen)
	}
	if m := clickRE.FindStringSubmatch(s); m != nil {
		return AppID{Package: m[1], App: m[2], Version: m[3], Kind: AppIDClick}, nil
	}
	if m := legacyRE.FindStringSubmatch(s); m != nil {
		if strings.ContainsRune(m[1], 0) || !validUTF8(m[1]) {
			return AppID{}, fmt.Errorf("%w: %q", errInvalidAppID, s)
		}
		return AppID{App: m[1], Kind: AppIDLegacy}, nil
	}
	if desktopRE.MatchString(s) {
		return AppID{Package: s, App: s, Kind: AppIDDesktop}, nil
	}
	return AppID{}, fmt.Errorf("%w: %q", errInvalidAppID, s)
}

// Base is the id without version: "pkg_app", "_name" or the desktop id. The
// versioned and unversioned ids of one app have the same Base, which is the
// id the Backend sees.
func (a AppID) Base() string {
	switch a.Kind {
	case AppIDClick:
		return a.Package + "_" + a.App
	case AppIDLegacy:
		return "_" + a.App
	default:
		return a.App
	}
}

// String is the id as it was written (with its version, if any).
func (a AppID) String() string {
	if a.Kind == AppIDClick && a.Version != "" {
		return a.Base() + "_" + a.Version
	}
	return a.Base()
}

// NormalizeAppID parses s and returns its Base form.
func NormalizeAppID(s string) (string, error) {
	a, err := ParseAppID(s)
	if err != nil {
		return "", err
	}
	return a.Base(), nil
}

func validUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// Quote quotes s as one D-Bus object path element the way libnih's
// nih_dbus_path does: [A-Za-z0-9] are kept, every other byte becomes "_"
// followed by two lowercase hex digits, and "" becomes "_".
func Quote(s string) string {
	if s == "" {
		return "_"
	}
	const hex = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlnum(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// Unquote reverses Quote leniently, like the Lomiri push client: "_"
// followed by two hex digits (either case) becomes that byte; a "_" followed
// by two other bytes is dropped together with them; a "_" too close to the
// end ends the result. So "_" alone is "".
func Unquote(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '_' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			break
		}
		if isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
		}
		i += 2
	}
	return b.String()
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
