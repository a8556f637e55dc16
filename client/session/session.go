// Package session keeps heraldd's one websocket connection to its push
// server (Mozilla's autopush protocol, see package protocol): hello with the
// stored uaid, register and unregister with reply correlation, notifications
// persisted by the owner before they are acked, a read deadline from the
// server's keepalive, and redial with exponential backoff and full jitter.
//
// One goroutine owns each connection; the Session's Run loop owns the
// dialing. Callers only talk to them through channels.
package session

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// State is the connection state shown to users.
type State string

const (
	StateOffline    State = "offline"    // the network is down: no dialing
	StateIdle       State = "idle"       // nothing registered: no connection
	StateConnecting State = "connecting" // dialing or waiting for hello
	StateConnected  State = "connected"
	StateBackoff    State = "backoff" // waiting before the next dial
)

// Errors returned by Register and Unregister.
var (
	ErrNotConnected = errors.New("not connected to the push server")
	ErrRejected     = errors.New("push server refused the request")
)

// Handler is what the session needs from the daemon.
type Handler interface {
	// Hello returns the stored uaid ("" for a new device) and the channel
	// ids to announce.
	Hello(ctx context.Context) (uaid string, channelIDs []string, err error)
	// Welcome gets the uaid the server answered with, before any
	// notification is received on the connection.
	Welcome(ctx context.Context, uaid string) error
	// Receive durably stores a batch of notifications and returns the ack
	// code of each (protocol.AckDelivered, or AckNotDelivered when it could
	// not be stored). Duplicates are acked as delivered. kind says whether
	// the batch is live messages or the server flushing stored ones.
	Receive(ctx context.Context, batch []*protocol.Notification, kind Kind) []int
	// StateChanged reports a new state; err is the reason of the last failure.
	StateChanged(st State, since time.Time, err error)
}

// Kind says what a batch of notifications handed to Handler.Receive is.
type Kind int

const (
	// Live: messages as they are posted.
	Live Kind = iota
	// Stored: a full batch (protocol.BatchSize or more read together), the
	// server flushing stored messages.
	Stored
	// Reconnect: the stored messages the server sends right after the
	// hello (the drain phase), whatever the size of the batch.
	Reconnect
)

// Config configures a Session.
type Config struct {
	URL     string // ws:// or wss:// URL of the server's websocket
	Handler Handler
	Logger  *slog.Logger
	// PingInterval is the server's keepalive interval; the read deadline
	// is PingInterval + PingGrace.
	PingInterval time.Duration
	PingGrace    time.Duration
	// RequestTimeout bounds hello, register and unregister round trips.
	RequestTimeout time.Duration
	// AckDelay is how long acks of stored notifications may wait to be sent
	// together in one frame (a message is durable on the device before its
	// ack is queued, so only the server's copy lives that much longer). A
	// full batch (protocol.BatchSize) and a Live batch are acked at once, so
	// the delay only joins the acks of a server's stored batches. Zero:
	// DefaultAckDelay; negative: every batch is acked at once.
	AckDelay time.Duration
	// Batch is the stored batch size asked of a server that names the
	// "batch" extension (protocol.ExtBatch): 0 is protocol.MaxBatchSize, a
	// negative value never asks.
	Batch int
	// NoCompact never asks a server that names the "compact" extension
	// (protocol.ExtCompact) for compact frames: JSON only.
	NoCompact bool
	// Backoff is the redial policy (zero value: DefaultBackoff).
	Backoff Backoff
	// Compression asks for permessage-deflate.
	Compression bool
	// Extensions are the Herald extensions the server named on an earlier
	// connection (kept by the daemon): used until this run's first hello
	// reply, so that even the first hello states the wanted urgency.
	Extensions []string
	// MinKeepalive is the shortest idle time after which the session pings
	// the server itself, once its path proved to drop idle connections
	// (zero: DefaultMinKeepalive).
	MinKeepalive time.Duration
	// CheckTimeout is how long the pong of a resume check (Check) may take
	// before the connection is replaced (zero: DefaultCheckTimeout).
	CheckTimeout time.Duration
	// Dial opens the websocket; nil uses a gorilla dialer. Tests inject it.
	Dial func(ctx context.Context, url string) (*websocket.Conn, error)
	// Rand returns a uniform integer in [0, n) for the backoff jitter;
	// nil uses math/rand/v2.
	Rand func(n int64) int64
	// Now is the clock of the drain phase (nil: time.Now). Tests inject it.
	Now func() time.Time
}

