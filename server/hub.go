package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

const (
	helloTimeout = 10 * time.Second
	writeTimeout = 10 * time.Second
	pongGrace    = 30 * time.Second
	closeGrace   = 2 * time.Second
	// maxUnacked is how many live messages a device may leave unacknowledged
	// before further ones wait in the store for the next batch.
	maxUnacked = 100
	// closeInternal is the websocket close code for a server error.
	closeInternal = 1011
)

// connCounter counts the websockets of each client address.
type connCounter struct {
	mu sync.Mutex
	n  map[string]int // guarded by mu
}

// acquire counts one more connection of ip unless it has max already.
func (cc *connCounter) acquire(ip string, max int) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.n[ip] >= max {
		return false
	}
	cc.n[ip]++
	return true
}

func (cc *connCounter) release(ip string) {
	cc.mu.Lock()
	if cc.n[ip]--; cc.n[ip] <= 0 {
		delete(cc.n, ip)
	}
	cc.mu.Unlock()
}

// hub maps each connected uaid to its connection.
type hub struct {
	mu      sync.Mutex
	conns   map[string]*conn // guarded by mu
	closing bool             // guarded by mu; set by closeAll
	wg      sync.WaitGroup   // one per running connection
}

// attach makes c the connection of its uaid and returns the one it replaces.
func (h *hub) attach(c *conn) (old *conn, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return nil, false
	}
	old = h.conns[c.uaid]
	h.conns[c.uaid] = c
	return old, true
}

func (h *hub) detach(c *conn) {
	h.mu.Lock()
	if h.conns[c.uaid] == c {
		delete(h.conns, c.uaid)
	}
	h.mu.Unlock()
}

func (h *hub) isClosing() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closing
}

func (h *hub) get(uaid string) *conn {
	h.mu.Lock()
	c := h.conns[uaid]
	h.mu.Unlock()
	return c
}

// start registers a connection goroutine unless the hub is closing.
func (h *hub) start() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.wg.Add(1)
	return true
}

// watchWrites closes, every period, the connections whose write has been
// blocked for longer than writeTimeout (a device that stopped reading): the
// write fails, which ends the connection. It stands for a write deadline
// per frame. It also pokes the readers of devices quiet for hotIdle (loop).
// Runs until ctx ends.
func (h *hub) watchWrites(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := monotime()
		for _, c := range h.stuckWrites(now, writeTimeout) {
			c.ws.NetConn().Close()
		}
		// Readers quiet for hotIdle go on with a small stack (loop).
		h.mu.Lock()
		conns := make([]*conn, 0, len(h.conns))
		for _, c := range h.conns {
			conns = append(conns, c)
		}
		h.mu.Unlock()
		for _, c := range conns {
			c.poke(now - int64(hotIdle))
		}
	}
}

// stuckWrites returns the connections whose write began more than limit
// before now (monotime).
func (h *hub) stuckWrites(now int64, limit time.Duration) []*conn {
	var stuck []*conn
	h.mu.Lock()
	for _, c := range h.conns {
		if w := c.writing.Load(); w != 0 && now-w > int64(limit) {
			stuck = append(stuck, c)
		}
	}
	h.mu.Unlock()
	return stuck
}

// closeAll sends every connection a close frame and waits for them to end.
func (h *hub) closeAll(code int, reason string) {
	h.mu.Lock()
	h.closing = true
	conns := make([]*conn, 0, len(h.conns))
	for _, c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		c.shut(code, reason)
	}
	h.wg.Wait()
}

// conn is one device websocket. Its reader goroutine (run) owns the reading
// side; writes come from it, from posts (live delivery) and from the ping timer.
type conn struct {
	s    *Server
	ws   *websocket.Conn
	uaid string
	// route is the connection's route when the server is a node, set
	// before the connection is attached.
	route Route

	br  *bufio.Reader   // gorilla's read buffer (see hijacker), nil if not ours
	raw syscall.RawConn // the socket, to wait for it on a small stack
	ip  string          // client address, counted in Server.wsConns

	wmu sync.Mutex // serialises writes to ws
	// writing is the monotime at which the write under way began, 0 when
	// none is: writes have no deadline of their own (watchWrites).
	writing atomic.Int64
	// extended is the monotime of the last read deadline set (by the
	// reader, at most once a second while frames come: poke reads it as
	// when the device was last heard).
	extended atomic.Int64
	// compact is set once the device has asked for compact frames
	// (extension "compact"): notifications are written, and acks read, as
	// binary frames (frames.go).
	compact atomic.Bool

	drainMu sync.Mutex // serialises drain (reader goroutine and ack timer)

	mu        sync.Mutex
	unacked   map[Ref]sent // guarded by mu; sent, waiting for an ack
	batchLeft int          // guarded by mu; unacked messages of the current stored batch
	batchGen  int          // guarded by mu; counts stored batches (for the ack timer)
	ackTimer  *time.Timer  // guarded by mu; ends the wait for the current batch
	ackedMax  int64        // guarded by mu; highest Seq acked on this connection
	draining  bool         // guarded by mu; stored messages are being sent in batches
	more      bool         // guarded by mu; a live message was left in the store while draining
	cursor    int64        // guarded by mu; stored messages up to this Seq were fetched
	closed    bool         // guarded by mu; no more writes
	// The reader goroutine stays after handling frames (loop); once the
	// device has been quiet for hotIdle, watchWrites pokes it out of its
	// wait and it goes on as a fresh goroutine with a small stack.
	waiting bool // guarded by mu: the reader waits in waitReadable
	hot     bool // guarded by mu: …on a goroutine that handled frames
	poked   bool // guarded by mu: its read deadline was set to now
	// batch is the stored batch size the device asked for (extension
	// "batch"); 0 is protocol.BatchSize, the next batch after every ack.
	batch int         // guarded by mu
	ping  *time.Timer // guarded by mu
	// minUrgency is the rank of the lowest urgency the device wants
	// (extension "urgency"; 0, very-low, is every message). Guarded by mu.
	minUrgency int
	// ackRTT is the moving average of how long the device takes to ack a
	// live message (earlyWait). Guarded by mu.
	ackRTT time.Duration
	// receipts are the sent messages whose app server asked for receipts.
	// Guarded by mu.
	receipts map[Ref]receiptRef
}

