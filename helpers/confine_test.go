package helpers

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// clickEnv installs testdata/where.sh as the push-helper click hook of
// com.example.app (hook id com.example.app_helper_1.0) under a Lomiri data
// home, and an AppArmor test double: aa-exec (testdata/aa/aa-exec, which
// records the profile and runs the command unconfined, because this kernel
// has no AppArmor) and a fake securityfs directory whose "profiles" file
// lists the loaded profiles.
type clickEnv struct {
	finder         *Finder
	aaExec, aaLog  string
	securityFS     string
	cache, tempDir string
}

func newClickEnv(t *testing.T, profiles string) *clickEnv {
	t.Helper()
	root := t.TempDir()
	e := &clickEnv{
		securityFS: filepath.Join(root, "securityfs"),
		cache:      filepath.Join(root, "cache"),
		tempDir:    filepath.Join(root, "tmp"),
	}
	script, err := os.ReadFile(filepath.Join("testdata", "where.sh"))
	if err != nil {
		t.Fatal(err)
	}
	pkg := filepath.Join(root, "click", "com.example.app")
	writeFile(t, filepath.Join(pkg, "where.sh"), string(script), 0o755)
	writeFile(t, filepath.Join(pkg, "push-helper.json"), `{"exec": "where.sh"}`, 0o644)
	hooks := filepath.Join(root, "share", "lomiri-push-service", "helpers")
	if err := os.MkdirAll(hooks, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(pkg, "push-helper.json"), filepath.Join(hooks, "com.example.app_helper_1.0.json")); err != nil {
		t.Fatal(err)
	}
	e.finder = NewFinder(Dirs{LomiriDataHome: filepath.Join(root, "share")}, nil)
	aa, err := os.ReadFile(filepath.Join("testdata", "aa", "aa-exec"))
	if err != nil {
		t.Fatal(err)
	}
	e.aaExec = filepath.Join(root, "bin", "aa-exec")
	e.aaLog = filepath.Join(root, "bin", "aa-exec.log")
	writeFile(t, e.aaExec, string(aa), 0o755)
	if profiles != "-" {
		writeFile(t, filepath.Join(e.securityFS, "profiles"), profiles, 0o444)
	}
	return e
}

func (e *clickEnv) runner() *Runner {
	return NewRunner(e.finder, Config{TempDir: e.tempDir, CacheHome: e.cache,
		AppArmor: AppArmor{FS: e.securityFS, Exec: e.aaExec}})
}

func (e *clickEnv) profilesUsed(t *testing.T) []string {
	b, err := os.ReadFile(e.aaLog)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

func TestConfinedHelperRunsUnderItsProfile(t *testing.T) {
	e := newClickEnv(t, "unrelated_profile (enforce)\ncom.example.app_helper_1.0 (enforce)\n")
	out, err := e.runner().Process(context.Background(), "com.example.app_app_1.0", "m1", []byte(`{}`))
	if err != nil {
		t.Fatalf("Process: %v", err)
	}
	if d := cmp.Diff([]string{"com.example.app_helper_1.0"}, e.profilesUsed(t)); d != "" {
		t.Errorf("aa-exec profiles (-want +got):\n%s", d)
	}
	// The scratch files were in the package's cache dir, as upstream.
	want, _ := json.Marshal(filepath.Join(e.cache, "com.example.app"))
	if string(out.Message) != string(want) {
		t.Errorf("helper ran on files in %s, want %s", out.Message, want)
	}
	ents, err := os.ReadDir(filepath.Join(e.cache, "com.example.app"))
	if err != nil || len(ents) != 0 {
		t.Errorf("cache dir after the run: %v, %v; want empty", ents, err)
	}
	if fi, err := os.Stat(filepath.Join(e.cache, "com.example.app")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("cache dir mode: %v, %v; want 0700", fi, err)
	}
}

func TestConfinedHelperWithoutProfileRefused(t *testing.T) {
	e := newClickEnv(t, "other_helper_1 (enforce)\n")
	payload := []byte(`{"notification": {"card": {"summary": "s", "popup": true}}}`)
	out, err := e.runner().Process(context.Background(), "com.example.app_app_1.0", "m1", payload)
	if !errors.Is(err, ErrConfinement) || !strings.Contains(err.Error(), `profile "com.example.app_helper_1.0" is not loaded`) {
		t.Fatalf("Process error = %v, want ErrConfinement naming the missing profile", err)
	}
	if d := cmp.Diff(RawOutput(payload), out); d != "" {
		t.Errorf("output of a refused helper (-want +got):\n%s", d)
	}
	if used := e.profilesUsed(t); used != nil {
		t.Errorf("aa-exec ran with %v for a refused helper", used)
	}
}

func TestHelperUnconfinedWithoutAppArmor(t *testing.T) {
	e := newClickEnv(t, "-")
	if _, err := e.runner().Process(context.Background(), "com.example.app_app", "m1", []byte(`{}`)); err != nil {
		t.Fatalf("Process: %v", err)
	}
	if used := e.profilesUsed(t); used != nil {
		t.Errorf("aa-exec ran with %v although AppArmor is not enabled", used)
	}
}

func TestProfileLoaded(t *testing.T) {
	list := []byte("a_b_1 (enforce)\n/usr/bin/x (complain)\nc_d_2 (enforce)")
	for name, want := range map[string]bool{"a_b_1": true, "c_d_2": true, "/usr/bin/x": true, "a_b": false, "a_b_1 (enforce)": false, "": false} {
		if got := profileLoaded(list, name); got != want {
			t.Errorf("profileLoaded(%q) = %v, want %v", name, got, want)
		}
	}
}
