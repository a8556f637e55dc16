// Package layout checks the import rules of DESIGN §2 with `go list -deps`:
// the leaf packages import no other package of this project, dbusapi never
// reaches the session or sqlite, and only cmd/* and client wire parts together.
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

func TestImportRules(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("the go tool is needed: %v", err)
	}
	tests := []struct {
		pkg     string
		allowed []string // project packages it may depend on
		banned  []string // third-party packages it must not reach
	}{
		{pkg: "protocol"},
		{pkg: "protocol/lomiri"},
		{pkg: "webpush"},
		{pkg: "helpers"},
		{pkg: "notifications"},
		{pkg: "client/store"},
		{pkg: "client/session", allowed: []string{"protocol"}},
		{pkg: "client/lomiri", allowed: []string{"protocol/lomiri"}},
		{pkg: "dbusapi", banned: []string{"github.com/mattn/go-sqlite3", "github.com/gorilla/websocket"}},
		{pkg: "server", allowed: []string{"protocol", "protocol/lomiri", "webpush"}},
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
