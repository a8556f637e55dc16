package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

// mozilla is a test double of Mozilla's production autopush server
// (autopush-rs, as read in ../shared/reference/backends.md §3): it speaks
// the autopush websocket protocol and enforces the rules that server
// enforces, recording every breach as a violation (and closing as it
// would): hello first; text frames only; lowercase dashed channel ids;
// never an unknown messageType; JSON pings at least 45 s apart; acks only
// for versions sent on the same connection; stored messages sent 10 at a
// time, the next batch only after the current one was acked; and after
// 150 stored messages sent in one drain, the uaid is reset (close 1000):
// the next hello gets a new uaid and every channel must be registered
// again. Mozilla's server is not a Debian package: a test double of its
// documented behaviour is the only way to run heraldd against it offline.
type mozilla struct {
	*httptest.Server
	mu sync.Mutex
	// guarded by mu:
	users      map[string]map[string]string // uaid → channel id → VAPID key
	stored     map[string][]mozNotif        // uaid → stored messages
	live       map[string]*mozConn          // uaid → connection
	violations []string
	registers  []mozRegister
	acked      int
	resets     int
}

type mozNotif struct{ chid, version, data string }

type mozRegister struct{ uaid, chid, key string }

type mozConn struct {
	ws   *websocket.Conn
	wmu  sync.Mutex
	sent map[string]bool // versions sent on this connection, not yet acked
}

func (c *mozConn) send(v any) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.WriteJSON(v)
}

var chidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

const mozMsgLimit = 150

func newMozilla(t *testing.T) *mozilla {
	m := &mozilla{users: map[string]map[string]string{}, stored: map[string][]mozNotif{}, live: map[string]*mozConn{}}
	m.Server = httptest.NewServer(http.HandlerFunc(m.serve))
	t.Cleanup(m.Close)
	return m
}

func (m *mozilla) wsURL() string { return "ws" + strings.TrimPrefix(m.URL, "http") + "/" }

func (m *mozilla) violate(format string, args ...any) {
	m.mu.Lock()
	m.violations = append(m.violations, fmt.Sprintf(format, args...))
	m.mu.Unlock()
}

func (m *mozilla) Violations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.violations...)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (m *mozilla) endpoint(uaid, chid string) string {
	return m.URL + "/wpush/v1/" + uaid[:8] + chid
}

// storeFor stores n messages for chid of the user uaid (the device is away).
func (m *mozilla) storeFor(uaid, chid string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range n {
		m.stored[uaid] = append(m.stored[uaid], mozNotif{chid: chid, version: randHex(16), data: base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "stored %d", i))})
	}
}

// pushLive sends one message to the connected device of uaid.
func (m *mozilla) pushLive(uaid, chid, body string) error {
	m.mu.Lock()
	c := m.live[uaid]
	m.mu.Unlock()
	if c == nil {
		return fmt.Errorf("device %s not connected", uaid)
	}
	v := randHex(16)
	c.wmu.Lock()
	c.sent[v] = true
	c.wmu.Unlock()
	return c.send(map[string]any{"messageType": "notification", "channelID": chid, "version": v, "data": base64.RawURLEncoding.EncodeToString([]byte(body))})
}

