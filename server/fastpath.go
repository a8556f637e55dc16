package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// The Web Push fast path (docs/architecture.md, "Performance (issue 17)").
//
// Every plain TCP connection starts here. Requests of one canonical shape,
// POST /wpush/v1/<token> HTTP/1.1 with a Host, a Content-Length of at most
// protocol.MaxBodyBytes and nothing that asks for special framing, are read
// whole into one buffer, handed to the same handleWebPush that net/http calls
// and answered with the bytes net/http would have written; the connection is
// kept alive for the next one. At the first request that is anything else
// (another path or method, a device's websocket upgrade, chunked bodies,
// Expect, HTTP/1.0, Connection: close, oversized or malformed headers, a
// request cut short…) the connection is handed to net/http, which reads that
// request from its first byte: the bytes already read are replayed. So
// everything but the canonical push keeps net/http's behaviour exactly, and
// the canonical push skips net/http's per-request machinery (a goroutine
// per request read ahead, several deadline changes, the request's context,
// maps built anew).

const (
	// fastBufSize bounds a request the fast path takes: headers of at most
	// fastMaxHeader bytes and a body of at most protocol.MaxBodyBytes.
	fastBufSize   = 8192
	fastMaxHeader = fastBufSize - protocol.MaxBodyBytes
	// fastMaxHeaders is the most header lines of a canonical request.
	fastMaxHeaders = 64
	fastPrefix     = "POST /wpush/v1/"
	fastProto      = " HTTP/1.1\r\n"
)

// Timeouts of device and app-server connections (net/http's and the fast
// path's).
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

// parseResult is what parseFast found at the head of a buffer.
type parseResult int

const (
	parseMore    parseResult = iota // a canonical request so far, incomplete
	parseHandoff                    // not canonical: net/http answers it
	parseOK                         // a complete canonical request
)

// fastRequest is a canonical request parsed by parseFast: slices of the
// buffer it was parsed from.
type fastRequest struct {
	token   []byte // the path after /wpush/v1/
	host    []byte
	headers [fastMaxHeaders]struct{ name, value []byte }
	nh      int
	body    []byte
	size    int // bytes of the whole request
}

