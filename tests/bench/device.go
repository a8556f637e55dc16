package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/internal/fakesys"
	"github.com/heraldpush/herald/internal/harness"
)

// benchDaemonIdleDevice measures an idle connected heraldd that follows the
// device state (UPower, NetworkManager, logind fakes on a private system
// bus: the real services cannot run there): its wakeups over a minute with
// nothing happening, then how long after a resume from suspend a message
// reaches the app when the connection died during the sleep.
func benchDaemonIdleDevice(ctx context.Context, env *Env) ([]Result, error) {
	sysBus, err := harness.StartBus(filepath.Join(env.Tmp, "sysbus"))
	if err != nil {
		return nil, err
	}
	defer sysBus.Close()
	sys, err := fakesys.Start(sysBus.Address)
	if err != nil {
		return nil, err
	}
	defer sys.Close()
	sys.SetBattery(true, 80) // on battery: the watchers have a state to follow
	r, err := startDaemonRig(ctx, env, true, "DBUS_SYSTEM_BUS_ADDRESS="+sysBus.Address)
	if err != nil {
		return nil, err
	}
	defer r.close()
	const appID = "com.example.idle_idle"
	token, err := r.register(ctx, appID)
	if err != nil {
		return nil, err
	}
	if err := r.waitState(ctx, "connected", 30*time.Second); err != nil {
		return nil, err
	}
	conn := r.conn
	r.conn = nil
	conn.Close() // no D-Bus traffic on the session bus during the minute
	settle(ctx, 30*time.Second)
	pid := r.daemon.Pid()
	_, before, err := procStatus(pid)
	if err != nil {
		return nil, err
	}
	const minute = 60 * time.Second
	env.Logf("daemon_idle_device: watching heraldd (pid %d) idle for %s, following UPower, NetworkManager and logind", pid, minute)
	settle(ctx, minute)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	_, after, err := procStatus(pid)
	if err != nil {
		return nil, err
	}

	// Resume: the connection died silently during the sleep.
	if r.conn, err = dbus.Connect(r.bus.Address); err != nil {
		return nil, err
	}
	if err := r.conn.AddMatchSignal(dbus.WithMatchInterface("com.lomiri.Postal"), dbus.WithMatchMember("Post")); err != nil {
		return nil, err
	}
	posts := make(chan *dbus.Signal, 16)
	r.conn.Signal(posts)
	sys.Sleep()
	r.proxy.Freeze()
	sys.Resume()
	start := time.Now()
	if err := r.pushEncoded(token, []byte(`{"after":"resume"}`), ""); err != nil {
		return nil, fmt.Errorf("push after resume: %w", err)
	}
	select {
	case <-posts:
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("no message 30 s after the resume\n%s", r.daemon.Tail(3000))
	}
	resume := time.Since(start)
	return []Result{
		{Name: "daemon_idle_device_wakeups_per_min", Label: "daemon idle wakeups, following battery/network/suspend", Value: float64(after - before),
			Unit: "/min", Target: 2, Lower: true,
			Note: "voluntary context switches of all threads over 60 s with the UPower, NetworkManager and logind watchers; no timer of heraldd's own"},
		{Name: "daemon_resume_delivery_ms", Label: "message after resume, dead connection", Value: float64(resume.Microseconds()) / 1000,
			Unit: "ms", Target: 2000, Lower: true,
			Note: "PrepareForSleep(false), then a push: ping unanswered for resume_check_timeout (1 s), redial, drain"},
	}, nil
}
