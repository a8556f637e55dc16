package lomiri

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	wire "github.com/heraldpush/herald/protocol/lomiri"
)

// State is the connection state shown to users (the same words as the
// autopush session's).
type State string

const (
	StateOffline    State = "offline"
	StateIdle       State = "idle"
	StateConnecting State = "connecting"
	StateConnected  State = "connected"
	StateBackoff    State = "backoff"
)

// Handler is the daemon seen by the session. Calls come from Run's goroutine.
type Handler interface {
	// Levels returns the broadcast levels the device has, durably stored.
	Levels(ctx context.Context) (map[string]int64, error)
	// Notifications stores a batch durably, skipping message ids already
	// seen; only then does the session ack. An error naks (the server sends
	// the batch again on the next connection).
	Notifications(ctx context.Context, ns []wire.Notification) error
	// Broadcast stores a broadcast channel's new level (and hands on its
	// payloads) durably before the ack; an error naks.
	Broadcast(ctx context.Context, b *wire.Broadcast) error
	// StateChanged reports the connection state; err is the last error.
	StateChanged(st State, since time.Time, err error)
}

// Config configures a Session. Durations default to the values of
// lomiri-push-service's shipped config.json.
type Config struct {
	// Addr is a URL answering {domain, hosts}, or a |-separated host:port list.
	Addr string
	// CertPEM, when set, is the only root the delivery hosts are checked
	// against, and the TLS server name is its first DNS name (or CN), as
	// with upstream's cert_pem_file.
	CertPEM  []byte
	DeviceID string
	// Info is sent in connect (device model, image channel, build number);
	// nil sends none.
	Info              map[string]any
	ConnectTimeout    time.Duration // 20s
	ExchangeTimeout   time.Duration // 30s
	HostsCacheExpiry  time.Duration // 12h
	ExpectAllRepaired time.Duration // 40m
	// HTTPClient fetches the delivery hosts (default: one trusting the
	// system roots and CertPEM).
	HTTPClient *http.Client
	Handler    Handler
	Logger     *slog.Logger
	// Delays is the redial schedule (default RedialDelays); Jitter returns a
	// value in [-d, d] (default uniform random).
	Delays []time.Duration
	Jitter func(d time.Duration) time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// RedialDelays is upstream's redial schedule; the last value repeats and
// each is spread by a jitter in [-d, +d].
var RedialDelays = []time.Duration{1 * time.Second, 2 * time.Second, 5 * time.Second, 11 * time.Second,
	19 * time.Second, 37 * time.Second, 67 * time.Second, 113 * time.Second, 191 * time.Second}

// Session keeps one connection to a Lomiri push server.
type Session struct {
	cfg   Config
	log   *slog.Logger
	tls   *tls.Config // ServerName filled per connection
	hosts hosts
	kick  chan struct{}

	mu        sync.Mutex
	wanted    bool     // guarded by mu
	online    bool     // guarded by mu
	reconnect bool     // guarded by mu
	conn      net.Conn // guarded by mu; the live connection
	connected bool     // guarded by mu
	cookie    string   // guarded by mu; from setparams, sent in the next connect
	host      string   // guarded by mu; host:port of the live connection

	// Owned by Run.
	step     int       // index into the delays
	lastDial time.Time // start of the last automatic redial
}

// ParseCertPEM checks a cert_pem_file's content and returns its pool and
// the server name upstream derives from it (first DNS name, else the CN).
func ParseCertPEM(b []byte) (*x509.CertPool, string, error) {
	pool := x509.NewCertPool()
	name := ""
	rest := b
	n := 0
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, "", fmt.Errorf("cannot parse certificate: %w", err)
		}
		pool.AddCert(c)
		if n == 0 {
			if len(c.DNSNames) > 0 {
				name = c.DNSNames[0]
			} else {
				name = c.Subject.CommonName
			}
		}
		n++
	}
	if n == 0 {
		return nil, "", errors.New("no certificate in the PEM data")
	}
	return pool, name, nil
}