// parseFast parses the request at the head of b. It returns parseOK only
// for a request that net/http would read as the same request with the same
// header map; any doubt is parseHandoff. parseMore means b is the start of
// such a request and more bytes are needed.
func parseFast(b []byte, r *fastRequest) parseResult {
	if len(b) < len(fastPrefix) {
		if string(b) == fastPrefix[:len(b)] {
			return parseMore
		}
		return parseHandoff
	}
	if string(b[:len(fastPrefix)]) != fastPrefix {
		return parseHandoff
	}
	i := len(fastPrefix)
	for i < len(b) && isBase64URLByte(b[i]) {
		i++
	}
	r.token = b[len(fastPrefix):i]
	if i == len(b) {
		if i > fastMaxHeader {
			return parseHandoff
		}
		return parseMore
	}
	if len(r.token) == 0 {
		return parseHandoff
	}
	if n := min(len(b)-i, len(fastProto)); string(b[i:i+n]) != fastProto[:n] {
		return parseHandoff
	} else if n < len(fastProto) {
		return parseMore
	}
	i += len(fastProto)
	r.nh = 0
	r.host = nil
	contentLength := -1
	for {
		end := bytes.IndexByte(b[i:], '\n')
		if end < 0 {
			if len(b) > fastMaxHeader {
				return parseHandoff
			}
			return parseMore
		}
		end += i
		if end > fastMaxHeader {
			return parseHandoff
		}
		if end == i || b[end-1] != '\r' {
			return parseHandoff // a bare LF: net/http takes it, we leave it to it
		}
		line := b[i : end-1]
		i = end + 1
		if len(line) == 0 {
			break // end of the header
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return parseHandoff
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range name {
			if !isTokenChar(c) {
				return parseHandoff
			}
		}
		for _, c := range value {
			if !validHeaderByte(c) {
				return parseHandoff
			}
		}
		switch {
		case asciiEqualFold(name, "Host"):
			if r.host != nil || !validFastHost(value) {
				return parseHandoff
			}
			r.host = value
			continue // net/http moves it out of the header map
		case asciiEqualFold(name, "Content-Length"):
			if contentLength >= 0 || len(value) == 0 || len(value) > 4 || !allDigits(string(value)) {
				return parseHandoff
			}
			contentLength, _ = strconv.Atoi(string(value))
			if contentLength > protocol.MaxBodyBytes {
				return parseHandoff
			}
		case asciiEqualFold(name, "Connection"):
			if !asciiEqualFold(value, "keep-alive") {
				return parseHandoff
			}
		case asciiEqualFold(name, "Transfer-Encoding"), asciiEqualFold(name, "Expect"),
			asciiEqualFold(name, "Upgrade"), asciiEqualFold(name, "Trailer"), asciiEqualFold(name, "Te"),
			asciiEqualFold(name, "Pragma"):
			// Framing, interim answers and protocol switches are net/http's;
			// Pragma because net/http adds Cache-Control for it.
			return parseHandoff
		}
		if r.nh == fastMaxHeaders {
			return parseHandoff
		}
		r.headers[r.nh].name, r.headers[r.nh].value = name, value
		r.nh++
	}
	if r.host == nil || len(r.host) == 0 || contentLength < 0 {
		return parseHandoff
	}
	if len(b)-i < contentLength {
		return parseMore
	}
	r.body = b[i : i+contentLength]
	r.size = i + contentLength
	return parseOK
}

// validHeaderByte reports whether c may be in a header value the fast path
// takes: visible ASCII, space and tab (net/http also takes bytes above 0x7f;
// those go to it).
func validHeaderByte(c byte) bool {
	return c == '\t' || (c >= 0x20 && c < 0x7f)
}

// validFastHost reports whether h is a host[:port] of letters, digits and
// ".-_:[]" (a subset of what net/http takes).
func validFastHost(h []byte) bool {
	if len(h) == 0 {
		return false
	}
	for _, c := range h {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']') {
			return false
		}
	}
	return true
}

func isBase64URLByte(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// asciiEqualFold reports whether b equals the ASCII string s, ignoring case.
func asciiEqualFold[T string | []byte](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// knownHeaders are the canonical keys of the headers a push usually has,
// so that they are not canonicalized (and allocated) per request.
var knownHeaders = []string{
	"Ttl", "Content-Encoding", "Content-Length", "Content-Type", "Authorization", "Urgency", "Topic",
	"Encryption", "Crypto-Key", "Push-Receipt", "Link", "Prefer", "Connection", "User-Agent", "Accept",
	"Accept-Encoding",
}

func canonicalKey(name []byte) string {
	for _, k := range knownHeaders {
		if asciiEqualFold(name, k) {
			return k
		}
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}

// fastListener is the net.Listener net/http serves: it yields the
// connections the fast path hands over (and every connection that is not
// plain TCP, such as TLS ones, at once).
type fastListener struct {
	ln     net.Listener
	handle http.HandlerFunc // answers the canonical pushes (handleWebPush)
	log    *slog.Logger

	conns   chan net.Conn // handed to net/http by Accept
	errc    chan error    // the listener's permanent error
	done    chan struct{} // closed by Close
	closeMu sync.Once

	shutting atomic.Bool
	mu       sync.Mutex
	active   map[*fastConn]struct{} // guarded by mu
	wg       sync.WaitGroup         // the fast path's connection goroutines

	bufs   sync.Pool    // *[fastBufSize]byte read buffers
	served atomic.Int64 // requests answered by the fast path (tests)
	date   atomic.Pointer[fastDate]
}

// fastDate is the Date header value of one second.
type fastDate struct {
	sec int64
	b   [len(http.TimeFormat)]byte
}

// appendDate appends the Date value for now, formatted once a second.
func (l *fastListener) appendDate(b []byte, now time.Time) []byte {
	d := l.date.Load()
	if d == nil || d.sec != now.Unix() {
		d = &fastDate{sec: now.Unix()}
		now.UTC().AppendFormat(d.b[:0], http.TimeFormat)
		l.date.Store(d)
	}
	return append(b, d.b[:]...)
}

func newFastListener(ln net.Listener, handle http.HandlerFunc, log *slog.Logger) *fastListener {
	return &fastListener{
		ln: ln, handle: handle, log: log,
		bufs:   sync.Pool{New: func() any { return new([fastBufSize]byte) }},
		conns:  make(chan net.Conn),
		errc:   make(chan error, 1),
		done:   make(chan struct{}),
		active: map[*fastConn]struct{}{},
	}
}

func (l *fastListener) Addr() net.Addr { return l.ln.Addr() }

func (l *fastListener) Close() error {
	var err error
	l.closeMu.Do(func() {
		close(l.done)
		err = l.ln.Close()
	})
	return err
}

func (l *fastListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errc:
		l.errc <- err // sticky
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// run accepts connections until the listener is closed or fails; each plain
// TCP connection gets a fast-path goroutine, which run's caller waits for
// with wait.
func (l *fastListener) run() {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
				errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) {
				// Out of descriptors and the like: wait as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				l.log.Debug("accept failed, retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
					continue
				case <-l.done:
					return
				}
			}
			l.errc <- err
			return
		}
		delay = 0
		tc, ok := c.(*net.TCPConn)
		if !ok {
			l.handoff(c)
			continue
		}
		fc := &fastConn{l: l, c: tc}
		l.mu.Lock()
		if l.shutting.Load() {
			l.mu.Unlock()
			tc.Close()
			continue
		}
		l.active[fc] = struct{}{}
		l.mu.Unlock()
		l.wg.Go(fc.serve)
	}
}