// sent is an unacknowledged message.
type sent struct {
	seq   int64
	batch bool  // part of a batch of stored messages (drain), not live
	at    int64 // monotime when a live message was written, for ackRTT
	// early is set while the message, written to the device before its
	// commit, is being stored (seq is 0 until then).
	early *earlyMsg
}

// earlyMsg is a message written to its device while its store commit runs
// (deliverEarly, then committed).
type earlyMsg struct {
	// delivered is set when the device acks it as delivered before the
	// store writes it: the store then leaves it out (PutOptions.Acked).
	delivered atomic.Bool
	acked     bool // guarded by the conn's mu: any ack arrived before committed
	// state is earlyWaiting until the device acks (earlyAcked) or the
	// put's wait for it ends (earlyTimedOut); ackc is closed then.
	state atomic.Int32
	ackc  chan struct{}
	// wait is how long a plain put waits for the ack (putDelivering).
	wait     time.Duration
	deadline int64 // monotime the wait ends (ackWaits)
}

// heraldExtensions are the Herald extensions the server names in its hello
// reply (protocol.Hello.Extensions).
var heraldExtensions = []string{protocol.ExtUrgency, protocol.ExtAppAck, protocol.ExtBatch, protocol.ExtCompact}

// held reports whether m waits for the device to want lower urgencies.
// c.mu must be held.
func (c *conn) held(m *Message) bool {
	if c.minUrgency == 0 {
		return false
	}
	r, ok := protocol.UrgencyRank(m.Urgency)
	if !ok {
		r = 2 // "" is normal
	}
	return r < c.minUrgency
}

func (s *Server) serveDevice(w http.ResponseWriter, r *http.Request) {
	ip := clientIP(r)
	if ok, retry := s.wsRL.allow(ip, s.now()); !ok {
		s.metrics.refused.WithLabelValues("upgrade_rate").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(retry))
		http.Error(w, "too many websocket upgrades from this address, retry later", http.StatusTooManyRequests)
		return
	}
	if !s.wsConns.acquire(ip, s.cfg.MaxConnsPerIP) {
		s.metrics.refused.WithLabelValues("conns_per_ip").Inc()
		w.Header().Set("Retry-After", "60")
		http.Error(w, "too many websockets from this address", http.StatusTooManyRequests)
		return
	}
	if !s.hub.start() {
		s.wsConns.release(ip)
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	hj := &hijacker{ResponseWriter: w}
	ws, err := s.upgrader.Upgrade(hj, r, nil)
	if err != nil {
		s.wsConns.release(ip)
		s.hub.wg.Done()
		s.log.Debug("websocket upgrade failed", "err", err)
		return
	}
	// Serve the websocket on a fresh goroutine and return, so that the HTTP
	// server frees its per-connection state and the bigger handler stack.
	c := &conn{s: s, ws: ws, br: hj.br, ip: ip}
	if sc, ok := ws.NetConn().(syscall.Conn); ok && c.br != nil {
		c.raw, _ = sc.SyscallConn()
	}
	go func() {
		if c.open() {
			go c.loop()
			return
		}
		s.wsConns.release(ip)
		s.hub.wg.Done()
	}()
}

// read returns the next frame of at most MaxFrameBytes after decompression;
// a larger one closes the connection with 1009.
func (c *conn) read() (int, []byte, error) {
	typ, b, err := protocol.ReadFrame(c.ws.NextReader)
	if errors.Is(err, protocol.ErrFrameTooBig) {
		c.s.metrics.refused.WithLabelValues("frame_too_big").Inc()
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		_ = c.ws.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(protocol.CloseMessageTooBig, "frame too big after decompression"), time.Now().Add(time.Second))
		// Skip the rest (on the wire, not inflated) until the device's close,
		// for up to a second, so that the close frame is not lost to a reset.
		c.ws.SetReadDeadline(time.Now().Add(time.Second))
		for {
			if _, _, err := c.ws.NextReader(); err != nil {
				break
			}
		}
		c.ws.Close()
	}
	return typ, b, err
}

