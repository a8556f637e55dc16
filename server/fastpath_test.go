package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/internal/testcert"
	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

// answer is what a client reads for one request: the status line, the
// headers (Date's value and message ids in Location replaced), the body, and
// whether the server said it closes.
type answer struct {
	Status string
	Header http.Header
	Body   string
	Close  bool
}

var msgIDInLocation = regexp.MustCompile(`/m/[A-Za-z0-9_-]+$`)

// exchange writes the parts of raw (one write each, a pause-free burst)
// on a fresh connection to addr and reads n answers; with halfClose the
// client closes its sending side after the last part. Interim (1xx)
// answers are read as answers too.
func exchange(t *testing.T, addr string, parts []string, n int, halfClose bool) []answer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, p := range parts {
		if _, err := io.WriteString(c, p); err != nil {
			t.Fatal(err)
		}
	}
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
	}
	br := bufio.NewReader(c)
	var out []answer
	for len(out) < n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", len(out)+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("answer %d body: %v", len(out)+1, err)
		}
		h := resp.Header.Clone()
		if h.Get("Date") != "" {
			h.Set("Date", "set")
		}
		if loc := h.Get("Location"); loc != "" {
			h.Set("Location", msgIDInLocation.ReplaceAllString(loc, "/m/ID"))
		}
		out = append(out, answer{Status: resp.Status, Header: h, Body: string(body), Close: resp.Close})
	}
	// Nothing more may follow: the next read must time out or end.
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if b, _ := br.Peek(1); len(b) > 0 {
		rest, _ := io.ReadAll(br)
		t.Errorf("unexpected bytes after %d answers: %q", n, rest)
	}
	return out
}

