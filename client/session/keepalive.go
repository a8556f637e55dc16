package session

import (
	"errors"
	"net"
	"time"
)

// Adaptive keepalive, like Android's adaptive heartbeat: the session learns
// the longest idle time its network path survives. It starts at the
// server's ping interval (no pings of its own: the server's keep the path
// alive and the device sleeps). When a connection dies while idle (the read
// deadline passes with nothing heard, or a ping of its own is not answered)
// the interval halves, down to MinKeepalive, and the session pings after
// that much idle time itself; after keepaliveGrowAfter answered pings it
// grows by half again, back up to the server's interval, where its own
// pings stop.

// DefaultMinKeepalive is the shortest idle interval the session pings at.
const DefaultMinKeepalive = 30 * time.Second

// keepaliveGrowAfter is how many answered pings lengthen the interval.
const keepaliveGrowAfter = 3

// keepalive is the adaptive interval; guarded by Session.mu.
type keepalive struct {
	interval time.Duration // 0: not learnt yet (the server's interval)
	answered int           // answered pings at this interval
}

// adapt returns the next keepalive after a ping at k was answered (ok) or
// the path died while idle, for a server pinging every max.
func (k keepalive) adapt(ok bool, lo, hi time.Duration) keepalive {
	cur := k.interval
	if cur <= 0 || cur > hi {
		cur = hi
	}
	if !ok {
		return keepalive{interval: max(cur/2, lo)}
	}
	k.interval, k.answered = cur, k.answered+1
	if k.answered >= keepaliveGrowAfter && cur < hi {
		return keepalive{interval: min(cur+cur/2, hi)}
	}
	return k
}

// keepaliveInterval is the idle time after which the session pings itself;
// 0 when the server's pings are enough.
func (s *Session) keepaliveInterval() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := s.ka.interval; k > 0 && k < s.cfg.PingInterval {
		return k
	}
	return 0
}

// keepaliveResult records an answered ping (ok) or a path that died idle.
func (s *Session) keepaliveResult(ok bool) {
	s.mu.Lock()
	before := s.ka.interval
	s.ka = s.ka.adapt(ok, s.cfg.MinKeepalive, s.cfg.PingInterval)
	after := s.ka.interval
	s.mu.Unlock()
	if before != after {
		s.log.Info("keepalive interval adapted", "interval", after, "path_survived", ok)
	}
}

// idleTimeout reports whether err is a read deadline that passed.
func idleTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
