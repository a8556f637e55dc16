// Package testbus starts a private dbus-daemon for a test: a session-type bus
// with an allow-all policy, optionally with a service directory for D-Bus
// activation. It is used only by tests.
package testbus

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// Bus is a running private dbus-daemon.
type Bus struct {
	// Address is the bus address to pass to dbus.Connect or DBUS_SESSION_BUS_ADDRESS.
	Address string
	// ServiceDir is the directory searched for activatable .service files
	// (empty unless WithServiceDir was used).
	ServiceDir string
	cmd        *exec.Cmd
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
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Fatalf("dbus-daemon not found (make test installs it): %v", err)
	}
	dir := t.TempDir()
	b := &Bus{}
	servicedir := ""
	if o.serviceDir {
		b.ServiceDir = filepath.Join(dir, "services")
		if err := os.MkdirAll(b.ServiceDir, 0o755); err != nil {
			t.Fatal(err)
		}
		servicedir = "<servicedir>" + b.ServiceDir + "</servicedir>"
	}
	sock := filepath.Join(dir, "bus")
	conf := fmt.Sprintf(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=%s</listen>
  %s
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
  <limit name="reply_timeout">60000</limit>
</busconfig>
`, sock, servicedir)
	confPath := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(daemon, "--config-file="+confPath, "--nofork", "--print-address=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start dbus-daemon: %v", err)
	}
	b.cmd = cmd
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	select {
	case a := <-addr:
		if a == "" {
			t.Fatal("dbus-daemon printed no address")
		}
		b.Address = a
	case <-time.After(20 * time.Second):
		t.Fatal("dbus-daemon did not start within 20s")
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
