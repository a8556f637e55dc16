package session

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// Herald extensions (protocol.ExtUrgency, protocol.ExtAppAck) and the
// resume check. An extension frame goes only to a server whose hello reply
// named the extension: Mozilla's server closes the connection on an unknown
// messageType.

// DefaultCheckTimeout is how long the pong of a resume check may take.
const DefaultCheckTimeout = time.Second

// maxQueuedAppAcks bounds the app acks kept while not connected.
const maxQueuedAppAcks = 1000

// extState is what the session knows and wants of the extensions; guarded
// by Session.mu.
type extState struct {
	supported map[string]bool   // named by the server's last hello reply
	urgency   string            // the lowest urgency wanted ("" when never said)
	sent      string            // the urgency the server has on this connection
	appAcks   []protocol.Update // to send when connected
	check     bool              // a resume check is asked
}

// SetUrgency says the lowest RFC 8030 urgency the device wants now
// ("very-low" is every message). It is told to the server when it supports
// the extension, at once and in every later hello; other servers never hear
// of it.
func (s *Session) SetUrgency(u string) {
	if _, ok := protocol.UrgencyRank(u); !ok {
		return
	}
	s.mu.Lock()
	changed := s.ext.urgency != u
	s.ext.urgency = u
	s.mu.Unlock()
	if changed {
		s.wake()
	}
}

// AppAck reports messages (channel id, version) that their apps took. It
// is sent only to a server that supports the extension; it is best effort
// (lost with a connection that drops before it is written).
func (s *Session) AppAck(updates []protocol.Update) {
	s.mu.Lock()
	if s.ext.supported != nil && !s.ext.supported[protocol.ExtAppAck] {
		s.mu.Unlock()
		return
	}
	for _, u := range updates {
		if protocol.ValidChannelID(u.ChannelID) && u.Version != "" && len(s.ext.appAcks) < maxQueuedAppAcks {
			s.ext.appAcks = append(s.ext.appAcks, protocol.Update{ChannelID: u.ChannelID, Version: u.Version})
		}
	}
	s.mu.Unlock()
	s.wake()
}

// Check makes sure the connection still works, for example after a resume
// from suspend: a websocket ping that must be answered within the check
// timeout, else the connection is replaced at once. Without a connection it
// redials at once (ending a backoff wait).
func (s *Session) Check() {
	s.mu.Lock()
	if s.conn != nil {
		s.ext.check = true
	} else {
		s.reconnect = true
	}
	s.mu.Unlock()
	s.wake()
}

// SupportsExtension reports whether the server's last hello reply named ext.
func (s *Session) SupportsExtension(ext string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ext.supported[ext]
}

// Extensions returns the extensions the server named in its last hello
// reply (or Config.Extensions before the first), sorted.
func (s *Session) Extensions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.ext.supported))
	for e, ok := range s.ext.supported {
		if ok {
			out = append(out, e)
		}
	}
	slices.Sort(out)
	return out
}

// helloUrgency is the urgency to put in a hello: only for a server known to
// support the extension.
func (s *Session) helloUrgency() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ext.supported[protocol.ExtUrgency] {
		return s.ext.urgency
	}
	return ""
}

// welcomed records what the server's hello reply supports; sent is the
// urgency the hello carried.
func (s *Session) welcomed(h *protocol.Hello, sent string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ext.supported = map[string]bool{}
	for _, e := range h.Extensions {
		s.ext.supported[e] = true
	}
	s.ext.sent = ""
	if s.ext.supported[protocol.ExtUrgency] {
		s.ext.sent = sent
	}
	if !s.ext.supported[protocol.ExtAppAck] {
		s.ext.appAcks = nil
	}
}

// extFrames returns the extension frames to send now and whether a resume
// check is asked (only taken when takeCheck; else it stays asked).
func (s *Session) extFrames(takeCheck bool) (msgs []protocol.Message, check bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.ext.urgency; u != "" && u != s.ext.sent && s.ext.supported[protocol.ExtUrgency] {
		msgs = append(msgs, &protocol.Urgency{Min: u})
		s.ext.sent = u
	}
	if len(s.ext.appAcks) > 0 && s.ext.supported[protocol.ExtAppAck] {
		for len(s.ext.appAcks) > 0 {
			n := min(len(s.ext.appAcks), 100)
			msgs = append(msgs, &protocol.AppAck{Updates: s.ext.appAcks[:n:n]})
			s.ext.appAcks = s.ext.appAcks[n:]
		}
		s.ext.appAcks = nil
	}
	if takeCheck {
		check, s.ext.check = s.ext.check, false
	}
	return msgs, check
}

// startCheck sends the ping of a resume check and shortens the read
// deadline to the check timeout; the pong (or any frame) lengthens it again.
func (s *Session) startCheck(ws *websocket.Conn, checking *atomic.Bool) error {
	checking.Store(true)
	_ = ws.SetReadDeadline(time.Now().Add(s.cfg.CheckTimeout))
	s.log.Info("checking the push server connection")
	return ws.WriteControl(websocket.PingMessage, []byte("check"), time.Now().Add(s.cfg.CheckTimeout))
}