// handoff gives c to net/http (Accept), or closes it when the listener is
// closed.
func (l *fastListener) handoff(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

// shutdown closes the fast path's idle connections, lets the busy ones
// finish their request (answered with Connection: close) and waits for all
// of them until ctx ends, when the rest are closed.
func (l *fastListener) shutdown(ctx context.Context) {
	l.mu.Lock()
	l.shutting.Store(true)
	for fc := range l.active {
		if fc.state.CompareAndSwap(fastIdle, fastClosed) {
			fc.c.Close()
		}
	}
	l.mu.Unlock()
	waited := make(chan struct{})
	go func() { l.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		return
	case <-ctx.Done():
	}
	l.mu.Lock()
	for fc := range l.active {
		fc.c.Close()
	}
	l.mu.Unlock()
	<-waited
}

// States of a fastConn.
const (
	fastIdle   int32 = iota // waiting for or reading a request
	fastActive              // handling one
	fastClosed              // closed by shutdown
)

// fastConn is one connection on the fast path.
type fastConn struct {
	l     *fastListener
	c     *net.TCPConn
	state atomic.Int32
	st    *fastState // from the first request that may be canonical on
}

// fastState is what a fastConn reuses for every request: handleWebPush keeps
// neither the request nor the writer once it returns.
type fastState struct {
	req   http.Request
	url   url.URL
	body  fastBody
	w     fastWriter
	vals  [fastMaxHeaders]string
	parse fastRequest
}

func (fc *fastConn) forget() {
	fc.l.mu.Lock()
	delete(fc.l.active, fc)
	fc.l.mu.Unlock()
}

// parse parses the request at the head of b; a connection that starts with
// something else (a device's websocket upgrade) allocates nothing for it.
func (fc *fastConn) parse(b []byte) parseResult {
	if fc.st == nil {
		if n := min(len(b), len(fastPrefix)); string(b[:n]) != fastPrefix[:n] {
			return parseHandoff
		}
		fc.st = &fastState{}
		st := fc.st
		st.req = http.Request{
			Method: http.MethodPost, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, RemoteAddr: fc.c.RemoteAddr().String(), URL: &st.url, Body: &st.body,
		}
		st.w.h, st.w.l = http.Header{}, fc.l
	}
	return parseFast(b, &fc.st.parse)
}

// serve answers canonical pushes until the connection ends or a request
// is for net/http.
func (fc *fastConn) serve() {
	buf := fc.l.bufs.Get().(*[fastBufSize]byte)
	handedOff := false
	defer func() {
		if v := recover(); v != nil {
			fc.l.log.Error("panic serving a push", "remote", fc.c.RemoteAddr().String(), "panic", v, "stack", string(debug.Stack()))
		}
		if !handedOff {
			fc.c.Close()
			fc.l.bufs.Put(buf)
		}
		fc.forget()
	}()
	start, n := 0, 0
	// A new connection's first request must come within the header timeout
	// (net/http's rule); after an answer the connection may idle for
	// idleTimeout, and a request begun then must be whole within the header
	// timeout. The idle deadline is moved at most once a second (a timer
	// change per post is measurable): the idle time allowed is 2 min less up
	// to a second.
	fc.c.SetReadDeadline(time.Now().Add(readHeaderTimeout))
	idle := false
	var idleSet time.Time // when the idle deadline was last set
	for {
		res := parseMore
		if start < n {
			res = fc.parse(buf[start:n])
		}
		switch res {
		case parseOK:
			if !fc.state.CompareAndSwap(fastIdle, fastActive) {
				return // shut down
			}
			now, closeAfter, err := fc.handle()
			if err != nil || closeAfter {
				return
			}
			fc.state.Store(fastIdle)
			if fc.l.shutting.Load() {
				return
			}
			start += fc.st.parse.size
			if start == n {
				start, n = 0, 0
				if !idle || now.Sub(idleSet) >= time.Second {
					fc.c.SetReadDeadline(now.Add(idleTimeout))
					idle, idleSet = true, now
				}
			} else {
				// Pipelined: the next request is begun.
				fc.c.SetReadDeadline(now.Add(readHeaderTimeout))
				idle = false
			}
			continue
		case parseHandoff:
			fc.handoff(buf, buf[start:n])
			handedOff = true
			return
		}
		if idle && start < n {
			// Part of a request after an idle wait: the rest must follow
			// within the header timeout.
			fc.c.SetReadDeadline(time.Now().Add(readHeaderTimeout))
			idle = false
		}
		if start > 0 {
			n = copy(buf[:], buf[start:n])
			start = 0
		}
		if n == len(buf) {
			fc.handoff(buf, buf[:n]) // not within the bounds: net/http's
			handedOff = true
			return
		}
		k, err := fc.c.Read(buf[n:])
		n += k
		if err == nil {
			continue
		}
		var ne net.Error
		timeout := errors.As(err, &ne) && ne.Timeout()
		if n == 0 || timeout && !bytes.Contains(buf[:n], []byte("\r\n\r\n")) || !timeout && !errors.Is(err, io.EOF) {
			// Nothing begun, a header not whole in time, or a broken
			// connection: net/http closes without an answer too.
			return
		}
		// A request cut short by the client's end, or a body slower than
		// the header timeout (net/http has no deadline for bodies): net/http
		// answers what it makes of it.
		fc.c.SetReadDeadline(time.Time{})
		fc.handoff(buf, buf[:n])
		handedOff = true
		return
	}
}

// handoff passes the connection to net/http, which reads pending (in buf,
// which goes back to the pool once read) first.
func (fc *fastConn) handoff(buf *[fastBufSize]byte, pending []byte) {
	fc.forget()
	if fc.l.shutting.Load() {
		fc.c.Close()
		fc.l.bufs.Put(buf)
		return
	}
	rc := &replayConn{TCPConn: fc.c, bufs: &fc.l.bufs, buf: buf, pending: pending}
	if len(pending) == 0 {
		rc.release()
	}
	fc.l.handoff(rc)
}

// handle answers the request parsed into fc.st at now (the answer's Date).
// closeAfter is set when the connection must close after the answer.
func (fc *fastConn) handle() (now time.Time, closeAfter bool, err error) {
	st := fc.st
	p := &st.parse
	r := &st.req
	clear(r.Header)
	for i := range p.nh {
		k := canonicalKey(p.headers[i].name)
		v := string(p.headers[i].value)
		if vv, ok := r.Header[k]; ok {
			r.Header[k] = append(vv, v)
			continue
		}
		st.vals[i] = v
		r.Header[k] = st.vals[i : i+1 : i+1]
	}
	path := fastPrefix[len("POST "):] + string(p.token)
	st.url.Path = path
	r.RequestURI = path
	if string(p.host) != r.Host {
		r.Host = string(p.host)
	}
	r.ContentLength = int64(len(p.body))
	st.body.Reset(p.body)
	r.SetPathValue("token", path[len("/wpush/v1/"):])
	st.w.reset(fc.l.shutting.Load())
	fc.l.handle(&st.w, r)
	now = time.Now()
	out := st.w.finish(now)
	fc.l.served.Add(1)
	_, err = fc.c.Write(out)
	return now, st.w.closeAfter, err
}

// fastBody is the request body: bytes of the read buffer.
type fastBody struct{ bytes.Reader }

func (*fastBody) Close() error { return nil }

// fastWriter is the http.ResponseWriter of the fast path. It writes what
// net/http writes for a handler that sets Content-Length: the status line,
// the handler's headers as Header.Write orders them, then Date (and
// Content-Length, Content-Type or Connection when net/http would add them),
// then the body.
type fastWriter struct {
	l          *fastListener
	h          http.Header
	status     int
	wrote      bool
	shutting   bool
	closeAfter bool
	addClose   bool
	hasCL      bool
	cl         int64
	hasType    bool
	hasCE      bool
	hasDate    bool
	out        []byte // the answer, headers as far as written
	keys       []string
	body       []byte
}

func (w *fastWriter) reset(shutting bool) {
	clear(w.h)
	w.status, w.wrote, w.shutting, w.closeAfter, w.addClose = 0, false, shutting, false, false
	w.hasCL, w.cl, w.hasType, w.hasCE, w.hasDate = false, -1, false, false, false
	w.out, w.body = w.out[:0], w.body[:0]
}

func (w *fastWriter) Header() http.Header { return w.h }

func (w *fastWriter) WriteHeader(code int) {
	if w.wrote {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code)) // as net/http
	}
	if code < 200 {
		return // interim answers: handleWebPush sends none, the fast path drops them
	}
	w.wrote = true
	w.status = code
	if cl := first(w.h, "Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.hasCL, w.cl = true, v
		} else {
			w.h.Del("Content-Length") // as net/http does
		}
	}
	_, w.hasType = w.h["Content-Type"]
	w.hasCE = first(w.h, "Content-Encoding") != ""
	_, w.hasDate = w.h["Date"]
	w.out = append(w.out, "HTTP/1.1 "...)
	w.out = strconv.AppendInt(w.out, int64(code), 10)
	w.out = append(w.out, ' ')
	if text := http.StatusText(code); text != "" {
		w.out = append(w.out, text...)
	} else {
		w.out = append(w.out, "status code "...)
		w.out = strconv.AppendInt(w.out, int64(code), 10)
	}
	w.out = append(w.out, "\r\n"...)
	var exclude map[string]bool
	if !bodyAllowed(code) {
		exclude = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}
		if code == http.StatusNotModified {
			exclude["Content-Type"] = true
		}
		w.hasCL = false
	}
	switch {
	case w.shutting:
		// No keep-alive while shutting down: net/http replaces the
		// handler's Connection with its own close.
		if exclude == nil {
			exclude = map[string]bool{}
		}
		exclude["Connection"] = true
		w.closeAfter, w.addClose = true, true
	case hasToken(first(w.h, "Connection"), "close"):
		w.closeAfter = true
	}
	w.out = w.appendHeader(w.out, exclude)
}

