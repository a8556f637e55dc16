// Package server is Herald's reference push server: the HTTP API that app
// servers post to (Web Push, SimplePush, Lomiri /notify), the device hub that
// holds one autopush websocket per device, and the durable message store.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/heraldpush/herald/protocol"
)

// Limit is a token-bucket rate: Rate requests per second with bursts of Burst.
// The zero Limit means the default; a negative Rate means no limit.
type Limit struct {
	Rate  float64
	Burst int
}

// Defaults of Config.
var (
	DefaultTokenLimit = Limit{Rate: 10, Burst: 100}
	DefaultIPLimit    = Limit{Rate: 500, Burst: 2000}
)

// DefaultSweepInterval is how often expired messages are deleted.
const DefaultSweepInterval = time.Minute

// Defaults of the bounds of Config (docs/architecture.md, "Bounds").
const (
	// DefaultMaxChannels is how many channels one device may register.
	DefaultMaxChannels = 1000
	// DefaultDeviceIdle is how long a device may stay away before it is
	// deleted with its channels and messages: twice the longest TTL, like
	// autopush's 60-day user record.
	DefaultDeviceIdle = 60 * 24 * time.Hour
	// DefaultMaxAttempts is how often a stored message is sent before it is
	// dropped undelivered (herald_messages_undeliverable_total).
	DefaultMaxAttempts = 10
	// DefaultAckTimeout is how long a batch of stored messages may stay
	// unacknowledged before the next batch is sent anyway.
	DefaultAckTimeout = 30 * time.Second
	// DefaultEarlyAckWait is Config.EarlyAckWait's default.
	DefaultEarlyAckWait = 15 * time.Millisecond
	// DefaultMaxConnsPerIP is how many device websockets one client address
	// may hold at once (devices behind one NAT share an address).
	DefaultMaxConnsPerIP = 1000
)

// DefaultUpgradeLimit is the rate of websocket upgrades per client address.
var DefaultUpgradeLimit = Limit{Rate: 20, Burst: 200}

