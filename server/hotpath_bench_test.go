package server

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
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