// Backoff is the redial policy: the n-th consecutive failure waits a uniform
// random time in [0, min(Max, Min·2ⁿ)) ("full jitter"); a connection that
// lasted Stable resets n.
type Backoff struct {
	Min, Max, Stable time.Duration
}

// DefaultAckDelay is how long acks may wait to share a frame.
const DefaultAckDelay = 20 * time.Millisecond

// DefaultBackoff is 1 s doubling to 5 min, reset after a stable minute.
var DefaultBackoff = Backoff{Min: time.Second, Max: 5 * time.Minute, Stable: time.Minute}

// Ceiling returns the upper bound of the wait after attempt failures (attempt ≥ 0).
func (b Backoff) Ceiling(attempt int) time.Duration {
	d := b.Min
	for i := 0; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Session is the daemon's connection to its push server.
type Session struct {
	cfg Config
	log *slog.Logger

	kick chan struct{} // wakes the Run loop (state or Reconnect)

	mu        sync.Mutex // guards the fields below
	wanted    bool       // at least one app is registered
	online    bool       // the network is up
	reconnect bool       // Reconnect was asked
	conn      *conn      // the current connection, nil when none
	ready     chan struct{}
	ext       extState  // Herald extensions and the resume check
	ka        keepalive // the adaptive keepalive interval
}

// New returns a Session; Run starts it.
func New(cfg Config) *Session {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = protocol.DefaultPingInterval
	}
	if cfg.PingGrace <= 0 {
		cfg.PingGrace = 30 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 20 * time.Second
	}
	if cfg.AckDelay == 0 {
		cfg.AckDelay = DefaultAckDelay
	}
	if cfg.MinKeepalive <= 0 {
		cfg.MinKeepalive = DefaultMinKeepalive
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	if cfg.Backoff == (Backoff{}) {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Int64N
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Session{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1), online: true, ready: make(chan struct{})}
	if len(cfg.Extensions) > 0 {
		s.ext.supported = map[string]bool{}
		for _, e := range cfg.Extensions {
			s.ext.supported[e] = true
		}
	}
	if cfg.Dial == nil {
		d := &websocket.Dialer{
			HandshakeTimeout:  cfg.RequestTimeout,
			ReadBufferSize:    2048,
			WriteBufferSize:   1024,
			EnableCompression: cfg.Compression,
			Subprotocols:      []string{protocol.Subprotocol},
		}
		s.cfg.Dial = func(ctx context.Context, url string) (*websocket.Conn, error) {
			c, resp, err := d.DialContext(ctx, url, http.Header{})
			if resp != nil && resp.Body != nil {
				resp.Body.Close()
			}
			return c, err
		}
	}
	return s
}

func (s *Session) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// SetWanted says whether a connection is needed (at least one app registered).
func (s *Session) SetWanted(v bool) {
	s.mu.Lock()
	changed := s.wanted != v
	s.wanted = v
	s.mu.Unlock()
	if changed {
		s.wake()
	}
}

// SetOnline says whether the network is up. Going online redials at once.
func (s *Session) SetOnline(v bool) {
	s.mu.Lock()
	changed := s.online != v
	s.online = v
	if changed {
		s.reconnect = true
	}
	s.mu.Unlock()
	if changed {
		s.wake()
	}
}

// Reconnect closes the current connection (if any) and dials again at once.
func (s *Session) Reconnect() {
	s.mu.Lock()
	s.reconnect = true
	s.mu.Unlock()
	s.wake()
}

// redialNow makes the Run loop dial again without a backoff wait.
func (s *Session) redialNow() {
	s.mu.Lock()
	s.reconnect = true
	s.mu.Unlock()
}

// Run dials and serves connections until ctx ends. It closes the current
// connection with a close frame before returning.
func (s *Session) Run(ctx context.Context) error {
	attempt := 0
	var lastErr error
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
			s.cfg.Handler.StateChanged(st, time.Now(), lastErr)
			select {
			case <-ctx.Done():
				return nil
			case <-s.kick:
				continue
			}
		}
		s.cfg.Handler.StateChanged(StateConnecting, time.Now(), lastErr)
		start := time.Now()
		err := s.connect(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var delay time.Duration
		delay, attempt = s.nextDelay(err, attempt, time.Since(start))
		lastErr = err
		s.mu.Lock()
		again := s.reconnect
		s.mu.Unlock()
		if again {
			continue
		}
		s.log.Info("push server connection lost", "err", err, "retry_in", delay.Round(time.Millisecond))
		s.cfg.Handler.StateChanged(StateBackoff, time.Now(), lastErr)
		if s.wait(ctx, delay) {
			attempt = 0
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// wait waits out a backoff delay. It returns early, reporting true, when a
// reconnect is asked (Reconnect, network back), and returns false early when
// the connection is no longer wanted or the network went down.
func (s *Session) wait(ctx context.Context, delay time.Duration) (reconnect bool) {
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		case <-s.kick:
			s.mu.Lock()
			again, stay := s.reconnect, s.wanted && s.online
			s.mu.Unlock()
			if again {
				return true
			}
			if !stay {
				return false
			}
		}
	}
}

// nextDelay returns how long to wait after a connection attempt that ended
// with err after lasting d, and the new attempt count.
func (s *Session) nextDelay(err error, attempt int, d time.Duration) (time.Duration, int) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) && ce.Code == protocol.CloseDoNotReconnect {
		s.log.Warn("push server asked not to reconnect soon", "delay", s.cfg.Backoff.Max)
		return s.cfg.Backoff.Max, 0
	}
	if d >= s.cfg.Backoff.Stable {
		attempt = 0
	}
	return time.Duration(s.cfg.Rand(int64(s.cfg.Backoff.Ceiling(attempt)))), attempt + 1
}

