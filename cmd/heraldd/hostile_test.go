package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/internal/harness"
	"github.com/heraldpush/herald/internal/wsbomb"
	"github.com/heraldpush/herald/protocol"
)

// hostileServer is a push server written by an attacker (issue 11): it
// greets heraldd and answers its registrations like herald-server, then
// does what the test says with the connection.
type hostileServer struct {
	addr  string
	conns chan *hostileConn
}

type hostileConn struct {
	ws *websocket.Conn
}

func startHostileServer(t *testing.T) *hostileServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &hostileServer{addr: ln.Addr().String(), conns: make(chan *hostileConn, 10)}
	up := websocket.Upgrader{EnableCompression: true, Subprotocols: []string{protocol.Subprotocol}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c := &hostileConn{ws: ws}
		_, b, err := ws.ReadMessage()
		if err != nil {
			ws.Close()
			return
		}
		h, _ := protocol.Decode(b)
		uaid := protocol.NewUAID()
		if h, ok := h.(*protocol.Hello); ok && h.UAID != "" {
			uaid = h.UAID
		}
		reply, _ := protocol.Encode(&protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
		ws.WriteMessage(websocket.TextMessage, reply)
		hs.conns <- c
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return hs
}

// next returns the next frame from heraldd other than a ping, answering
// register frames on the way.
func (c *hostileConn) next(t *testing.T) (protocol.Message, error) {
	t.Helper()
	for {
		c.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, b, err := c.ws.ReadMessage()
		if err != nil {
			return nil, err
		}
		m, err := protocol.Decode(b)
		if err != nil {
			t.Fatalf("heraldd sent %q: %v", b, err)
		}
		if r, ok := m.(*protocol.Register); ok {
			reply, _ := protocol.Encode(&protocol.Register{ChannelID: r.ChannelID, Status: 200,
				PushEndpoint: "http://" + c.ws.LocalAddr().String() + "/wpush/v1/" + r.ChannelID})
			c.ws.WriteMessage(websocket.TextMessage, reply)
			continue
		}
		if m.Type() == protocol.TypePing {
			continue
		}
		return m, nil
	}
}

// hostileRig runs heraldd against a hostile server and registers one app.
func hostileRig(t *testing.T) (*harness.Daemon, *hostileConn, string) {
	t.Helper()
	bin := binaries(t)
	dir := t.TempDir()
	bus, err := harness.StartBus(filepath.Join(dir, "bus"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	hs := startHostileServer(t)
	d, err := harness.StartDaemon(filepath.Join(bin, "heraldd"), filepath.Join(dir, "home"), bus.Address, "ws://"+hs.addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("heraldd log tail:\n%s", d.Tail(4000))
		}
		d.Kill()
	})
	conn, err := dbus.Connect(bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	appID := "com.example.hostile_app"
	aid, _ := app.ParseID(appID)
	regErr := make(chan error, 1)
	go func() {
		// heraldd owns its names a moment after start: retry until then.
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			var tok string
			err := conn.Object("com.lomiri.PushNotifications", dbus.ObjectPath("/com/lomiri/PushNotifications/"+app.Quote(aid.Package))).
				CallWithContext(ctx, "com.lomiri.PushNotifications.Register", 0, appID).Store(&tok)
			cancel()
			if err == nil || time.Now().After(deadline) {
				regErr <- err
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	var c *hostileConn
	select {
	case c = <-hs.conns:
	case <-time.After(60 * time.Second):
		t.Fatal("heraldd did not connect")
	}
	// Answer the registration (hello is done); the test reads what follows.
	c.ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		t.Fatalf("heraldd did not register: %v", err)
	}
	r, ok := func() (*protocol.Register, bool) {
		m, _ := protocol.Decode(b)
		r, ok := m.(*protocol.Register)
		return r, ok
	}()
	if !ok {
		t.Fatalf("heraldd sent %q, want register", b)
	}
	reply, _ := protocol.Encode(&protocol.Register{ChannelID: r.ChannelID, Status: 200,
		PushEndpoint: "http://" + hs.addr + "/wpush/v1/" + r.ChannelID})
	c.ws.WriteMessage(websocket.TextMessage, reply)
	chid := r.ChannelID
	if err := <-regErr; err != nil {
		t.Fatalf("Register: %v", err)
	}
	return d, c, chid
}

func procKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatalf("no %s", field)
	return 0
}

// TestHostileServerCompressionBomb: a server sends a 61 KB frame that
// inflates to 60 MiB. heraldd must close with 1009 and stay under 100 MB of
// resident memory (it reached 329 MB before).
func TestHostileServerCompressionBomb(t *testing.T) {
	d, c, _ := hostileRig(t)
	pid := d.Pid()
	before := procKB(t, pid, "VmRSS")
	bomb := wsbomb.Deflate(60 << 20)
	if _, err := c.ws.UnderlyingConn().Write(wsbomb.Frame(bomb, true, false)); err != nil {
		t.Fatal(err)
	}
	c.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	code := 0
	for {
		_, _, err := c.ws.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				code = ce.Code
			} else {
				t.Logf("read: %v", err)
			}
			break
		}
	}
	peak := procKB(t, pid, "VmHWM")
	t.Logf("%d-byte frame inflating to 60 MiB: heraldd closed with %d; RSS %d kB before, peak %d kB", len(bomb), code, before, peak)
	if code != websocket.CloseMessageTooBig {
		t.Errorf("heraldd closed with %d, want 1009", code)
	}
	if peak > 100<<10 {
		t.Errorf("heraldd peak RSS %d kB, want < 100 MB", peak)
	}
}

// TestHostileServerUndecodableNotification: a notification frame that names
// its channel and version but cannot be decoded (its data is not base64url)
// is acked with code 102 (not delivered), so that a server drops it instead
// of sending it again and holding everything behind it; the next message
// is then delivered as usual.
func TestHostileServerUndecodableNotification(t *testing.T) {
	_, c, chid := hostileRig(t)
	bad := fmt.Sprintf(`{"messageType":"notification","channelID":%q,"version":"v-bad","data":"!!! not base64 !!!"}`, chid)
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(bad)); err != nil {
		t.Fatal(err)
	}
	good, _ := protocol.Encode(&protocol.Notification{ChannelID: chid, Version: "v-good", Data: protocol.EncodeBase64URL([]byte(`{"ok":1}`)), TTL: 60})
	if err := c.ws.WriteMessage(websocket.TextMessage, good); err != nil {
		t.Fatal(err)
	}
	codes := map[string]int{}
	for len(codes) < 2 {
		m, err := c.next(t)
		if err != nil {
			t.Fatalf("no ack: %v (acks so far %v)", err, codes)
		}
		ack, ok := m.(*protocol.Ack)
		if !ok {
			t.Fatalf("got %#v", m)
		}
		for _, u := range ack.Updates {
			codes[u.Version] = u.Code
		}
	}
	t.Logf("acks: %v", codes)
	if codes["v-bad"] != protocol.AckNotDelivered {
		t.Errorf("undecodable notification acked with %d, want 102", codes["v-bad"])
	}
	if c := codes["v-good"]; c != 0 && c != protocol.AckDelivered {
		t.Errorf("good notification acked with %d", c)
	}
}
