package helpers

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// touch moves path's mtime forward so that a change is seen even on file
// systems with a coarse clock.
func touch(t *testing.T, path string, d time.Duration) {
	t.Helper()
	ts := time.Now().Add(d)
	if err := os.Chtimes(path, ts, ts); err != nil {
		t.Fatal(err)
	}
}

func TestFinderManifests(t *testing.T) {
	root := t.TempDir()
	home := filepath.Join(root, "home")
	sys1 := filepath.Join(root, "sys1")
	sys2 := filepath.Join(root, "sys2")
	m := func(dir, name, content string) string {
		p := filepath.Join(dir, "herald", "helpers", name+".json")
		writeFile(t, p, content, 0o644)
		return p
	}
	fullP := m(home, "com.example.app_app_1.0", `{"exec": "full"}`)
	baseP := m(sys1, "com.example.app_other", `{"exec": "bin/other"}`)
	pkgP := m(sys2, "com.example.app", `{"exec": "/abs/pkg"}`)
	wrongP := m(home, "com.example.wrong", `{"exec": "w", "app_id": "com.example.wrong_notthis"}`)
	m(sys1, "com.example.wrong", `{"exec": "w2", "app_id": "com.example.wrong_this"}`)
	desktopP := m(sys1, "org.example.App", `{"exec": "d"}`)
	legacyP := m(home, "_legacy-app", `{"exec": "l"}`)
	shadowP := m(home, "org.example.Shadow", `{"exec": "home"}`)
	m(sys1, "org.example.Shadow", `{"exec": "sys"}`)
	m(home, "org.example.Broken", `{"exec": 1}`)
	m(home, "org.example.NoExec", `{"app_id": "org.example.NoExec"}`)
	// A symlinked manifest resolves exec against the real file's directory.
	realDir := filepath.Join(root, "pkgs", "linked")
	writeFile(t, filepath.Join(realDir, "hook.json"), `{"exec": "helper.sh"}`, 0o644)
	linkP := filepath.Join(home, "herald", "helpers", "org.example.Linked.json")
	if err := os.Symlink(filepath.Join(realDir, "hook.json"), linkP); err != nil {
		t.Fatal(err)
	}

	f := NewFinder(Dirs{DataHome: home, DataDirs: []string{sys1, sys2}}, nil)
	dir := func(d string) string { return filepath.Join(d, "herald", "helpers") }
	tests := []struct {
		appID string
		want  Helper
		ok    bool
	}{
		{"com.example.app_app_1.0", Helper{"com.example.app_app_1.0", filepath.Join(dir(home), "full"), fullP, ""}, true},
		{"com.example.app_app_2.0", Helper{"com.example.app_app_2.0", "/abs/pkg", pkgP, ""}, true},
		{"com.example.app_other_3", Helper{"com.example.app_other_3", filepath.Join(dir(sys1), "bin/other"), baseP, ""}, true},
		{"com.example.app_other", Helper{"com.example.app_other", filepath.Join(dir(sys1), "bin/other"), baseP, ""}, true},
		{"com.example.wrong_notthis", Helper{"com.example.wrong_notthis", filepath.Join(dir(home), "w"), wrongP, ""}, true},
		{"com.example.wrong_this_1", Helper{"com.example.wrong_this_1", filepath.Join(dir(sys1), "w2"), filepath.Join(dir(sys1), "com.example.wrong.json"), ""}, true},
		{"org.example.App", Helper{"org.example.App", filepath.Join(dir(sys1), "d"), desktopP, ""}, true},
		{"_legacy-app", Helper{"_legacy-app", filepath.Join(dir(home), "l"), legacyP, ""}, true},
		{"org.example.Shadow", Helper{"org.example.Shadow", filepath.Join(dir(home), "home"), shadowP, ""}, true},
		{"org.example.Linked", Helper{"org.example.Linked", filepath.Join(realDir, "helper.sh"), linkP, ""}, true},
		{"org.example.Broken", Helper{}, false},
		{"org.example.NoExec", Helper{}, false},
		{"com.example.none_app", Helper{}, false},
		{"com.example.wrong_third", Helper{}, false},
		{"", Helper{}, false},
		{"../home/herald/helpers/org.example.App", Helper{}, false},
		{"a/b", Helper{}, false},
		{".hidden", Helper{}, false},
		{"..", Helper{}, false},
		{strings.Repeat("a", 300), Helper{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.appID, func(t *testing.T) {
			got, ok := f.Lookup(tt.appID)
			if ok != tt.ok {
				t.Fatalf("Lookup(%q) found = %v (%+v), want %v", tt.appID, ok, got, tt.ok)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Lookup(%q) (-want +got):\n%s", tt.appID, d)
			}
		})
	}
}

func TestFinderLomiri(t *testing.T) {
	root := t.TempDir()
	lomiri := filepath.Join(root, "lomiri-push-service", "helpers_data.json")
	ubuntu := filepath.Join(root, "ubuntu-push-client", "helpers_data.json")
	writeFile(t, lomiri, `{
		"com.example.app_app": {"exec": "/opt/app/helper", "helper_id": "com.example.app_helloHelper_1.0"},
		"com.example.other":   {"exec": "/opt/other/helper2", "helper_id": "com.example.other_h_0.2"},
		"com.example.rel":     {"exec": "relative", "helper_id": "com.example.rel_h_1"}
	}`, 0o644)
	writeFile(t, ubuntu, `{"com.example.app_second": {"exec": "/opt/ubuntu/h", "helper_id": "x"},
		"com.example.app_app": {"exec": "/opt/ubuntu/shadowed", "helper_id": "y"}}`, 0o644)
	// Hook files beside a helpers_data.json that does not list the package.
	hooks := filepath.Join(root, "ubuntu-push-client", "helpers")
	writeFile(t, filepath.Join(hooks, "com.example.hook_a_1.json"), `{"exec": "a.sh", "app_id": "com.example.hook_notme"}`, 0o644)
	writeFile(t, filepath.Join(hooks, "com.example.hook_b_1.json"), `{"exec": "b.sh"}`, 0o644)
	writeFile(t, filepath.Join(hooks, "com.example.hooked_c_1.json"), `{"exec": "c.sh"}`, 0o644)
	legacy := filepath.Join(root, "legacy-helpers")
	writeFile(t, filepath.Join(legacy, "ubuntu-system-settings"), "#!/bin/sh\n", 0o755)
	legacy2 := filepath.Join(root, "legacy2")
	writeFile(t, filepath.Join(legacy2, "other-legacy"), "#!/bin/sh\n", 0o755)

	f := NewFinder(Dirs{LomiriDataHome: root, LegacyDirs: []string{legacy, legacy2}}, nil)
	tests := []struct {
		appID string
		want  Helper
		ok    bool
	}{
		{"com.example.app_app_1.0", Helper{"com.example.app_app_1.0", "/opt/app/helper", lomiri, "com.example.app_helloHelper_1.0"}, true},
		{"com.example.app_app", Helper{"com.example.app_app", "/opt/app/helper", lomiri, "com.example.app_helloHelper_1.0"}, true},
		{"com.example.other_anything_0.2", Helper{"com.example.other_anything_0.2", "/opt/other/helper2", lomiri, "com.example.other_h_0.2"}, true},
		{"com.example.app_second", Helper{"com.example.app_second", "/opt/ubuntu/h", ubuntu, ""}, true},
		{"com.example.hook_x_2", Helper{"com.example.hook_x_2", filepath.Join(hooks, "b.sh"), filepath.Join(hooks, "com.example.hook_b_1.json"), "com.example.hook_b_1"}, true},
		{"com.example.hook_notme", Helper{"com.example.hook_notme", filepath.Join(hooks, "a.sh"), filepath.Join(hooks, "com.example.hook_a_1.json"), "com.example.hook_a_1"}, true},
		{"_ubuntu-system-settings", Helper{"_ubuntu-system-settings", filepath.Join(legacy, "ubuntu-system-settings"), legacy, ""}, true},
		{"_other-legacy", Helper{"_other-legacy", filepath.Join(legacy2, "other-legacy"), legacy2, ""}, true},
		{"com.example.rel_h", Helper{}, false},
		{"com.example.app", Helper{}, false}, // not a click id: Lomiri files are not searched
		{"_missing", Helper{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.appID, func(t *testing.T) {
			got, ok := f.Lookup(tt.appID)
			if ok != tt.ok {
				t.Fatalf("Lookup(%q) found = %v (%+v), want %v", tt.appID, ok, got, tt.ok)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Lookup(%q) (-want +got):\n%s", tt.appID, d)
			}
		})
	}

	list := f.List()
	var ids []string
	for _, h := range list {
		ids = append(ids, h.AppID)
	}
	wantIDs := []string{"_other-legacy", "_ubuntu-system-settings", "com.example.app_app", "com.example.app_second",
		"com.example.hook", "com.example.hook_notme", "com.example.hooked", "com.example.other"}
	if d := cmp.Diff(wantIDs, ids); d != "" {
		t.Errorf("List app ids (-want +got):\n%s", d)
	}
}

func TestFinderReloads(t *testing.T) {
	root := t.TempDir()
	p := filepath.Join(root, "herald", "helpers", "org.example.App.json")
	data := filepath.Join(root, "lomiri-push-service", "helpers_data.json")
	f := NewFinder(Dirs{DataHome: root, LomiriDataHome: root}, nil)
	lookup := func(id string) string {
		t.Helper()
		h, ok := f.Lookup(id)
		if !ok {
			return ""
		}
		return h.Exec
	}
	if got := lookup("org.example.App"); got != "" {
		t.Fatalf("before any manifest: found %q", got)
	}
	writeFile(t, p, `{"exec": "/one"}`, 0o644)
	if got := lookup("org.example.App"); got != "/one" {
		t.Fatalf("new manifest: exec %q, want /one", got)
	}
	writeFile(t, p, `{"exec": "/two"}`, 0o644) // same size
	touch(t, p, time.Second)
	if got := lookup("org.example.App"); got != "/two" {
		t.Fatalf("changed manifest: exec %q, want /two", got)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if got := lookup("org.example.App"); got != "" {
		t.Fatalf("removed manifest: exec %q, want none", got)
	}

	writeFile(t, data, `{"com.example.app_app": {"exec": "/a"}}`, 0o644)
	if got := lookup("com.example.app_app_1"); got != "/a" {
		t.Fatalf("helpers_data.json: exec %q, want /a", got)
	}
	// Rewritten atomically, as the click hook does.
	tmp := data + ".tmp"
	writeFile(t, tmp, `{"com.example.app_app": {"exec": "/b"}}`, 0o644)
	touch(t, tmp, 2*time.Second)
	if err := os.Rename(tmp, data); err != nil {
		t.Fatal(err)
	}
	if got := lookup("com.example.app_app_1"); got != "/b" {
		t.Fatalf("replaced helpers_data.json: exec %q, want /b", got)
	}
	writeFile(t, data, `{broken`, 0o644)
	if got := lookup("com.example.app_app_1"); got != "" {
		t.Fatalf("broken helpers_data.json: exec %q, want none", got)
	}
}

func TestHelperCheck(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "exe")
	writeFile(t, exe, "#!/bin/sh\n", 0o755)
	plain := filepath.Join(dir, "plain")
	writeFile(t, plain, "#!/bin/sh\n", 0o644)
	tests := []struct {
		name, exec string
		ok         bool
	}{
		{"executable", exe, true},
		{"not executable", plain, false},
		{"directory", dir, false},
		{"missing", filepath.Join(dir, "missing"), false},
		{"relative", "exe", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Helper{AppID: "a", Exec: tt.exec}.Check()
			if (err == nil) != tt.ok {
				t.Errorf("Check(%q) = %v, want ok %v", tt.exec, err, tt.ok)
			}
		})
	}
}

// TestManifestExecStaysInside: a manifest's relative exec must resolve
// inside the manifest's directory (issue 11): "../" and a symlink out are
// refused; a plain name and a symlink to a file inside are fine.
func TestManifestExecStaysInside(t *testing.T) {
	home := t.TempDir()
	dir := filepath.Join(home, "herald", "helpers")
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(home, "outside.sh")
	for _, p := range []string{outside, filepath.Join(dir, "bin", "inside.sh")} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{"out-link": outside, "in-link": filepath.Join(dir, "bin", "inside.sh"), "dangling": filepath.Join(home, "later.sh")}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	execs := map[string]string{
		"org.example.Up":       "../../outside.sh",
		"org.example.Dots":     "bin/../../../outside.sh",
		"org.example.OutLink":  "out-link",
		"org.example.Dangling": "dangling",
		"org.example.Plain":    "bin/inside.sh",
		"org.example.InLink":   "in-link",
	}
	for id, exec := range execs {
		if err := os.WriteFile(filepath.Join(dir, id+".json"), []byte(`{"exec": "`+exec+`"}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := NewFinder(Dirs{DataHome: home}, nil)
	inside := filepath.Join(dir, "bin", "inside.sh")
	for id, want := range map[string]string{
		"org.example.Up": "", "org.example.Dots": "", "org.example.OutLink": "", "org.example.Dangling": "",
		"org.example.Plain": inside, "org.example.InLink": inside,
	} {
		h, ok := f.Lookup(id)
		if want == "" && ok {
			t.Errorf("%s (exec %q) found: %+v, want refused", id, execs[id], h)
		}
		if want != "" && (!ok || h.Exec != want) {
			t.Errorf("%s (exec %q) = %+v, %v; want exec %s", id, execs[id], h, ok, want)
		}
	}
}
