package session

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// readTyped reads the next frame the session sent: its websocket type and
// the message (compact frames decoded as such).
func readTyped(t *testing.T, c *websocket.Conn) (int, protocol.Message) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("server read: %v", err)
	}
	var m protocol.Message
	if typ == websocket.BinaryMessage {
		m, err = protocol.DecodeCompact(b)
	} else {
		m, err = protocol.Decode(b)
	}
	if err != nil {
		t.Fatalf("server decode %x: %v", b, err)
	}
	return typ, m
}

func writeCompactMsg(t *testing.T, c *websocket.Conn, m protocol.Message) {
	t.Helper()
	b, err := protocol.AppendCompact(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.BinaryMessage, b); err != nil {
		t.Fatalf("server write: %v", err)
	}
}

// TestCompactExtension: the session asks a server that names "compact" for
// compact frames right after the hello reply, takes notifications in both
// forms from then on, and acks in compact frames; a compact notification it
// cannot decode is acked as not delivered. A server that does not name the
// extension (Mozilla's), or a session configured with NoCompact, gets JSON
// only.
func TestCompactExtension(t *testing.T) {
	for _, tt := range []struct {
		named, no bool
	}{{true, false}, {false, false}, {true, true}} {
		t.Run(fmt.Sprintf("named=%v,NoCompact=%v", tt.named, tt.no), func(t *testing.T) {
			srv := newFakeServer(t)
			h := newHandler()
			h.uaid, h.channels = uaid, []string{chA}
			s, _ := start(t, Config{URL: srv.url(), Handler: h, AckDelay: time.Hour, NoCompact: tt.no})
			s.SetWanted(true)
			c := srv.accept(t)
			if _, ok := readMsg(t, c).(*protocol.Hello); !ok {
				t.Fatal("expected hello")
			}
			reply := &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true}
			if tt.named {
				reply.Extensions = []string{protocol.ExtCompact}
			}
			writeMsg(t, c, reply)
			h.waitState(t, StateConnected)
			compact := tt.named && !tt.no
			if compact {
				if typ, m := readTyped(t, c); typ != websocket.TextMessage || m.Type() != protocol.TypeCompact {
					t.Fatalf("first frame after hello = %s (type %d), want the compact request", m.Type(), typ)
				}
				writeMsg(t, c, &protocol.Compact{Status: 200})
			}
			// A full batch (protocol.BatchSize) is acked at once.
			var want []protocol.Update
			for i := range protocol.BatchSize {
				n := &protocol.Notification{ChannelID: chA, Version: protocol.EncodeBase64URL([]byte(fmt.Sprintf("version-%08d", i))), Data: "aGk", TTL: 60}
				switch {
				case compact && i == 3:
					// The body is over the limit: acked 102.
					b, _ := protocol.AppendCompactNotification(nil, chA, "too-big", make([]byte, protocol.MaxBodyBytes+1), nil, 60)
					if err := c.WriteMessage(websocket.BinaryMessage, b); err != nil {
						t.Fatal(err)
					}
					want = append(want, protocol.Update{ChannelID: chA, Version: "too-big", Code: protocol.AckNotDelivered})
					continue
				case compact && i%2 == 1:
					writeCompactMsg(t, c, n)
				default:
					writeMsg(t, c, n) // JSON: written before the request was read
				}
				want = append(want, protocol.Update{ChannelID: chA, Version: n.Version})
			}
			var got []protocol.Update
			for len(got) < len(want) {
				typ, m := readTyped(t, c)
				ack, ok := m.(*protocol.Ack)
				if !ok {
					t.Fatalf("got %s, want an ack", m.Type())
				}
				if wantTyp := map[bool]int{true: websocket.BinaryMessage, false: websocket.TextMessage}[compact]; typ != wantTyp {
					t.Fatalf("ack in a frame of type %d, want %d", typ, wantTyp)
				}
				got = append(got, ack.Updates...)
			}
			// An undecodable frame's ack may overtake those of the frames
			// read before it (they are stored first).
			byVersion := cmpopts.SortSlices(func(a, b protocol.Update) bool { return a.Version < b.Version })
			if diff := cmp.Diff(want, got, byVersion); diff != "" {
				t.Fatalf("acks (-want +got):\n%s", diff)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			wantReceived := len(want)
			if compact {
				wantReceived-- // the undecodable one
			}
			if n := len(h.received); n != wantReceived {
				t.Fatalf("%d received, want %d", n, wantReceived)
			}
		})
	}
}
