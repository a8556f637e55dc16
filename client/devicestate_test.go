package client

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/internal/fakesys"
	"github.com/heraldpush/herald/internal/testbus"
)

// WatchDevice follows UPower, NetworkManager's Metered and logind's resume
// on a private bus (fakes: see internal/fakesys for why).
func TestWatchDevice(t *testing.T) {
	bus := testbus.Start(t)
	watcher := bus.Conn(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := make(chan config.DeviceState, 100)
	resumed := make(chan struct{}, 10)
	done := make(chan error, 1)
	go func() {
		done <- WatchDevice(ctx, watcher, DeviceHooks{
			State:   func(s config.DeviceState) { states <- s },
			Resumed: func() { resumed <- struct{}{} },
		}, slog.New(slog.DiscardHandler))
	}()
	expect := func(want config.DeviceState) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case got := <-states:
				if got == want {
					return
				}
			case <-deadline:
				t.Fatalf("no state %+v reported", want)
			}
		}
	}
	// No services yet: on power, unmetered.
	expect(config.DeviceState{})
	// The services start later (the watcher follows their names).
	sys, err := fakesys.Start(bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	sys.SetBattery(true, 10)
	expect(config.DeviceState{OnBattery: true, Percentage: 10})
	sys.SetMetered(fakesys.MeteredYes)
	expect(config.DeviceState{OnBattery: true, Percentage: 10, Metered: true})
	sys.SetBattery(false, 11)
	expect(config.DeviceState{Metered: true})
	// A forged PrepareForSleep from another connection is ignored; going to
	// sleep is not a resume; the real resume is.
	forger := bus.Conn(t)
	if err := forger.Emit("/org/freedesktop/login1", "org.freedesktop.login1.Manager.PrepareForSleep", false); err != nil {
		t.Fatal(err)
	}
	if err := sys.Sleep(); err != nil {
		t.Fatal(err)
	}
	if err := sys.Resume(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-resumed:
	case <-time.After(10 * time.Second):
		t.Fatal("resume not reported")
	}
	// The forged and the sleep signals came before the resume: had either
	// counted, a second report would be queued by now (signals are ordered).
	sys.SetMetered(fakesys.MeteredNo)
	expect(config.DeviceState{})
	if len(resumed) != 0 {
		t.Fatalf("%d extra resume reports (forged or sleep signal counted)", len(resumed))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
