// Package e2e runs Herald's real binaries together: herald-server with its
// sqlite store, heraldd on a private dbus-daemon, real helper executables and
// test apps, and checks the whole lifecycle of DESIGN §1 from an app server's
// POST to the app reading its message.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/heraldpush/herald/internal/harness"
)

// bins holds the binaries built once for the whole package.
type bins struct {
	dir         string
	heraldd     string
	herald      string
	server      string
	upconnector string
}

var built bins

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	for _, tool := range []string{"dbus-daemon", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s not found; run `make test` (scripts/deps.sh installs it)\n", tool)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "herald-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := harness.Build(ctx, dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	up, err := harness.BuildTool(ctx, dir, "./internal/testapps/upconnector")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	built = bins{
		dir:         dir,
		heraldd:     filepath.Join(dir, "heraldd"),
		herald:      filepath.Join(dir, "herald"),
		server:      filepath.Join(dir, "herald-server"),
		upconnector: up,
	}
	return m.Run()
}
