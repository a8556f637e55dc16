// Command herald-server is Herald's reference push server: app servers post
// Web Push, SimplePush or Lomiri /notify messages, devices fetch them over one
// autopush websocket each.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/server"
)

type options struct {
	listen, publicURL, db    string
	tlsCert, tlsKey          string
	logLevel                 string
	pprof                    string // debug: serve net/http/pprof on this address
	sync                     string // full or normal
	pingInterval             time.Duration
	maxPending               int
	tokenRate, ipRate        float64
	tokenBurst, ipBurst      int
	stateDirectory           string // $STATE_DIRECTORY
	stdout, stderr           io.Writer
	notifyReady, notifyClose func()
}

func main() {
	o := options{stdout: os.Stdout, stderr: os.Stderr, stateDirectory: os.Getenv("STATE_DIRECTORY")}
	fs := flag.NewFlagSet("herald-server", flag.ExitOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to listen on (port 0 picks a free port)")
	fs.StringVar(&o.publicURL, "public-url", "", "base URL app servers reach the server at (default http(s)://<listen address>)")
	fs.StringVar(&o.db, "db", "", "sqlite database (default $STATE_DIRECTORY/herald-server.db or ./herald-server.db)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate chain (PEM); with --tls-key serves HTTPS/wss")
	fs.StringVar(&o.tlsKey, "tls-key", "", "TLS private key (PEM)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.pingInterval, "ping-interval", protocol.DefaultPingInterval, "websocket ping interval")
	fs.Float64Var(&o.tokenRate, "rate-limit-token", server.DefaultTokenLimit.Rate, "posts per second per endpoint token (0: no limit)")
	fs.IntVar(&o.tokenBurst, "rate-burst-token", server.DefaultTokenLimit.Burst, "burst of posts per endpoint token")
	fs.Float64Var(&o.ipRate, "rate-limit-ip", server.DefaultIPLimit.Rate, "requests per second per client address (0: no limit)")
	fs.IntVar(&o.ipBurst, "rate-burst-ip", server.DefaultIPLimit.Burst, "burst of requests per client address")
	fs.IntVar(&o.maxPending, "max-pending", protocol.MaxPendingPerChannel, "undelivered Web Push messages kept per channel; beyond it the oldest are dropped")
	fs.StringVar(&o.sync, "sync", "full", "when a commit reaches the disk: full (every commit, survives power loss) or normal (at checkpoints, survives a server crash)")
	fs.StringVar(&o.pprof, "pprof", "", "debug: serve Go profiles (net/http/pprof) on this address, for example 127.0.0.1:6060")
	fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	o.notifyReady = func() { daemon.SdNotify(false, daemon.SdNotifyReady) }
	o.notifyClose = func() { daemon.SdNotify(false, daemon.SdNotifyStopping) }
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "herald-server:", err)
		os.Exit(1)
	}
}

func limit(rate float64, burst int) server.Limit {
	if rate <= 0 {
		return server.Limit{Rate: -1}
	}
	return server.Limit{Rate: rate, Burst: burst}
}

func run(ctx context.Context, o options) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("invalid --log-level %q: %w", o.logLevel, err)
	}
	logger := slog.New(slog.NewTextHandler(o.stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)
	syncMode, err := server.ParseSync(o.sync)
	if err != nil {
		return fmt.Errorf("invalid --sync: %w", err)
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	db := o.db
	if db == "" {
		dir := "."
		if o.stateDirectory != "" {
			dir = filepath.SplitList(o.stateDirectory)[0]
		}
		db = filepath.Join(dir, "herald-server.db")
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", o.listen, err)
	}
	scheme := "http"
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("cannot load tls certificate: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	public := o.publicURL
	if public == "" {
		public = scheme + "://" + ln.Addr().String()
	}
	srv, err := server.New(server.Config{
		PublicURL:    public,
		DBPath:       db,
		Sync:         syncMode,
		PingInterval: o.pingInterval,
		MaxPending:   o.maxPending,
		TokenLimit:   limit(o.tokenRate, o.tokenBurst),
		IPLimit:      limit(o.ipRate, o.ipBurst),
		Logger:       logger,
	})
	if err != nil {
		ln.Close()
		return err
	}
	if o.pprof != "" {
		pln, err := net.Listen("tcp", o.pprof)
		if err != nil {
			ln.Close()
			return fmt.Errorf("cannot listen on %s for --pprof: %w", o.pprof, err)
		}
		defer pln.Close()
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		go func() { _ = http.Serve(pln, mux) }() // ends when pln is closed
		logger.Info("serving profiles", "pprof", pln.Addr().String())
	}
	logger.Info("herald-server started", "listen", ln.Addr().String(), "public_url", public, "db", db)
	fmt.Fprintf(o.stdout, "listening on %s\n", ln.Addr())
	if o.notifyReady != nil {
		o.notifyReady()
	}
	go func() {
		<-ctx.Done()
		if o.notifyClose != nil {
			o.notifyClose()
		}
	}()
	err = srv.Serve(ctx, ln)
	logger.Info("herald-server stopped")
	return err
}
