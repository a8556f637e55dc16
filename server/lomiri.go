package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/heraldpush/herald/protocol/lomiri"
)

// Lomiri push service compatibility: a listener speaking the Lomiri wire
// protocol (package protocol/lomiri) to devices such as lomiri-push-service
// or heraldd's Lomiri backend. The HTTP side (/register, /unregister,
// /broadcast, /delivery-hosts) is in lomiri_api.go.

// Defaults of the Lomiri listener.
const (
	DefaultLomiriPingInterval    = 5 * time.Minute
	DefaultLomiriExchangeTimeout = 30 * time.Second
	// lomiriBatch is how many stored messages one notifications frame
	// carries at most (before splitting by size).
	lomiriBatch = 100
	// lomiriKeepBroadcasts is how many payloads of a broadcast channel are kept.
	lomiriKeepBroadcasts = 16
	// systemBroadcastChannel is the /broadcast channel name of ChanId "0".
	systemBroadcastChannel = "system"
)

// lhub maps each connected Lomiri device (by its "L:" uaid) to its connection.
type lhub struct {
	mu        sync.Mutex
	conns     map[string]*lconn     // guarded by mu
	listeners map[net.Listener]bool // guarded by mu
	closing   bool                  // guarded by mu
	perIP     connCounter           // open connections per client address
	wg        sync.WaitGroup        // accept loops and connections
}

func (h *lhub) get(uaid string) *lconn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns[uaid]
}

func (h *lhub) attach(c *lconn) (old *lconn, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return nil, false
	}
	if h.conns == nil {
		h.conns = map[string]*lconn{}
	}
	old = h.conns[c.uaid]
	h.conns[c.uaid] = c
	return old, true
}

func (h *lhub) detach(c *lconn) {
	h.mu.Lock()
	if h.conns[c.uaid] == c {
		delete(h.conns, c.uaid)
	}
	h.mu.Unlock()
}

func (h *lhub) all() []*lconn {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*lconn, 0, len(h.conns))
	for _, c := range h.conns {
		out = append(out, c)
	}
	return out
}

// closeAll stops accepting, ends every connection and waits for them.
func (h *lhub) closeAll() {
	h.mu.Lock()
	h.closing = true
	for ln := range h.listeners {
		ln.Close()
	}
	conns := make([]*lconn, 0, len(h.conns))
	for _, c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		c.shut()
	}
	h.wg.Wait()
}

// ServeLomiri accepts Lomiri devices on ln (normally a TLS listener) until
// Serve shuts down. Call it before or while Serve runs; it returns at once.
func (s *Server) ServeLomiri(ln net.Listener) error {
	h := &s.lomiri
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return errors.New("server shutting down")
	}
	if h.listeners == nil {
		h.listeners = map[net.Listener]bool{}
	}
	h.listeners[ln] = true
	h.wg.Go(func() { s.acceptLomiri(ln) })
	return nil
}

func (s *Server) acceptLomiri(ln net.Listener) {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.lomiri.mu.Lock()
			closing := s.lomiri.closing
			s.lomiri.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("cannot accept lomiri device", "err", err)
			time.Sleep(delay)
			continue
		}
		delay = 0
		// At most MaxConnsPerIP devices per client address, as for
		// websockets (devices behind one NAT share it): beyond it the
		// connection is closed before the TLS handshake.
		ip := nc.RemoteAddr().String()
		if host, _, err := net.SplitHostPort(ip); err == nil {
			ip = host
		}
		if !s.lomiri.perIP.acquire(ip, s.cfg.MaxConnsPerIP) {
			s.log.Debug("lomiri device refused: too many connections from its address", "remote", ip)
			nc.Close()
			continue
		}
		s.lomiri.mu.Lock()
		if s.lomiri.closing {
			s.lomiri.mu.Unlock()
			s.lomiri.perIP.release(ip)
			nc.Close()
			return
		}
		s.lomiri.wg.Add(1)
		s.lomiri.mu.Unlock()
		c := &lconn{s: s, nc: nc, kick: make(chan struct{}, 1), bkick: make(chan struct{}, 1), done: make(chan struct{})}
		go func() {
			defer s.lomiri.wg.Done()
			defer s.lomiri.perIP.release(ip)
			c.run()
		}()
	}
}