// TestFastPathMatchesNetHTTP sends the same requests, canonical pushes and
// anything else (malformed, oversized, pipelined, split over several
// writes, cut short), to Serve's listener (fast path, handing over to
// net/http) and to a plain net/http server of the same Server, and compares
// every answer. It also checks which requests the fast path answered.
func TestFastPathMatchesNetHTTP(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	path := strings.TrimPrefix(ep, ts.base)

	key, err := webpush.GenerateVAPIDKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := webpush.VAPIDPublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	vapidPath := strings.TrimPrefix(d.register(protocol.NewChannelID(), pub), ts.base)
	good, err := webpush.SignVAPID(key, ts.base, "mailto:a@example.com", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	d.ws.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := ts.srv.httpServer()
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	plain := ln.Addr().String()
	fast := strings.TrimPrefix(ts.base, "http://")

	post := func(p string, headers string, body string) string {
		return "POST " + p + " HTTP/1.1\r\nHost: example.org\r\n" + headers +
			fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body
	}
	push := post(path, "TTL: 60\r\nContent-Encoding: aes128gcm\r\n", "abc")
	big := strings.Repeat("x", protocol.MaxBodyBytes)
	cases := []struct {
		name      string
		parts     []string
		answers   int
		fast      int // answers the fast path must give
		halfClose bool
	}{
		{"canonical", []string{push}, 1, 1, false},
		{"lower case names and spaces", []string{post(path, "ttl:   600  \r\ncontent-encoding:\taes128gcm\r\nconnection: keep-alive\r\nUser-Agent: x/1\r\n", "abc")}, 1, 1, false},
		{"plaintext", []string{post(path, "TTL: 0\r\n", `{"a":1}`)}, 1, 1, false},
		{"empty body", []string{post(path, "TTL: 60\r\n", "")}, 1, 1, false},
		{"largest body", []string{post(path, "TTL: 60\r\nContent-Encoding: aes128gcm\r\n", big)}, 1, 1, false},
		{"aesgcm", []string{post(path, "TTL: 60\r\nContent-Encoding: aesgcm\r\nEncryption: salt=abc\r\nCrypto-Key: dh=def;p256ecdsa=x\r\n", "abc")}, 1, 1, false},
		{"aesgcm bad params", []string{post(path, "TTL: 60\r\nContent-Encoding: aesgcm\r\nEncryption: salt\r\nCrypto-Key: dh=def\r\n", "abc")}, 1, 1, false},
		{"aesgcm missing crypto key", []string{post(path, "TTL: 60\r\nContent-Encoding: aesgcm\r\nEncryption: salt=a\r\n", "abc")}, 1, 1, false},
		{"aesgcm two encryption headers", []string{post(path, "TTL: 60\r\nContent-Encoding: aesgcm\r\nEncryption: salt=a\r\nencryption: salt=b\r\nCrypto-Key: dh=x\r\n", "abc")}, 1, 1, false},
		{"unknown encoding", []string{post(path, "TTL: 60\r\nContent-Encoding: br\r\n", "abc")}, 1, 1, false},
		{"missing TTL", []string{post(path, "Content-Encoding: aes128gcm\r\n", "abc")}, 1, 1, false},
		{"negative TTL", []string{post(path, "TTL: -5\r\n", "abc")}, 1, 1, false},
		{"bad TTL", []string{post(path, "TTL: 1e3\r\n", "abc")}, 1, 1, false},
		{"two TTL", []string{post(path, "TTL: 60\r\nttl: 70\r\n", "abc")}, 1, 1, false},
		{"huge TTL", []string{post(path, "TTL: 99999999999999999999999\r\n", "abc")}, 1, 1, false},
		{"urgency", []string{post(path, "TTL: 60\r\nUrgency: high\r\n", "abc")}, 1, 1, false},
		{"bad urgency", []string{post(path, "TTL: 60\r\nUrgency: now\r\n", "abc")}, 1, 1, false},
		{"topic", []string{post(path, "TTL: 60\r\nTopic: abc_-1\r\n", "abc")}, 1, 1, false},
		{"bad topic", []string{post(path, "TTL: 60\r\nTopic: a.b\r\n", "abc")}, 1, 1, false},
		{"empty topic", []string{post(path, "TTL: 60\r\nTopic:\r\n", "abc")}, 1, 1, false},
		{"unknown token", []string{post("/wpush/v1/AAAAAAAAAAAAAAAAAAAAAA", "TTL: 60\r\n", "abc")}, 1, 1, false},
		{"vapid missing", []string{post(vapidPath, "TTL: 60\r\n", "abc")}, 1, 1, false},
		{"vapid good", []string{post(vapidPath, "TTL: 60\r\nAuthorization: "+good+"\r\n", "abc")}, 1, 1, false},
		{"vapid garbage", []string{post(vapidPath, "TTL: 60\r\nAuthorization: vapid t=abc, k=def\r\n", "abc")}, 1, 1, false},
		{"bad receipt", []string{post(path, "TTL: 60\r\nPush-Receipt: http://x/r/nope\r\n", "abc")}, 1, 1, false},
		{"prefer without receipt", []string{post(path, "TTL: 60\r\nPrefer: respond-async\r\n", "abc")}, 1, 1, false},

		// Pipelined and split requests.
		{"pipelined", []string{push + push + push}, 3, 3, false},
		{"pipelined then other", []string{push + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + push}, 3, 1, false},
		{"split", []string{push[:7], push[7:30], push[30 : len(push)-2], push[len(push)-2:]}, 1, 1, false},
		{"split in the prefix", []string{"PO", push[2:]}, 1, 1, false},
		{"two writes of two", []string{push + push[:40], push[40:]}, 2, 2, false},

		// Handed to net/http.
		{"body too large", []string{post(path, "TTL: 60\r\n", big+"x")}, 1, 0, false},
		{"chunked", []string{"POST " + path + " HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"}, 1, 0, false},
		{"expect continue", []string{"POST " + path + " HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"}, 2, 0, false},
		{"http/1.0", []string{"POST " + path + " HTTP/1.0\r\nHost: h\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc"}, 1, 0, false},
		{"connection close", []string{post(path, "TTL: 60\r\nConnection: close\r\n", "abc")}, 1, 0, false},
		{"upgrade", []string{post(path, "TTL: 60\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n", "abc")}, 1, 0, false},
		{"health", []string{"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"}, 1, 0, false},
		{"put", []string{"PUT " + path + " HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nversion=5"}, 1, 0, false},
		{"longer path", []string{post(path+"/x", "TTL: 60\r\n", "abc")}, 1, 0, false},
		{"query", []string{post(path+"?a=1", "TTL: 60\r\n", "abc")}, 1, 0, false},
		{"escaped path", []string{post("/wpush/v1/%41", "TTL: 60\r\n", "abc")}, 1, 0, false},
		{"empty token", []string{post("/wpush/v1/", "TTL: 60\r\n", "abc")}, 1, 0, false},
		{"no host", []string{"POST " + path + " HTTP/1.1\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc"}, 1, 0, false},
		{"two hosts", []string{"POST " + path + " HTTP/1.1\r\nHost: a\r\nHost: b\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc"}, 1, 0, false},
		{"bad host", []string{"POST " + path + " HTTP/1.1\r\nHost: a b\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc"}, 1, 0, false},
		{"no content length", []string{"POST " + path + " HTTP/1.1\r\nHost: h\r\nTTL: 60\r\n\r\n"}, 1, 0, false},
		{"two content lengths", []string{"POST " + path + " HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"}, 1, 0, false},
		{"signed content length", []string{"POST " + path + " HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nContent-Length: +3\r\n\r\nabc"}, 1, 0, false},
		{"bare LF", []string{"POST " + path + " HTTP/1.1\nHost: h\nTTL: 60\nContent-Length: 3\n\nabc"}, 1, 0, false},
		{"control byte", []string{post(path, "TTL: 60\r\nX-A: a\x01b\r\n", "abc")}, 1, 0, false},
		{"utf-8 value", []string{post(path, "TTL: 60\r\nX-A: é\r\n", "abc")}, 1, 0, false},
		{"space before colon", []string{post(path, "TTL : 60\r\n", "abc")}, 1, 0, false},
		{"obs-fold", []string{post(path, "TTL: 60\r\nX-A: a\r\n b\r\n", "abc")}, 1, 0, false},
		{"leading space", []string{"POST " + path + " HTTP/1.1\r\n Host: h\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc"}, 1, 0, false},
		{"no colon", []string{post(path, "TTL 60\r\n", "abc")}, 1, 0, false},
		{"pragma", []string{post(path, "TTL: 60\r\nPragma: no-cache\r\n", "abc")}, 1, 0, false},
		{"large header", []string{post(path, "TTL: 60\r\nX-Pad: "+strings.Repeat("p", 9000)+"\r\n", "abc")}, 1, 0, false},
		{"header too large", []string{post(path, "TTL: 60\r\nX-Pad: "+strings.Repeat("p", 40000)+"\r\n", "abc")}, 1, 0, false},
		{"many headers", []string{post(path, "TTL: 60\r\n"+strings.Repeat("X-A: b\r\n", 100), "abc")}, 1, 0, false},
		{"lower case method", []string{"post " + path + " HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nContent-Length: 0\r\n\r\n"}, 1, 0, false},
		{"body longer than content length", []string{post(path, "TTL: 60\r\n", "abc") + "xyz\r\n\r\n"}, 2, 1, false},
		{"cut in the header", []string{push[:40]}, 1, 0, true},
		{"cut in the body", []string{push[:len(push)-1]}, 1, 0, true},
		{"canonical then cut", []string{push + push[:20]}, 2, 1, true},
	}
	fl := ts.srv.fast.Load()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := fl.served.Load()
			got := exchange(t, fast, c.parts, c.answers, c.halfClose)
			if n := fl.served.Load() - before; n != int64(c.fast) {
				t.Errorf("fast path answered %d, want %d", n, c.fast)
			}
			want := exchange(t, plain, c.parts, c.answers, c.halfClose)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("fast path answers differ from net/http's (-net/http +fast):\n%s", diff)
			}
		})
	}
}

