package server

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/internal/pgtest"
	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/protocol/lomiri"
)

// onPostgres is the test that runs the server's scenarios again with a
// PostgresStore, the server being a node (startServer checks the name).
const onPostgres = "TestOnPostgres"

func TestOnPostgres(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"HelloUAID", TestHelloUAID},
		{"PushDeliverAck", TestPushDeliverAck},
		{"UnackedRedeliveredInBatches", TestUnackedRedeliveredInBatches},
		{"UnackedRedeliveredAfterReconnect", TestUnackedRedeliveredAfterReconnect},
		{"Unregister", TestUnregister},
		{"WebPushPlaintext", TestWebPushPlaintext},
		{"TopicReplacesPending", TestTopicReplacesPending},
		{"TTLZero", TestTTLZero},
		{"ExpiredNeverDelivered", TestExpiredNeverDelivered},
		{"CancelMessage", TestCancelMessage},
		{"VAPIDRestricted", TestVAPIDRestricted},
		{"SimplePushKeepsLatest", TestSimplePushKeepsLatest},
		{"Notify", TestNotify},
		{"SecondConnectionReplacesFirst", TestSecondConnectionReplacesFirst},
		{"MaxPendingDropsOldest", TestMaxPendingDropsOldest},
		{"Receipts", TestReceipts},
		{"ReceiptExpired", TestReceiptExpired},
		{"UrgencyHeld", TestUrgencyHeld},
		{"ReceiptsBounded", TestReceiptsBounded},
		{"LomiriRegisterNotifyDeliver", TestLomiriRegisterNotifyDeliver},
		{"LomiriUnackedRedelivered", TestLomiriUnackedRedelivered},
		{"LomiriPendingLimitReplaceClear", TestLomiriPendingLimitReplaceClear},
		{"LomiriBroadcast", TestLomiriBroadcast},
		{"LomiriIdleDeviceDeleted", TestLomiriIdleDeviceDeleted},
	} {
		t.Run(tc.name, tc.fn)
	}
}

// startNodes runs n servers as nodes on one fresh PostgreSQL database.
func startNodes(t *testing.T, n int) []*testServer {
	t.Helper()
	db := pgtest.Database(t)
	var nodes []*testServer
	for range n {
		nodes = append(nodes, startServer(t, func(c *Config) {
			c.DBPath = db
			c.NodeURL = c.PublicURL
		}))
	}
	return nodes
}

// A device connected to node A gets at once what an app server posts to
// node B, and the ack on A deletes it for every node.
func TestNodesDeliverAcross(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	d := a.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	epB := strings.Replace(ep, a.base, b.base, 1)
	for i := range 3 {
		if r := b.push(epB, []byte{byte(i)}, nil); r.status != 201 {
			t.Fatalf("post to node B: %d %s", r.status, r.body)
		}
		n := d.notification()
		if string(n.Data) == "" {
			t.Fatalf("notification %d without data", i)
		}
		d.ack(n)
	}
	// TTL 0 reaches the device across nodes too (it is never stored).
	if r := b.push(epB, []byte("now"), map[string]string{"TTL": "0"}); r.status != 201 {
		t.Fatalf("TTL 0 post: %d", r.status)
	}
	d.ack(d.notification())
	d.quiet() // the acks are handled (and committed) before the ping reply
	if n := b.pending(d.uaid); n != 0 {
		t.Errorf("%d acked messages still pending", n)
	}
	if got := metric(t, b, `herald_node_forwarded_total{result="delivered"}`); got != "4" {
		t.Errorf("node B forwarded %s messages, want 4", got)
	}
}

// A second connection of the device on another node replaces the first:
// the first node closes its websocket, posts go to the new node.
func TestNodesSecondConnectionReplacesFirst(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	first := a.connect("")
	ep := first.register(protocol.NewChannelID(), "")
	second := b.connect(first.uaid)
	if code := first.closed(); code != protocol.CloseNormal {
		t.Fatalf("first connection closed with %d, want %d", code, protocol.CloseNormal)
	}
	if r := a.push(ep, []byte("x"), nil); r.status != 201 {
		t.Fatalf("post: %d", r.status)
	}
	second.ack(second.notification())
	second.quiet()
}

// A route to a node that no longer holds the device is cleared by the first
// post that finds it stale; the message stays stored for the next connection.
func TestNodesStaleRouteCleared(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	d := a.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	uaid := d.uaid
	ctx := context.Background()
	// A route as a crashed node leaves it: to a node that holds nothing.
	// (Node A clears only its own route when the device goes.)
	dead := Route{Node: "http://127.0.0.1:1", Conn: 42}
	d.ws.Close()
	if _, err := a.srv.store.ClaimRoute(ctx, uaid, dead); err != nil {
		t.Fatal(err)
	}
	if r := b.push(strings.Replace(ep, a.base, b.base, 1), []byte("kept"), nil); r.status != 201 {
		t.Fatalf("post: %d", r.status)
	}
	if _, err := b.srv.store.Route(ctx, uaid); err != ErrNotFound {
		t.Fatalf("stale route still there: %v", err)
	}
	d2 := b.connect(uaid)
	if n := d2.notification(); n.Data != protocol.EncodeBase64URL([]byte("kept")) {
		t.Fatalf("got %q", n.Data)
	}
}