// New builds a Session (wanted false, online true); Run starts it.
func New(cfg Config) (*Session, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.ConnectTimeout, 20*time.Second)
	def(&cfg.ExchangeTimeout, 30*time.Second)
	def(&cfg.HostsCacheExpiry, 12*time.Hour)
	def(&cfg.ExpectAllRepaired, 40*time.Minute)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.Delays) == 0 {
		cfg.Delays = RedialDelays
	}
	if cfg.Jitter == nil {
		cfg.Jitter = func(d time.Duration) time.Duration {
			if d <= 0 {
				return 0
			}
			return time.Duration(rand.Int64N(2*int64(d)+1)) - d
		}
	}
	if cfg.DeviceID == "" {
		return nil, errors.New("no device id")
	}
	if cfg.Addr == "" {
		return nil, errors.New("no addr")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CertPEM != nil {
		pool, name, err := ParseCertPEM(cfg.CertPEM)
		if err != nil {
			return nil, fmt.Errorf("invalid cert_pem_file: %w", err)
		}
		tc.RootCAs, tc.ServerName = pool, name
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = HTTPClient(cfg.CertPEM, cfg.ExchangeTimeout)
	}
	s := &Session{
		cfg: cfg, log: cfg.Logger, tls: tc, kick: make(chan struct{}, 1), online: true,
		hosts: hosts{addr: cfg.Addr, deviceID: cfg.DeviceID, client: cfg.HTTPClient, timeout: cfg.ExchangeTimeout,
			cacheFor: cfg.HostsCacheExpiry, repairedAfter: cfg.ExpectAllRepaired, now: cfg.Now},
	}
	return s, nil
}

// HTTPClient is an HTTP client trusting the system roots and, when given,
// the certificates of certPEM (a server with a private CA serves its HTTP
// API with the same certificate as its device listener).
func HTTPClient(certPEM []byte, timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if certPEM != nil {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pool.AppendCertsFromPEM(certPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

func (s *Session) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// SetWanted says whether a connection is needed (an app uses this backend).
func (s *Session) SetWanted(v bool) {
	s.mu.Lock()
	changed := s.wanted != v
	s.wanted = v
	if changed && !v && s.conn != nil {
		s.conn.Close()
	}
	s.mu.Unlock()
	if changed {
		s.wake()
	}
}

// SetOnline says whether the network is up: no dialing while offline, a
// redial at once when it comes back (the connection of the old network is
// dropped rather than left to time out).
func (s *Session) SetOnline(v bool) {
	s.mu.Lock()
	changed := s.online != v
	s.online = v
	if changed {
		s.reconnect = true
		if s.conn != nil {
			s.conn.Close()
		}
	}
	s.mu.Unlock()
	if changed {
		s.wake()
	}
}

// Reconnect drops the connection and dials again at once.
func (s *Session) Reconnect() {
	s.mu.Lock()
	s.reconnect = true
	if s.conn != nil {
		s.conn.Close()
	}
	s.mu.Unlock()
	s.wake()
}

// Connected reports whether a connection is up (connack received).
func (s *Session) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected
}

// Host returns the host:port of the live connection ("" when none).
func (s *Session) Host() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.host
}

// Run dials and serves connections until ctx ends.
func (s *Session) Run(ctx context.Context) error {
	var lastErr error
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		if s.conn != nil {
			s.conn.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	for {
		s.mu.Lock()
		wanted, online := s.wanted, s.online
		s.reconnect = false
		s.mu.Unlock()
		if !online || !wanted {
			st := StateIdle
			if !online {
				st = StateOffline
			}
			s.cfg.Handler.StateChanged(st, s.cfg.Now(), lastErr)
			select {
			case <-ctx.Done():
				return nil
			case <-s.kick:
				continue
			}
		}
		s.cfg.Handler.StateChanged(StateConnecting, s.cfg.Now(), lastErr)
		started := s.cfg.Now()
		healthy, err := s.connect(ctx)
		if ctx.Err() != nil {
			return nil
		}
		lastErr = err
		s.mu.Lock()
		again := s.reconnect
		s.mu.Unlock()
		if again {
			s.step = 0
			continue
		}
		delay := s.nextDelay(healthy, started)
		s.log.Info("lomiri push server connection lost", "err", err, "retry_in", delay.Round(time.Millisecond))
		s.cfg.Handler.StateChanged(StateBackoff, s.cfg.Now(), lastErr)
		if !s.wait(ctx, delay) && ctx.Err() != nil {
			return nil
		}
	}
}

// nextDelay is upstream's redial rule: at once after a connection that
// worked (it exchanged a pong or an ack), unless the last redial was less
// than 2 s ago; otherwise the next step of the schedule, jittered.
func (s *Session) nextDelay(healthy bool, started time.Time) time.Duration {
	recent := !s.lastDial.IsZero() && started.Sub(s.lastDial) < 2*time.Second
	s.lastDial = started
	if healthy && !recent {
		s.step = 0
		return 0
	}
	d := s.cfg.Delays[min(s.step, len(s.cfg.Delays)-1)]
	if s.step < len(s.cfg.Delays)-1 {
		s.step++
	}
	return max(0, d+s.cfg.Jitter(d))
}

// wait waits out a delay; a reconnect request (network back, Reconnect)
// ends it early with true.
func (s *Session) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-s.kick:
			s.mu.Lock()
			again, wanted, online := s.reconnect, s.wanted, s.online
			s.mu.Unlock()
			if again || !wanted || !online {
				s.step = 0
				return true
			}
		}
	}
}

