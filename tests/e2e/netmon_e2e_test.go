package e2e

import (
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"
)

// NetworkManager's names and states (NMState) used here.
const (
	nmName          = "org.freedesktop.NetworkManager"
	nmPath          = dbus.ObjectPath("/org/freedesktop/NetworkManager")
	nmDisconnected  = uint32(20)
	nmConnectedFull = uint32(70)
)

// fakeNetworkManager is a NetworkManager on heraldd's private system bus:
// Debian's NetworkManager cannot run in a test, so this exports the State
// property and StateChanged signal heraldd reads. It says so here.
type fakeNetworkManager struct {
	conn  *dbus.Conn
	props *prop.Properties
}

func (w *world) startNetworkManager(state uint32) *fakeNetworkManager {
	w.t.Helper()
	conn, err := dbus.Connect(w.sysBus.Address)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { conn.Close() })
	props, err := prop.Export(conn, nmPath, prop.Map{nmName: {"State": {Value: state, Emit: prop.EmitTrue}}})
	if err != nil {
		w.t.Fatal(err)
	}
	if reply, err := conn.RequestName(nmName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		w.t.Fatalf("cannot own %s: %v", nmName, err)
	}
	return &fakeNetworkManager{conn: conn, props: props}
}

func (nm *fakeNetworkManager) setState(t *testing.T, st uint32) {
	t.Helper()
	nm.props.SetMust(nmName, "State", st)
	if err := nm.conn.Emit(nmPath, nmName+".StateChanged", st); err != nil {
		t.Fatal(err)
	}
}

// waitDaemonState waits until org.herald.Daemon1's State is want, watching
// PropertiesChanged.
func (w *world) waitDaemonState(want string) {
	w.t.Helper()
	c, err := dbus.Connect(w.bus.Address)
	if err != nil {
		w.t.Fatal(err)
	}
	defer c.Close()
	if err := c.AddMatchSignal(dbus.WithMatchObjectPath("/org/herald/Daemon"), dbus.WithMatchMember("PropertiesChanged")); err != nil {
		w.t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 100)
	c.Signal(ch)
	var v dbus.Variant
	if err := w.call("org.herald.Daemon", "/org/herald/Daemon", "org.freedesktop.DBus.Properties.Get", "org.herald.Daemon1", "State").Store(&v); err != nil {
		w.t.Fatal(err)
	}
	got, _ := v.Value().(string)
	deadline := time.After(waitLong)
	for got != want {
		select {
		case s := <-ch:
			if len(s.Body) >= 2 {
				if changed, ok := s.Body[1].(map[string]dbus.Variant); ok {
					if st, ok := changed["State"].Value().(string); ok {
						got = st
					}
				}
			}
		case <-deadline:
			w.t.Fatalf("heraldd state %q, want %q within %s", got, want, waitLong)
		}
	}
}

// TestNetworkManagerRestartE2E: heraldd follows NetworkManager on the
// system bus across a restart. Offline with the first instance, it stays
// offline while NetworkManager restarts (the new instance reports
// disconnected too), and reconnects when the new instance — a new unique
// name — says the network is back. Before issue 12 heraldd kept the first
// instance's unique name and ignored the new one for good.
func TestNetworkManagerRestartE2E(t *testing.T) {
	w := newWorld(t, worldOptions{systemBus: true})
	const appID = "com.example.netmon_app"
	token := w.registerLomiri(appID)
	w.waitDaemonState("connected")

	nm := w.startNetworkManager(nmConnectedFull)
	nm.setState(t, nmDisconnected)
	w.waitDaemonState("offline")

	nm.conn.Close()                              // NetworkManager stops…
	nm2 := w.startNetworkManager(nmDisconnected) // …and starts again, still offline
	w.waitDaemonState("offline")
	nm2.setState(t, nmConnectedFull)
	w.waitDaemonState("connected")

	w.mustPush(token, `"back online"`)
	w.waitPost(appID, waitLong)
	w.popWant(appID, `"back online"`)
}