// open takes the device's hello, attaches the connection and sends the
// stored messages' first batch. It reports whether the connection is up; if
// not, it has closed it. The read loop (loop) then runs on a goroutine of its
// own: a fresh goroutine's stack holds only what reading frames needs, not
// what the hello's store calls grew this one to, and an idle device costs
// one small stack.
func (c *conn) open() (up bool) {
	s := c.s
	defer func() {
		if !up {
			c.ws.Close()
		}
	}()
	c.ws.SetReadLimit(protocol.MaxFrameBytes)
	c.ws.SetReadDeadline(time.Now().Add(helloTimeout))
	hello, err := c.readHello()
	if err != nil {
		s.log.Debug("device rejected before hello", "err", err)
		return
	}
	ctx := context.Background()
	uaid := hello.UAID
	known := false
	if protocol.ValidUAID(uaid) {
		if known, err = s.store.HasDevice(ctx, uaid); err != nil {
			s.log.Error("cannot look up device", "err", err)
			c.fail(closeInternal, "internal error")
			return
		}
	}
	if !known {
		uaid = protocol.NewUAID()
	}
	// A known device is marked as seen (idle devices are deleted).
	if err := s.store.AddDevice(ctx, uaid, s.now()); err != nil {
		s.log.Error("cannot add device", "err", err)
		c.fail(closeInternal, "internal error")
		return
	}
	c.uaid = uaid
	if r, ok := protocol.UrgencyRank(hello.Urgency); ok {
		c.minUrgency = r
	}
	if s.node != nil {
		c.route = Route{Node: s.node.url, Conn: s.node.connID.Add(1)}
	}
	// Draining from before attach: a message posted once c can receive live
	// deliveries waits behind the stored ones (and behind the hello reply).
	// A new uaid has no channel yet, so nothing stored and nothing to post.
	c.mu.Lock()
	c.draining = known
	c.mu.Unlock()
	old, ok := s.hub.attach(c)
	if !ok {
		c.fail(protocol.CloseGoingAway, "server shutting down")
		return
	}
	if old != nil {
		// A normal close: the replaced device (or whoever learnt its uaid)
		// redials after its short back-off, never the 5-minute one of 4774.
		old.shut(protocol.CloseNormal, "replaced by a newer connection")
	}
	if s.node != nil {
		// The route is claimed before the first read of stored messages: a
		// message stored after that read is posted after the claim, so its
		// node finds the route and hands it over.
		prev, err := s.store.ClaimRoute(ctx, uaid, c.route)
		if err != nil {
			s.hub.detach(c)
			s.log.Error("cannot claim route", "err", err)
			c.fail(closeInternal, "internal error")
			return
		}
		if prev.Node != "" && prev.Node != c.route.Node {
			go s.replaceRemote(uaid, prev)
		}
	}
	s.metrics.connected.Inc()
	defer func() {
		if !up {
			c.detach()
		}
	}()
	s.log.Debug("device connected", "uaid", redact(uaid), "known", known)

	reply, _ := protocol.Encode(&protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true, Extensions: heraldExtensions})
	c.mu.Lock()
	c.ping = time.AfterFunc(s.cfg.PingInterval, c.sendPing)
	c.mu.Unlock()
	if c.write(reply) != nil {
		return
	}
	c.extendDeadline()
	c.ws.SetPongHandler(func(string) error { c.extendDeadline(); return nil })
	if err := c.drain(ctx); err != nil {
		return
	}
	return true
}

// detach ends an attached connection: its route, its place in the hub, its
// timers.
func (c *conn) detach() {
	s := c.s
	if s.node != nil && !s.hub.isClosing() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.store.ClearRoute(cctx, c.uaid, c.route); err != nil {
			s.log.Warn("cannot clear route", "err", err)
		}
		cancel()
	}
	s.hub.detach(c)
	s.metrics.connected.Dec()
	c.mu.Lock()
	c.closed = true
	if c.ping != nil {
		c.ping.Stop()
	}
	if c.ackTimer != nil {
		c.ackTimer.Stop()
	}
	c.mu.Unlock()
}

// loop reads and handles the device's frames until the connection ends. It
// waits for the device on a small stack (waitReadable). Reading and handling
// grow the goroutine's stack, and a parked goroutine keeps its stack: once
// the device has been quiet for hotIdle, the wait is poked (watchWrites) and
// the loop goes on as a fresh goroutine. Going fresh after every frame
// instead cost a stack growth and a goroutine per ack (~4 % of the CPU under
// the throughput load).
func (c *conn) loop() {
	s := c.s
	ctx := context.Background()
	hot := false
	for {
		poked, err := c.waitReadable(hot)
		if err != nil {
			s.log.Debug("device disconnected", "err", err)
			c.end()
			return
		}
		if poked {
			go c.loop()
			return
		}
		if c.skipPong() {
			c.extendDeadline()
			continue
		}
		if c.handleNext(ctx) {
			c.end()
			return
		}
		if c.raw == nil && (c.br == nil || c.br.Buffered() == 0) {
			// gorilla's own blocking read (TLS): no small-stack wait to
			// poke, so go fresh at once as before.
			go c.loop()
			return
		}
		hot = true
	}
}

// hotIdle is how long a device may be quiet before its reader, whose stack
// grew handling its frames, is poked to go on as a fresh goroutine.
const hotIdle = 5 * time.Second

// poke wakes the reader if it waits on a goroutine that has handled frames
// and has not heard from the device since before idleSince (monotime): its
// read deadline is set to now, and waitReadable restores it. poked says a
// poke is pending.
func (c *conn) poke(idleSince int64) (poked bool) {
	c.mu.Lock()
	if c.waiting && c.hot && !c.poked && !c.closed && c.extended.Load() < idleSince {
		c.poked = true
		c.ws.NetConn().SetReadDeadline(time.Now())
	}
	poked = c.poked
	c.mu.Unlock()
	return poked
}

// end closes the connection and releases what it holds.
func (c *conn) end() {
	c.detach()
	c.ws.Close()
	c.s.wsConns.release(c.ip)
	c.s.hub.wg.Done()
}