// request is a register or unregister waiting for the server's answer.
type request struct {
	msg   protocol.Message
	reply chan protocol.Message // gets the answer, buffered 1
}

type frame struct {
	msg protocol.Message
	err error
	// bad is the ack of a notification frame that names its channel and
	// version but cannot be decoded: it can never be delivered.
	bad *protocol.Update
}

// conn is one connection; its serve goroutine owns it.
type conn struct {
	ws   *websocket.Conn
	reqs chan request
	done chan struct{} // closed when the connection ends
	// compact: the server was asked for compact frames (protocol.ExtCompact);
	// acks go out as binary frames, binary notifications are read.
	compact bool
}

// minCompressedFrame is the size from which the device's JSON frames are
// compressed (permessage-deflate, when negotiated). Deflating a frame of a
// few hundred bytes saves a few dozen; it costs a 1.2 MB deflate writer
// (gorilla pools one per garbage collection), which at start-up was most of
// an idle heraldd's heap and made Go collect for the first time (issue 17).
// Large frames (a drain's batched JSON acks, a hello of many apps' channels
// is not: handshake frames never are) still are.
const minCompressedFrame = 256

// connect dials, says hello and serves the connection until it ends.
func (s *Session) connect(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	ws, err := s.cfg.Dial(dctx, s.cfg.URL)
	cancel()
	if err != nil {
		return fmt.Errorf("cannot connect to push server: %w", err)
	}
	defer ws.Close()
	// Reads and writes of the handshake do not watch ctx: its end closes
	// the socket, so shutdown never waits for the server's hello.
	stopHandshake := context.AfterFunc(ctx, func() { _ = ws.Close() })
	defer stopHandshake()
	ws.SetReadLimit(protocol.MaxFrameBytes)
	uaid, channels, err := s.cfg.Handler.Hello(ctx)
	if err != nil {
		return err
	}
	urgency := s.helloUrgency()
	hello, err := protocol.Encode(&protocol.Hello{UAID: uaid, ChannelIDs: channels, UseWebPush: true, Urgency: urgency})
	if err != nil {
		return err
	}
	// The handshake's frames go uncompressed (minCompressedFrame).
	ws.EnableWriteCompression(false)
	_ = ws.SetWriteDeadline(time.Now().Add(s.cfg.RequestTimeout))
	if err := ws.WriteMessage(websocket.TextMessage, hello); err != nil {
		return fmt.Errorf("cannot send hello: %w", err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(s.cfg.RequestTimeout))
	_, b, err := readFrame(ws)
	if err != nil {
		return fmt.Errorf("no hello from push server: %w", err)
	}
	m, err := protocol.Decode(b)
	if err != nil {
		return fmt.Errorf("bad hello from push server: %w", err)
	}
	h, ok := m.(*protocol.Hello)
	if !ok || h.UAID == "" || len(h.UAID) > 128 {
		return fmt.Errorf("bad hello from push server: got %s", m.Type())
	}
	s.welcomed(h, urgency)
	if err := s.cfg.Handler.Welcome(ctx, h.UAID); err != nil {
		return err
	}
	if h.Supports(protocol.ExtBatch) && s.cfg.Batch >= 0 {
		// Larger stored batches with pipelined acks: a reconnect drain is
		// fewer round trips and fewer inbox transactions. Only to a server
		// that named the extension (Mozilla's closes on unknown frames).
		b, _ := protocol.Encode(&protocol.Batch{Size: cmp.Or(s.cfg.Batch, protocol.MaxBatchSize)})
		if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
			return fmt.Errorf("cannot write to push server: %w", err)
		}
	}
	// Compact (binary) notifications and acks: a third of the bytes of
	// JSON. Also only to a server that named the extension; notifications
	// it wrote before reading this request come as JSON.
	compact := h.Supports(protocol.ExtCompact) && !s.cfg.NoCompact
	if compact {
		b, _ := protocol.Encode(&protocol.Compact{})
		if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
			return fmt.Errorf("cannot write to push server: %w", err)
		}
	}
	if !stopHandshake() {
		return ctx.Err() // ctx ended during the handshake: the socket is closed
	}
	ws.EnableWriteCompression(true)
	c := &conn{ws: ws, reqs: make(chan request), done: make(chan struct{}), compact: compact}
	s.mu.Lock()
	s.conn = c
	close(s.ready)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.conn = nil
		s.ready = make(chan struct{})
		s.mu.Unlock()
	}()
	s.log.Info("connected to push server", "server", s.cfg.URL)
	s.cfg.Handler.StateChanged(StateConnected, time.Now(), nil)
	return s.serve(ctx, c)
}