func (m *mozilla) serve(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	c := &mozConn{ws: ws, sent: map[string]bool{}}
	closeWith := func(code int, why string) {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, why), time.Now().Add(time.Second))
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second)) // open_handshake_timeout
	typ, b, err := ws.ReadMessage()
	if err != nil {
		m.violate("no hello within 5 s: %v", err)
		return
	}
	var hello struct {
		MessageType string `json:"messageType"`
		UAID        string `json:"uaid"`
	}
	if typ != websocket.TextMessage || json.Unmarshal(b, &hello) != nil || hello.MessageType != "hello" {
		m.violate("first frame is not a hello: %q", b)
		closeWith(1011, "expected hello")
		return
	}
	_ = ws.SetReadDeadline(time.Time{})
	m.mu.Lock()
	uaid := hello.UAID
	if _, ok := m.users[uaid]; !ok {
		uaid = randHex(16) // unknown or reset: a new user
		m.users[uaid] = map[string]string{}
	}
	if old := m.live[uaid]; old != nil {
		old.ws.Close() // a newcomer ghosts the old socket
	}
	m.live[uaid] = c
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		if m.live[uaid] == c {
			delete(m.live, uaid)
		}
		m.mu.Unlock()
	}()
	if err := c.send(map[string]any{"messageType": "hello", "uaid": uaid, "status": 200, "use_webpush": true, "broadcasts": map[string]any{}}); err != nil {
		return
	}

	// The drain of stored messages: 10 at a time, the next batch after acks.
	drained := 0
	nextBatch := func() bool {
		m.mu.Lock()
		batch := m.stored[uaid]
		if len(batch) > protocol.BatchSize {
			batch = batch[:protocol.BatchSize]
		}
		m.stored[uaid] = m.stored[uaid][len(batch):]
		m.mu.Unlock()
		for _, n := range batch {
			if drained >= mozMsgLimit {
				// check_msg_limit: the user is deleted, the socket closed with 1000.
				m.mu.Lock()
				delete(m.users, uaid)
				delete(m.stored, uaid)
				m.resets++
				m.mu.Unlock()
				closeWith(1000, "uaid reset")
				return false
			}
			c.wmu.Lock()
			c.sent[n.version] = true
			c.wmu.Unlock()
			if c.send(map[string]any{"messageType": "notification", "channelID": n.chid, "version": n.version, "data": n.data}) != nil {
				return false
			}
			drained++
		}
		return true
	}
	if !nextBatch() {
		return
	}
	var lastPing time.Time
	for {
		typ, b, err := ws.ReadMessage()
		if err != nil {
			return
		}
		if typ != websocket.TextMessage {
			m.violate("binary frame")
			closeWith(1003, "text frames only")
			return
		}
		var f struct {
			MessageType string `json:"messageType"`
			ChannelID   string `json:"channelID"`
			Key         string `json:"key"`
			Updates     []struct {
				ChannelID string `json:"channelID"`
				Version   string `json:"version"`
			} `json:"updates"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			m.violate("bad JSON %q", b)
			closeWith(1011, "bad json")
			return
		}
		if string(b) == "{}" {
			f.MessageType = "ping"
		}
		switch f.MessageType {
		case "ping":
			if !lastPing.IsZero() && time.Since(lastPing) < 45*time.Second {
				m.violate("JSON ping %s after the previous one", time.Since(lastPing))
				closeWith(1011, "excessive ping")
				return
			}
			lastPing = time.Now()
			_ = c.send(map[string]any{})
		case "register":
			if !chidRe.MatchString(f.ChannelID) {
				m.violate("register with channel id %q", f.ChannelID)
				closeWith(1011, "bad channel id")
				return
			}
			m.mu.Lock()
			m.users[uaid][f.ChannelID] = f.Key
			m.registers = append(m.registers, mozRegister{uaid, f.ChannelID, f.Key})
			m.mu.Unlock()
			_ = c.send(map[string]any{"messageType": "register", "channelID": f.ChannelID, "status": 200, "pushEndpoint": m.endpoint(uaid, f.ChannelID)})
		case "unregister":
			m.mu.Lock()
			delete(m.users[uaid], f.ChannelID)
			m.mu.Unlock()
			_ = c.send(map[string]any{"messageType": "unregister", "channelID": f.ChannelID, "status": 200})
		case "ack":
			c.wmu.Lock()
			for _, u := range f.Updates {
				if !c.sent[u.Version] {
					m.violate("ack of version %s not sent on this connection", u.Version)
				}
				delete(c.sent, u.Version)
			}
			outstanding := len(c.sent)
			c.wmu.Unlock()
			m.mu.Lock()
			m.acked += len(f.Updates)
			m.mu.Unlock()
			if outstanding == 0 && !nextBatch() {
				return
			}
		case "nack":
		default:
			m.violate("unknown messageType %q", f.MessageType)
			closeWith(1011, "unknown message type")
			return
		}
	}
}

func (m *mozilla) registersOf(uaid string) map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for _, r := range m.registers {
		if r.uaid == uaid {
			out[r.chid] = r.key
		}
	}
	return out
}

// currentUAID returns the uaid of the one connected device.
func (m *mozilla) currentUAID() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for u := range m.live {
		return u
	}
	return ""
}

// TestMozillaRules runs heraldd against the production rules of Mozilla's
// autopush: channel ids, the app's VAPID key on register, acks on the same
// connection, no unknown frame, no early JSON ping, and the uaid reset
// after a 150-message drain, after which every channel is registered again
// and every UnifiedPush app gets its new endpoint.
func TestMozillaRules(t *testing.T) {
	moz := newMozilla(t)
	w := newWorld(t, worldOptions{server: moz.wsURL(), config: "reconnect_min = \"50ms\"\nreconnect_max = \"200ms\"\n"})

	plain, eps := w.startUPApp(t, "org.example.MozPlain", []string{"tok-plain"}, "--reply", "empty")
	vapid, err := webpush.GenerateVAPIDKey()
	if err != nil {
		t.Fatal(err)
	}
	key, err := webpush.VAPIDPublicKey(vapid)
	if err != nil {
		t.Fatal(err)
	}
	keyed := w.newUPApp("org.example.MozKeyed", 2)
	res, err := w.register2(map[string]dbus.Variant{"service": dbus.MakeVariant(keyed.name), "token": dbus.MakeVariant("tok-keyed"), "vapid": dbus.MakeVariant(key)})
	if err != nil || res["success"].Value() != "REGISTRATION_SUCCEEDED" {
		t.Fatalf("Register with a VAPID key = %v, %v", res, err)
	}
	keyedEP, _ := keyed.waitRecords(t, "NewEndpoint", 1, nil)[0]["endpoint"].(string)

	uaid := moz.currentUAID()
	regs := moz.registersOf(uaid)
	if len(regs) != 2 {
		t.Fatalf("server saw registers %v, want two channels", regs)
	}
	var plainChid string
	keys := 0
	for chid, k := range regs {
		switch k {
		case key:
			keys++
		case "":
			plainChid = chid
		default:
			t.Errorf("register of %s with key %q", chid, k)
		}
	}
	if keys != 1 || plainChid == "" {
		t.Errorf("registers %v: want the app's VAPID key %s on exactly one", regs, key)
	}
	if !strings.HasSuffix(eps["tok-plain"], plainChid) {
		t.Errorf("plain app endpoint %s is not the server's for %s", eps["tok-plain"], plainChid)
	}

	// A live message is acked on the same connection.
	if err := moz.pushLive(uaid, plainChid, "live one"); err != nil {
		t.Fatal(err)
	}
	plain.waitRecords(t, "Message", 1, nil)
	waitUntil(t, waitLong, "the live message's ack", func() bool { moz.mu.Lock(); defer moz.mu.Unlock(); return moz.acked >= 1 })

	// Away, 151 messages pile up; the drain of 150 resets the uaid.
	w.daemon.Kill()
	moz.storeFor(uaid, plainChid, mozMsgLimit+1)
	w.restartDaemon()
	waitUntil(t, waitLong, "the uaid reset and both channels registered again", func() bool {
		u := moz.currentUAID()
		return u != "" && u != uaid && len(moz.registersOf(u)) == 2
	})
	newUAID := moz.currentUAID()
	for chid, k := range moz.registersOf(newUAID) {
		if regs[chid] != k {
			t.Errorf("after the reset channel %s registered with key %q, before %q", chid, k, regs[chid])
		}
	}
	// Every app is told its new endpoint.
	newPlain := plain.waitRecords(t, "NewEndpoint", 2, nil)[1]["endpoint"].(string)
	newKeyed := keyed.waitRecords(t, "NewEndpoint", 2, nil)[1]["endpoint"].(string)
	if newPlain == "" || strings.HasSuffix(newPlain, eps["tok-plain"]) || newKeyed == keyedEP {
		t.Errorf("endpoints after the uaid reset: %s, %s (before %s, %s)", newPlain, newKeyed, eps["tok-plain"], keyedEP)
	}
	// The 150 drained messages reached the app (the 151st was deleted with the user).
	got := plain.waitRecords(t, "Message", 1+mozMsgLimit, nil)
	t.Logf("app got %d messages; server resets %d; acks %d", len(got), moz.resets, moz.acked)
	if v := moz.Violations(); len(v) != 0 {
		t.Errorf("heraldd broke Mozilla's rules: %q", v)
	}
}

// TestZeroConfig: with no configuration at all (no file, no --server),
// heraldd's UnifiedPush apps use Mozilla's public push service. heraldd
// connects only once an app registers, so this test makes no network
// traffic: it checks the daemon's Server property.
func TestZeroConfig(t *testing.T) {
	w := newWorld(t, worldOptions{server: "none"})
	var v dbus.Variant
	if err := w.call("org.herald.Daemon", "/org/herald/Daemon", "org.freedesktop.DBus.Properties.Get", "org.herald.Daemon1", "Server").Store(&v); err != nil {
		t.Fatal(err)
	}
	if s, _ := v.Value().(string); s != "wss://push.services.mozilla.com/" {
		t.Errorf("Server = %q with no configuration, want Mozilla's public push service", s)
	}
}