// handleNext reads one message and handles it; done says the connection
// has ended.
func (c *conn) handleNext(ctx context.Context) (done bool) {
	s := c.s
	typ, frame, err := c.read()
	if err != nil {
		s.log.Debug("device disconnected", "err", err)
		return true
	}
	c.extendDeadline()
	var m protocol.Message
	if typ == websocket.BinaryMessage && c.compact.Load() {
		if m, err = protocol.DecodeCompact(frame); err != nil {
			s.log.Debug("bad compact frame from device", "err", err)
			c.fail(websocket.CloseProtocolError, "malformed frame")
			return true
		}
	} else if typ != websocket.TextMessage {
		c.fail(websocket.CloseUnsupportedData, "text frames only")
		return true
	} else if ack, ok := parseAck(frame); ok {
		m = ack
	} else if m, err = protocol.Decode(frame); err != nil {
		s.log.Debug("bad frame from device", "err", err)
		c.fail(websocket.CloseProtocolError, "malformed frame")
		return true
	}
	return c.handle(ctx, m) != nil
}

func (c *conn) readHello() (*protocol.Hello, error) {
	typ, frame, err := c.read()
	if err != nil {
		// Over MaxFrameBytes, gorilla or read has already sent close 1009.
		return nil, err
	}
	if typ != websocket.TextMessage {
		c.fail(websocket.CloseUnsupportedData, "text frames only")
		return nil, errors.New("binary first frame")
	}
	m, err := protocol.Decode(frame)
	if err != nil {
		c.fail(websocket.CloseProtocolError, "malformed frame")
		return nil, err
	}
	h, ok := m.(*protocol.Hello)
	if !ok {
		c.fail(websocket.CloseProtocolError, "first frame must be hello")
		return nil, errors.New("first frame is " + m.Type())
	}
	return h, nil
}

// extendDeadline moves the read deadline to PingInterval + pongGrace from
// now, at most once a second: a deadline set is a runtime timer reset, and a
// device that acks every message would reset it for every message. Called
// by the reader only.
func (c *conn) extendDeadline() {
	now := monotime()
	if last := c.extended.Load(); last != 0 && now-last < int64(time.Second) {
		return
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return // shut has set the final deadline
	}
	c.extended.Store(now)
	c.ws.SetReadDeadline(time.Now().Add(c.s.cfg.PingInterval + pongGrace))
}

// handle processes one frame after hello. An error ends the connection.
func (c *conn) handle(ctx context.Context, m protocol.Message) error {
	s := c.s
	switch m := m.(type) {
	case *protocol.Ping:
		return c.write([]byte("{}"))
	case *protocol.Register:
		return c.register(ctx, m)
	case *protocol.Unregister:
		status := 200
		if err := s.store.Unregister(ctx, c.uaid, m.ChannelID); err != nil {
			s.log.Error("cannot unregister channel", "err", err)
			status = 500
		}
		s.tokens.drop(c.uaid, m.ChannelID)
		reply, _ := protocol.Encode(&protocol.Unregister{ChannelID: m.ChannelID, Status: status})
		return c.write(reply)
	case *protocol.Ack:
		refs := make([]Ref, 0, len(m.Updates))
		delivered := 0
		var receipts []ackedReceipt
		var now int64
		c.mu.Lock()
		for _, u := range m.Updates {
			r := Ref{ChannelID: u.ChannelID, Version: u.Version}
			st, ok := c.unacked[r]
			if ok && st.at != 0 {
				if now == 0 {
					now = monotime()
				}
				c.noteAckRTT(time.Duration(now - st.at))
			}
			if ok {
				c.forget(r, st)
				c.ackedMax = max(c.ackedMax, st.seq)
				if u.Code == 0 || u.Code == protocol.AckDelivered {
					delivered++
				}
			}
			if rr, ok := c.receipts[r]; ok {
				delete(c.receipts, r)
				receipts = append(receipts, ackedReceipt{ref: r, receipt: rr, code: u.Code})
			}
			if ok && st.early != nil {
				// Its commit is still running: committed deletes it after
				// the commit, or the store leaves it out.
				st.early.acked = true
				if u.Code == 0 || u.Code == protocol.AckDelivered {
					st.early.delivered.Store(true)
				}
				st.early.ack() // after delivered: the put reads it on waking
				continue
			}
			refs = append(refs, r)
		}
		more := c.draining && c.batchLeft <= c.refillAt()
		c.mu.Unlock()
		s.metrics.delivered.Add(float64(delivered))
		if len(refs) > 0 {
			if err := s.store.Delete(ctx, c.uaid, refs); err != nil {
				s.log.Warn("cannot delete acknowledged messages", "err", err)
			}
		}
		if receipts != nil {
			s.delivered(ctx, c.uaid, receipts)
		}
		if more {
			return c.drain(ctx)
		}
		return nil
	case *protocol.Urgency:
		r, ok := protocol.UrgencyRank(m.Min)
		status := 200
		more := false
		if !ok {
			status = 400
		} else {
			c.mu.Lock()
			if r < c.minUrgency {
				// Messages held so far are wanted now: read the store again.
				c.cursor = 0
				c.draining = true
			}
			c.minUrgency = r
			more = c.draining && c.batchLeft <= c.refillAt()
			c.mu.Unlock()
		}
		reply, _ := protocol.Encode(&protocol.Urgency{Status: status})
		if err := c.write(reply); err != nil {
			return err
		}
		if more {
			return c.drain(ctx)
		}
		return nil
	case *protocol.AppAck:
		// An app that took a message the device has not acked yet (the
		// ack may wait to share a frame) had it delivered first.
		var early []ackedReceipt
		c.mu.Lock()
		for _, u := range m.Updates {
			r := Ref{ChannelID: u.ChannelID, Version: u.Version}
			if rr, ok := c.receipts[r]; ok {
				delete(c.receipts, r)
				early = append(early, ackedReceipt{ref: r, receipt: rr})
			}
		}
		c.mu.Unlock()
		for _, a := range early {
			s.putReceipt(ctx, a.receipt.sub, a.receipt.msgID, ReceiptDelivered, protocol.AckDelivered)
		}
		s.appAcked(ctx, c.uaid, m)
		return nil
	case *protocol.Batch:
		// Extension "batch": larger stored batches, the next one read when
		// half of the current one is acked. Size 0 returns to the default.
		c.mu.Lock()
		c.batch = m.Size
		size := c.batchSize()
		more := c.draining && c.batchLeft <= c.refillAt()
		c.mu.Unlock()
		reply, _ := protocol.Encode(&protocol.Batch{Size: size, Status: 200})
		if err := c.write(reply); err != nil {
			return err
		}
		if more {
			return c.drain(ctx)
		}
		return nil
	case *protocol.Compact:
		// Extension "compact": binary notifications and acks from now on.
		c.compact.Store(true)
		reply, _ := protocol.Encode(&protocol.Compact{Status: 200})
		return c.write(reply)
	case *protocol.Nack:
		// The message stays stored and is sent again on the next connection.
		c.mu.Lock()
		for r, st := range c.unacked {
			if r.Version == m.Version {
				c.forget(r, st)
			}
		}
		more := c.draining && c.batchLeft <= c.refillAt()
		c.mu.Unlock()
		if more {
			return c.drain(ctx)
		}
		return nil
	default:
		// hello again, notification from a device, broadcast_subscribe, …: ignored.
		s.log.Debug("ignored frame from device", "type", m.Type())
		return nil
	}
}

