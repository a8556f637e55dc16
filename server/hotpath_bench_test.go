package server

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// BenchmarkWebPushConnected is the hot path of a push to a connected device:
// the handler (header parsing, token lookup, early delivery with its frame
// encoding, the store's group commit with sync=normal) while a device acks
// every frame. Run with -benchmem: allocations per push are the figure that
// holds up on a shared machine (timings are for make bench).
func BenchmarkWebPushConnected(b *testing.B) {
	t := &testing.T{}
	ts := startServer(t, func(c *Config) { c.Sync = SyncNormal })
	b.Cleanup(func() { ts.stop() })
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	path := strings.TrimPrefix(ep, ts.base)
	go func() {
		var ack []byte
		for {
			_, f, err := d.ws.ReadMessage()
			if err != nil {
				return
			}
			m, err := protocol.Decode(f)
			n, ok := m.(*protocol.Notification)
			if err != nil || !ok {
				continue
			}
			ack = append(ack[:0], `{"messageType":"ack","updates":[{"channelID":"`...)
			ack = append(ack, n.ChannelID...)
			ack = append(ack, `","version":"`...)
			ack = append(ack, n.Version...)
			ack = append(ack, `"}]}`...)
			if d.ws.WriteMessage(websocket.TextMessage, ack) != nil {
				return
			}
		}
	}()
	body := bytes.Repeat([]byte("x"), 100)
	h := ts.srv.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header["Ttl"] = []string{"600"}
		req.Header["Content-Encoding"] = []string{"aes128gcm"}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusCreated {
			b.Fatalf("push = %d %s", w.Code, w.Body)
		}
	}
}

// BenchmarkAppendNotification is the frame encoding of an encrypted message.
func BenchmarkAppendNotification(b *testing.B) {
	data := bytes.Repeat([]byte("x"), 100)
	headers := map[string]string{"encoding": "aes128gcm"}
	chid := protocol.NewChannelID()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendNotification(buf[:0], chid, "wlEukmjadJ4_-f3dwhjaDQ", data, headers, 600)
	}
}

// BenchmarkPushOverTCP is a push over a keep-alive TCP connection, as app
// servers send it, to a connected device that acks: through Serve's
// listener (the fast path) and through a plain net/http server of the same
// Server. -benchmem counts both ends (the client's share is the same in
// both).
func BenchmarkPushOverTCP(b *testing.B) {
	t := &testing.T{}
	ts := startServer(t, func(c *Config) { c.Sync = SyncNormal })
	b.Cleanup(func() { ts.stop() })
	d := ts.connect("")
	path := strings.TrimPrefix(d.register(protocol.NewChannelID(), ""), ts.base)
	go func() {
		var ack []byte
		for {
			_, f, err := d.ws.ReadMessage()
			if err != nil {
				return
			}
			m, err := protocol.Decode(f)
			n, ok := m.(*protocol.Notification)
			if err != nil || !ok {
				continue
			}
			ack = append(ack[:0], `{"messageType":"ack","updates":[{"channelID":"`...)
			ack = append(ack, n.ChannelID...)
			ack = append(ack, `","version":"`...)
			ack = append(ack, n.Version...)
			ack = append(ack, `"}]}`...)
			if d.ws.WriteMessage(websocket.TextMessage, ack) != nil {
				return
			}
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := ts.srv.httpServer()
	go hs.Serve(ln)
	b.Cleanup(func() { hs.Close() })
	req := []byte("POST " + path + " HTTP/1.1\r\nHost: h\r\nTTL: 600\r\nContent-Encoding: aes128gcm\r\nContent-Length: 100\r\n\r\n" +
		strings.Repeat("x", 100))
	for _, c := range []struct{ name, addr string }{
		{"fast", strings.TrimPrefix(ts.base, "http://")},
		{"nethttp", ln.Addr().String()},
	} {
		b.Run(c.name, func(b *testing.B) {
			conn, err := net.Dial("tcp", c.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := conn.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != http.StatusCreated {
					b.Fatalf("push = %d", resp.StatusCode)
				}
			}
		})
	}
}

// BenchmarkHTTPOverhead is the HTTP machinery alone: a canonical push on a
// keep-alive connection answered by a handler that only reads the body and
// sets the push's answer headers, through the fast path and through
// net/http. cpu-ns/op is the process's CPU (client and server) per push.
func BenchmarkHTTPOverhead(b *testing.B) {
	h := func(w http.ResponseWriter, r *http.Request) {
		body := make([]byte, r.ContentLength)
		io.ReadFull(r.Body, body)
		hdr := w.Header()
		hdr["Location"] = []string{"http://h/m/" + r.PathValue("token")}
		hdr["Ttl"] = []string{r.Header.Get("TTL")}
		hdr["Content-Length"] = contentLengthZero
		w.WriteHeader(http.StatusCreated)
	}
	req := []byte("POST /wpush/v1/abcdefghijklmnopqrstuv HTTP/1.1\r\nHost: h\r\nTTL: 600\r\nContent-Encoding: aes128gcm\r\nContent-Length: 100\r\n\r\n" +
		strings.Repeat("x", 100))
	for _, name := range []string{"fast", "nethttp"} {
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			if name == "fast" {
				fl := newFastListener(ln, h, slog.New(slog.DiscardHandler))
				go fl.run()
				defer fl.shutdown(context.Background())
				defer fl.Close()
			} else {
				mux := http.NewServeMux()
				mux.HandleFunc("POST /wpush/v1/{token}", h)
				hs := &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout}
				go hs.Serve(ln)
				defer hs.Close()
			}
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			b.ReportAllocs()
			c0, n := processCPU(), 0
			for b.Loop() {
				n++
				if _, err := conn.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != http.StatusCreated {
					b.Fatalf("push = %d", resp.StatusCode)
				}
			}
			b.ReportMetric(float64(processCPU()-c0)/float64(n), "cpu-ns/op")
		})
	}
}

// processCPU is the user+system CPU time of this process in nanoseconds.
func processCPU() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
