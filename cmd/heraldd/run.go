package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/godbus/dbus/v5"
	"golang.org/x/sync/errgroup"

	"github.com/heraldpush/herald/client"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/helpers"
	"github.com/heraldpush/herald/notifications"
)

// run wires the daemon and runs it until ctx ends, then shuts down in the
// order of DESIGN §5: STOPPING, release bus names, stop taking work, close
// the websocket, stop helpers, flush and close the store.
func run(ctx context.Context, cfg config.Config, logger *slog.Logger) error {
	if cfg.Env.SessionBus == "" {
		return errors.New("no session bus: set DBUS_SESSION_BUS_ADDRESS or XDG_RUNTIME_DIR")
	}
	if cfg.Server == "" {
		logger.Warn("no push server configured: apps cannot register until server is set in config.toml")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("cannot create state directory: %w", err)
	}
	st, err := store.Open(ctx, filepath.Join(cfg.StateDir, "herald.db"), store.Options{Synchronous: strings.ToUpper(cfg.Durability), MaxInbox: cfg.InboxLimit})
	if err != nil {
		return err
	}
	defer st.Close()

	conn, err := dbus.Connect(cfg.Env.SessionBus)
	if err != nil {
		return fmt.Errorf("cannot connect to the session bus: %w", err)
	}
	defer conn.Close()

	tmp := filepath.Join(cfg.StateDir, "tmp")
	if cfg.Env.RuntimeDir != "" {
		tmp = filepath.Join(cfg.Env.RuntimeDir, "herald")
	}
	finder := helpers.NewFinder(helperDirs(cfg.Env), logger.With("part", "helpers"))
	runner := helpers.NewRunner(finder, helpers.Config{
		Concurrency: cfg.HelperConcurrency, Timeout: cfg.HelperTimeout.Duration, TempDir: tmp,
		CacheHome: cfg.Env.CacheHome, AppArmor: helpers.AppArmor{FS: cfg.AppArmorFS},
		Logger: logger.With("part", "helpers"), Shim: helperShim(logger),
	})
	// The system bus carries AccountsService's sound settings and
	// hfd-service; without it those are left out.
	var sys *dbus.Conn
	if cfg.Env.SystemBus != "" {
		if sys, err = dbus.Connect(cfg.Env.SystemBus); err != nil {
			logger.Info("no system bus: no sound settings, vibration, network, battery or suspend state", "err", err)
			sys = nil
		} else {
			defer sys.Close()
		}
	}
	pres := notifications.New(notifications.Options{
		Conn: conn, Store: notificationStore{st}, Logger: logger.With("part", "notifications"),
		DataDirs:   append([]string{cfg.Env.DataHome}, cfg.Env.DataDirs...),
		SystemConn: sys, UID: os.Getuid(), Settings: &notifications.Settings{},
	})
	d := client.New(client.Options{
		Config: cfg, Store: st, Processor: processor{runner}, Presenter: presenter{pres},
		Logger: logger,
	})
	// Freed memory goes back to the system once the daemon is quiet after
	// start-up, a connection change, messages or an app's call.
	trim := newTrimmer(trimQuiet, trimMemory)
	defer trim.stop()
	svc, err := dbusapi.New(dbusapi.Config{
		Address: cfg.Env.SessionBus, Backend: trimmedBackend{d, trim}, Logger: logger.With("part", "dbus"),
		RequireConfinement: cfg.RequireConfinement,
	})
	if err != nil {
		return err
	}
	d.SetBus(statusBus{svc, trim})
	// The device state is known before apps are served, so the first
	// connection already states the lowest wanted urgency.
	if sys != nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d.SetUrgency(cfg.Urgency.MinUrgency(client.ReadDeviceState(sctx, sys)))
		cancel()
	}

	// The bus names are owned before the daemon starts working, so that the
	// work resumed from the store (Post signals, UnifiedPush redelivery,
	// dropping removed apps) finds the D-Bus service running. Calls that
	// arrive first wait for the daemon's loop.
	if err := svc.Start(ctx); err != nil {
		return err
	}
	// Work happens under runCtx, which ends only after the bus names are
	// released.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return d.Run(gctx) })
	g.Go(func() error { return pres.Run(gctx) })
	g.Go(func() error {
		if sys == nil {
			return nil
		}
		var sg errgroup.Group
		sg.Go(func() error { return client.WatchNetwork(gctx, sys, d.SetOnline, logger) })
		sg.Go(func() error { return watchDevice(gctx, sys, cfg.Urgency, d, logger) })
		return sg.Wait()
	})
	notify(logger, sddaemon.SdNotifyReady)
	logger.Info("heraldd ready", "server", cfg.Server, "state_dir", cfg.StateDir)
	if cfg.Env.Watchdog > 0 {
		g.Go(func() error { return watchdog(gctx, d, cfg.Env.Watchdog/2, logger) })
	}

	var lostErr error
	select {
	case <-ctx.Done():
	case <-gctx.Done(): // a part failed
	case name := <-svc.Lost():
		// As upstream: another push daemon replaced us on a Lomiri/Ubuntu
		// name, so this one stops and leaves the session to it.
		lostErr = fmt.Errorf("bus name %s taken over by another push daemon", name)
	}
	logger.Info("heraldd stopping")
	notify(logger, sddaemon.SdNotifyStopping)
	if err := svc.Close(); err != nil {
		logger.Warn("cannot release bus names", "err", err)
	}
	stopRun() // stop taking work; the session closes the websocket; helpers are canceled
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	if lostErr != nil {
		err = lostErr
	}
	return err // the deferred st.Close flushes and closes the store
}