func (c *conn) register(ctx context.Context, m *protocol.Register) error {
	s := c.s
	reply := &protocol.Register{ChannelID: m.ChannelID}
	var key []byte
	if m.Key != "" {
		k, err := webpush.ParseP256PublicKey(m.Key)
		if err != nil {
			s.log.Debug("register with a bad key", "err", err)
			reply.Status = 400
			b, _ := protocol.Encode(reply)
			return c.write(b)
		}
		key = k
	}
	ch, err := s.store.Register(ctx, Channel{Token: newToken(), UAID: c.uaid, ChannelID: m.ChannelID, Key: key}, s.cfg.MaxChannels)
	switch {
	case errors.Is(err, ErrConflict):
		reply.Status = 409
	case errors.Is(err, ErrTooManyChannels):
		// Like /notify's 413 too-many-pending: the device must unregister first.
		s.metrics.refused.WithLabelValues("channels_per_device").Inc()
		s.log.Debug("register over the channel limit", "uaid", redact(c.uaid), "max", s.cfg.MaxChannels)
		reply.Status = StatusTooManyChannels
	case err != nil:
		s.log.Error("cannot register channel", "err", err)
		reply.Status = 500
	default:
		s.tokens.put(ch)
		reply.Status = 200
		reply.PushEndpoint = s.base + "/wpush/v1/" + ch.Token
	}
	b, _ := protocol.Encode(reply)
	return c.write(b)
}

// StatusTooManyChannels is the register status for a device that has
// Config.MaxChannels channels already.
const StatusTooManyChannels = 413

// drain sends the next batch of stored messages, if no batch is unacked.
// A stored message sent MaxAttempts times is dropped instead (counted in
// herald_messages_undeliverable_total), and a batch not fully acked within
// AckTimeout no longer holds the next: one message the device never acks
// cannot block the device.
func (c *conn) drain(ctx context.Context) error {
	c.drainMu.Lock()
	defer c.drainMu.Unlock()
	for {
		c.mu.Lock()
		if c.closed || !c.draining || c.batchLeft > c.refillAt() {
			c.mu.Unlock()
			return nil
		}
		c.more = false
		size := c.batchSize()
		after := c.cursor
		// Every message acked on this connection is at or below the cursor:
		// the next batch cannot contain one whose deletion is still queued,
		// so it need not wait for that commit.
		noWait := after > 0 && c.ackedMax <= after
		c.mu.Unlock()

		var msgs []*Message
		var err error
		if noWait {
			msgs, err = c.s.store.PendingBeyondAcks(ctx, c.uaid, after, size, c.s.now())
		} else {
			msgs, err = c.s.store.Pending(ctx, c.uaid, after, size, c.s.now())
		}
		if err != nil {
			c.s.log.Error("cannot read pending messages", "err", err)
			c.fail(closeInternal, "internal error")
			return err
		}
		var frames [][]byte
		var tried, dead []Ref
		c.mu.Lock()
		for _, m := range msgs {
			c.cursor = max(c.cursor, m.Seq)
			r := Ref{ChannelID: m.ChannelID, Version: m.Version}
			if _, ok := c.unacked[r]; ok {
				continue
			}
			if m.Attempts >= c.s.cfg.MaxAttempts {
				dead = append(dead, r)
				continue
			}
			if c.held(m) {
				c.s.metrics.held.Inc()
				continue
			}
			c.markSent(r, m.Seq, true)
			c.noteReceipt(r, m)
			tried = append(tried, r)
			frames = append(frames, c.encodeNotification(m))
		}
		if len(msgs) < size && !c.more {
			c.draining = false
		}
		again := c.draining && c.batchLeft <= c.refillAt()
		if c.batchLeft > 0 {
			c.batchGen++
			gen := c.batchGen
			if c.ackTimer != nil {
				c.ackTimer.Stop()
			}
			c.ackTimer = time.AfterFunc(c.s.cfg.AckTimeout, func() { c.ackTimeout(ctx, gen) })
		}
		// The frames go out before any live message that deliver lets
		// through from now on (draining may have just ended): take the
		// write lock before c.mu is released (nobody takes c.mu under wmu).
		c.wmu.Lock()
		c.mu.Unlock()
		werr := c.writeLocked(frames...)
		c.wmu.Unlock()
		if werr != nil {
			return werr
		}
		if len(dead) > 0 {
			c.s.metrics.undeliverable.Add(float64(len(dead)))
			c.s.log.Warn("dropped messages never acknowledged", "uaid", redact(c.uaid), "count", len(dead), "attempts", c.s.cfg.MaxAttempts)
			if err := c.s.store.Delete(ctx, c.uaid, dead); err != nil {
				c.s.log.Warn("cannot delete undeliverable messages", "err", err)
			}
		}
		if len(tried) > 0 {
			if err := c.s.store.Attempted(ctx, c.uaid, tried); err != nil {
				c.s.log.Warn("cannot count delivery attempts", "err", err)
			}
		}
		if !again {
			return nil
		}
	}
}