// connect dials a host, serves the connection until it ends and reports
// whether it worked (completed a pong or an ack exchange).
func (s *Session) connect(ctx context.Context) (healthy bool, err error) {
	list, domain, err := s.hosts.get(ctx)
	if err != nil {
		return false, err
	}
	var nc net.Conn
	var host string
	d := net.Dialer{Timeout: s.cfg.ConnectTimeout}
	for _, h := range s.hosts.order(list) {
		nc, err = d.DialContext(ctx, "tcp", h)
		if err == nil {
			host = h
			break
		}
		s.log.Debug("cannot dial lomiri delivery host", "host", h, "err", err)
	}
	if nc == nil {
		// Ask for the hosts again next time: the server may have moved.
		s.hosts.reset()
		return false, fmt.Errorf("cannot reach any delivery host: %w", err)
	}
	tc := s.tls.Clone()
	if tc.ServerName == "" {
		tc.ServerName = domain
	}
	if tc.ServerName == "" {
		tc.ServerName, _, _ = net.SplitHostPort(host)
	}
	conn := tls.Client(nc, tc)
	s.mu.Lock()
	if s.reconnect || ctx.Err() != nil {
		s.mu.Unlock()
		conn.Close()
		return false, errors.New("connection attempt cancelled")
	}
	s.conn = conn
	s.mu.Unlock()
	defer func() {
		conn.Close()
		s.mu.Lock()
		s.conn, s.connected, s.host = nil, false, ""
		s.mu.Unlock()
	}()
	return s.serve(ctx, conn, host, list)
}

