package server

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/protocol"
)

type receiptPage struct {
	Receipts []Receipt `json:"receipts"`
	Next     int64     `json:"next"`
}

// receipts long-polls the receipt subscription at loc for up to 10 s.
func (ts *testServer) receipts(loc string, since int64) receiptPage {
	ts.t.Helper()
	r := ts.do("GET", loc+"?wait=10&since="+strconv.FormatInt(since, 10), nil, nil)
	if r.status != 200 {
		ts.t.Fatalf("GET %s = %d %s, want 200 with receipts", loc, r.status, r.body)
	}
	var p receiptPage
	decodeJSON(ts.t, r.body, &p)
	return p
}

func (ts *testServer) receiptSubscription() string {
	ts.t.Helper()
	r := ts.do("POST", "/receipts", nil, nil)
	loc := r.header.Get("Location")
	if r.status != 201 || !strings.HasPrefix(loc, ts.base+"/r/") {
		ts.t.Fatalf("POST /receipts = %d, Location %q", r.status, loc)
	}
	return loc
}

// An app server's receipt subscription gets "delivered" when the device acks
// and "read" when the device reports that the app took the message.
func TestReceipts(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.dial()
	d.send(&protocol.Hello{UseWebPush: true})
	h, ok := d.recv().(*protocol.Hello)
	if !ok || !h.Supports(protocol.ExtUrgency) || !h.Supports(protocol.ExtAppAck) {
		t.Fatalf("hello reply %#v does not name the extensions", h)
	}
	d.uaid = h.UAID
	ep := d.register(protocol.NewChannelID(), "")
	loc := ts.receiptSubscription()

	// RFC 8030 §5.1: Prefer: respond-async and the receipt Link → 202.
	r := ts.push(ep, []byte("x"), map[string]string{"Prefer": "respond-async",
		"Link": "<" + loc + `>; rel="urn:ietf:params:push:receipt"`})
	if r.status != 202 {
		t.Fatalf("push with receipt = %d %s, want 202", r.status, r.body)
	}
	msg := r.header.Get("Location")
	// The earlier drafts' Push-Receipt header works too (201 without respond-async).
	r2 := ts.push(ep, []byte("y"), map[string]string{"Push-Receipt": loc})
	if r2.status != 201 {
		t.Fatalf("push with Push-Receipt = %d %s", r2.status, r2.body)
	}
	n1, n2 := d.notification(), d.notification()
	if r := ts.do("GET", loc+"?wait=0", nil, nil); r.status != 204 {
		t.Fatalf("receipts before the ack: %d %s, want 204", r.status, r.body)
	}
	d.ack(n1, n2)
	p := ts.receipts(loc, 0)
	for len(p.Receipts) < 2 {
		p.Receipts = append(p.Receipts, ts.receipts(loc, 0).Receipts[len(p.Receipts):]...)
	}
	if p.Receipts[0].Message != msg || p.Receipts[0].Status != ReceiptDelivered || p.Receipts[0].Code != 100 ||
		p.Receipts[1].Message != r2.header.Get("Location") {
		t.Fatalf("receipts %+v, want delivered for %s then %s", p.Receipts, msg, r2.header.Get("Location"))
	}
	next := p.Receipts[1].Seq

	// The app takes the first message.
	d.send(&protocol.AppAck{Updates: []protocol.Update{{ChannelID: n1.ChannelID, Version: n1.Version}}})
	p = ts.receipts(loc, next)
	if len(p.Receipts) != 1 || p.Receipts[0].Status != ReceiptRead || p.Receipts[0].Message != msg {
		t.Fatalf("receipts after app_ack %+v, want read for %s", p.Receipts, msg)
	}
	// since= acknowledged the earlier ones: they are gone.
	if p2 := ts.receipts(loc, 0); len(p2.Receipts) != 1 || p2.Receipts[0].Seq != p.Receipts[0].Seq {
		t.Fatalf("receipts after since=%d: %+v", next, p2.Receipts)
	}
	// A second app_ack of the same message gives no second receipt.
	d.send(&protocol.AppAck{Updates: []protocol.Update{{ChannelID: n1.ChannelID, Version: n1.Version}}})
	d.quiet()
	if r := ts.do("GET", loc+"?since="+strconv.FormatInt(p.Next, 10), nil, nil); r.status != 204 {
		t.Fatalf("after all receipts: %d %s, want 204", r.status, r.body)
	}

	// Errors: an unknown subscription on a push is 400, on GET 404.
	bad := ts.base + "/r/" + newToken()
	if r := ts.push(ep, []byte("z"), map[string]string{"Push-Receipt": bad}); r.status != 400 {
		t.Errorf("push with unknown receipt subscription = %d, want 400", r.status)
	}
	if r := ts.push(ep, []byte("z"), map[string]string{"Push-Receipt": ts.base + "/r/nope"}); r.status != 400 {
		t.Errorf("push with malformed receipt subscription = %d, want 400", r.status)
	}
	if r := ts.do("GET", bad, nil, nil); r.status != 404 {
		t.Errorf("GET unknown receipt subscription = %d, want 404", r.status)
	}
	if r := ts.do("GET", loc+"?since=-1", nil, nil); r.status != 400 {
		t.Errorf("since=-1 = %d, want 400", r.status)
	}
}