// batchSize is how many stored messages one read of the drain takes. c.mu
// must be held.
func (c *conn) batchSize() int {
	if c.batch > 0 {
		return c.batch
	}
	return protocol.BatchSize
}

// refillAt is how many messages of the stored batches may still be unacked
// when the next batch is read: none by default (autopush's rule), half a
// batch with the "batch" extension, so that the next batch is on its way
// while the device stores the current one. c.mu must be held.
func (c *conn) refillAt() int {
	if c.batch > protocol.BatchSize {
		return c.batch / 2
	}
	return 0
}

// ackTimeout gives up waiting for the acks of stored batch gen: its
// messages stay stored (for the next connection, up to MaxAttempts) and the
// next batch is sent.
func (c *conn) ackTimeout(ctx context.Context, gen int) {
	c.mu.Lock()
	if c.closed || gen != c.batchGen || c.batchLeft == 0 {
		c.mu.Unlock()
		return
	}
	n := 0
	for r, st := range c.unacked {
		if st.batch {
			c.forget(r, st)
			n++
		}
	}
	c.mu.Unlock()
	c.s.log.Debug("stored batch not acknowledged in time", "uaid", redact(c.uaid), "unacked", n)
	_ = c.drain(ctx)
}

// markSent records r (stored as seq) as waiting for an ack. c.mu must be held.
func (c *conn) markSent(r Ref, seq int64, batch bool) {
	if c.unacked == nil {
		c.unacked = make(map[Ref]sent, 4)
	}
	st := sent{seq: seq, batch: batch}
	if batch {
		c.batchLeft++
	} else {
		st.at = monotime()
	}
	c.unacked[r] = st
}

// noteAckRTT adds the time a live message took to be acked to the
// connection's average. c.mu must be held.
func (c *conn) noteAckRTT(d time.Duration) {
	if c.ackRTT == 0 {
		c.ackRTT = max(d, 1)
		return
	}
	c.ackRTT += (d - c.ackRTT) / 8
}

// earlyWait is how long a plain put of a message written to the device
// before its commit waits for the device's ack before it goes to the store
// (putDelivering): a device that acks by then holds the message durably, and
// the message costs the store nothing (no insert, no deletion, no commit to
// wait for). The wait is about twice the device's usual ack time, at most
// Config.EarlyAckWait, and none for a device that usually acks later than
// that (heraldd lets acks wait to share a frame); before the device's first
// ack the bound is tried. c.mu must be held.
func (c *conn) earlyWait() time.Duration {
	bound := c.s.cfg.EarlyAckWait
	switch {
	case bound <= 0 || c.ackRTT > bound:
		return 0
	case c.ackRTT == 0:
		return bound
	}
	return min(2*c.ackRTT, bound)
}

// forget removes an acked, nacked or given-up message. c.mu must be held.
func (c *conn) forget(r Ref, st sent) {
	delete(c.unacked, r)
	if st.batch {
		c.batchLeft--
	}
}

// noteReceipt remembers a sent message whose app server asked for
// receipts. c.mu must be held.
func (c *conn) noteReceipt(r Ref, m *Message) {
	if m.Receipt == "" {
		return
	}
	if c.receipts == nil {
		c.receipts = map[Ref]receiptRef{}
	}
	c.receipts[r] = receiptRef{sub: m.Receipt, msgID: m.ID}
}

// deliver sends a just-accepted message to the device at once, or leaves a
// stored one for the next batch when the device is busy.
func (c *conn) deliver(m *Message) {
	r := Ref{ChannelID: m.ChannelID, Version: m.Version}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if _, ok := c.unacked[r]; ok {
		c.mu.Unlock()
		return
	}
	if c.held(m) {
		// Stored: sent when the device lowers its minimum urgency (a TTL 0
		// message is not stored and so never reaches it).
		c.mu.Unlock()
		c.s.metrics.held.Inc()
		return
	}
	if m.Seq != 0 && c.draining && len(c.unacked) < maxUnacked && !c.inFlight(m.ChannelID) {
		// A drain is on, but nothing of m's channel is in flight: m goes
		// out at once unless the store still holds an older message of its
		// channel (order per app), which deliverPastDrain looks up.
		c.mu.Unlock()
		go c.deliverPastDrain(m)
		return
	}
	c.sendOrHold(m)
}