// Config configures a Server.
type Config struct {
	// PublicURL is the base URL app servers reach the server at, for example
	// https://push.example.org. Endpoints are <PublicURL>/wpush/v1/<token> and
	// VAPID tokens must name its origin as aud. Required.
	PublicURL string
	// DBPath is the sqlite file, or a postgres:// (postgresql://) URL for a
	// PostgresStore; ignored when Store is set.
	DBPath string
	// Sync is how durable a commit of the sqlite store is (default SyncFull).
	Sync Sync
	// Store replaces the store DBPath names.
	Store Store
	// NodeURL, when set, makes the server one node of several sharing the
	// Store: it records which node holds each device's connection and hands
	// messages for a device held by another node to that node at its
	// NodeURL (http://host:port, reachable by the other nodes).
	NodeURL string
	// NodeSecret authenticates the calls between nodes (default: the one
	// kept in the store, Store.NodeSecret).
	NodeSecret string
	// PingInterval is how often websocket pings are sent (default 5 min).
	PingInterval time.Duration
	// TokenLimit limits posts per endpoint token, IPLimit per client address.
	TokenLimit, IPLimit Limit
	// MaxPending is how many undelivered Web Push messages a channel keeps;
	// beyond it the oldest are dropped and counted (default
	// protocol.MaxPendingPerChannel, 100).
	MaxPending int
	// MaxReceipts is how many unread push receipts one receipt
	// subscription keeps (default MaxReceipts, 1000).
	MaxReceipts int
	// SweepInterval is how often expired messages are swept (default 1 min).
	SweepInterval time.Duration
	// NotifyMaxPending is how many unexpired messages one app (token) may
	// have pending through /notify before 413 too-many-pending (default
	// MaxNotifyPending, 100).
	NotifyMaxPending int
	// LomiriPingInterval is the idle time after which a Lomiri device is
	// pinged (default 5 min), LomiriExchangeTimeout how long its answer to
	// a message may take (default 30 s).
	LomiriPingInterval, LomiriExchangeTimeout time.Duration
	// LomiriHosts and LomiriDomain are what GET /delivery-hosts answers: the
	// host:port list of the Lomiri listener and the TLS server name devices
	// check. No hosts: /delivery-hosts answers 404.
	LomiriHosts  []string
	LomiriDomain string
	// MaxChannels is how many channels a device may register; beyond it
	// register answers status 413 (default DefaultMaxChannels).
	MaxChannels int
	// DeviceIdle is how long a device may stay disconnected before it is
	// deleted (default DefaultDeviceIdle).
	DeviceIdle time.Duration
	// MaxAttempts is how often a stored message is sent before it is dropped
	// undelivered (default DefaultMaxAttempts).
	MaxAttempts int
	// AckTimeout is how long the server waits for the acks of a batch of
	// stored messages before it sends the next batch (default DefaultAckTimeout).
	AckTimeout time.Duration
	// EarlyAckWait bounds how long a message written to its device before
	// its commit waits for the device's ack before it is stored; a message
	// acked by then is not stored at all (default DefaultEarlyAckWait,
	// negative: never wait). See conn.earlyWait.
	EarlyAckWait time.Duration
	// UpgradeLimit limits websocket upgrades per client address, MaxConnsPerIP
	// the websockets one address holds at once; beyond either the upgrade is
	// answered 429 (defaults DefaultUpgradeLimit, DefaultMaxConnsPerIP).
	UpgradeLimit  Limit
	MaxConnsPerIP int
	// Logger receives the server's logs (default: discarded).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is the reference push server.
type Server struct {
	cfg      Config
	store    Store
	log      *slog.Logger
	now      func() time.Time
	base     string // PublicURL without a trailing slash
	audience string // origin of PublicURL
	upgrader websocket.Upgrader
	handler  http.Handler
	metrics  *metrics
	tokenRL  *limiter
	ipRL     *limiter
	wsRL     *limiter // websocket upgrades per client address
	wsConns  connCounter
	hub      hub
	ackWaits ackWaits // the waits for early acks (putDelivering)
	lomiri   lhub
	tokens   tokenCache
	frames   sync.Pool                    // *[]byte buffers for notification frames (gorilla copies them)
	fast     atomic.Pointer[fastListener] // set by Serve (tests count its requests)
	node     *node                        // nil unless Config.NodeURL is set

	receiptWaiters receiptWaiters
}

// New validates cfg and opens the store. It starts no goroutines: call Serve.
func New(cfg Config) (*Server, error) {
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("invalid public url %q: want http(s)://host[:port]", cfg.PublicURL)
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = protocol.DefaultPingInterval
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = protocol.MaxPendingPerChannel
	}
	if cfg.NotifyMaxPending <= 0 {
		cfg.NotifyMaxPending = MaxNotifyPending
	}
	if cfg.MaxReceipts <= 0 {
		cfg.MaxReceipts = MaxReceipts
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.MaxChannels <= 0 {
		cfg.MaxChannels = DefaultMaxChannels
	}
	if cfg.DeviceIdle <= 0 {
		cfg.DeviceIdle = DefaultDeviceIdle
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.EarlyAckWait == 0 {
		cfg.EarlyAckWait = DefaultEarlyAckWait
	}
	if cfg.UpgradeLimit == (Limit{}) {
		cfg.UpgradeLimit = DefaultUpgradeLimit
	}
	if cfg.MaxConnsPerIP <= 0 {
		cfg.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if cfg.TokenLimit == (Limit{}) {
		cfg.TokenLimit = DefaultTokenLimit
	}
	if cfg.IPLimit == (Limit{}) {
		cfg.IPLimit = DefaultIPLimit
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		now:      cfg.Now,
		base:     strings.TrimRight(cfg.PublicURL, "/"),
		audience: u.Scheme + "://" + u.Host,
		tokenRL:  newLimiter(cfg.TokenLimit),
		ipRL:     newLimiter(cfg.IPLimit),
		wsRL:     newLimiter(cfg.UpgradeLimit),
		metrics:  newMetrics(),
	}
	s.hub.conns = map[string]*conn{}
	s.tokens.m = map[string]Channel{}
	s.wsConns.n = map[string]int{}
	s.lomiri.perIP.n = map[string]int{}
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		// 0: gorilla adopts the read buffer hijacker supplies (idle.go).
		ReadBufferSize:  0,
		WriteBufferSize: 1024,
		WriteBufferPool: &sync.Pool{},
		Subprotocols:    []string{protocol.Subprotocol},
		// permessage-deflate when the device asks (heraldd does): JSON frames
		// of plaintext messages shrink by a third; idle connections hold no
		// compressor, gorilla takes one from a pool per message.
		EnableCompression: true,
		// Devices are not web pages: any Origin (usually none) is fine.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			http.Error(w, reason.Error(), status)
		},
	}
	if cfg.NodeURL != "" {
		nu, err := url.Parse(cfg.NodeURL)
		if err != nil || (nu.Scheme != "http" && nu.Scheme != "https") || nu.Host == "" {
			return nil, fmt.Errorf("invalid node url %q: want http(s)://host:port", cfg.NodeURL)
		}
		s.node = newNode(cfg.NodeURL, cfg.NodeSecret)
	}
	if cfg.Store != nil {
		s.store = cfg.Store
	} else if IsPostgresURL(cfg.DBPath) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err := OpenPostgres(ctx, cfg.DBPath)
		cancel()
		if err != nil {
			return nil, err
		}
		s.store = st
	} else {
		if cfg.DBPath == "" {
			return nil, errors.New("no store: set DBPath or Store")
		}
		st, err := OpenSQLiteWith(cfg.DBPath, SQLiteOptions{Sync: cfg.Sync})
		if err != nil {
			return nil, err
		}
		st.ObserveCommit = func(n int, d time.Duration) {
			s.metrics.commitSeconds.Observe(d.Seconds())
			s.metrics.commitOps.Observe(float64(n))
		}
		s.store = st
	}
	s.handler = s.routes()
	return s, nil
}

