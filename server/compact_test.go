package server

import (
	"bytes"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// recvFrame reads the next frame and decodes it by its websocket type:
// binary frames are compact ones.
func (d *device) recvFrame() (int, protocol.Message) {
	d.t.Helper()
	d.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, b, err := d.ws.ReadMessage()
	if err != nil {
		d.t.Fatalf("read: %v", err)
	}
	var m protocol.Message
	if typ == websocket.BinaryMessage {
		m, err = protocol.DecodeCompact(b)
	} else {
		m, err = protocol.Decode(b)
	}
	if err != nil {
		d.t.Fatalf("decode %x: %v", b, err)
	}
	return typ, m
}

// TestCompactExtension: a device that asks for compact frames (extension
// "compact", named in the hello reply) gets notifications as binary frames
// from then on, and its compact acks delete them; frames written before the
// request are JSON.
func TestCompactExtension(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.dial()
	d.send(&protocol.Hello{UseWebPush: true})
	h, ok := d.recv().(*protocol.Hello)
	if !ok || !h.Supports(protocol.ExtCompact) {
		t.Fatalf("hello reply %#v does not name %q", h, protocol.ExtCompact)
	}
	d.uaid = h.UAID
	chid := protocol.NewChannelID()
	ep := d.register(chid, "")
	d.ws.Close()
	enc := bytes.Repeat([]byte{0xf0}, 100)
	if r := ts.push(ep, []byte("stored"), map[string]string{"TTL": "600"}); r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}
	if r := ts.push(ep, enc, map[string]string{"TTL": "600", "Content-Encoding": "aes128gcm"}); r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}

	d = ts.connect(d.uaid)
	// The first stored batch goes out with the hello reply: JSON.
	var got []*protocol.Notification
	for range 2 {
		typ, m := d.recvFrame()
		n, ok := m.(*protocol.Notification)
		if !ok || typ != websocket.TextMessage {
			t.Fatalf("got %T in a frame of type %d, want a JSON notification", m, typ)
		}
		got = append(got, n)
	}
	d.send(&protocol.Compact{})
	if typ, m := d.recvFrame(); typ != websocket.TextMessage || m.(*protocol.Compact).Status != 200 {
		t.Fatalf("compact reply %#v (frame type %d)", m, typ)
	}
	// Live messages, plaintext short and long (the long one compressed) and
	// encrypted, arrive as compact frames.
	long := bytes.Repeat([]byte(`{"text":"hello"}`), 30)
	for i, body := range [][]byte{[]byte("live"), long, enc} {
		hdr := map[string]string{"TTL": "600", "Content-Encoding": ""}
		if i == 2 {
			hdr["Content-Encoding"] = "aes128gcm"
		}
		if r := ts.push(ep, body, hdr); r.status != 201 {
			t.Fatalf("push = %d", r.status)
		}
		typ, m := d.recvFrame()
		n, ok := m.(*protocol.Notification)
		if !ok || typ != websocket.BinaryMessage {
			t.Fatalf("got %T in a frame of type %d, want a compact notification", m, typ)
		}
		b, _ := n.Body()
		if n.ChannelID != chid || !bytes.Equal(b, body) || n.TTL <= 0 || n.TTL > 600 {
			t.Fatalf("notification %#v, body %q", n, b)
		}
		if want := i == 2; (n.Headers["encoding"] == "aes128gcm") != want {
			t.Fatalf("headers %v", n.Headers)
		}
		got = append(got, n)
	}
	// One compact ack for all five, JSON and compact ones alike.
	ack := &protocol.Ack{}
	for _, n := range got {
		ack.Updates = append(ack.Updates, protocol.Update{ChannelID: n.ChannelID, Version: n.Version})
	}
	b, err := protocol.AppendCompact(nil, ack)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatal(err)
	}
	d.quiet()
	waitPending(t, ts, d, 0)
	d.ws.Close()
	// Nothing comes again; a new connection starts in JSON.
	d = ts.connect(d.uaid)
	d.quiet()
	if r := ts.push(ep, []byte("json again"), map[string]string{"TTL": "600"}); r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}
	if typ, m := d.recvFrame(); typ != websocket.TextMessage || m.Type() != protocol.TypeNotification {
		t.Fatalf("got %s in a frame of type %d, want a JSON notification", m.Type(), typ)
	}
}

// A device that has not asked for compact frames (Firefox, heraldd before
// the extension) gets JSON only, and a binary frame from it closes the
// connection as before (1003).
func TestCompactOnlyWhenAsked(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	if r := ts.push(ep, []byte("hi"), map[string]string{"TTL": "60"}); r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}
	n := d.notification() // recv fails on a binary frame
	b, _ := protocol.AppendCompact(nil, &protocol.Ack{Updates: []protocol.Update{{ChannelID: n.ChannelID, Version: n.Version}}})
	if err := d.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatal(err)
	}
	if code := d.closed(); code != websocket.CloseUnsupportedData {
		t.Fatalf("close code %d, want %d", code, websocket.CloseUnsupportedData)
	}
}

// A malformed compact frame closes the connection with 1002, like a
// malformed JSON one.
func TestCompactMalformed(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	d.send(&protocol.Compact{})
	if _, m := d.recvFrame(); m.Type() != protocol.TypeCompact {
		t.Fatalf("got %s, want the compact reply", m.Type())
	}
	if err := d.ws.WriteMessage(websocket.BinaryMessage, []byte{0x02, 0x04, 0x01, 'v'}); err != nil {
		t.Fatal(err)
	}
	if code := d.closed(); code != websocket.CloseProtocolError {
		t.Fatalf("close code %d, want %d", code, websocket.CloseProtocolError)
	}
}