func (s *Session) serve(ctx context.Context, conn *tls.Conn, host string, list []string) (healthy bool, err error) {
	ex := s.cfg.ExchangeTimeout
	conn.SetDeadline(s.cfg.Now().Add(ex))
	if err := conn.HandshakeContext(ctx); err != nil {
		return false, fmt.Errorf("tls handshake with %s: %w", host, err)
	}
	if _, err := conn.Write([]byte{wire.WireVersion}); err != nil {
		return false, fmt.Errorf("cannot write wire version: %w", err)
	}
	levels, err := s.cfg.Handler.Levels(ctx)
	if err != nil {
		return false, fmt.Errorf("cannot read broadcast levels: %w", err)
	}
	s.mu.Lock()
	cookie := s.cookie
	s.mu.Unlock()
	br := bufio.NewReaderSize(conn, 4096)
	if err := s.write(conn, &wire.Connect{DeviceId: s.cfg.DeviceID, Cookie: cookie, Info: s.cfg.Info, Levels: levels}); err != nil {
		return false, err
	}
	m, err := s.read(br)
	if err != nil {
		return false, fmt.Errorf("no connack from %s: %w", host, err)
	}
	ack, ok := m.(*wire.ConnAck)
	if !ok {
		return false, fmt.Errorf("%s answered connect with %s, want connack", host, m.Type())
	}
	ping, err := ack.PingDuration()
	if err != nil {
		return false, err
	}
	s.hosts.worked(list, host)
	s.mu.Lock()
	s.connected, s.host = true, host
	s.mu.Unlock()
	s.log.Info("connected to lomiri push server", "host", host, "ping_interval", ping)
	s.cfg.Handler.StateChanged(StateConnected, s.cfg.Now(), nil)
	for {
		conn.SetReadDeadline(s.cfg.Now().Add(ping + ex))
		m, err := s.read(br)
		if err != nil {
			return healthy, err
		}
		conn.SetWriteDeadline(s.cfg.Now().Add(ex))
		switch m := m.(type) {
		case *wire.Ping:
			if err := s.write(conn, &wire.Pong{}); err != nil {
				return healthy, err
			}
			healthy = true
		case *wire.Notifications:
			if err := s.cfg.Handler.Notifications(ctx, m.Notifications); err != nil {
				s.log.Error("cannot store lomiri notifications; nak", "count", len(m.Notifications), "err", err)
				_ = s.write(conn, &wire.Ack{Nak: true})
				return healthy, fmt.Errorf("cannot store notifications: %w", err)
			}
			if err := s.write(conn, &wire.Ack{}); err != nil {
				return healthy, err
			}
			healthy = true
		case *wire.Broadcast:
			if err := s.cfg.Handler.Broadcast(ctx, m); err != nil {
				s.log.Error("cannot store lomiri broadcast; nak", "channel", m.ChanId, "err", err)
				_ = s.write(conn, &wire.Ack{Nak: true})
				return healthy, fmt.Errorf("cannot store broadcast: %w", err)
			}
			if err := s.write(conn, &wire.Ack{}); err != nil {
				return healthy, err
			}
			healthy = true
		case *wire.ConnBroken:
			if m.Reason == wire.BrokenHostMismatch {
				s.hosts.reset()
			}
			return healthy, fmt.Errorf("server broke the connection: %s", m.Reason)
		case *wire.ConnWarn:
			s.log.Warn("lomiri push server warns", "reason", m.Reason)
		case *wire.SetParams:
			s.mu.Lock()
			s.cookie = m.SetCookie
			s.mu.Unlock()
		default:
			s.log.Debug("ignored lomiri frame", "type", m.Type())
		}
	}
}

func (s *Session) write(conn net.Conn, m wire.Message) error {
	b, err := wire.Encode(m)
	if err != nil {
		return err
	}
	s.log.Debug("lomiri frame", "dir", ">>", "frame", wire.Describe(m))
	if err := wire.WriteFrame(conn, b); err != nil {
		return fmt.Errorf("cannot send %s: %w", m.Type(), err)
	}
	return nil
}

func (s *Session) read(br *bufio.Reader) (wire.Message, error) {
	f, err := wire.ReadFrame(br, 0)
	if err != nil {
		return nil, err
	}
	m, err := wire.Decode(f)
	if err != nil {
		return nil, err
	}
	s.log.Debug("lomiri frame", "dir", "<<", "frame", wire.Describe(m))
	return m, nil
}