// sendOrHold sends m live, or leaves it in the store for the drain when
// m's channel has stored messages in flight or the device has too many
// unacknowledged. c.mu must be held; sendOrHold releases it.
func (c *conn) sendOrHold(m *Message) {
	r := Ref{ChannelID: m.ChannelID, Version: m.Version}
	// While stored messages of m's channel are sent in batches, a live one
	// waits in the store behind them (order per app); a batch not acked
	// within AckTimeout no longer holds the drain, so neither does it hold
	// them. Another channel's batch does not hold it (deliverPastDrain).
	if m.Seq != 0 && (c.draining || len(c.unacked) >= maxUnacked) {
		c.draining = true
		c.more = true
		// With several nodes, Seqs are handed out before commit, so a
		// message can commit after a batch with higher Seqs was read: the
		// next batch starts below it (sent ones are skipped, acked ones
		// are gone).
		c.cursor = min(c.cursor, m.Seq-1)
		c.mu.Unlock()
		return
	}
	c.markSent(r, m.Seq, false)
	c.noteReceipt(r, m)
	c.mu.Unlock()
	c.writeNotification(m)
}

// inFlight reports whether a stored message of channel ch was sent in a
// batch and is not acked yet. c.mu must be held.
func (c *conn) inFlight(ch string) bool {
	if c.batchLeft == 0 {
		return false
	}
	for r, st := range c.unacked {
		if st.batch && r.ChannelID == ch {
			return true
		}
	}
	return false
}

// maxScanPast bounds how many stored messages deliverPastDrain reads to
// learn that m's channel has none older than m left to send; past it, m
// waits for the drain.
const maxScanPast = 4096