// lconn is one Lomiri device connection. Its run goroutine owns the
// exchange (the protocol is lockstep: one server message, one reply); a
// reader goroutine feeds it frames.
type lconn struct {
	s     *Server
	nc    net.Conn
	dev   string        // device id
	uaid  string        // LomiriUAIDPrefix + dev
	route Route         // the connection's route when the server is a node
	kick  chan struct{} // unicast messages may be pending
	bkick chan struct{} // a broadcast was posted
	done  chan struct{} // closed by shut
	once  sync.Once

	// Owned by run.
	info   map[string]any
	levels map[string]int64
	cursor int64 // stored messages up to this Seq were sent and acked
	in     chan lomiri.Message
	rerr   chan error
	wbuf   []byte
}

func (c *lconn) shut() { c.once.Do(func() { close(c.done) }) }

func (c *lconn) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *lconn) debug(dir string, m lomiri.Message) {
	c.s.log.Debug("lomiri frame", "dir", dir, "device", redact(c.dev), "frame", lomiri.Describe(m))
}

func (c *lconn) write(m lomiri.Message) error {
	b, err := lomiri.Encode(m)
	if err != nil {
		return err
	}
	c.debug(">>", m)
	c.wbuf, err = lomiri.AppendFrame(c.wbuf[:0], b)
	if err != nil {
		return err
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.s.lomiriExchange()))
	_, err = c.nc.Write(c.wbuf)
	return err
}

func (s *Server) lomiriExchange() time.Duration {
	if s.cfg.LomiriExchangeTimeout > 0 {
		return s.cfg.LomiriExchangeTimeout
	}
	return DefaultLomiriExchangeTimeout
}

func (s *Server) lomiriPing() time.Duration {
	if s.cfg.LomiriPingInterval > 0 {
		return s.cfg.LomiriPingInterval
	}
	return DefaultLomiriPingInterval
}