func (s *Session) deadline() time.Time {
	return time.Now().Add(s.cfg.PingInterval + s.cfg.PingGrace)
}

// serve is the owner loop of one connection.
func (s *Session) serve(ctx context.Context, c *conn) error {
	ws := c.ws
	_ = ws.SetReadDeadline(s.deadline())
	_ = ws.SetWriteDeadline(time.Time{})
	ws.SetPingHandler(func(data string) error {
		_ = ws.SetReadDeadline(s.deadline())
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(s.cfg.RequestTimeout))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	// A resume check is answered by a pong (or any frame); a read that fails
	// meanwhile means the connection was dead: redial at once.
	var checking, kaPending atomic.Bool
	ws.SetPongHandler(func(string) error {
		checking.Store(false)
		if kaPending.Swap(false) {
			s.keepaliveResult(true)
		}
		_ = ws.SetReadDeadline(s.deadline())
		return nil
	})
	// The session's own pings, after keepaliveInterval of silence, only once
	// the path proved to drop idle connections sooner than the server pings.
	kaTimer := time.NewTimer(time.Hour)
	kaTimer.Stop()
	defer kaTimer.Stop()
	var kaC <-chan time.Time
	armKeepalive := func() {
		if ka := s.keepaliveInterval(); ka > 0 {
			kaTimer.Reset(ka)
			kaC = kaTimer.C
		} else {
			kaTimer.Stop()
			kaC = nil
		}
	}
	armKeepalive()
	// The extension frames waiting (the wanted urgency) go first, before
	// any register, so the server holds what the device does not want yet.
	if msgs, _ := s.extFrames(false); len(msgs) > 0 {
		for _, m := range msgs {
			b, err := protocol.Encode(m)
			if err != nil {
				return err
			}
			_ = ws.SetWriteDeadline(time.Now().Add(s.cfg.RequestTimeout))
			if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
				return fmt.Errorf("cannot write to push server: %w", err)
			}
		}
	}
	// Room for a whole stored batch (extension batch): the reader decodes the
	// next frames while the previous ones commit, and they commit together.
	frames := make(chan frame, protocol.MaxBatchSize)
	var wg sync.WaitGroup
	wg.Go(func() { s.read(ws, c.compact, frames, c.done) })
	defer wg.Wait()
	defer close(c.done)

	// Requests waiting for the server's answer, by channel id. Concurrent
	// requests for one channel share the frame sent and its answer.
	pending := map[string][]chan protocol.Message{}
	defer func() {
		for _, chs := range pending {
			for _, ch := range chs {
				close(ch)
			}
		}
	}()
	var buf []byte // compact frames' buffer
	write := func(m protocol.Message) error {
		if c.compact {
			switch m := m.(type) {
			case *protocol.Ack:
				return s.writeCompact(ws, &buf, m.Updates, false)
			case *protocol.AppAck:
				return s.writeCompact(ws, &buf, m.Updates, true)
			}
		}
		b, err := protocol.Encode(m)
		if err != nil {
			return err
		}
		// Small frames (a register, one JSON ack) go uncompressed, as the
		// handshake's: see minCompressedFrame.
		ws.EnableWriteCompression(len(b) >= minCompressedFrame)
		_ = ws.SetWriteDeadline(time.Now().Add(s.cfg.RequestTimeout))
		if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
			return fmt.Errorf("cannot write to push server: %w", err)
		}
		return nil
	}
	// Acks of stored notifications wait up to AckDelay to share one frame.
	var acks []protocol.Update
	var ackC <-chan time.Time
	ackTimer := time.NewTimer(time.Hour)
	ackTimer.Stop()
	defer ackTimer.Stop()
	flush := func() error {
		ackTimer.Stop()
		ackC = nil
		if len(acks) == 0 {
			return nil
		}
		err := write(&protocol.Ack{Updates: acks})
		acks = acks[:0]
		return err
	}
	queueAcks := func(us []protocol.Update) error {
		acks = append(acks, us...)
		if len(acks) >= protocol.BatchSize || s.cfg.AckDelay < 0 {
			return flush()
		}
		if ackC == nil {
			ackTimer.Reset(s.cfg.AckDelay)
			ackC = ackTimer.C
		}
		return nil
	}
	var batch []*protocol.Notification
	// The drain phase: the stored messages the server sends right after the
	// hello. Every batch of it is draining, however few frames the reader
	// had ready (the first ones often come one by one), so that the daemon
	// takes the whole drain in before its pipeline competes with it. It ends
	// at the first drainGap without a notification, or after maxDrainPhase.
	inDrain := true
	drainEnd := s.cfg.Now().Add(maxDrainPhase)
	drainUntil := s.cfg.Now().Add(drainGap)
	store := func(batch []*protocol.Notification) error {
		now := s.cfg.Now()
		if inDrain && (now.After(drainUntil) || now.After(drainEnd)) {
			inDrain = false
		}
		kind := Live
		switch {
		case inDrain:
			kind = Reconnect
		case len(batch) >= protocol.BatchSize:
			kind = Stored
		}
		us := s.storeBatch(ctx, batch, kind)
		drainUntil = s.cfg.Now().Add(drainGap)
		if err := queueAcks(us); err != nil {
			return err
		}
		if kind == Live {
			// A live message is acked at once (with any ack waiting):
			// herald-server waits a little for the ack of a message it
			// wrote early and then need not store it, answering 201 at
			// the ack. Delayed, the ack made the server wait and store.
			return flush()
		}
		return nil
	}
	for {
		select {
		case <-ackC:
			if err := flush(); err != nil {
				return err
			}
		case <-kaC:
			// While the last ping is unanswered its read deadline decides.
			if !kaPending.Load() {
				kaPending.Store(true)
				_ = ws.SetReadDeadline(time.Now().Add(s.cfg.RequestTimeout))
				if err := ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.cfg.RequestTimeout)); err != nil {
					s.redialNow()
					return fmt.Errorf("cannot ping push server: %w", err)
				}
			}
			armKeepalive()
		case <-ctx.Done():
			_ = flush()
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
			return ctx.Err()
		case <-s.kick:
			s.mu.Lock()
			leave := s.reconnect || !s.wanted || !s.online
			s.mu.Unlock()
			if leave {
				_ = flush()
				_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "reconnect"), time.Now().Add(time.Second))
				// Put the kick back for the Run loop.
				s.wake()
				return errors.New("reconnect requested")
			}
			msgs, check := s.extFrames(true)
			if len(msgs) > 0 {
				// Acks first: an app_ack never overtakes the ack of its message.
				if err := flush(); err != nil {
					return err
				}
			}
			for _, m := range msgs {
				if err := write(m); err != nil {
					return err
				}
			}
			if check {
				if err := s.startCheck(ws, &checking); err != nil {
					s.redialNow()
					return fmt.Errorf("connection check failed: %w", err)
				}
			}
		case r := <-c.reqs:
			var id string
			switch m := r.msg.(type) {
			case *protocol.Register:
				id = m.ChannelID
			case *protocol.Unregister:
				id = m.ChannelID
			}
			waiting := len(pending[id]) > 0
			pending[id] = append(pending[id], r.reply)
			if waiting {
				break
			}
			if err := write(r.msg); err != nil {
				return err
			}
		case f := <-frames:
			if f.err != nil {
				switch {
				case checking.Load():
					s.log.Info("push server connection was dead; replacing it", "err", f.err)
					s.redialNow()
				case kaPending.Load():
					s.log.Info("keepalive ping not answered; replacing the connection", "err", f.err)
					s.keepaliveResult(false)
					s.redialNow()
				case idleTimeout(f.err):
					// Nothing heard for the server's ping interval: the path
					// dropped the idle connection.
					s.keepaliveResult(false)
				}
				return f.err
			}
			checking.Store(false) // a frame came: the connection works
			armKeepalive()        // the idle time starts again
			if f.bad != nil {
				if err := queueAcks([]protocol.Update{*f.bad}); err != nil {
					return err
				}
				continue
			}
			switch m := f.msg.(type) {
			case *protocol.Notification:
				batch = append(batch[:0], m)
				// Take every notification already read, to store and ack them together.
			more:
				for len(batch) < 100 {
					select {
					case f2 := <-frames:
						if f2.bad != nil {
							if err := queueAcks([]protocol.Update{*f2.bad}); err != nil {
								return err
							}
							continue
						}
						if n, ok := f2.msg.(*protocol.Notification); ok && f2.err == nil {
							batch = append(batch, n)
							continue
						}
						// Not a notification: handle the batch first, then this frame.
						if err := store(batch); err != nil {
							return err
						}
						batch = batch[:0]
						if f2.err != nil {
							return f2.err
						}
						s.answer(f2.msg, pending)
						break more
					default:
						break more
					}
				}
				if len(batch) > 0 {
					if err := store(batch); err != nil {
						return err
					}
				}
			default:
				s.answer(m, pending)
			}
		}
	}
}

