// Package layout checks the import rules of DESIGN §2 with `go list -deps`:
// the shared vocabulary (app) imports no package of this project, the leaf
// packages import none but app, dbusapi never reaches a backend or sqlite,
// only cmd/* and client wire parts together, and each binary links only what
// it needs (the herald CLI links no sqlite and no websocket).
package layout

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const mod = "github.com/heraldpush/herald"

// deps returns the project packages (without the module prefix) and the
// third-party modules pkg depends on, itself excluded.
func deps(t *testing.T, pkg string) (own, other []string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", mod+"/"+pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	for _, d := range strings.Fields(string(out)) {
		switch {
		case d == mod+"/"+pkg:
		case strings.HasPrefix(d, mod+"/"):
			own = append(own, strings.TrimPrefix(d, mod+"/"))
		default:
			other = append(other, d)
		}
	}
	return own, other
}

const (
	sqlite    = "github.com/mattn/go-sqlite3"
	websocket = "github.com/gorilla/websocket"
)

// vocab is what a leaf package may import of this project.
var vocab = []string{"app"}

func TestImportRules(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("the go tool is needed: %v", err)
	}
	tests := []struct {
		pkg     string
		allowed []string // project packages it may depend on
		banned  []string // third-party packages it must not reach
	}{
		{pkg: "app"},
		{pkg: "protocol", allowed: vocab},
		{pkg: "protocol/lomiri", allowed: vocab},
		{pkg: "webpush", allowed: vocab},
		{pkg: "helpers", allowed: vocab},
		{pkg: "notifications", allowed: vocab},
		{pkg: "client/store", allowed: vocab},
		{pkg: "client/push", allowed: vocab, banned: []string{sqlite, websocket}},
		{pkg: "client/config", allowed: []string{"app", "client/lomiri", "protocol/lomiri"}, banned: []string{sqlite, websocket}},
		{pkg: "client/session", allowed: []string{"app", "protocol"}},
		{pkg: "client/lomiri", allowed: []string{"app", "protocol/lomiri"}},
		{pkg: "dbusapi", allowed: vocab, banned: []string{sqlite, websocket}},
		{pkg: "server", allowed: []string{"app", "protocol", "protocol/lomiri", "webpush"}},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			own, other := deps(t, tt.pkg)
			for _, d := range own {
				if !slices.Contains(tt.allowed, d) {
					t.Errorf("%s imports %s", tt.pkg, d)
				}
			}
			for _, d := range other {
				for _, b := range tt.banned {
					if d == b || strings.HasPrefix(d, b+"/") {
						t.Errorf("%s reaches %s", tt.pkg, d)
					}
				}
			}
		})
	}
}

// TestBinaryDeps checks what each binary links, as `go list -deps ./cmd/X`
// shows it: the CLI talks to heraldd over D-Bus only, so neither sqlite nor
// websocket code may reach it.
func TestBinaryDeps(t *testing.T) {
	tests := []struct {
		bin    string
		banned []string
		needed []string // proves the listing is real
	}{
		{bin: "cmd/herald", banned: []string{sqlite, websocket, mod + "/client/store", mod + "/client/session", mod + "/server"},
			needed: []string{"github.com/godbus/dbus/v5"}},
		{bin: "cmd/heraldd", banned: []string{mod + "/server", "github.com/jackc/pgx/v5"},
			needed: []string{sqlite, websocket, "github.com/godbus/dbus/v5"}},
		{bin: "cmd/herald-server", banned: []string{"github.com/godbus/dbus/v5", mod + "/dbusapi", mod + "/client", mod + "/notifications", mod + "/helpers"},
			needed: []string{websocket}},
	}
	for _, tt := range tests {
		t.Run(tt.bin, func(t *testing.T) {
			own, other := deps(t, tt.bin)
			all := other
			for _, d := range own {
				all = append(all, mod+"/"+d)
			}
			for _, b := range tt.banned {
				for _, d := range all {
					if d == b || strings.HasPrefix(d, b+"/") {
						t.Errorf("%s links %s", tt.bin, d)
					}
				}
			}
			for _, n := range tt.needed {
				if !slices.ContainsFunc(all, func(d string) bool { return d == n || strings.HasPrefix(d, n+"/") }) {
					t.Errorf("%s does not link %s: the dependency listing is wrong", tt.bin, n)
				}
			}
		})
	}
}