// TestFastPathRateLimit: the limits answer the same on the fast path.
func TestFastPathRateLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TokenLimit = Limit{Rate: 0, Burst: 1} })
	d := ts.connect("")
	path := strings.TrimPrefix(d.register(protocol.NewChannelID(), ""), ts.base)
	req := "POST " + path + " HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nContent-Length: 1\r\n\r\nx"
	got := exchange(t, strings.TrimPrefix(ts.base, "http://"), []string{req + req}, 2, false)
	if got[0].Status != "201 Created" || got[1].Status != "429 Too Many Requests" || got[1].Header.Get("Retry-After") != "60" {
		t.Fatalf("answers %+v, want 201 then 429 with Retry-After 60", got)
	}
	if !strings.Contains(got[1].Body, `"errno":429`) {
		t.Errorf("429 body %q", got[1].Body)
	}
}

// TestFastPathShutdown: an idle keep-alive connection is closed at
// shutdown, and the server stops.
func TestFastPathShutdown(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	path := strings.TrimPrefix(d.register(protocol.NewChannelID(), ""), ts.base)
	c, err := net.Dial("tcp", strings.TrimPrefix(ts.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nContent-Length: 1\r\n\r\nx")
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("push: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	if err := ts.stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection after shutdown: read %v, want EOF", err)
	}
}

// TestFastPathDeviceSocket: a device connection handed to net/http still
// gives the hub its socket for the idle wait (idle.go).
func TestFastPathDeviceSocket(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	c := ts.srv.hub.get(d.uaid)
	if c == nil {
		t.Fatal("device not in the hub")
	}
	if c.raw == nil {
		t.Fatal("the device connection has no raw socket: the replayed connection hid it")
	}
	d.register(protocol.NewChannelID(), "") // and it works
}

// FuzzParseFast checks the fast path's parser against net/http's: a request
// it takes must be the request net/http reads from the same bytes (method,
// path, Host, header map, body), every prefix of it must be "more", and
// nothing it takes is out of bounds. Seeds: testdata/fuzz/FuzzParseFast.
func FuzzParseFast(f *testing.F) {
	f.Add([]byte("POST /wpush/v1/abc HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nContent-Length: 3\r\n\r\nabc"))
	f.Add([]byte("POST /wpush/v1/abc HTTP/1.1\r\nhost: h:80\r\nttl:  0 \r\ncontent-length: 0\r\nX-A: b\r\nx-a: c\r\n\r\n"))
	f.Add([]byte("POST /wpush/v1/abc HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r fastRequest
		res := parseFast(b, &r)
		if res != parseOK {
			return
		}
		if r.size > len(b) || len(r.body) > protocol.MaxBodyBytes || r.size > fastBufSize {
			t.Fatalf("out of bounds: size %d of %d, body %d", r.size, len(b), len(r.body))
		}
		for i := range r.size {
			var p fastRequest
			if got := parseFast(b[:i], &p); got != parseMore {
				t.Fatalf("prefix of %d bytes = %d, want more", i, got)
			}
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:r.size])))
		if err != nil {
			t.Fatalf("taken, but net/http refuses %q: %v", b[:r.size], err)
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			t.Fatalf("net/http body: %v", err)
		}
		h := http.Header{}
		for i := range r.nh {
			k := canonicalKey(r.headers[i].name)
			h[k] = append(h[k], string(r.headers[i].value))
		}
		if req.Method != http.MethodPost || req.URL.Path != "/wpush/v1/"+string(r.token) || req.RequestURI != req.URL.Path ||
			req.Host != string(r.host) || !bytes.Equal(body, r.body) || req.ContentLength != int64(len(r.body)) ||
			req.Close || req.ProtoMinor != 1 {
			t.Fatalf("net/http reads %q differently: %s %q host %q body %q close %v", b[:r.size], req.Method, req.RequestURI, req.Host, body, req.Close)
		}
		if diff := cmp.Diff(req.Header, h); diff != "" {
			t.Fatalf("header maps differ for %q (-net/http +fast):\n%s", b[:r.size], diff)
		}
	})
}

