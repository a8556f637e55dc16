package app

import (
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"com.ubuntu.music", "com_2eubuntu_2emusic"},
		{"com.example.app", "com_2eexample_2eapp"},
		{"my-app", "my_2dapp"},
		{"a_b", "a_5fb"},
		{"c++", "c_2b_2b"},
		{"\x05x", "_05x"},
		{"", "_"},
		{"com.ubuntu.music_music", "com_2eubuntu_2emusic_5fmusic"},
		{"ÿ", "_c3_bf"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := Quote(tt.in); got != tt.want {
				t.Errorf("Quote(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if got := Unquote(tt.want); got != tt.in {
				t.Errorf("Unquote(%q) = %q, want %q", tt.want, got, tt.in)
			}
		})
	}
}

func TestUnquoteLenient(t *testing.T) {
	tests := []struct{ in, want string }{
		{"com_2Eubuntu", "com.ubuntu"}, // upper-case hex
		{"a_zzb", "ab"},                // invalid pair dropped
		{"abc_", "abc"},                // trailing underscore
		{"abc_2", "abc"},               // short escape
		{"_", ""},
		{"plain", "plain"},
	}
	for _, tt := range tests {
		if got := Unquote(tt.in); got != tt.want {
			t.Errorf("Unquote(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzQuote(f *testing.F) {
	for _, s := range []string{"", "com.ubuntu.music", "a_b", "\x00\xff", "_2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q := Quote(s)
		for i := 0; i < len(q); i++ {
			if !isAlnum(q[i]) && q[i] != '_' {
				t.Fatalf("Quote(%q) = %q has byte %q", s, q, q[i])
			}
		}
		if got := Unquote(q); got != s {
			t.Fatalf("Unquote(Quote(%q)) = %q", s, got)
		}
		// Unquote never fails and its output re-quotes to a valid element.
		_ = Quote(Unquote(s))
	})
}

func TestParseID(t *testing.T) {
	tests := []struct {
		in                  string
		pkg, app, ver, base string
		kind                Form
		bad                 bool
	}{
		{in: "com.ubuntu.music_music_1.0", pkg: "com.ubuntu.music", app: "music", ver: "1.0", base: "com.ubuntu.music_music", kind: FormClick},
		{in: "com.ubuntu.music_music", pkg: "com.ubuntu.music", app: "music", base: "com.ubuntu.music_music", kind: FormClick},
		{in: "pkg.foo_app_1:2.0~rc1", pkg: "pkg.foo", app: "app", ver: "1:2.0~rc1", base: "pkg.foo_app", kind: FormClick},
		{in: "firefox_firefox", pkg: "firefox", app: "firefox", base: "firefox_firefox", kind: FormClick},
		{in: "_ubuntu-system-settings", app: "ubuntu-system-settings", base: "_ubuntu-system-settings", kind: FormLegacy},
		{in: "org.example.App", pkg: "org.example.App", app: "org.example.App", base: "org.example.App", kind: FormDesktop},
		{in: "org.kde.neochat", pkg: "org.kde.neochat", app: "org.kde.neochat", base: "org.kde.neochat", kind: FormDesktop},
		{in: "", bad: true},
		{in: "noseparator", bad: true},
		// Not click (upper case package, version not starting with a digit):
		// desktop-style ids, whose package is the whole id.
		{in: "Com.Example_app_1", pkg: "Com.Example_app_1", app: "Com.Example_app_1", base: "Com.Example_app_1", kind: FormDesktop},
		{in: "com.example_app_v1", pkg: "com.example_app_v1", app: "com.example_app_v1", base: "com.example_app_v1", kind: FormDesktop},
		{in: "Com_app", bad: true},
		{in: "1org.example", bad: true},
		{in: "_.hidden", bad: true},
		{in: "_a/b", bad: true},
		{in: "org..example", bad: true},
		{in: "pkg_app\n", bad: true},
		{in: "a_b_1_2", bad: true},
		{in: string(make([]byte, 300)), bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := ParseID(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("ParseID(%q) = %+v, want error", tt.in, a)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseID(%q): %v", tt.in, err)
			}
			if a.Package != tt.pkg || a.App != tt.app || a.Version != tt.ver || a.Form != tt.kind || a.Base() != tt.base {
				t.Errorf("ParseID(%q) = %+v base %q, want pkg %q app %q ver %q kind %d base %q",
					tt.in, a, a.Base(), tt.pkg, tt.app, tt.ver, tt.kind, tt.base)
			}
			if a.String() != tt.in {
				t.Errorf("String() = %q, want %q", a.String(), tt.in)
			}
		})
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"com.ubuntu.music_music_1.0", "_legacy", "org.example.App", "x_y", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseID(s)
		if err != nil {
			return
		}
		if a.String() != s {
			t.Fatalf("String() = %q for %q", a.String(), s)
		}
		b, err := ParseID(a.Base())
		if err != nil {
			t.Fatalf("Base %q of %q does not parse: %v", a.Base(), s, err)
		}
		if b.Base() != a.Base() || b.Package != a.Package || b.Form != a.Form {
			t.Fatalf("Base %q of %q parses to %+v, want %+v", a.Base(), s, b, a)
		}
	})
}

// FuzzFileNames: every name an id gives for a file lookup (helper
// manifests, desktop entries) is one safe file name element.
func FuzzFileNames(f *testing.F) {
	for _, s := range []string{"com.example.app_app_1.0", "_legacy", "org.example.App", "..", "a/b", "_./x", "pkg_app", "_.", "_a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		names := append(id.HelperNames(), id.DesktopIDs()...)
		names = append(names, id.DesktopID())
		for _, n := range names {
			n = strings.TrimSuffix(n, "_*")
			if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") || strings.HasPrefix(n, ".") || len(n)+len(".desktop") > 255 {
				t.Fatalf("app id %q gives unsafe file name %q", s, n)
			}
		}
	})
}