func (c *lconn) run() {
	s := c.s
	defer c.nc.Close()
	defer c.shut() // ends the reader
	exchange := s.lomiriExchange()
	c.nc.SetDeadline(time.Now().Add(exchange))
	if tc, ok := c.nc.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			s.log.Debug("lomiri tls handshake failed", "remote", c.nc.RemoteAddr().String(), "err", err)
			return
		}
	}
	br := bufio.NewReaderSize(c.nc, 4096)
	v, err := br.ReadByte()
	if err != nil || v != lomiri.WireVersion {
		s.log.Debug("lomiri device dropped: bad wire version", "version", v, "err", err)
		return
	}
	frame, err := lomiri.ReadFrame(br, 8<<10)
	if err != nil {
		s.log.Debug("lomiri device dropped before connect", "err", err)
		return
	}
	m, err := lomiri.Decode(frame)
	cm, ok := m.(*lomiri.Connect)
	if err != nil || !ok {
		s.log.Debug("lomiri device dropped: first frame is not a valid connect", "err", err)
		return
	}
	c.dev = cm.DeviceId
	c.debug("<<", cm)
	c.uaid = LomiriUAIDPrefix + cm.DeviceId
	c.info = cm.Info
	c.levels = cm.Levels
	// A registered device (it has a row since /register) is seen now; a
	// connect alone makes no row, so unknown device ids cost no storage.
	if known, err := s.store.HasDevice(context.Background(), c.uaid); err == nil && known {
		if err := s.store.AddDevice(context.Background(), c.uaid, s.now()); err != nil {
			s.log.Warn("cannot mark lomiri device as seen", "err", err)
		}
	}
	old, ok := s.lomiri.attach(c)
	if !ok {
		return
	}
	if old != nil {
		old.shut() // a newer connection of the same device replaces it
	}
	if s.node != nil {
		// As for websockets: the route is claimed before the first read of
		// stored messages, so a message stored after it is forwarded here.
		c.route = Route{Node: s.node.url, Conn: s.node.connID.Add(1)}
		prev, err := s.store.ClaimRoute(context.Background(), c.uaid, c.route)
		if err != nil {
			s.lomiri.detach(c)
			s.log.Error("cannot claim route", "err", err)
			return
		}
		if prev.Node != "" && prev.Node != c.route.Node {
			go s.replaceRemote(c.uaid, prev)
		}
		defer func() {
			s.lomiri.mu.Lock()
			closing := s.lomiri.closing
			s.lomiri.mu.Unlock()
			if closing {
				return // the node's routes are cleared at shutdown
			}
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.store.ClearRoute(cctx, c.uaid, c.route); err != nil {
				s.log.Warn("cannot clear route", "err", err)
			}
		}()
	}
	s.metrics.lomiriConnected.Inc()
	defer func() {
		s.lomiri.detach(c)
		s.metrics.lomiriConnected.Dec()
	}()
	// connack once the device is attached (and routed): what is posted
	// after the device saw it reaches this connection.
	if err := c.write(&lomiri.ConnAck{Params: lomiri.ConnAckParams{PingInterval: s.lomiriPing().String()}}); err != nil {
		return
	}
	s.log.Debug("lomiri device connected", "device", redact(c.dev), "remote", c.nc.RemoteAddr().String())
	c.nc.SetDeadline(time.Time{})

	c.in = make(chan lomiri.Message)
	c.rerr = make(chan error, 1)
	go c.read(br)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.poke(c.bkick)
	c.poke(c.kick)
	ping := time.NewTimer(s.lomiriPing())
	defer ping.Stop()
	for {
		var err error
		select {
		case <-c.done:
			return
		case err = <-c.rerr:
			s.log.Debug("lomiri device disconnected", "device", redact(c.dev), "err", err)
			return
		case m := <-c.in:
			s.log.Debug("lomiri device sent an unexpected frame", "device", redact(c.dev), "type", m.Type())
			return
		case <-c.bkick:
			err = c.sendBroadcasts(ctx)
		case <-c.kick:
			err = c.drain(ctx)
		case <-ping.C:
			if err = c.write(&lomiri.Ping{}); err == nil {
				err = c.await(lomiri.TypePong)
			}
		}
		if err != nil {
			s.log.Debug("lomiri device connection ended", "device", redact(c.dev), "err", err)
			return
		}
		// Ping after ping_interval of idle time.
		if !ping.Stop() {
			select {
			case <-ping.C:
			default:
			}
		}
		ping.Reset(s.lomiriPing())
	}
}

// read feeds frames to run until the connection fails.
func (c *lconn) read(br *bufio.Reader) {
	for {
		frame, err := lomiri.ReadFrame(br, 4<<10)
		if err == nil {
			var m lomiri.Message
			if m, err = lomiri.Decode(frame); err == nil {
				c.debug("<<", m)
				select {
				case c.in <- m:
					continue
				case <-c.done:
					return
				}
			}
		}
		c.rerr <- err
		c.nc.Close()
		return
	}
}

// await waits for the device's reply of type want (pong or ack) within the
// exchange timeout; a nak or anything else ends the connection.
func (c *lconn) await(want string) error {
	t := time.NewTimer(c.s.lomiriExchange())
	defer t.Stop()
	select {
	case m := <-c.in:
		if m.Type() != want {
			return fmt.Errorf("device answered %s, want %s", m.Type(), want)
		}
		return nil
	case err := <-c.rerr:
		c.rerr <- err // run reports it
		return fmt.Errorf("device gone while waiting for %s: %w", want, err)
	case <-t.C:
		return fmt.Errorf("no %s within %s", want, c.s.lomiriExchange())
	case <-c.done:
		return errors.New("connection replaced or server shutting down")
	}
}

