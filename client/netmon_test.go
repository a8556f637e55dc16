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

func TestWatchNetworkWithoutNetworkManager(t *testing.T) {
	bus := testbus.Start(t)
	called := false
	err := WatchNetwork(context.Background(), bus.Conn(t), func(bool) { called = true }, slog.New(slog.DiscardHandler))
	if err != nil || called {
		t.Fatalf("WatchNetwork without NetworkManager = %v (called %v); want nil at once, state untouched", err, called)
	}
}

func TestNMOnline(t *testing.T) {
	for state, want := range map[uint32]bool{0: true, 10: false, 20: false, 30: false, 40: false, 50: true, 60: true, 70: true} {
		if got := nmOnline(state); got != want {
			t.Errorf("nmOnline(%d) = %v, want %v", state, got, want)
		}
	}
}