// appendHeader appends w.h but the keys in exclude as Header.WriteSubset
// writes it (keys sorted, invalid ones left out, a value's CR and LF made
// spaces and its ends trimmed), without its sorter and replacer.
func (w *fastWriter) appendHeader(b []byte, exclude map[string]bool) []byte {
	keys := w.keys[:0]
	for k := range w.h {
		if !exclude[k] {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	w.keys = keys
	for _, k := range keys {
		if !validFieldName(k) {
			continue
		}
		for _, v := range w.h[k] {
			b = append(b, k...)
			b = append(b, ": "...)
			i, j := 0, len(v)
			for i < j && isHeaderSpace(v[i]) {
				i++
			}
			for j > i && isHeaderSpace(v[j-1]) {
				j--
			}
			for ; i < j; i++ {
				if c := v[i]; c == '\r' || c == '\n' {
					b = append(b, ' ')
				} else {
					b = append(b, c)
				}
			}
			b = append(b, "\r\n"...)
		}
	}
	return b
}

func isHeaderSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// validFieldName reports whether k is a token (httpguts.ValidHeaderFieldName).
func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !isTokenChar(k[i]) {
			return false
		}
	}
	return true
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.hasCL && int64(len(w.body)+len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

// finish returns the whole answer.
func (w *fastWriter) finish(now time.Time) []byte {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if !w.hasDate {
		w.out = append(w.out, "Date: "...)
		w.out = w.l.appendDate(w.out, now)
		w.out = append(w.out, "\r\n"...)
	}
	if bodyAllowed(w.status) {
		if !w.hasCL {
			w.out = append(w.out, "Content-Length: "...)
			w.out = strconv.AppendInt(w.out, int64(len(w.body)), 10)
			w.out = append(w.out, "\r\n"...)
		}
		if !w.hasType && !w.hasCE && len(w.body) > 0 {
			w.out = append(w.out, "Content-Type: "...)
			w.out = append(w.out, http.DetectContentType(w.body)...)
			w.out = append(w.out, "\r\n"...)
		}
	}
	if w.addClose {
		w.out = append(w.out, "Connection: close\r\n"...)
	}
	if w.hasCL && int64(len(w.body)) < w.cl {
		// A short body: net/http closes the connection after it.
		w.closeAfter = true
	}
	w.out = append(w.out, "\r\n"...)
	return append(w.out, w.body...)
}

// first is h.Get(k) for a canonical k (no canonicalization).
func first(h http.Header, k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func bodyAllowed(status int) bool {
	return !(status >= 100 && status <= 199 || status == http.StatusNoContent || status == http.StatusNotModified)
}

// hasToken reports whether the comma-separated list v names token t.
func hasToken(v, t string) bool {
	for len(v) > 0 {
		var e string
		e, v, _ = cutByte(v, ',')
		if asciiEqualFold(trimOWSString(e), t) {
			return true
		}
	}
	return false
}

func cutByte(s string, c byte) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func trimOWSString(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// replayConn is a connection handed to net/http: it reads the bytes the
// fast path read first, then the socket.
type replayConn struct {
	*net.TCPConn
	bufs    *sync.Pool
	buf     *[fastBufSize]byte // holds pending; back to bufs once it is read
	pending []byte
	drained atomic.Bool
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.release()
		}
		return n, nil
	}
	return c.TCPConn.Read(p)
}

// release gives the buffer back once every replayed byte is read.
func (c *replayConn) release() {
	c.pending = nil
	c.bufs.Put(c.buf)
	c.buf = nil
	c.drained.Store(true)
}

var errPending = errors.New("connection has replayed bytes left")

// WriteTo keeps io.Copy from reading the socket past the replayed bytes.
func (c *replayConn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if len(c.pending) > 0 {
		k, err := w.Write(c.pending)
		n += int64(k)
		c.pending = c.pending[k:]
		if err != nil {
			return n, err
		}
		c.release()
	}
	m, err := c.TCPConn.WriteTo(w)
	return n + m, err
}

// SyscallConn gives the socket once the replayed bytes are read: a wait for
// readability on the socket would miss them before.
func (c *replayConn) SyscallConn() (syscall.RawConn, error) {
	if !c.drained.Load() {
		return nil, errPending
	}
	return c.TCPConn.SyscallConn()
}
