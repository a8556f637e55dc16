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
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/server"
)

type options struct {
	listen, publicURL, db    string
	nodeURL, nodeSecretFile  string
	tlsCert, tlsKey          string
	logLevel                 string
	pprof                    string // debug: serve net/http/pprof on this address
	sync                     string // full or normal
	pingInterval             time.Duration
	maxPending               int
	notifyMaxPending         int
	maxReceipts              int
	lomiriListen             string // Lomiri wire protocol listener
	lomiriCert, lomiriKey    string
	lomiriHosts, lomiriDom   string // what /delivery-hosts answers
	lomiriPing               time.Duration
	maxChannels, maxAttempts int
	maxConnsIP               int
	upgradeRate              float64
	upgradeBurst             int
	deviceIdle, ackTimeout   time.Duration
	sweepInterval            time.Duration
	tokenRate, ipRate        float64
	tokenBurst, ipBurst      int
	stateDirectory           string // $STATE_DIRECTORY
	stdout, stderr           io.Writer
	notifyReady, notifyClose func()
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "migrate" {
		if err := migrate(context.Background(), os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "herald-server migrate:", err)
			os.Exit(1)
		}
		return
	}
	server.KeepHeapGoal(server.DefaultMinHeapGoal)
	o := options{stdout: os.Stdout, stderr: os.Stderr, stateDirectory: os.Getenv("STATE_DIRECTORY")}
	fs := flag.NewFlagSet("herald-server", flag.ExitOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to listen on (port 0 picks a free port)")
	fs.StringVar(&o.publicURL, "public-url", "", "base URL app servers reach the server at (default http(s)://<listen address>)")
	fs.StringVar(&o.db, "db", "", "sqlite database file (default $STATE_DIRECTORY/herald-server.db or ./herald-server.db), or a postgres://… URL shared by several nodes")
	fs.StringVar(&o.nodeURL, "node-url", "", "with a postgres --db: the URL other nodes reach this one at (default http(s)://<listen address>)")
	fs.StringVar(&o.nodeSecretFile, "node-secret-file", "", "with a postgres --db: file holding the secret nodes authenticate each other with (default: a secret kept in the database)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate chain (PEM); with --tls-key serves HTTPS/wss")
	fs.StringVar(&o.tlsKey, "tls-key", "", "TLS private key (PEM)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.pingInterval, "ping-interval", protocol.DefaultPingInterval, "websocket ping interval")
	fs.Float64Var(&o.tokenRate, "rate-limit-token", server.DefaultTokenLimit.Rate, "posts per second per endpoint token (0: no limit)")
	fs.IntVar(&o.tokenBurst, "rate-burst-token", server.DefaultTokenLimit.Burst, "burst of posts per endpoint token")
	fs.Float64Var(&o.ipRate, "rate-limit-ip", server.DefaultIPLimit.Rate, "requests per second per client address (0: no limit)")
	fs.IntVar(&o.ipBurst, "rate-burst-ip", server.DefaultIPLimit.Burst, "burst of requests per client address")
	fs.IntVar(&o.maxPending, "max-pending", protocol.MaxPendingPerChannel, "undelivered Web Push messages kept per channel; beyond it the oldest are dropped")
	fs.IntVar(&o.notifyMaxPending, "notify-max-pending", server.MaxNotifyPending, "unexpired messages one app may have pending through /notify before 413 too-many-pending")
	fs.IntVar(&o.maxReceipts, "max-receipts", server.MaxReceipts, "unread push receipts kept per receipt subscription; beyond it the oldest are dropped")
	fs.StringVar(&o.lomiriListen, "lomiri-listen", "", "serve Lomiri devices (lomiri-push-service's wire protocol, TLS) on this address, for example :5001")
	fs.StringVar(&o.lomiriCert, "lomiri-cert", "", "TLS certificate chain (PEM) of the Lomiri listener (default --tls-cert)")
	fs.StringVar(&o.lomiriKey, "lomiri-key", "", "TLS private key (PEM) of the Lomiri listener (default --tls-key)")
	fs.StringVar(&o.lomiriHosts, "lomiri-hosts", "", "host:port list (|-separated) that /delivery-hosts gives devices (default the --lomiri-listen address)")
	fs.StringVar(&o.lomiriDom, "lomiri-domain", "", "TLS server name that /delivery-hosts gives devices (default the certificate's first DNS name)")
	fs.DurationVar(&o.lomiriPing, "lomiri-ping-interval", server.DefaultLomiriPingInterval, "idle time after which a Lomiri device is pinged")
	fs.IntVar(&o.maxChannels, "max-channels", server.DefaultMaxChannels, "channels one device may register; beyond it register answers status 413")
	fs.DurationVar(&o.deviceIdle, "device-idle", server.DefaultDeviceIdle, "a device away this long is deleted with its channels and messages")
	fs.IntVar(&o.maxAttempts, "max-attempts", server.DefaultMaxAttempts, "times a stored message is sent without an ack before it is dropped")
	fs.DurationVar(&o.ackTimeout, "ack-timeout", server.DefaultAckTimeout, "wait for the acks of a batch of stored messages before sending the next")
	fs.IntVar(&o.maxConnsIP, "max-conns-ip", server.DefaultMaxConnsPerIP, "device connections (websockets, and Lomiri connections apart) one client address may hold at once")
	fs.Float64Var(&o.upgradeRate, "rate-limit-upgrade", server.DefaultUpgradeLimit.Rate, "websocket upgrades per second per client address (0: no limit)")
	fs.IntVar(&o.upgradeBurst, "rate-burst-upgrade", server.DefaultUpgradeLimit.Burst, "burst of websocket upgrades per client address")
	fs.DurationVar(&o.sweepInterval, "sweep-interval", server.DefaultSweepInterval, "how often expired messages and idle devices are deleted")
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
	var lln net.Listener
	var lhosts []string
	var ldomain string
	if o.lomiriListen != "" {
		lln, lhosts, ldomain, err = lomiriListener(o)
		if err != nil {
			ln.Close()
			return err
		}
	}
	public := o.publicURL
	if public == "" {
		public = scheme + "://" + ln.Addr().String()
	}
	var nodeURL, nodeSecret string
	if server.IsPostgresURL(db) {
		nodeURL = o.nodeURL
		if nodeURL == "" {
			nodeURL = scheme + "://" + ln.Addr().String()
			if ip := ln.Addr().(*net.TCPAddr).IP; ip.IsUnspecified() {
				// Every node would advertise the same http://0.0.0.0:port,
				// take the others' routes for its own and clear them.
				ln.Close()
				return fmt.Errorf("listening on %s with a postgres --db: set --node-url to the address other nodes reach this one at", ln.Addr())
			}
		}
		if o.nodeSecretFile != "" {
			b, err := os.ReadFile(o.nodeSecretFile)
			if err != nil {
				ln.Close()
				return fmt.Errorf("cannot read --node-secret-file: %w", err)
			}
			if nodeSecret = strings.TrimSpace(string(b)); len(nodeSecret) < 16 {
				ln.Close()
				return errors.New("the node secret must be at least 16 characters")
			}
		}
	} else if o.nodeURL != "" || o.nodeSecretFile != "" {
		ln.Close()
		return errors.New("--node-url and --node-secret-file need a postgres --db (a sqlite file serves one node)")
	}
	srv, err := server.New(server.Config{
		PublicURL:     public,
		DBPath:        db,
		NodeURL:       nodeURL,
		NodeSecret:    nodeSecret,
		Sync:          syncMode,
		PingInterval:  o.pingInterval,
		MaxPending:    o.maxPending,
		MaxReceipts:   o.maxReceipts,
		MaxChannels:   o.maxChannels,
		DeviceIdle:    o.deviceIdle,
		MaxAttempts:   o.maxAttempts,
		AckTimeout:    o.ackTimeout,
		MaxConnsPerIP: o.maxConnsIP,
		UpgradeLimit:  limit(o.upgradeRate, o.upgradeBurst),
		SweepInterval: o.sweepInterval,
		TokenLimit:    limit(o.tokenRate, o.tokenBurst),
		IPLimit:       limit(o.ipRate, o.ipBurst),
		Logger:        logger,

		NotifyMaxPending:   o.notifyMaxPending,
		LomiriPingInterval: o.lomiriPing,
		LomiriHosts:        lhosts,
		LomiriDomain:       ldomain,
	})
	if err != nil {
		ln.Close()
		if lln != nil {
			lln.Close()
		}
		return err
	}
	if lln != nil {
		if err := srv.ServeLomiri(lln); err != nil {
			ln.Close()
			lln.Close()
			return err
		}
		logger.Info("serving lomiri devices", "listen", lln.Addr().String(), "hosts", strings.Join(lhosts, "|"), "domain", ldomain)
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
	logger.Info("herald-server started", "listen", ln.Addr().String(), "public_url", public, "db", dbForLog(db), "node_url", nodeURL)
	fmt.Fprintf(o.stdout, "listening on %s\n", ln.Addr())
	if lln != nil {
		fmt.Fprintf(o.stdout, "lomiri listening on %s\n", lln.Addr())
	}
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

// lomiriListener opens the TLS listener of Lomiri devices and works out what
// /delivery-hosts answers.
func lomiriListener(o options) (net.Listener, []string, string, error) {
	certFile, keyFile := o.lomiriCert, o.lomiriKey
	if certFile == "" && keyFile == "" {
		certFile, keyFile = o.tlsCert, o.tlsKey
	}
	if certFile == "" || keyFile == "" {
		return nil, nil, "", errors.New("--lomiri-listen needs a TLS certificate: --lomiri-cert and --lomiri-key (or --tls-cert and --tls-key)")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, "", fmt.Errorf("cannot load lomiri tls certificate: %w", err)
	}
	domain := o.lomiriDom
	if domain == "" && cert.Leaf != nil {
		if len(cert.Leaf.DNSNames) > 0 {
			domain = cert.Leaf.DNSNames[0]
		} else {
			domain = cert.Leaf.Subject.CommonName
		}
	}
	ln, err := net.Listen("tcp", o.lomiriListen)
	if err != nil {
		return nil, nil, "", fmt.Errorf("cannot listen on %s: %w", o.lomiriListen, err)
	}
	var hosts []string
	for _, h := range strings.Split(o.lomiriHosts, "|") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		hosts = []string{ln.Addr().String()}
	}
	// Upstream's server: no session tickets (every device authenticates
	// afresh); we keep TLS 1.2 as the floor like the HTTP listener.
	tl := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, SessionTicketsDisabled: true})
	return tl, hosts, domain, nil
}

// dbForLog hides the password of a database URL.
func dbForLog(db string) string {
	if !server.IsPostgresURL(db) {
		return db
	}
	if u, err := url.Parse(db); err == nil {
		return u.Redacted()
	}
	return "postgres://…"
}

// migrate is `herald-server migrate --from FILE --to postgres://…`.
func migrate(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("herald-server migrate", flag.ContinueOnError)
	from := fs.String("from", "", "the store to copy from: a sqlite file (or a postgres:// URL)")
	to := fs.String("to", "", "the store to copy into: a postgres:// URL (or a sqlite file)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: herald-server migrate --from FILE --to postgres://…\n\n"+
			"Copies every device, channel and pending message. Stop the servers using either store first.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from == "" || *to == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("--from and --to are required")
	}
	if !server.IsPostgresURL(*from) {
		if _, err := os.Stat(*from); err != nil {
			return fmt.Errorf("cannot read --from: %w", err)
		}
	}
	start := time.Now()
	n, err := server.Migrate(ctx, *from, *to, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "migrated %d devices, %d channels, %d pending messages from %s to %s in %s\n",
		n.Devices, n.Channels, n.Messages, dbForLog(*from), dbForLog(*to), time.Since(start).Round(time.Millisecond))
	return nil
}
