package webpush_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoHeraldPackage enforces the layout rule of DESIGN.md: webpush
// imports no other package of this project.
func TestImportsNoHeraldPackage(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to list dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		if strings.HasPrefix(dep, "github.com/heraldpush/herald/") && dep != "github.com/heraldpush/herald/webpush" {
			t.Errorf("webpush imports %s", dep)
		}
	}
}
