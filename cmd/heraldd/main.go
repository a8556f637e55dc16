// Command heraldd is Herald's session daemon: one connection to the push
// server for every app, the durable inbox, helpers, notifications and the
// D-Bus APIs (Lomiri Push, UnifiedPush distributor, org.herald.Daemon1).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/helpers"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == helpers.ShimArg {
		// heraldd runs each helper under itself as a shim (helpers.RunShim).
		os.Exit(helpers.RunShim(os.Args[2:]))
	}
	fs := flag.NewFlagSet("heraldd", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: heraldd [flags]

heraldd keeps one connection to a push server for every app of this session,
stores each push message durably, runs the app's helper, shows notifications
and hands the messages to the apps over D-Bus. It normally runs as the
systemd user unit heraldd.service.

The configuration is read from $XDG_CONFIG_HOME/herald/config.toml, then
$XDG_CONFIG_DIRS/herald/config.toml (/etc/xdg/herald/config.toml); flags
override it.

Flags:
`)
		fs.PrintDefaults()
	}
	configPath := fs.String("config", "", "read the configuration from `PATH` instead of the XDG locations")
	server := fs.String("server", "", "websocket `URL` of the push server (ws:// or wss://)")
	stateDir := fs.String("state-dir", "", "`DIR` of the daemon's state (default $XDG_STATE_HOME/herald)")
	logLevel := fs.String("log-level", "", "log `LEVEL`: debug, info, warn or error")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "heraldd: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	level := new(slog.LevelVar)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	env := config.ReadEnv(os.Getenv)
	cfg, err := config.LoadConfig(env, *configPath, logger, func(c *config.Config) {
		if *server != "" {
			c.Server = *server
		}
		if *stateDir != "" {
			c.StateDir = *stateDir
		}
		if *logLevel != "" {
			c.LogLevel = *logLevel
		}
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "heraldd:", err)
		os.Exit(1)
	}
	l, _ := config.ParseLevel(cfg.LogLevel)
	level.Set(l)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err = run(ctx, cfg, logger)
	stopProfiles()
	if err != nil {
		logger.Error("heraldd failed", "err", err)
		fmt.Fprintln(os.Stderr, "heraldd:", err)
		os.Exit(1)
	}
}

// stopProfiles ends the profiles a build with -tags pprof started (profile.go).
var stopProfiles = func() {}