// A reconnect drain's phase (see serve) ends at the first drainGap without
// a notification, or after maxDrainPhase: a live stream that starts right
// after the hello is not deferred for longer.
const (
	drainGap      = 250 * time.Millisecond
	maxDrainPhase = 5 * time.Second
)

// storeBatch hands a batch to the handler to store and returns its acks.
func (s *Session) storeBatch(ctx context.Context, batch []*protocol.Notification, kind Kind) []protocol.Update {
	start := time.Now()
	codes := s.cfg.Handler.Receive(ctx, batch, kind)
	s.log.Debug("stored notifications", "count", len(batch), "took", time.Since(start))
	updates := make([]protocol.Update, len(batch))
	for i, n := range batch {
		code := protocol.AckNotDelivered
		if i < len(codes) {
			code = codes[i]
		}
		if code == protocol.AckDelivered {
			code = 0 // omitted: 100 is the protocol's default, and it saves bytes on the wire
		}
		updates[i] = protocol.Update{ChannelID: n.ChannelID, Version: n.Version, Code: code}
	}
	return updates
}

// answer routes a server frame that is not a notification.
func (s *Session) answer(m protocol.Message, pending map[string][]chan protocol.Message) {
	var id string
	switch m := m.(type) {
	case *protocol.Register:
		id = m.ChannelID
	case *protocol.Unregister:
		id = m.ChannelID
	default:
		// Pings ({}), hello repeats and unknown types are ignored.
		s.log.Debug("ignored frame from push server", "type", m.Type())
		return
	}
	chs, ok := pending[id]
	if !ok {
		s.log.Debug("unexpected reply from push server", "type", m.Type(), "channel_id", id)
		return
	}
	delete(pending, id)
	for _, ch := range chs {
		ch <- m
	}
}

