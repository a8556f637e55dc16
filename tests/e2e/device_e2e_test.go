package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/internal/fakesys"
	"github.com/heraldpush/herald/internal/harness"
)

// withSystem starts a private bus as heraldd's system bus with fakes of
// UPower, NetworkManager and logind on it (internal/fakesys says why they
// are fakes: Debian's upower, network-manager and systemd-logind cannot run
// on a private bus in a test). setup runs before heraldd starts.
func withSystem(t *testing.T, o *worldOptions, setup func(*fakesys.Services)) *fakesys.Services {
	t.Helper()
	bus, err := harness.StartBus(filepath.Join(t.TempDir(), "sysbus"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	sys, err := fakesys.Start(bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	if setup != nil {
		setup(sys)
	}
	o.daemonEnv = append(o.daemonEnv, "DBUS_SYSTEM_BUS_ADDRESS="+bus.Address)
	return sys
}

// popUntil pops appID's queue after each Post signal until want messages
// have come, and returns them.
func (w *world) popUntil(appID string, want int) []string {
	w.t.Helper()
	var got []string
	for len(got) < want {
		w.waitPost(appID, waitLong)
		msgs, err := w.popAll(appID)
		if err != nil {
			w.t.Fatal(err)
		}
		got = append(got, msgs...)
	}
	return got
}

// On battery at 10 % heraldd wants only high urgency: herald-server holds a
// very-low message (a high one comes at once) until power returns.
func TestUrgencyByBattery(t *testing.T) {
	var o worldOptions
	sys := withSystem(t, &o, func(s *fakesys.Services) { s.SetBattery(true, 10) })
	w := newWorld(t, o)
	const appID = "com.example.news_news"
	token := w.registerLomiri(appID)
	if st, err := w.pushWeb(token, []byte(`{"n":"newsletter"}`), 600, map[string]string{"Urgency": "very-low"}); err != nil || st != 201 {
		t.Fatalf("very-low push = %d %v", st, err)
	}
	if st, err := w.pushWeb(token, []byte(`{"n":"call"}`), 600, map[string]string{"Urgency": "high"}); err != nil || st != 201 {
		t.Fatalf("high push = %d %v", st, err)
	}
	// Order per app is kept, so had the newsletter (sent first) reached the
	// device, it would come first or with the call.
	if got := w.popUntil(appID, 1); !slices.Equal(got, []string{`{"n":"call"}`}) {
		t.Fatalf("on battery at 10 %%, the app got %q; want only the high message", got)
	}
	sys.SetBattery(false, 11) // power is back
	if got := w.popUntil(appID, 1); !slices.Equal(got, []string{`{"n":"newsletter"}`}) {
		t.Fatalf("on power, the app got %q; want the held newsletter", got)
	}
}

// After a resume from suspend, a connection that died silently during the
// sleep is replaced at once: a message pushed after the resume reaches the
// app within 2 s (without the check it would wait for the read deadline,
// the ping interval of 5 minutes plus grace).
func TestResumeReplacesDeadConnection(t *testing.T) {
	o := worldOptions{proxy: true}
	sys := withSystem(t, &o, nil)
	w := newWorld(t, o)
	const appID = "com.example.chat_chat"
	token := w.registerLomiri(appID)
	if st, err := w.pushWeb(token, []byte(`{"n":1}`), 600, nil); err != nil || st != 201 {
		t.Fatalf("push = %d %v", st, err)
	}
	w.popUntil(appID, 1) // connected and delivering
	sys.Sleep()
	if n := w.proxy.Freeze(); n != 1 {
		t.Fatalf("froze %d connections, want heraldd's one", n)
	}
	sys.Resume()
	resumed := time.Now()
	if st, err := w.pushWeb(token, []byte(`{"n":2}`), 600, nil); err != nil || st != 201 {
		t.Fatalf("push = %d %v", st, err)
	}
	w.waitPost(appID, 2*time.Second-time.Since(resumed))
	msgs, err := w.popAll(appID)
	if err != nil || !slices.Equal(msgs, []string{`{"n":2}`}) {
		t.Fatalf("after the resume the app got %q, %v", msgs, err)
	}
	t.Logf("message after the resume delivered %s after it", time.Since(resumed).Round(time.Millisecond))
}

type receiptPage struct {
	Receipts []struct {
		Seq     int64  `json:"seq"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Code    int    `json:"code"`
	} `json:"receipts"`
	Next int64 `json:"next"`
}

// receipts long-polls a receipt subscription.
func (w *world) receipts(loc string, since int64) receiptPage {
	w.t.Helper()
	resp, err := w.http.Get(fmt.Sprintf("%s?wait=8&since=%d", loc, since))
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		w.t.Fatalf("GET %s = %d, want receipts", loc, resp.StatusCode)
	}
	var p receiptPage
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		w.t.Fatal(err)
	}
	return p
}

// An app server learns that its message reached the device (the device's
// ack) and that the app took it (PopAll): RFC 8030 receipts and Herald's
// "read" receipt through the app_ack extension.
func TestReceiptsAfterAckAndPopAll(t *testing.T) {
	w := newWorld(t, worldOptions{})
	const appID = "com.example.shop_shop"
	token := w.registerLomiri(appID)
	loc := w.receiptSubscription()
	msg := w.pushWithReceipt(token, `{"order":42}`, loc)
	w.waitPost(appID, waitLong) // queued for the app: heraldd has acked it
	p := w.receipts(loc, 0)
	if len(p.Receipts) != 1 || p.Receipts[0].Message != msg || p.Receipts[0].Status != "delivered" || p.Receipts[0].Code != 100 {
		t.Fatalf("receipts after the device's ack: %+v, want delivered for %s", p.Receipts, msg)
	}
	if msgs, err := w.popAll(appID); err != nil || len(msgs) != 1 {
		t.Fatalf("PopAll = %q, %v", msgs, err)
	}
	p = w.receipts(loc, p.Next)
	if len(p.Receipts) != 1 || p.Receipts[0].Message != msg || p.Receipts[0].Status != "read" {
		t.Fatalf("receipts after PopAll: %+v, want read for %s", p.Receipts, msg)
	}
}

// receiptSubscription makes a receipt subscription on herald-server.
func (w *world) receiptSubscription() string {
	w.t.Helper()
	resp, err := w.http.Post(w.server.HTTP()+"/receipts", "", nil)
	if err != nil {
		w.t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 201 || !strings.Contains(loc, "/r/") {
		w.t.Fatalf("POST /receipts = %d, Location %q", resp.StatusCode, loc)
	}
	return loc
}

// pushWithReceipt pushes body to token asking for receipts on loc (RFC 8030
// §5.1) and returns the push message resource.
func (w *world) pushWithReceipt(token, body, loc string) string {
	w.t.Helper()
	req, _ := http.NewRequest("POST", w.server.HTTP()+"/wpush/v1/"+token, strings.NewReader(body))
	req.Header.Set("TTL", "600")
	req.Header.Set("Prefer", "respond-async")
	req.Header.Set("Link", "<"+loc+`>; rel="urn:ietf:params:push:receipt"`)
	resp, err := w.http.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	resp.Body.Close()
	msg := resp.Header.Get("Location")
	if resp.StatusCode != 202 || msg == "" {
		w.t.Fatalf("push with receipt = %d, Location %q; want 202", resp.StatusCode, msg)
	}
	return msg
}

// A UnifiedPush app's Connector2 answer is the app taking the message: the
// app server gets "delivered" and then "read".
func TestReceiptReadAfterConnector2Ack(t *testing.T) {
	w := newWorld(t, worldOptions{})
	a, eps := w.startUPApp(t, "org.example.Receipts", []string{"tok-r"}, "--reply", "id")
	loc := w.receiptSubscription()
	msg := w.pushWithReceipt(eps["tok-r"], "encrypted-looking bytes", loc)
	a.waitRecords(t, "Message", 1, nil)
	var statuses []string
	var since int64
	for len(statuses) < 2 {
		p := w.receipts(loc, since)
		for _, r := range p.Receipts {
			if r.Message != msg {
				t.Fatalf("receipt for %s, want %s", r.Message, msg)
			}
			statuses = append(statuses, r.Status)
		}
		since = p.Next
	}
	if strings.Join(statuses, ",") != "delivered,read" {
		t.Fatalf("receipts %v, want delivered then read", statuses)
	}
}

// heraldd remembers that its server holds low urgencies: after a restart on
// a low battery, its very first hello states the urgency, so a very-low
// message stored while it was down is not sent in the first drain.
func TestUrgencyHeldAcrossDaemonRestart(t *testing.T) {
	var o worldOptions
	sys := withSystem(t, &o, func(s *fakesys.Services) { s.SetBattery(true, 10) })
	w := newWorld(t, o)
	const appID = "com.example.news_news"
	token := w.registerLomiri(appID)
	if st, err := w.pushWeb(token, []byte(`{"n":"first"}`), 600, map[string]string{"Urgency": "high"}); err != nil || st != 201 {
		t.Fatalf("push = %d %v", st, err)
	}
	w.popUntil(appID, 1) // connected once: heraldd has seen the server's extensions
	w.daemon.Kill()
	<-w.daemon.Done()
	if st, err := w.pushWeb(token, []byte(`{"n":"newsletter"}`), 600, map[string]string{"Urgency": "very-low"}); err != nil || st != 201 {
		t.Fatalf("very-low push = %d %v", st, err)
	}
	if st, err := w.pushWeb(token, []byte(`{"n":"call"}`), 600, map[string]string{"Urgency": "high"}); err != nil || st != 201 {
		t.Fatalf("high push = %d %v", st, err)
	}
	w.restartDaemon()
	if got := w.popUntil(appID, 1); !slices.Equal(got, []string{`{"n":"call"}`}) {
		t.Fatalf("after the restart on battery the app got %q; want only the high message", got)
	}
	sys.SetBattery(false, 11)
	if got := w.popUntil(appID, 1); !slices.Equal(got, []string{`{"n":"newsletter"}`}) {
		t.Fatalf("on power the app got %q; want the newsletter", got)
	}
}