// A Lomiri device connected to node A gets at once a /broadcast posted to
// node B (node B tells every node that holds devices).
func TestNodesLomiriBroadcast(t *testing.T) {
	db := pgtest.Database(t)
	nodeOn := func(c *Config) {
		c.DBPath = db
		c.NodeURL = c.PublicURL
	}
	_, addrA, certA := startLomiri(t, nodeOn)
	b, _, _ := startLomiri(t, nodeOn)
	d := dialLomiri(t, addrA, certA)
	d.connect("BCASTDEV", map[string]any{"channel": "ubports/stable", "device": "mako"}, map[string]int64{"0": 0})
	d.quiet()
	if st, out := b.postJSON("/broadcast", map[string]any{"channel": "system", "expire_on": future(),
		"data": map[string]any{"ubports/stable/mako": []any{7, "r7"}}}); st != 200 {
		t.Fatalf("/broadcast to node B = %d %v", st, out)
	}
	m, ok := d.recv().(*lomiri.Broadcast)
	if !ok || m.TopLevel != 1 || len(m.Payloads) != 1 || !strings.Contains(string(m.Payloads[0]), "r7") {
		t.Fatalf("got %#v, want the broadcast posted to node B", m)
	}
	d.send(&lomiri.Ack{})
	d.quiet()
}

// Node calls need the node secret.
func TestNodeCallsAuthenticated(t *testing.T) {
	a := startNodes(t, 1)[0]
	for _, auth := range []string{"", "HeraldNode wrong", "Bearer x"} {
		h := map[string]string{"Content-Type": "application/json"}
		if auth != "" {
			h["Authorization"] = auth
		}
		for _, p := range []string{nodeDeliverPath, nodeReplacePath} {
			if r := a.do("POST", p, h, []byte(`{"uaid":"x"}`)); r.status != http.StatusUnauthorized {
				t.Errorf("POST %s with %q: %d, want 401", p, auth, r.status)
			}
		}
	}
	h := map[string]string{"Authorization": nodeAuthScheme + a.srv.node.secret}
	if r := a.do("POST", nodeDeliverPath, h, []byte(`{"uaid":"`+protocol.NewUAID()+`","chid":"c","version":"v"}`)); r.status != http.StatusNotFound {
		t.Errorf("deliver to an unconnected device with the secret: %d, want 404", r.status)
	}
	if r := a.do("POST", nodeDeliverPath, h, []byte(`{`)); r.status != http.StatusBadRequest {
		t.Errorf("bad body: %d, want 400", r.status)
	}
}

// metric returns the value of a metric line of the server's /metrics.
func metric(t *testing.T, ts *testServer, name string) string {
	t.Helper()
	r := ts.do("GET", "/metrics", nil, nil)
	for _, line := range strings.Split(string(r.body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// A Lomiri device connected to node A gets at once what an app server posts
// to node B's /notify; a second connection of it on node B replaces the one
// on A.
func TestNodesLomiriDeliverAcross(t *testing.T) {
	db := pgtest.Database(t)
	node := func(c *Config) { c.DBPath = db; c.NodeURL = c.PublicURL }
	a, aAddr, aCert := startLomiri(t, node)
	b, bAddr, bCert := startLomiri(t, node)
	const dev, appID = "DEVX", "com.example.x_x"
	tok := b.lomiriRegister(dev, appID)
	d := dialLomiri(t, aAddr, aCert)
	d.connect(dev, nil, nil)
	for i := range 3 {
		if st, out := b.postJSON("/notify", map[string]any{"appid": appID, "token": tok, "expire_on": future(), "data": i}); st != 200 {
			t.Fatalf("/notify on node B = %d %v", st, out)
		}
		ns := d.notifications()
		if len(ns) != 1 || string(ns[0].Payload) != strconv.Itoa(i) {
			t.Fatalf("device on node A got %+v, want %d", ns, i)
		}
		d.send(&lomiri.Ack{})
	}
	d.quiet()
	if n := a.pending(LomiriUAIDPrefix + dev); n != 0 {
		t.Errorf("%d acked messages still pending", n)
	}
	if got := metric(t, b, `herald_node_forwarded_total{result="delivered"}`); got != "3" {
		t.Errorf("node B forwarded %s messages, want 3", got)
	}
	// The device moves to node B: node A drops its old connection.
	d2 := dialLomiri(t, bAddr, bCert)
	d2.connect(dev, nil, nil)
	d.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := lomiri.ReadFrame(d.br, 0); err == nil {
		t.Fatal("the connection on node A is still open after the device connected to node B")
	}
	if st, _ := a.postJSON("/notify", map[string]any{"appid": appID, "token": tok, "expire_on": future(), "data": "moved"}); st != 200 {
		t.Fatal(st)
	}
	if ns := d2.notifications(); len(ns) != 1 || string(ns[0].Payload) != `"moved"` {
		t.Fatalf("device on node B got %+v", ns)
	}
	d2.send(&lomiri.Ack{})
}

// A message handed at once to a connection on the accepting node is also sent
// where the route points once it is committed, when the route names another
// connection (the device reconnected to another node while this connection is
// half-open).
func TestNodesEarlyDeliveryFollowsRoute(t *testing.T) {
	nodes := startNodes(t, 2)
	a, b := nodes[0], nodes[1]
	d := a.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	// Node B serves: its start clears the routes naming it, which would
	// otherwise race with the claim below.
	resp, err := http.Get(b.base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The device's route as node B's claim would leave it (B called A's
	// replace, which has not arrived yet).
	if _, err := a.srv.store.ClaimRoute(context.Background(), d.uaid, Route{Node: b.base, Conn: 42}); err != nil {
		t.Fatal(err)
	}
	if r := a.push(ep, []byte("x"), nil); r.status != 201 {
		t.Fatalf("post: %d", r.status)
	}
	d.notification() // the half-open connection got it at once, unacked
	// …and node A passed it on to node B (which does not hold connection 42).
	if got := metric(t, a, `herald_node_forwarded_total{result="not_connected"}`); got != "1" {
		t.Fatalf("node A forwarded %q messages to the device's new node, want 1", got)
	}
}
