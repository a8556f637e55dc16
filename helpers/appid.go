package helpers

import "regexp"

var (
	clickID  = regexp.MustCompile(`^([a-z0-9][a-z0-9+.-]+)_([a-zA-Z0-9+.-]+)(?:_([0-9][a-zA-Z0-9.+:~-]*))?$`)
	legacyID = regexp.MustCompile(`^_([^./\x00][^/\x00]*)$`)
	// otherID covers desktop-style ids (org.example.App) and plain names;
	// starting with an alphanumeric keeps "." and ".." out.
	otherID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]*$`)
)

// maxAppIDLen keeps "<app_id>.json" within a file name.
const maxAppIDLen = 250

// appID is a parsed application id.
type appID struct {
	full   string // as given
	pkg    string // click package; "" for other kinds
	base   string // click pkg_app, legacy name; "" for desktop-style ids
	legacy bool   // "_name"
}

// parseAppID classifies id as a click id (pkg_app[_version]), a legacy id
// (_name) or a desktop-style id (org.example.App). It reports false for ids
// that cannot name a file safely.
func parseAppID(id string) (appID, bool) {
	if id == "" || len(id) > maxAppIDLen {
		return appID{}, false
	}
	if m := clickID.FindStringSubmatch(id); m != nil {
		return appID{full: id, pkg: m[1], base: m[1] + "_" + m[2]}, true
	}
	if m := legacyID.FindStringSubmatch(id); m != nil {
		return appID{full: id, base: m[1], legacy: true}, true
	}
	if otherID.MatchString(id) {
		return appID{full: id}, true
	}
	return appID{}, false
}

// names are the manifest names tried for id, most specific first.
func (a appID) names() []string {
	names := []string{a.full}
	if a.pkg != "" {
		if a.base != a.full {
			names = append(names, a.base)
		}
		names = append(names, a.pkg)
	}
	return names
}