// readFrame reads the next frame of at most MaxFrameBytes after
// decompression; a bigger one (a hostile server's compression bomb) closes
// the connection with 1009 instead of being inflated.
func readFrame(ws *websocket.Conn) (int, []byte, error) {
	typ, b, err := protocol.ReadFrame(ws.NextReader)
	if errors.Is(err, protocol.ErrFrameTooBig) {
		closeTooBig(ws)
	}
	return typ, b, err
}

// undeliverable returns the ack (code 102, not delivered) of a notification
// frame that protocol.Decode refused but that names a valid channel id and a
// version, nil for any other frame.
func undeliverable(typ int, b []byte) *protocol.Update {
	if typ == websocket.BinaryMessage {
		chid, v, ok := protocol.CompactUndeliverable(b)
		if !ok {
			return nil
		}
		return &protocol.Update{ChannelID: chid, Version: v, Code: protocol.AckNotDelivered}
	}
	var f struct {
		MessageType string `json:"messageType"`
		ChannelID   string `json:"channelID"`
		Version     string `json:"version"`
	}
	if json.Unmarshal(b, &f) != nil || f.MessageType != protocol.TypeNotification ||
		!protocol.ValidChannelID(f.ChannelID) || f.Version == "" || len(f.Version) > maxVersionBytes {
		return nil
	}
	return &protocol.Update{ChannelID: f.ChannelID, Version: f.Version, Code: protocol.AckNotDelivered}
}

