package notifications

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/internal/testbus"
)

func TestExpandExec(t *testing.T) {
	const u = "chat://room/1?a=b c"
	tests := []struct {
		exec string
		want []string
		err  bool
	}{
		{exec: "chat %u", want: []string{"chat", u}},
		{exec: "chat %U --flag", want: []string{"chat", u, "--flag"}},
		{exec: "chat --url=%u", want: []string{"chat", "--url=" + u}},
		{exec: `"/opt/my app/bin" "%u" 100%%`, want: []string{"/opt/my app/bin", "%u", "100%"}},
		{exec: "chat \"a \\\"q\\\" \\$ \\\\ \\`\" %i %c %k", want: []string{"chat", "a \"q\" $ \\ `", "--icon", "chat", "Chat", "/x/chat.desktop"}},
		{exec: "chat %f %d %m", want: []string{"chat", u}},
		{exec: "env A=1 chat   %u", want: []string{"env", "A=1", "chat", u}},
		{exec: "", err: true},
		{exec: "chat %x", err: true},
		{exec: "chat %", err: true},
		{exec: `chat "unterminated`, err: true},
		{exec: `chat "bad \q"`, err: true},
		{exec: "%u", want: []string{u}},
	}
	e := &app.DesktopEntry{Name: "Chat", Icon: "chat", Path: "/x/chat.desktop"}
	for _, tt := range tests {
		e.Exec = tt.exec
		got, err := ExpandExec(e, u)
		if (err != nil) != tt.err {
			t.Errorf("ExpandExec(%q) error = %v, want error %v", tt.exec, err, tt.err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ExpandExec(%q) (-want +got):\n%s", tt.exec, diff)
		}
	}
}

func TestFindDesktopEntry(t *testing.T) {
	home, sys := t.TempDir(), t.TempDir()
	writeEntries(t, home, map[string]string{"org.example.App.desktop": entryFor("Home App")})
	writeEntries(t, sys, map[string]string{
		"org.example.App.desktop":       entryFor("System App"),
		"com.ex.pkg_app.desktop":        entryFor("Unversioned"),
		"com.ex.pkg_other_1.0.desktop":  entryFor("Old"),
		"com.ex.pkg_other_1.1.desktop":  entryFor("Versioned"),
		"com.ex.broken_app.desktop":     "not a desktop file",
		"com.ex.pkg_app_9.desktop":      entryFor("Exact"),
		"com.ex.pkgx_app_1.desktop":     entryFor("Wrong package"),
		"com.ex.pkg_appx_1.desktop":     entryFor("Wrong app"),
		"com.ex.pkg_app_0.desktop":      entryFor("Other version"),
		"com.ex.pkg_app_0.desktop.bak":  entryFor("Backup"),
		"com.ex.pkg_third_2.0.desktop":  entryFor("Third"),
		"com.ex.pkg_third_2.0~.desktop": entryFor("Third tilde"),
	})
	dirs := []string{home, sys}
	tests := []struct{ appID, name, id string }{
		{"org.example.App", "Home App", "org.example.App"},
		{"com.ex.pkg_app_9", "Exact", "com.ex.pkg_app_9"},
		{"com.ex.pkg_app_7", "Unversioned", "com.ex.pkg_app"},
		{"com.ex.pkg_app", "Unversioned", "com.ex.pkg_app"},
		{"com.ex.pkg_other", "Versioned", "com.ex.pkg_other_1.1"},
		{"com.ex.pkg_none", "", ""},
	}
	for _, tt := range tests {
		e, err := findDesktopEntry(dirs, tt.appID)
		if err != nil {
			t.Errorf("%s: %v", tt.appID, err)
			continue
		}
		if tt.name == "" {
			if e != nil {
				t.Errorf("%s: found %+v", tt.appID, e)
			}
			continue
		}
		if e == nil || e.Name != tt.name || e.ID != tt.id {
			t.Errorf("%s: got %+v, want %s (%s)", tt.appID, e, tt.name, tt.id)
		}
	}
	if _, err := findDesktopEntry(dirs, "com.ex.broken_app"); err == nil {
		t.Error("a broken entry is not reported")
	}
}

func TestCheckActionURL(t *testing.T) {
	entry := &app.DesktopEntry{ID: "com.ex.chat_chat", Schemes: []string{"chat", "https"}}
	tests := []struct {
		appID string
		e     *app.DesktopEntry
		url   string
		ok    bool
	}{
		{"com.ex.chat_chat_1.0", nil, "appid://com.ex.chat/chat/current-user-version", true},
		{"com.ex.chat_chat", nil, "appid://com.ex.chat/chat/2.0", true},
		{"com.ex.chat_chat", nil, "appid://com.ex.chat/other/2.0", false},
		{"com.ex.chat_chat", nil, "appid://com.ex.other/chat/2.0", false},
		{"org.ex.App", nil, "appid://org.ex.App/x", true},
		{"org.ex.App", nil, "appid://org.ex.Other/x", false},
		{"com.ex.chat_chat", entry, "application:///com.ex.chat_chat.desktop", true},
		{"com.ex.chat_chat", entry, "application:///other.desktop", false},
		{"com.ex.chat_chat", entry, "chat://room/1", true},
		{"com.ex.chat_chat", entry, "CHAT://room/1", true},
		{"com.ex.chat_chat", entry, "https://example.com/x", true},
		{"com.ex.chat_chat", nil, "https://example.com/x", false},
		{"com.ex.chat_chat", entry, "http://example.com/x", false},
		{"com.ex.chat_chat", entry, "file:///etc/passwd", false},
		{"com.ex.chat_chat", entry, "chat://room/\n1", false},
		{"com.ex.chat_chat", entry, "/relative", false},
		{"com.ex.chat_chat", entry, "", false},
	}
	for _, tt := range tests {
		err := CheckActionURL(tt.appID, tt.e, tt.url)
		if (err == nil) != tt.ok {
			t.Errorf("CheckActionURL(%q, %q) = %v, want ok %v", tt.appID, tt.url, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrForeignURL) {
			t.Errorf("error %v does not wrap ErrForeignURL", err)
		}
	}
}

func TestResolveSound(t *testing.T) {
	home, sys, outside := t.TempDir(), t.TempDir(), t.TempDir()
	write := func(path string) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	appSnd := write(filepath.Join(home, "com.ex.chat", "ping.ogg"))
	sysSnd := write(filepath.Join(sys, "sounds", "ubuntu", "Slick.ogg"))
	secret := write(filepath.Join(outside, "secret.ogg"))
	write(filepath.Join(sys, "keyring.ogg"))
	if err := os.Symlink(secret, filepath.Join(home, "com.ex.chat", "link.ogg")); err != nil {
		t.Fatal(err)
	}
	dirs := []string{home, sys}
	tests := []struct {
		path, want string
		bad        bool
	}{
		{path: "ping.ogg", want: appSnd},
		{path: "sounds/ubuntu/Slick.ogg", want: sysSnd},
		{path: "ubuntu/Slick.ogg", want: sysSnd},
		{path: appSnd, want: appSnd},
		{path: "../com.ex.chat/ping.ogg", bad: true},
		{path: "x/../../ping.ogg", bad: true},
		{path: secret, bad: true},
		{path: "/etc/passwd", bad: true},
		{path: "keyring.ogg"}, // not under sounds/: not found
		{path: "link.ogg"},    // symlink out of the dir: not found
		{path: "missing.ogg"}, // not found
	}
	for _, tt := range tests {
		got, err := ResolveSound(dirs, "com.ex.chat_chat_1", tt.path)
		if tt.bad != errors.Is(err, ErrBadSoundPath) {
			t.Errorf("ResolveSound(%q) error = %v, want refused %v", tt.path, err, tt.bad)
		}
		if got != tt.want {
			t.Errorf("ResolveSound(%q) = %q, want %q", tt.path, got, tt.want)
		}
		if tt.want == "" && err == nil {
			t.Errorf("ResolveSound(%q): no error without a file", tt.path)
		}
	}
}

// fakeApp is a D-Bus activatable app (org.freedesktop.Application).
type fakeApp struct{ opened chan []string }

func (a *fakeApp) Open(uris []string, _ map[string]dbus.Variant) *dbus.Error {
	a.opened <- uris
	return nil
}
func (a *fakeApp) Activate(map[string]dbus.Variant) *dbus.Error { a.opened <- nil; return nil }

func TestAppLauncher(t *testing.T) {
	bus := testbus.Start(t)
	testApp := &fakeApp{opened: make(chan []string, 1)}
	appConn := bus.Conn(t)
	if err := appConn.Export(testApp, "/org/example/Chat_app", "org.freedesktop.Application"); err != nil {
		t.Fatal(err)
	}
	if _, err := appConn.RequestName("org.example.Chat-app", dbus.NameFlagDoNotQueue); err != nil {
		t.Fatal(err)
	}
	l := &AppLauncher{Conn: bus.Conn(t)}
	ctx := context.Background()
	err := l.Launch(ctx, LaunchRequest{AppID: "org.example.Chat-app", URL: "chat://x",
		Entry: &app.DesktopEntry{ID: "org.example.Chat-app", DBusActivatable: true, Exec: "false"}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-testApp.opened:
		if !cmp.Equal(got, []string{"chat://x"}) {
			t.Fatalf("Open(%q)", got)
		}
	case <-time.After(waitFor):
		t.Fatal("Open not called")
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "argv.json")
	e := &app.DesktopEntry{ID: "chat", Exec: `env ` + recordEnv + `=` + out + ` "` + self + `" --open %u`}
	url := "chat://room/1?x=a b;$(rm -rf x)"
	if err := l.Launch(ctx, LaunchRequest{AppID: "chat", URL: url, Entry: e}); err != nil {
		t.Fatal(err)
	}
	l.Wait()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the app was not started: %v", err)
	}
	var argv []string
	if err := json.Unmarshal(b, &argv); err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(argv, []string{"--open", url}) {
		t.Fatalf("app argv %q", argv)
	}
	if err := l.Launch(ctx, LaunchRequest{AppID: "chat", URL: "x", Entry: &app.DesktopEntry{Exec: "no-such-program-herald %u"}}); err == nil {
		t.Error("launching a missing program succeeded")
	}
}
