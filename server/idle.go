package server

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"os"
)

// An idle device connection costs one goroutine parked on a small stack
// (docs/architecture.md, "Idle connections"). gorilla's blocking read path
// is about 1.9 KB of stack deep, which makes every parked reader a 4 KiB
// stack; the connection instead waits for its socket to become readable
// through syscall.RawConn (under 1 KB deep, a 2 KiB stack) and only then
// calls into gorilla. That needs to know whether gorilla has a frame
// buffered already, so the connection supplies gorilla's read buffer itself.

// readBufferSize is the size of a device connection's read buffer. gorilla
// adopts a hijacked reader only when it is larger than 256 bytes.
const readBufferSize = 384

// hijacker hands gorilla's Upgrade a read buffer of the connection's own.
type hijacker struct {
	http.ResponseWriter
	br *bufio.Reader // set by Hijack
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil || brw.Reader.Buffered() > 0 {
		// gorilla refuses data sent before the handshake completes.
		return nc, brw, err
	}
	h.br = bufio.NewReaderSize(nc, readBufferSize)
	return nc, bufio.NewReadWriter(h.br, brw.Writer), nil
}

// waitReadable parks until the device has sent something: a frame already
// buffered, bytes read into the buffer, its end or an error. err is the
// socket's (a read deadline, the connection closed). It reads into gorilla's
// buffer itself (bufio's Peek), which is shallow on the stack and costs
// one read syscall fewer per frame than asking the socket with MSG_PEEK
// first: gorilla then finds the frame buffered. hot says this goroutine has
// handled frames (its stack grew); poked says the wait was ended by poke,
// with nothing read: the caller goes on as a fresh goroutine.
func (c *conn) waitReadable(hot bool) (poked bool, err error) {
	if c.br == nil || c.raw == nil || c.br.Buffered() > 0 {
		return false, nil
	}
	c.mu.Lock()
	c.waiting, c.hot = true, hot
	c.mu.Unlock()
	_, err = c.br.Peek(1)
	c.mu.Lock()
	c.waiting = false
	poked, c.poked = c.poked, false
	c.mu.Unlock()
	if !poked {
		return false, err
	}
	// The deadline poke set: back to the device's own.
	c.extended.Store(0)
	c.extendDeadline()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true, nil
	}
	return false, err
}

// skipPong consumes a pong frame that is complete at the head of the read
// buffer, between messages, so that answering the server's keepalive does not
// take the deep read path (after which the goroutine would wait on its
// larger stack). RFC 6455 §5.5.3: a pong needs no answer, and its payload
// is not looked at. Anything else is left to gorilla.
func (c *conn) skipPong() bool {
	if c.br == nil || c.br.Buffered() < 6 {
		return false
	}
	h, _ := c.br.Peek(2)
	// FIN, no RSV bits, opcode 0xA; masked (a client frame), short length.
	if h[0] != 0x8A || h[1]&0x80 == 0 || h[1]&0x7F > 125 {
		return false
	}
	n := 2 + 4 + int(h[1]&0x7F)
	if c.br.Buffered() < n {
		return false
	}
	_, _ = c.br.Discard(n)
	return true
}
