package helpers

import (
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestImportsNoProjectPackage keeps the package standalone: the daemon and
// the CLI import it, never the reverse; only the shared vocabulary (app) is
// imported.
func TestImportsNoProjectPackage(t *testing.T) {
	ents, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, "github.com/heraldpush/herald") && path != "github.com/heraldpush/herald/app" {
				t.Errorf("%s imports %s", name, path)
			}
		}
	}
}
