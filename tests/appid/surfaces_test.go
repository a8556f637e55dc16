// Package appid checks that every surface of the daemon that takes an
// application id — the Lomiri D-Bus API, the helper finder, presentation
// and the store — accepts and refuses exactly the ids app.ParseID does
// (issue 12: three parsers disagreed, so legacy "_name" apps were accepted on
// D-Bus but refused by presentation).
package appid

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/helpers"
	"github.com/heraldpush/herald/internal/testbus"
	"github.com/heraldpush/herald/notifications"
)

// backend is the daemon side of the D-Bus surface: it records the app ids
// RegisterLomiri was called with. Only RegisterLomiri is used here.
type backend struct {
	dbusapi.Backend
	mu   sync.Mutex // guards seen
	seen []string
}

func (b *backend) RegisterLomiri(_ context.Context, appID string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen = append(b.seen, appID)
	return "token", nil
}

func (b *backend) Status(context.Context) dbusapi.Status { return dbusapi.Status{State: "idle"} }

func (b *backend) last() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.seen) == 0 {
		return ""
	}
	return b.seen[len(b.seen)-1]
}

// surfaces are the real parts under test, built once per fuzz target.
type surfaces struct {
	client  *dbus.Conn
	backend *backend
	pres    *notifications.Presenter
	st      *store.Store
	data    string // helper manifests' DataHome
}

func newSurfaces(t testing.TB) *surfaces {
	bus := testbus.Start(t)
	be := &backend{}
	svc, err := dbusapi.New(dbusapi.Config{Address: bus.Address, Backend: be, ProcRoot: t.TempDir(), CallTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "herald.db"), store.Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return &surfaces{
		client:  bus.Conn(t),
		backend: be,
		pres:    notifications.New(notifications.Options{Conn: bus.Conn(t), DataDirs: []string{t.TempDir()}}),
		st:      st,
		data:    t.TempDir(),
	}
}

// dbusAccepts calls com.lomiri.PushNotifications.Register for id on the
// object path of its package (for an id that does not parse: the text before
// its first '_').
func (s *surfaces) dbusAccepts(t *testing.T, id string) bool {
	pkg := id
	if a, err := app.ParseID(id); err == nil {
		pkg = a.Package
	} else if i := strings.IndexByte(id, '_'); i >= 0 {
		pkg = id[:i]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var tok string
	err := s.client.Object("com.lomiri.PushNotifications", dbus.ObjectPath("/com/lomiri/PushNotifications/"+app.Quote(pkg))).
		CallWithContext(ctx, "com.lomiri.PushNotifications.Register", 0, id).Store(&tok)
	if err == nil {
		return true
	}
	var de dbus.Error
	if e, ok := err.(dbus.Error); ok {
		de = e
	} else if e, ok := err.(*dbus.Error); ok {
		de = *e
	}
	if !strings.HasSuffix(de.Name, ".Error.InvalidAppID") {
		t.Fatalf("Register(%q): %v, want success or InvalidAppID", id, err)
	}
	return false
}

// helpersAccept installs a manifest named exactly after id (when id is a
// possible file name at all) and reports whether the finder finds it.
func (s *surfaces) helpersAccept(t *testing.T, id string) bool {
	dir := filepath.Join(s.data, "herald", "helpers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	safe := id != "" && id != "." && id != ".." && len(id) < 250 && !strings.ContainsAny(id, "/\x00")
	if safe {
		m, _ := json.Marshal(map[string]string{"exec": "/bin/true"})
		p := filepath.Join(dir, id+".json")
		if err := os.WriteFile(p, m, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(p)
	}
	_, found := helpers.NewFinder(helpers.Dirs{DataHome: s.data}, nil).Lookup(id)
	return found
}

func (s *surfaces) presentationAccepts(id string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return s.pres.SetCounter(ctx, id, 1, true) == nil
}

func (s *surfaces) storeAccepts(id string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := s.st.PutRegistration(ctx, store.Registration{ChannelID: "c", AppID: id, Kind: app.KindLomiri})
	if err == nil {
		_ = s.st.DeleteRegistration(ctx, "c")
	}
	return err == nil
}

// FuzzSurfacesAgree: for any string, every surface accepts it exactly when
// app.ParseID does, and the D-Bus surface hands the daemon its Base form.
func FuzzSurfacesAgree(f *testing.F) {
	for _, s := range []string{
		"_legacy", "_ubuntu-system-settings", "com.ubuntu.music_music_1.0", "com.ubuntu.music_music", "org.example.App",
		"Com.Example_app_1", "firefox_firefox", "", "_", "_.hidden", "_a/b", "a_b", "a_b_1_2", "noseparator", "org..example",
		"../evil", "pkg_app\n", "_a\tb", "1org.example", strings.Repeat("a", 241) + ".b", "_\xff",
	} {
		f.Add(s)
	}
	s := newSurfaces(f)
	f.Fuzz(func(t *testing.T, id string) {
		a, err := app.ParseID(id)
		want := err == nil
		if got := s.storeAccepts(id); got != want {
			t.Errorf("store accepts %q: %v, app.ParseID: %v", id, got, err)
		}
		if got := s.presentationAccepts(id); got != want {
			t.Errorf("presentation accepts %q: %v, app.ParseID: %v", id, got, err)
		}
		if got := s.helpersAccept(t, id); got != want {
			t.Errorf("helper finder accepts %q: %v, app.ParseID: %v", id, got, err)
		}
		if !utf8.ValidString(id) || strings.ContainsRune(id, 0) {
			// Not a D-Bus string: the bus itself refuses it.
			if want {
				t.Errorf("app.ParseID accepts %q, which no D-Bus caller can send", id)
			}
			return
		}
		if got := s.dbusAccepts(t, id); got != want {
			t.Errorf("D-Bus Register accepts %q: %v, app.ParseID: %v", id, got, err)
		} else if want && s.backend.last() != a.Base() {
			t.Errorf("D-Bus Register(%q) gave the daemon %q, want %q", id, s.backend.last(), a.Base())
		}
	})
}