// Handler returns the HTTP handler of the server (device websocket and app
// server API). It works only while Serve runs, which runs the store.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveRoot)
	mux.HandleFunc("POST /wpush/v1/{token}", s.handleWebPush)
	mux.HandleFunc("PUT /wpush/v1/{token}", s.handleSimplePush)
	mux.HandleFunc("DELETE /m/{id}", s.handleCancel)
	mux.HandleFunc("POST /receipts", s.handleReceiptSubscribe)
	mux.HandleFunc("GET /r/{id}", s.handleReceipts)
	mux.HandleFunc("/notify", s.handleNotify)
	mux.HandleFunc("/register", s.handleLomiriRegister)
	mux.HandleFunc("/unregister", s.handleLomiriUnregister)
	mux.HandleFunc("/broadcast", s.handleBroadcast)
	mux.HandleFunc("/delivery-hosts", s.handleDeliveryHosts)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	if s.node != nil {
		mux.HandleFunc("POST "+nodeDeliverPath, s.handleNodeDeliver)
		mux.HandleFunc("POST "+nodeReplacePath, s.handleNodeReplace)
		mux.HandleFunc("POST "+nodeBroadcastPath, s.handleNodeBroadcast)
	}
	return mux
}

func (s *Server) serveRoot(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "herald push server: devices connect here with a websocket\n")
		return
	}
	s.serveDevice(w, r)
}

