// Package testbus starts a private dbus-daemon for a test: a session-type bus
// with an allow-all policy and a service directory for D-Bus activation. It
// is used only by tests; internal/harness starts the same bus for programs.
package testbus

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/internal/harness"
)

// Bus is a running private dbus-daemon.
type Bus struct {
	// Address is the bus address to pass to dbus.Connect or DBUS_SESSION_BUS_ADDRESS.
	Address string
	// ServiceDir is the directory searched for activatable .service files
	// (empty unless WithServiceDir was used).
	ServiceDir string
}

// Option changes how the bus is started.
type Option func(*options)

type options struct {
	serviceDir bool
}

// WithServiceDir gives the bus a service directory (Bus.ServiceDir) for D-Bus
// activation; write .service files there before the first activation.
func WithServiceDir() Option { return func(o *options) { o.serviceDir = true } }

// Start runs a private dbus-daemon that is stopped when the test ends. The
// test fails if dbus-daemon is missing: `make test` installs it.
func Start(t testing.TB, opts ...Option) *Bus {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		t.Fatalf("dbus-daemon not found (make test installs it): %v", err)
	}
	hb, err := harness.StartBus(filepath.Join(t.TempDir(), "bus"))
	if err != nil {
		t.Fatalf("cannot start dbus-daemon: %v", err)
	}
	t.Cleanup(hb.Close)
	b := &Bus{Address: hb.Address}
	if o.serviceDir {
		b.ServiceDir = hb.ServiceDir
	}
	return b
}

// Conn opens a new connection to the bus, closed when the test ends.
func (b *Bus) Conn(t testing.TB) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(b.Address)
	if err != nil {
		t.Fatalf("cannot connect to test bus: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// Env returns os.Environ() with DBUS_SESSION_BUS_ADDRESS pointing at the bus,
// for child processes.
func (b *Bus) Env() []string {
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DBUS_SESSION_BUS_ADDRESS=") {
			env = append(env, kv)
		}
	}
	return append(env, "DBUS_SESSION_BUS_ADDRESS="+b.Address)
}