// TestFastPathTLSListener: on a TLS listener (herald-server --tls-cert)
// every connection is net/http's, and pushes and devices work as before.
func TestFastPathTLSListener(t *testing.T) {
	cert, err := testcert.New("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := cert.TLS()
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(tcp, &tls.Config{Certificates: []tls.Certificate{tc}, MinVersion: tls.VersionTLS12})
	base := "https://" + tcp.Addr().String()
	srv, err := New(Config{PublicURL: base, DBPath: filepath.Join(t.TempDir(), "s.db"),
		TokenLimit: Limit{Rate: -1}, IPLimit: Limit{Rate: -1}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	dialer := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second,
		TLSClientConfig: &tls.Config{RootCAs: cert.Pool()}}
	ws, _, err := dialer.Dial("wss://"+tcp.Addr().String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	d := &device{t: t, ws: ws}
	d.hello("")
	ep := d.register(protocol.NewChannelID(), "")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.Pool()}}}
	req, _ := http.NewRequest("POST", ep, strings.NewReader("abc"))
	req.Header.Set("TTL", "60")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push over TLS = %d", resp.StatusCode)
	}
	d.notification()
	if n := srv.fast.Load().served.Load(); n != 0 {
		t.Errorf("fast path answered %d TLS requests", n)
	}
}

// FuzzFastHeader checks that the fast path writes a handler's header as
// net/http's Header.WriteSubset does.
func FuzzFastHeader(f *testing.F) {
	f.Add("Location", "http://h/m/x", "Ttl", " 60\r\n", "Content-Length", "0")
	f.Add("Bad Key", "v", "X", "a\nb\rc", "X", "\t")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		h := http.Header{}
		h[k1] = append(h[k1], v1)
		h[k2] = append(h[k2], v2)
		h[k3] = append(h[k3], v3)
		exclude := map[string]bool{k3: len(v3)%2 == 1}
		var want bytes.Buffer
		if err := h.WriteSubset(&want, exclude); err != nil {
			t.Fatal(err)
		}
		w := fastWriter{h: h}
		if got := w.appendHeader(nil, exclude); string(got) != want.String() {
			t.Fatalf("fast path writes %q, net/http %q", got, want.String())
		}
	})
}