// A message with a receipt that expires before the device takes it gets an
// "expired" receipt (RFC 8030: 410).
func TestReceiptExpired(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.SweepInterval = 20 * time.Millisecond })
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	loc := ts.receiptSubscription()
	r := ts.push(ep, []byte("x"), map[string]string{"Push-Receipt": loc, "TTL": "30"})
	if r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}
	ts.clock.Advance(time.Minute)
	p := ts.receipts(loc, 0)
	if len(p.Receipts) != 1 || p.Receipts[0].Status != ReceiptExpired || p.Receipts[0].Message != r.header.Get("Location") {
		t.Fatalf("receipts %+v, want expired", p.Receipts)
	}
}

// A device that wants only higher urgencies is not sent lower ones; they
// stay stored and come when it lowers its minimum.
func TestUrgencyHeld(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.send(&protocol.Urgency{Min: "normal"})
	if u, ok := d.recv().(*protocol.Urgency); !ok || u.Status != 200 {
		t.Fatalf("urgency reply %#v", u)
	}
	low := ts.push(ep, []byte("newsletter"), map[string]string{"Urgency": "very-low"})
	deflt := ts.push(ep, []byte("default"), nil)
	if low.status != 201 || deflt.status != 201 {
		t.Fatalf("pushes = %d, %d", low.status, deflt.status)
	}
	if n := d.notification(); string(mustBody(t, n)) != "default" {
		t.Fatalf("got %q first, want the normal message", mustBody(t, n))
	}
	d.quiet() // the very-low one is held
	high := ts.push(ep, []byte("call"), map[string]string{"Urgency": "high"})
	if high.status != 201 {
		t.Fatal(high.status)
	}
	hn := d.notification()
	if string(mustBody(t, hn)) != "call" {
		t.Fatalf("got %q, want the high message at once", mustBody(t, hn))
	}
	d.ack(hn)
	d.quiet() // the ack is handled
	// Reconnecting with urgency in hello keeps holding it.
	d.ws.Close()
	d2 := ts.dial()
	d2.send(&protocol.Hello{UAID: d.uaid, UseWebPush: true, Urgency: "low"})
	if h, ok := d2.recv().(*protocol.Hello); !ok || h.UAID != d.uaid {
		t.Fatalf("hello %#v", h)
	}
	dn := d2.notification()
	if string(mustBody(t, dn)) != "default" {
		t.Fatalf("redelivered %q, want only the normal message", mustBody(t, dn))
	}
	d2.quiet()
	d2.ack(dn)
	// Power is back: everything is wanted.
	d2.send(&protocol.Urgency{Min: "very-low"})
	if u, ok := d2.recv().(*protocol.Urgency); !ok || u.Status != 200 {
		t.Fatalf("urgency reply %#v", u)
	}
	n := d2.notification()
	if string(mustBody(t, n)) != "newsletter" || n.Version != strings.TrimPrefix(low.header.Get("Location"), ts.base+"/m/") {
		t.Fatalf("got %q, want the held newsletter", mustBody(t, n))
	}
	if got := ts.pending(d.uaid); got != 1 {
		t.Errorf("pending = %d before the newsletter's ack, want 1", got)
	}
}

