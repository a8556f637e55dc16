package server

import (
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// TestIdleWaitFrames: frames that arrive together, frames larger than the
// read buffer and pongs (consumed before gorilla sees them) are all handled
// by a connection that waits for its socket on a small stack.
func TestIdleWaitFrames(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	d.register(protocol.NewChannelID(), "")

	// Two pings written back to back usually share a TCP segment: the
	// second is then in the read buffer when the first is handled.
	for range 50 {
		d.sendRaw("{}")
		d.sendRaw("{}")
		for range 2 {
			if m := d.recv(); m.Type() != protocol.TypePing {
				t.Fatalf("got %#v, want a ping reply", m)
			}
		}
	}
	// A frame ten times the read buffer, then a ping.
	big := `{"messageType":"broadcast_subscribe","broadcasts":{"x":"` + strings.Repeat("y", 10*readBufferSize) + `"}}`
	d.sendRaw(big)
	d.quiet()
	// Pongs, with and without payload, alone and before a ping.
	for _, payload := range []string{"", "keepalive"} {
		if err := d.ws.WriteControl(websocket.PongMessage, []byte(payload), time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		d.quiet()
		if err := d.ws.WriteControl(websocket.PongMessage, []byte(payload), time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		d.sendRaw("{}")
		if m := d.recv(); m.Type() != protocol.TypePing {
			t.Fatalf("got %#v, want a ping reply", m)
		}
		d.quiet()
	}
	// A ping control frame is still answered (by gorilla) with a pong.
	pong := make(chan string, 1)
	d.ws.SetPongHandler(func(s string) error { pong <- s; return nil })
	if err := d.ws.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	d.sendRaw("{}")
	if m := d.recv(); m.Type() != protocol.TypePing { // gorilla runs the pong handler while reading
		t.Fatalf("got %#v", m)
	}
	select {
	case got := <-pong:
		if got != "hi" {
			t.Errorf("pong %q, want hi", got)
		}
	default:
		t.Error("no pong for a ping")
	}
	// A close from the device ends the waiting connection with the close
	// handshake.
	if err := d.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if code := d.closed(); code != websocket.CloseNormalClosure {
		t.Fatalf("close code %d, want the echo of 1000", code)
	}
}