// Serve accepts connections on ln until ctx ends. Then it stops accepting,
// finishes the requests in flight, closes every device websocket with a 1001
// close frame, flushes the store and returns. The store is closed on return.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	storeCtx, stopStore := context.WithCancel(context.Background())
	storeDone := make(chan error, 1)
	go func() { storeDone <- s.store.Run(storeCtx) }()
	if s.node != nil {
		nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.startNode(nctx)
		cancel()
		if err != nil {
			ln.Close()
			stopStore()
			<-storeDone
			return errors.Join(fmt.Errorf("cannot start node: %w", err), s.store.Close())
		}
	}
	var bg sync.WaitGroup
	bgCtx, stopBG := context.WithCancel(ctx)
	bg.Go(func() { s.sweep(bgCtx) })
	bg.Go(func() { s.hub.watchWrites(bgCtx, writeTimeout/2) })

	hs := s.httpServer()
	// Canonical Web Push posts are answered by the fast path (fastpath.go),
	// everything else by hs.
	fl := newFastListener(ln, s.handleWebPush, s.log)
	s.fast.Store(fl)
	var accepting sync.WaitGroup
	accepting.Go(fl.run)
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(fl) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("cannot serve: %w", err)
	}
	s.log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if e := hs.Shutdown(shutCtx); e != nil {
		s.log.Warn("http shutdown incomplete", "err", e)
	}
	fl.Close()
	accepting.Wait()
	fl.shutdown(shutCtx)
	s.hub.closeAll(protocol.CloseGoingAway, "server shutting down")
	s.lomiri.closeAll()
	if s.node != nil {
		// The connections are gone: so are this node's routes (one
		// statement rather than one per connection).
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, e := s.store.ClearNode(cctx, s.node.url); e != nil {
			s.log.Warn("cannot clear this node's routes", "err", e)
		}
		cancel()
	}
	stopBG()
	bg.Wait()
	stopStore()
	if e := <-storeDone; e != nil {
		err = errors.Join(err, e)
	}
	if e := s.store.Close(); e != nil {
		err = errors.Join(err, fmt.Errorf("cannot close store: %w", e))
	}
	return err
}

// httpServer is the net/http server of Serve (for everything the fast path
// hands over).
func (s *Server) httpServer() *http.Server {
	return &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// sweep deletes expired messages and idle rate buckets every SweepInterval.
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.now()
		n, err := s.store.Sweep(ctx, now)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("cannot sweep expired messages", "err", err)
			}
			continue
		}
		if n > 0 {
			s.metrics.expired.Add(float64(n))
			s.log.Debug("swept expired messages", "count", n)
		}
		s.sweepDevices(ctx, now)
		s.sweepReceipts(ctx, now)
		s.tokenRL.prune(now)
		s.ipRL.prune(now)
		s.wsRL.prune(now)
	}
}

// sweepDevices deletes devices away for longer than DeviceIdle, with their
// channels and messages. A connected device is marked as seen instead.
func (s *Server) sweepDevices(ctx context.Context, now time.Time) {
	since := now.Add(-s.cfg.DeviceIdle)
	for range 100 { // at most 100 000 a sweep
		uaids, err := s.store.IdleDevices(ctx, since, 1000)
		if err != nil || len(uaids) == 0 {
			if err != nil && ctx.Err() == nil {
				s.log.Warn("cannot look up idle devices", "err", err)
			}
			return
		}
		gone := uaids[:0]
		for _, u := range uaids {
			if s.connected(ctx, u) {
				if err := s.store.AddDevice(ctx, u, now); err != nil {
					s.log.Warn("cannot mark device as seen", "err", err)
					return
				}
				continue
			}
			gone = append(gone, u)
		}
		n, err := s.store.DeleteDevices(ctx, gone, since)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("cannot delete idle devices", "err", err)
			}
			return
		}
		if n > 0 {
			// Their tokens may be cached: forget them all (it is a cache).
			s.tokens.mu.Lock()
			clear(s.tokens.m)
			s.tokens.mu.Unlock()
			s.metrics.idleDevices.Add(float64(n))
			s.log.Info("deleted idle devices", "count", n, "idle", s.cfg.DeviceIdle)
		}
		if len(uaids) < 1000 {
			return
		}
	}
}

// connected reports whether uaid has a websocket on this node or, with
// several nodes, a route to another one.
func (s *Server) connected(ctx context.Context, uaid string) bool {
	if s.hub.get(uaid) != nil || s.lomiri.get(uaid) != nil {
		return true
	}
	if s.node == nil {
		return false
	}
	// Unsure (a store error) counts as connected: better kept than lost.
	_, err := s.store.Route(ctx, uaid)
	return !errors.Is(err, ErrNotFound)
}

// metrics are the server's Prometheus collectors, on a registry of their own.
type metrics struct {
	reg             *prometheus.Registry
	connected       prometheus.Gauge
	lomiriConnected prometheus.Gauge
	accepted        *prometheus.CounterVec
	delivered       prometheus.Counter
	expired         prometheus.Counter
	dropped         prometheus.Counter
	undeliverable   prometheus.Counter
	idleDevices     prometheus.Counter
	refused         *prometheus.CounterVec
	storeSeconds    *prometheus.HistogramVec
	commitSeconds   prometheus.Histogram
	commitOps       prometheus.Histogram
	forwarded       *prometheus.CounterVec
	receipts        *prometheus.CounterVec
	receiptsDropped prometheus.Counter
	held            prometheus.Counter

	// Children of the vectors above that every push uses, looked up once
	// (WithLabelValues hashes its labels at each call).
	putSeconds                                  prometheus.Observer
	acceptedWebPush, acceptedNotify, acceptedSP prometheus.Counter
}