func mustBody(t *testing.T, n *protocol.Notification) []byte {
	t.Helper()
	b, err := n.Body()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Urgency, Receipt and receipt watches survive the store (both kinds).
func TestStoreUrgencyReceiptWatches(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		uaid := protocol.NewUAID()
		chid := protocol.NewChannelID()
		if err := st.AddDevice(ctx, uaid, time.Now()); err != nil {
			t.Fatal(err)
		}
		m := newMsg(uaid, chid, "", time.Hour)
		m.Urgency, m.Receipt, m.Headers = "low", "sub1", map[string]string{"encoding": "aes128gcm"}
		plain := newMsg(uaid, chid, "", time.Hour)
		mustPut(t, st, m, PutOptions{})
		mustPut(t, st, plain, PutOptions{})
		ms, err := st.Pending(ctx, uaid, 0, 10, time.Now())
		if err != nil || len(ms) != 2 {
			t.Fatalf("Pending = %d, %v", len(ms), err)
		}
		if ms[0].Urgency != "low" || ms[0].Receipt != "sub1" || len(ms[0].Headers) != 1 || ms[0].Headers["encoding"] != "aes128gcm" {
			t.Errorf("stored message %+v", ms[0])
		}
		if ms[1].Urgency != "" || ms[1].Receipt != "" || ms[1].Headers != nil {
			t.Errorf("plain message %+v", ms[1])
		}

		w := ReceiptWatch{UAID: uaid, ChannelID: chid, Version: m.Version, Sub: "sub1", MsgID: m.ID, Expiry: time.Now().Add(time.Hour)}
		gone := ReceiptWatch{UAID: uaid, ChannelID: chid, Version: "v2", Sub: "sub1", MsgID: "m2", Expiry: time.Now().Add(time.Second)}
		done := ReceiptWatch{UAID: uaid, ChannelID: chid, Version: "v3", Sub: "sub1", MsgID: "m3", Expiry: time.Now().Add(time.Second), Delivered: true}
		for _, x := range []ReceiptWatch{w, gone, done} {
			if err := st.Watch(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		w.Delivered = true // replaces
		if err := st.Watch(ctx, w); err != nil {
			t.Fatal(err)
		}
		exp, err := st.SweepWatches(ctx, time.Now().Add(time.Minute))
		if err != nil || len(exp) != 1 || exp[0].MsgID != "m2" {
			t.Fatalf("SweepWatches = %+v, %v; want only the undelivered m2", exp, err)
		}
		got, err := st.TakeWatches(ctx, uaid, []Ref{{chid, m.Version}, {chid, "v3"}, {chid, "unknown"}})
		if err != nil || len(got) != 1 || got[0].MsgID != m.ID || !got[0].Delivered || got[0].Sub != "sub1" {
			t.Fatalf("TakeWatches = %+v, %v", got, err)
		}
		if again, err := st.TakeWatches(ctx, uaid, []Ref{{chid, m.Version}}); err != nil || len(again) != 0 {
			t.Fatalf("second TakeWatches = %+v, %v", again, err)
		}
	})
}

// A receipt subscription keeps at most MaxReceipts unread receipts: the
// oldest go, counted.
func TestReceiptsBounded(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxReceipts = 3 })
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	loc := ts.receiptSubscription()
	var locs []string
	for i := range 5 {
		r := ts.push(ep, []byte{byte('a' + i)}, map[string]string{"Push-Receipt": loc})
		if r.status != 201 {
			t.Fatalf("push %d = %d", i, r.status)
		}
		locs = append(locs, r.header.Get("Location"))
		d.ack(d.notification())
		d.quiet() // the ack and its receipt are handled before the next push
	}
	p := ts.receipts(loc, 0)
	var got []string
	for _, r := range p.Receipts {
		got = append(got, r.Message)
	}
	if strings.Join(got, " ") != strings.Join(locs[2:], " ") {
		t.Fatalf("receipts kept %q, want the newest 3 %q", got, locs[2:])
	}
	if m := ts.do("GET", "/metrics", nil, nil); !strings.Contains(string(m.body), "herald_receipts_dropped_total 2\n") {
		t.Errorf("metrics lack herald_receipts_dropped_total 2")
	}
}

// An app_ack that overtakes the device's ack still gives "delivered" before
// "read", and the later ack no second receipt.
func TestReceiptAppAckBeforeAck(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	loc := ts.receiptSubscription()
	if r := ts.push(ep, []byte("x"), map[string]string{"Push-Receipt": loc}); r.status != 201 {
		t.Fatal(r.status)
	}
	n := d.notification()
	d.send(&protocol.AppAck{Updates: []protocol.Update{{ChannelID: n.ChannelID, Version: n.Version}}})
	d.ack(n)
	d.quiet()
	var statuses []string
	for _, r := range ts.receipts(loc, 0).Receipts {
		statuses = append(statuses, r.Status)
	}
	if strings.Join(statuses, ",") != "delivered,read" {
		t.Fatalf("receipts %v, want delivered then read only", statuses)
	}
}