// drain sends every stored message of the device, in parts acked one by one;
// each acked part is deleted from the store.
func (c *lconn) drain(ctx context.Context) error {
	s := c.s
	for {
		msgs, err := s.store.Pending(ctx, c.uaid, c.cursor, lomiriBatch, s.now())
		if err != nil {
			s.log.Error("cannot read pending messages", "err", err)
			return err
		}
		if len(msgs) == 0 {
			return nil
		}
		ns := make([]lomiri.Notification, 0, len(msgs))
		for _, m := range msgs {
			ns = append(ns, lomiri.Notification{AppID: m.ChannelID, MsgID: m.Version, Payload: json.RawMessage(m.Data)})
		}
		i := 0
		for _, part := range lomiri.SplitNotifications(ns) {
			if err := c.write(&lomiri.Notifications{Notifications: part}); err != nil {
				return err
			}
			if err := c.await(lomiri.TypeAck); err != nil {
				return err
			}
			refs := make([]Ref, 0, len(part))
			for _, n := range part {
				refs = append(refs, Ref{ChannelID: n.AppID, Version: n.MsgID})
			}
			c.cursor = msgs[i+len(part)-1].Seq
			i += len(part)
			s.metrics.delivered.Add(float64(len(part)))
			if err := s.store.Delete(ctx, c.uaid, refs); err != nil {
				s.log.Warn("cannot delete acknowledged messages", "err", err)
			}
		}
		if len(msgs) < lomiriBatch {
			return nil
		}
	}
}

// sendBroadcasts sends the system channel's payloads the device has not seen.
func (c *lconn) sendBroadcasts(ctx context.Context) error {
	s := c.s
	top, payloads, err := s.store.Broadcasts(ctx, lomiri.SystemChannel, s.now())
	if err != nil {
		s.log.Error("cannot read broadcasts", "err", err)
		return err
	}
	have := c.levels[lomiri.SystemChannel]
	if top == 0 || have == top {
		return nil
	}
	delta := top - have
	if delta < 0 {
		delta = 1 // the device is ahead (another server): the newest one
	}
	if int64(len(payloads)) > delta {
		payloads = payloads[int64(len(payloads))-delta:]
	}
	// System payloads are {"<image channel>/<device model>": [build, alias]}:
	// a device gets those for its own image channel and model.
	key := infoString(c.info, "channel") + "/" + infoString(c.info, "device")
	var raw []json.RawMessage
	for _, p := range payloads {
		var obj map[string]json.RawMessage
		if json.Unmarshal(p.Data, &obj) == nil && obj[key] != nil {
			raw = append(raw, json.RawMessage(p.Data))
		}
	}
	if len(raw) == 0 {
		return nil
	}
	for _, part := range lomiri.SplitBroadcast(&lomiri.Broadcast{ChanId: lomiri.SystemChannel, TopLevel: top, Payloads: raw}) {
		if err := c.write(part); err != nil {
			return err
		}
		if err := c.await(lomiri.TypeAck); err != nil {
			return err
		}
		c.levels[lomiri.SystemChannel] = part.TopLevel
	}
	c.levels[lomiri.SystemChannel] = top
	return nil
}

func infoString(info map[string]any, key string) string {
	v, _ := info[key].(string)
	return v
}

// dispatchLomiri tells the device of a stored message that messages are
// pending: its connection on this node, or the node holding it.
func (s *Server) dispatchLomiri(ctx context.Context, m *Message) {
	if s.node != nil {
		r, err := s.store.Route(ctx, m.UAID)
		if errors.Is(err, ErrNotFound) {
			return // not connected: stored for the next connection
		}
		if err != nil {
			s.log.Warn("cannot look up route", "err", err)
			return
		}
		if r.Node != s.node.url {
			s.forward(ctx, r, m)
			return
		}
	}
	if c := s.lomiri.get(m.UAID); c != nil {
		c.poke(c.kick)
	}
}

// IsLomiriUAID reports whether uaid is a Lomiri device's.
func IsLomiriUAID(uaid string) bool { return strings.HasPrefix(uaid, LomiriUAIDPrefix) }