// acceptedBy is the accepted counter of api.
func (m *metrics) acceptedBy(api string) prometheus.Counter {
	switch api {
	case "webpush":
		return m.acceptedWebPush
	case "notify":
		return m.acceptedNotify
	case "simplepush":
		return m.acceptedSP
	}
	return m.accepted.WithLabelValues(api)
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_connected_devices", Help: "Devices connected by websocket."}),
		lomiriConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_connected_lomiri_devices", Help: "Devices connected by the Lomiri wire protocol."}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_messages_accepted_total", Help: "Messages accepted from app servers."}, []string{"api"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_messages_delivered_total", Help: "Messages delivered and acknowledged by devices."}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_messages_expired_total", Help: "Messages deleted undelivered at expiry."}),
		receipts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_receipts_total", Help: "Push receipts stored for app servers, by status."}, []string{"status"}),
		receiptsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_receipts_dropped_total", Help: "Oldest unread receipts dropped over the per-subscription limit."}),
		held: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_messages_held_total", Help: "Messages held back because the device wants only higher urgencies."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_messages_dropped_total", Help: "Oldest pending messages dropped over the per-channel limit."}),
		undeliverable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_messages_undeliverable_total", Help: "Stored messages dropped after the most delivery attempts without an ack."}),
		idleDevices: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_devices_deleted_idle_total", Help: "Devices deleted after staying away longer than the idle time."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_refused_total", Help: "Requests and frames refused by a bound."}, []string{"reason"}),
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "herald_store_latency_seconds", Help: "Latency of store operations.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"op"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "herald_store_commit_seconds", Help: "Duration of one group commit.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		commitOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "herald_store_commit_ops", Help: "Operations per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_node_forwarded_total", Help: "Messages handed to the node holding the device, by result."}, []string{"result"}),
	}
	m.putSeconds = m.storeSeconds.WithLabelValues("put")
	m.acceptedWebPush = m.accepted.WithLabelValues("webpush")
	m.acceptedNotify = m.accepted.WithLabelValues("notify")
	m.acceptedSP = m.accepted.WithLabelValues("simplepush")
	m.reg.MustRegister(m.connected, m.lomiriConnected, m.accepted, m.delivered, m.expired, m.dropped, m.undeliverable, m.idleDevices, m.refused, m.storeSeconds, m.commitSeconds, m.commitOps, m.forwarded,
		m.receipts, m.receiptsDropped, m.held)
	return m
}

// tokenCache keeps looked-up channels so that a post needs no store read.
type tokenCache struct {
	mu sync.RWMutex
	m  map[string]Channel // guarded by mu
}

const maxCachedTokens = 200000

func (c *tokenCache) get(token string) (Channel, bool) {
	c.mu.RLock()
	ch, ok := c.m[token]
	c.mu.RUnlock()
	return ch, ok
}

func (c *tokenCache) put(ch Channel) {
	c.mu.Lock()
	if len(c.m) >= maxCachedTokens {
		clear(c.m)
	}
	c.m[ch.Token] = ch
	c.mu.Unlock()
}

func (c *tokenCache) drop(uaid, channelID string) {
	c.mu.Lock()
	for t, ch := range c.m {
		if ch.UAID == uaid && ch.ChannelID == channelID {
			delete(c.m, t)
		}
	}
	c.mu.Unlock()
}

// channel resolves an endpoint token.
func (s *Server) channel(ctx context.Context, token string) (Channel, error) {
	if ch, ok := s.tokens.get(token); ok {
		return ch, nil
	}
	ch, err := s.store.Channel(ctx, token)
	if err != nil {
		return Channel{}, err
	}
	s.tokens.put(ch)
	return ch, nil
}
