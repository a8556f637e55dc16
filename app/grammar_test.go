package app

import (
	"math/rand/v2"
	"regexp"
	"testing"
)

// The regular expressions the hand-written grammars of id.go replace.
var (
	clickRE   = regexp.MustCompile(`^([a-z0-9][a-z0-9+.-]+)_([a-zA-Z0-9+.-]+)(?:_([0-9][a-zA-Z0-9.+:~-]*))?$`)
	legacyRE  = regexp.MustCompile(`^_([^./\x00][^/\x00]*)$`)
	desktopRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*)+$`)
)

// checkGrammars fails when a hand-written grammar and its regular expression
// disagree on s.
func checkGrammars(t *testing.T, s string) {
	t.Helper()
	pkg, app, ver, ok := parseClick(s)
	m := clickRE.FindStringSubmatch(s)
	if ok != (m != nil) || ok && (pkg != m[1] || app != m[2] || ver != m[3]) {
		t.Fatalf("parseClick(%q) = %q %q %q %v, regexp %q", s, pkg, app, ver, ok, m)
	}
	name, ok := parseLegacy(s)
	m = legacyRE.FindStringSubmatch(s)
	if ok != (m != nil) || ok && name != m[1] {
		t.Fatalf("parseLegacy(%q) = %q %v, regexp %q", s, name, ok, m)
	}
	if got, want := isDesktopID(s), desktopRE.MatchString(s); got != want {
		t.Fatalf("isDesktopID(%q) = %v, regexp %v", s, got, want)
	}
}

// Every string of up to 4 bytes over an alphabet holding a byte of every
// class the grammars tell apart, and longer random ones, are judged alike.
func TestIDGrammarsMatchRegexps(t *testing.T) {
	alphabet := []string{"a", "Z", "0", "9", "_", ".", "-", "+", ":", "~", "/", "\x00", "\n", "é", "\xff", "*"}
	var gen func(prefix string, n int)
	gen = func(prefix string, n int) {
		checkGrammars(t, prefix)
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(prefix+c, n-1)
		}
	}
	gen("", 4)
	r := rand.New(rand.NewPCG(17, 17))
	for range 20000 {
		b := make([]byte, 0, 24)
		for range r.IntN(24) {
			b = append(b, alphabet[r.IntN(len(alphabet))]...)
		}
		checkGrammars(t, string(b))
	}
	for _, s := range []string{"com.ubuntu.music_music_1.0", "pkg.foo_app_1:2.0~rc1", "_ubuntu-system-settings",
		"org.example.App", "org.kde.neochat", "Com.Example_app_1", "com.example_app_v1", "a_b_1_2", "_.hidden", "org..example"} {
		checkGrammars(t, s)
	}
}

func FuzzIDGrammars(f *testing.F) {
	for _, s := range []string{"com.ubuntu.music_music_1.0", "_legacy", "org.example.App", "x_y", "", "a_b_1_2", "_a/b"} {
		f.Add(s)
	}
	f.Fuzz(checkGrammars)
}