// maxVersionBytes bounds the version echoed in an ack of an undecodable frame.
const maxVersionBytes = 256

// closeTooBig closes ws with 1009. It skips what is left of the frames (on
// the wire, not inflated) for up to a second, waiting for the peer's close,
// so that the close frame is not lost to a reset.
func closeTooBig(ws *websocket.Conn) {
	_ = ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(protocol.CloseMessageTooBig, "frame too big after decompression"),
		time.Now().Add(time.Second))
	_ = ws.SetReadDeadline(time.Now().Add(time.Second))
	for {
		if _, _, err := ws.NextReader(); err != nil {
			break
		}
	}
	ws.Close()
}

// writeCompact writes an ack (or app_ack) of us as compact binary frames of
// at most protocol.MaxCompactUpdates updates, uncompressed: per-frame
// deflate makes them longer (ids are random bytes).
func (s *Session) writeCompact(ws *websocket.Conn, buf *[]byte, us []protocol.Update, app bool) error {
	ws.EnableWriteCompression(false)
	defer ws.EnableWriteCompression(true)
	for len(us) > 0 {
		n := min(len(us), protocol.MaxCompactUpdates)
		var m protocol.Message = &protocol.Ack{Updates: us[:n]}
		if app {
			m = &protocol.AppAck{Updates: us[:n]}
		}
		b, err := protocol.AppendCompact((*buf)[:0], m)
		if err != nil {
			return err
		}
		*buf = b
		_ = ws.SetWriteDeadline(time.Now().Add(s.cfg.RequestTimeout))
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			return fmt.Errorf("cannot write to push server: %w", err)
		}
		us = us[n:]
	}
	return nil
}