func notify(logger *slog.Logger, state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		logger.Debug("cannot notify systemd", "err", err)
	}
}

// watchdog tells systemd the main loop is alive while the daemon can use
// its store.
func watchdog(ctx context.Context, d *client.Daemon, every time.Duration, logger *slog.Logger) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			actx, cancel := context.WithTimeout(ctx, every)
			err := d.Alive(actx)
			cancel()
			if err != nil {
				logger.Error("watchdog check failed", "err", err)
				continue
			}
			notify(logger, sddaemon.SdNotifyWatchdog)
		}
	}
}

func helperDirs(env config.Env) helpers.Dirs {
	return helpers.Dirs{
		DataHome:       env.DataHome,
		DataDirs:       env.DataDirs,
		LomiriDataHome: env.DataHome,
		LegacyDirs:     []string{"/usr/lib/lomiri-push-service/legacy-helpers", "/usr/lib/ubuntu-push-client/legacy-helpers"},
	}
}

// statusBus forwards the connection state to systemd's STATUS= as well, and
// tells the trimmer when the daemon works (a connection change, messages for
// the apps).
type statusBus struct {
	*dbusapi.Service
	trim *trimmer
}

func (b statusBus) EmitPost(appID string) error {
	b.trim.poke()
	return b.Service.EmitPost(appID)
}

func (b statusBus) DeliverUnifiedPush(ctx context.Context, m dbusapi.UPMessage) (bool, error) {
	b.trim.poke()
	return b.Service.DeliverUnifiedPush(ctx, m)
}

func (b statusBus) SetStatus(st dbusapi.Status) {
	b.trim.poke()
	b.Service.SetStatus(st)
	status := "STATUS=" + st.State
	if st.Server != "" {
		status += " to " + st.Server
	}
	if st.LastError != "" && st.State != "connected" {
		status += " (" + st.LastError + ")"
	}
	_, _ = sddaemon.SdNotify(false, status)
}

// watchDevice tells the daemon the lowest urgency its device state wants
// (battery, metered network) and when the system resumed from suspend.
func watchDevice(ctx context.Context, sys *dbus.Conn, policy config.UrgencyConfig, d *client.Daemon, logger *slog.Logger) error {
	var last string
	return client.WatchDevice(ctx, sys, client.DeviceHooks{
		State: func(st config.DeviceState) {
			u := policy.MinUrgency(st)
			if u != last {
				logger.Info("lowest wanted urgency", "urgency", u, "on_battery", st.OnBattery,
					"percentage", st.Percentage, "metered", st.Metered)
				last = u
			}
			d.SetUrgency(u)
		},
		Resumed: d.Resumed,
	}, logger)
}

// helperShim is the command that runs each helper under helpers.RunShim:
// this executable with helpers.ShimArg. Nil (process groups only) when the
// executable cannot be found.
func helperShim(logger *slog.Logger) []string {
	exe, err := os.Executable()
	if err != nil {
		logger.Warn("cannot find own executable; a helper's setsid children may outlive it", "err", err)
		return nil
	}
	return []string{exe, helpers.ShimArg}
}
