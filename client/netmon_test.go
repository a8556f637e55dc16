package client

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"github.com/heraldpush/herald/internal/testbus"
)

// setNMState changes a fake NetworkManager's State as the real one does:
// the property and a StateChanged signal. A closed conn sends nothing.
func setNMState(t *testing.T, conn *dbus.Conn, props *prop.Properties, st uint32) {
	t.Helper()
	if !conn.Connected() {
		return
	}
	props.SetMust(nmIface, "State", st)
	if err := conn.Emit(nmPath, nmIface+".StateChanged", st); err != nil {
		t.Fatal(err)
	}
}

// fakeNM exports NetworkManager's State on a private bus.
func fakeNM(t *testing.T, conn *dbus.Conn, state uint32) *prop.Properties {
	t.Helper()
	props, err := prop.Export(conn, nmPath, prop.Map{
		nmIface: {"State": {Value: state, Writable: false, Emit: prop.EmitTrue}},
	})
	if err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(nmName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("cannot own %s: %v", nmName, err)
	}
	return props
}

func TestWatchNetwork(t *testing.T) {
	bus := testbus.Start(t)
	nm := bus.Conn(t)
	fakeNM(t, nm, 20) // NM_STATE_DISCONNECTED
	watcher := bus.Conn(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	online := make(chan bool, 10)
	done := make(chan error, 1)
	go func() {
		done <- WatchNetwork(ctx, watcher, func(v bool) { online <- v }, slog.New(slog.DiscardHandler))
	}()
	expect := func(want bool) {
		t.Helper()
		select {
		case got := <-online:
			if got != want {
				t.Fatalf("online = %v, want %v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no online=%v report", want)
		}
	}
	expect(false)
	emit := func(sender *dbus.Conn, body ...any) {
		t.Helper()
		if err := sender.Emit(nmPath, nmIface+".StateChanged", body...); err != nil {
			t.Fatal(err)
		}
	}
	// A forged signal from another connection and malformed bodies are ignored.
	forger := bus.Conn(t)
	emit(forger, uint32(70))
	emit(nm, "seventy")
	emit(nm)
	emit(nm, uint32(10)) // NM_STATE_ASLEEP: the first report must be this one
	expect(false)
	emit(nm, uint32(70)) // NM_STATE_CONNECTED_GLOBAL
	expect(true)
	emit(nm, uint32(40)) // NM_STATE_CONNECTING
	expect(false)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestWatchNetworkAcrossRestarts: NetworkManager absent at the start
// leaves the network up (no report); when it starts its State is read;
// after it restarts (a new unique name) the new instance's State and
// signals are followed and the old instance's are not.
func TestWatchNetworkAcrossRestarts(t *testing.T) {
	bus := testbus.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	online := make(chan bool, 10)
	done := make(chan error, 1)
	go func() {
		done <- WatchNetwork(ctx, bus.Conn(t), func(v bool) { online <- v }, slog.New(slog.DiscardHandler))
	}()
	expect := func(want bool) {
		t.Helper()
		select {
		case got := <-online:
			if got != want {
				t.Fatalf("online = %v, want %v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no online=%v report", want)
		}
	}
	// Wait until the watcher is subscribed: a NameOwnerChanged of another
	// name is not enough, so start NetworkManager once and see its State.
	first, err := dbus.Connect(bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	p1 := fakeNM(t, first, 70)
	select {
	case got := <-online:
		if !got {
			t.Fatal("first NetworkManager reported offline")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first NetworkManager's State was not read when it appeared")
	}
	setNMState(t, first, p1, 20)
	expect(false)

	// Restart: the first instance leaves, a second takes the name.
	first.Close()
	second := bus.Conn(t)
	p2 := fakeNM(t, second, 20)
	expect(false) // its State, read when it appeared
	setNMState(t, second, p2, 70)
	expect(true)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestNMOnline(t *testing.T) {
	for state, want := range map[uint32]bool{0: true, 10: false, 20: false, 30: false, 40: false, 50: true, 60: true, 70: true} {
		if got := nmOnline(state); got != want {
			t.Errorf("nmOnline(%d) = %v, want %v", state, got, want)
		}
	}
}