// deliverPastDrain sends a live message m during a drain when its channel
// has nothing stored before it that is not sent yet: one app's stored
// batch the device does not ack (for up to AckTimeout) never holds
// another app's live messages. Otherwise m stays in the store behind its
// channel's older messages, for the drain.
func (c *conn) deliverPastDrain(m *Message) {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	c.mu.Lock()
	after := c.cursor
	c.mu.Unlock()
	clear := false
	var older []Ref
	for scanned := 0; scanned < maxScanPast && !clear; {
		msgs, err := c.s.store.Pending(ctx, c.uaid, after, protocol.BatchSize*4, c.s.now())
		if err != nil {
			c.s.log.Warn("cannot read pending messages", "err", err)
			break
		}
		for _, p := range msgs {
			if p.Seq >= m.Seq {
				clear = true
				break
			}
			if p.ChannelID == m.ChannelID {
				older = append(older, Ref{ChannelID: p.ChannelID, Version: p.Version})
			}
			after = p.Seq
		}
		if len(msgs) < protocol.BatchSize*4 {
			clear = true
		}
		scanned += len(msgs)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	r := Ref{ChannelID: m.ChannelID, Version: m.Version}
	if _, ok := c.unacked[r]; ok {
		c.mu.Unlock()
		return // the drain has sent it meanwhile
	}
	if clear {
		for _, o := range older {
			if _, ok := c.unacked[o]; !ok {
				clear = false // an older one of its channel is still to send
				break
			}
		}
	}
	if clear && c.draining && len(c.unacked) < maxUnacked && !c.inFlight(m.ChannelID) {
		c.markSent(r, m.Seq, false)
		c.noteReceipt(r, m)
		// Written before any later message of its channel the drain may
		// read from now on (as in drain: wmu before mu is released).
		f := c.encodeNotification(m)
		c.wmu.Lock()
		c.mu.Unlock()
		_ = c.writeLocked(f)
		c.wmu.Unlock()
		return
	}
	c.sendOrHold(m)
}

// monoBase is the origin of monotime.
var monoBase = time.Now()

// monotime is a monotonic clock reading in nanoseconds.
func monotime() int64 { return int64(time.Since(monoBase)) }

// putDelivering stores m (Store.Put with o) and, when its device is
// connected to this node and can take it now, writes it to the device first
// (docs/architecture.md, "Deliver while storing"). early says m went to the
// device: the caller must not dispatch it again.
func (s *Server) putDelivering(ctx context.Context, m *Message, o PutOptions, now time.Time) (stored bool, dropped int, early bool, err error) {
	var c *conn
	var e *earlyMsg
	// Not for a put that may refuse or drop the message, nor for a device
	// held by another node.
	if !o.ClearPending && !o.KeepNewerVersion && o.RejectAt == 0 {
		if c = s.hub.get(m.UAID); c != nil {
			if e = c.deliverEarly(m); e != nil {
				o.Acked = &e.delivered
			}
		}
	}
	if e != nil && (!o.Replace || m.Topic == "") && e.await(e.wait, &s.ackWaits) && e.delivered.Load() {
		// Acked as delivered before it was stored: a plain put has nothing
		// left to do (a replacing one still deletes the older messages).
		c.committed(context.WithoutCancel(ctx), m, e, false, nil)
		return false, 0, true, nil
	}
	start := time.Now()
	stored, dropped, err = s.store.Put(ctx, m, o, now)
	s.metrics.putSeconds.Observe(time.Since(start).Seconds())
	if e != nil {
		c.committed(context.WithoutCancel(ctx), m, e, stored, err)
	}
	return stored, dropped, e != nil, err
}

// deliverEarly writes a message that is about to be stored to the device
// at once, unless the device is busy (stored messages are being sent, or too
// many are unacknowledged) or m must wait for its commit. The caller stores
// m with PutOptions.Acked set to the returned message's delivered flag and
// then calls committed. nil means nothing was written: deliver after the
// commit as usual.
func (c *conn) deliverEarly(m *Message) *earlyMsg {
	r := Ref{ChannelID: m.ChannelID, Version: m.Version}
	c.mu.Lock()
	if c.closed || c.draining || len(c.unacked) >= maxUnacked || m.Receipt != "" || c.held(m) {
		// Receipts and held urgencies take the path after the commit.
		c.mu.Unlock()
		return nil
	}
	if _, ok := c.unacked[r]; ok {
		c.mu.Unlock()
		return nil
	}
	e := &earlyMsg{ackc: make(chan struct{}), wait: c.earlyWait()}
	c.markSent(r, 0, false)
	c.unacked[r] = sent{early: e, at: monotime()}
	c.mu.Unlock()
	c.writeNotification(m)
	return e
}

// committed ends the early delivery e of m after its store commit: err is
// the commit's error, stored false when the store left m out (acked first).
func (c *conn) committed(ctx context.Context, m *Message, e *earlyMsg, stored bool, err error) {
	r := Ref{ChannelID: m.ChannelID, Version: m.Version}
	c.mu.Lock()
	if e.acked {
		if err == nil && stored {
			// Acked after the store wrote it: delete it now that it is
			// committed (a delete queued earlier could run before the
			// insert). Queued under mu, before ackedMax says so, so a drain
			// that sees the new ackedMax also waits for this deletion.
			if derr := c.s.store.Delete(ctx, c.uaid, []Ref{r}); derr != nil {
				c.s.log.Warn("cannot delete acknowledged message", "err", derr)
			}
			c.ackedMax = max(c.ackedMax, m.Seq)
		}
		c.mu.Unlock()
		return
	}
	st, ok := c.unacked[r]
	if ok && st.early == e {
		if err != nil || !stored {
			// Not stored (the app server gets an error and may retry): the
			// device may have it already, the same at-least-once window as
			// a retry after a lost 201.
			c.forget(r, st)
		} else {
			st.seq, st.early = m.Seq, nil
			c.unacked[r] = st
		}
	}
	gone := c.closed
	c.mu.Unlock()
	if gone && err == nil && stored {
		// The connection ended before the device acked: hand the stored
		// message to the device's next connection, if it has one already.
		c.s.dispatch(ctx, m)
		return
	}
	if c.s.node != nil && err == nil && stored {
		// With several nodes this connection may be a half-open one whose
		// device has just connected to another node (whose first read may
		// have missed this message): the route says where the device is.
		if rt, rerr := c.s.store.Route(ctx, c.uaid); rerr == nil && rt != c.route {
			c.s.dispatch(ctx, m)
		}
	}
}

// writeNotification writes the notification frame of m.
func (c *conn) writeNotification(m *Message) {
	bp, _ := c.s.frames.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	*bp = c.appendNotification((*bp)[:0], m)
	_ = c.write(*bp)
	if cap(*bp) <= 8<<10 {
		c.s.frames.Put(bp)
	}
}

// write sends frames (compact ones as binary frames, the others as text);
// a failed write closes the connection.
func (c *conn) write(frames ...[]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(frames...)
}

// writeLocked is write with c.wmu held.
func (c *conn) writeLocked(frames ...[]byte) error {
	if len(frames) == 0 {
		return nil
	}
	// No write deadline: setting one resets a runtime timer for every
	// frame (gorilla passes it to the socket per frame). A write blocked
	// longer than writeTimeout is ended by hub.watchWrites instead.
	c.writing.Store(monotime())
	defer c.writing.Store(0)
	for _, f := range frames {
		typ := websocket.TextMessage
		if protocol.IsCompact(f) {
			typ = websocket.BinaryMessage
		}
		if c.compact.Load() {
			// permessage-deflate is per frame: it lengthens small binary ones.
			c.ws.EnableWriteCompression(typ == websocket.TextMessage || protocol.CompactCompressible(f))
		}
		if err := c.ws.WriteMessage(typ, f); err != nil {
			c.ws.Close()
			return err
		}
	}
	return nil
}

func (c *conn) sendPing() {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return
	}
	if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
		c.ws.Close()
		return
	}
	c.mu.Lock()
	if !c.closed {
		c.ping.Reset(c.s.cfg.PingInterval)
	}
	c.mu.Unlock()
}

// fail closes the connection with a close frame (from the reader goroutine).
func (c *conn) fail(code int, reason string) {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	c.ws.Close()
}

// shut sends a close frame from another goroutine and lets the reader end
// when the device answers (or after closeGrace).
func (c *conn) shut(code int, reason string) {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	if err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second)); err != nil {
		c.ws.Close()
		return
	}
	c.ws.SetReadDeadline(time.Now().Add(closeGrace))
}

// newToken returns an endpoint token: 128 random bits, base64url.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return protocol.EncodeBase64URL(b[:])
}

// newMessageID returns a message id: 128 random bits, 32 hex digits.
// newMessageID returns 128 random bits as 22 base64url characters: a
// message id is on the wire twice per message (notification and ack).
func newMessageID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return protocol.EncodeBase64URL(b[:])
}

// redact shortens a secret for debug logs.
func redact(s string) string {
	if len(s) <= 4 {
		return "…"
	}
	return s[:4] + "…"
}
