package dbusapi

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/heraldpush/herald/app"
)

func TestParseAppArmorLabel(t *testing.T) {
	tests := []struct {
		label    string
		app      string
		src      Source
		confined bool
	}{
		{"com.ubuntu.music_music_1.0 (enforce)", "com.ubuntu.music_music", SourceAppArmor, true},
		{"com.ubuntu.music_music_1.0 (enforce)\x00", "com.ubuntu.music_music", SourceAppArmor, true},
		{"snap.firefox.firefox (enforce)", "firefox_firefox", SourceSnap, true},
		{"snap.my-app.daemon (enforce)", "my-app_daemon", SourceSnap, true},
		{"snap.firefox.hook.configure (enforce)", "", SourceSnap, true},
		{"/usr/bin/evince (enforce)", "", SourceAppArmor, true},
		{"unconfined", "", SourceNone, false},
		{"", "", SourceNone, false},
		{"firefox (unconfined)", "", SourceNone, false},
		{"com.ubuntu.music_music_1.0 (complain)", "", SourceNone, false},
	}
	for _, tt := range tests {
		t.Run(tt.label, func(t *testing.T) {
			app, src, confined := ParseAppArmorLabel(tt.label)
			if app != tt.app || src != tt.src || confined != tt.confined {
				t.Errorf("ParseAppArmorLabel(%q) = %q, %q, %v; want %q, %q, %v", tt.label, app, src, confined, tt.app, tt.src, tt.confined)
			}
		})
	}
}

func TestParseFlatpakInfo(t *testing.T) {
	tests := []struct {
		name, in, app string
		ok            bool
	}{
		{"app", "[Application]\nname=org.example.App\nruntime=runtime/org.kde.Platform/x86_64/6.7\n\n[Instance]\ninstance-id=1\n", "org.example.App", true},
		{"spaces", "# comment\n[Application]\n name = org.kde.neochat \n", "org.kde.neochat", true},
		{"runtime only", "[Runtime]\nruntime=runtime/org.gnome.Platform\n", "", false},
		{"name in other section", "[Instance]\nname=org.evil.App\n[Application]\nruntime=x\n", "", false},
		{"invalid name", "[Application]\nname=../../etc\n", "", false},
		{"empty", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, ok := ParseFlatpakInfo([]byte(tt.in))
			if app != tt.app || ok != tt.ok {
				t.Errorf("ParseFlatpakInfo = %q, %v; want %q, %v", app, ok, tt.app, tt.ok)
			}
		})
	}
}

func TestParseCgroup(t *testing.T) {
	tests := []struct {
		name, in, app string
		ok            bool
	}{
		{"gnome scope", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-4567.scope\n", "org.gnome.Terminal", true},
		{"no launcher", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.example.App-12.scope\n", "org.example.App", true},
		{"escaped dash", "0::/user.slice/user@1000.service/app.slice/app-flatpak-org.example.My\\x2dApp-99.scope\n", "org.example.My-App", true},
		{"service with random", "0::/user.slice/user@1000.service/app.slice/app-org.kde.neochat@a1b2.service\n", "org.kde.neochat", true},
		{"service with launcher", "0::/user.slice/user@1000.service/app.slice/app-dbus\\x2d:1.2\\x2dorg.example.App@12.service\n", "", false},
		{"click id", "0::/user.slice/user@1000.service/app.slice/app-com.ubuntu.music_music-12.scope\n", "com.ubuntu.music_music", true},
		{"v1 hierarchy", "12:pids:/user.slice\n1:name=systemd:/user.slice/user@1000.service/app.slice/app-org.example.App-1.scope\n", "org.example.App", true},
		{"session scope", "0::/user.slice/user-1000.slice/session-2.scope\n", "", false},
		{"garbage", "\x00\xff::::\n", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, ok := ParseCgroup([]byte(tt.in))
			if app != tt.app || ok != tt.ok {
				t.Errorf("ParseCgroup = %q, %v; want %q, %v", app, ok, tt.app, tt.ok)
			}
		})
	}
}

// checkIdentityResult is the property the identity parsers promise: an app
// id they return is valid and already in Base form.
func checkIdentityResult(t *testing.T, in []byte, got string, ok bool) {
	t.Helper()
	if !ok {
		if got != "" {
			t.Fatalf("not ok but app %q for %q", got, in)
		}
		return
	}
	a, err := app.ParseID(got)
	if err != nil || a.Base() != got {
		t.Fatalf("returned app id %q for %q is not a valid base id (%v)", got, in, err)
	}
}

func FuzzParseCgroup(f *testing.F) {
	f.Add([]byte("0::/user.slice/app.slice/app-gnome-org.gnome.Terminal-4567.scope\n"))
	f.Add([]byte("1:name=systemd:/app-org.kde.neochat@1.service"))
	f.Fuzz(func(t *testing.T, b []byte) {
		app, ok := ParseCgroup(b)
		checkIdentityResult(t, b, app, ok)
	})
}

func FuzzParseFlatpakInfo(f *testing.F) {
	f.Add([]byte("[Application]\nname=org.example.App\n"))
	f.Add([]byte("[Runtime]\nruntime=x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		app, ok := ParseFlatpakInfo(b)
		checkIdentityResult(t, b, app, ok)
	})
}

func FuzzParseAppArmorLabel(f *testing.F) {
	f.Add("com.ubuntu.music_music_1.0 (enforce)")
	f.Add("snap.a.b (enforce)")
	f.Add("unconfined")
	f.Fuzz(func(t *testing.T, label string) {
		app, _, confined := ParseAppArmorLabel(label)
		if app != "" && !confined {
			t.Fatalf("app %q from unconfined label %q", app, label)
		}
		checkIdentityResult(t, []byte(label), app, app != "")
	})
}

// fakeProc writes a /proc/<pid> tree for identify.
func fakeProc(t *testing.T, pid int, flatpakInfo, cgroup string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(filepath.Join(dir, "root"), 0o755); err != nil {
		t.Fatal(err)
	}
	if flatpakInfo != "" {
		if err := os.WriteFile(filepath.Join(dir, "root", ".flatpak-info"), []byte(flatpakInfo), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if cgroup != "" {
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestIdentify(t *testing.T) {
	const pid = 4242
	flatpak := "[Application]\nname=org.example.App\n"
	scope := "0::/user.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-1.scope\n"
	tests := []struct {
		name          string
		label, fp, cg string
		app           string
		src           Source
		confined      bool
	}{
		{"apparmor wins", "com.ubuntu.music_music_1 (enforce)", flatpak, scope, "com.ubuntu.music_music", SourceAppArmor, true},
		// A .flatpak-info at a path is no Flatpak app (no pidfd-pinned process,
		// no instance): TestFlatpakIdentityRealSandbox has real ones.
		{"flatpak-info by path only", "", flatpak, scope, "org.gnome.Terminal", SourceSystemd, false},
		{"flatpak-info without app by path only", "", "[Runtime]\nruntime=x\n", "", "", SourceNone, false},
		{"systemd scope is not confinement", "unconfined", "", scope, "org.gnome.Terminal", SourceSystemd, false},
		{"nothing", "", "", "", "", SourceNone, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeProc(t, pid, tt.fp, tt.cg)
			id := identify(root, t.TempDir(), 1000, pid, tt.label, nil)
			if id.AppID != tt.app || id.Source != tt.src || id.Confined != tt.confined || id.UID != 1000 || id.PID != pid {
				t.Errorf("identify = %+v; want app %q source %q confined %v", id, tt.app, tt.src, tt.confined)
			}
		})
	}
}