// read is the reader goroutine of a connection. With compact, binary
// frames are compact ones (protocol.DecodeCompact); else they are ignored.
func (s *Session) read(ws *websocket.Conn, compact bool, frames chan<- frame, done <-chan struct{}) {
	for {
		typ, b, err := readFrame(ws)
		if err != nil {
			select {
			case frames <- frame{err: err}:
			case <-done:
			}
			return
		}
		_ = ws.SetReadDeadline(s.deadline())
		var m protocol.Message
		switch {
		case typ == websocket.BinaryMessage && compact:
			m, err = protocol.DecodeCompact(b)
		case typ == websocket.TextMessage:
			m, err = protocol.Decode(b)
		default:
			continue
		}
		if err != nil {
			u := undeliverable(typ, b)
			if u == nil {
				s.log.Warn("ignored invalid frame from push server", "err", err)
				continue
			}
			// Acked as not deliverable, so that the server drops it instead
			// of sending it again (and holding the messages behind it).
			s.log.Warn("acking undecodable notification as not delivered", "channel_id", u.ChannelID, "err", err)
			select {
			case frames <- frame{bad: u}:
			case <-done:
				return
			}
			continue
		}
		select {
		case frames <- frame{msg: m}:
		case <-done:
			return
		}
	}
}

// current waits until a connection is up or ctx ends.
func (s *Session) current(ctx context.Context) (*conn, error) {
	for {
		s.mu.Lock()
		c, ready := s.conn, s.ready
		s.mu.Unlock()
		if c != nil {
			return c, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNotConnected, ctx.Err())
		}
	}
}

func (s *Session) roundTrip(ctx context.Context, m protocol.Message) (protocol.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	c, err := s.current(ctx)
	if err != nil {
		return nil, err
	}
	r := request{msg: m, reply: make(chan protocol.Message, 1)}
	select {
	case c.reqs <- r:
	case <-c.done:
		return nil, fmt.Errorf("%w: connection lost", ErrNotConnected)
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrNotConnected, ctx.Err())
	}
	select {
	case rep, ok := <-r.reply:
		if !ok {
			return nil, fmt.Errorf("%w: connection lost before the answer", ErrNotConnected)
		}
		return rep, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("no answer from push server: %w", ctx.Err())
	}
}

// Register asks the server for an endpoint for channelID, optionally
// restricted to a VAPID key. It waits for a connection (up to the request
// timeout or ctx).
func (s *Session) Register(ctx context.Context, channelID, key string) (endpoint string, err error) {
	rep, err := s.roundTrip(ctx, &protocol.Register{ChannelID: channelID, Key: key})
	if err != nil {
		return "", fmt.Errorf("cannot register channel %s: %w", channelID, err)
	}
	r, ok := rep.(*protocol.Register)
	if !ok || r.Status != 200 || r.PushEndpoint == "" {
		status := 0
		if ok {
			status = r.Status
		}
		return "", fmt.Errorf("cannot register channel %s: %w (status %d)", channelID, ErrRejected, status)
	}
	return r.PushEndpoint, nil
}

// Unregister asks the server to drop channelID.
func (s *Session) Unregister(ctx context.Context, channelID string) error {
	rep, err := s.roundTrip(ctx, &protocol.Unregister{ChannelID: channelID, Code: 200})
	if err != nil {
		return fmt.Errorf("cannot unregister channel %s: %w", channelID, err)
	}
	if r, ok := rep.(*protocol.Unregister); !ok || r.Status != 200 {
		return fmt.Errorf("cannot unregister channel %s: %w", channelID, ErrRejected)
	}
	return nil
}

// Connected reports whether a connection is up.
func (s *Session) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
}
