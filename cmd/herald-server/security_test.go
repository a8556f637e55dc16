package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/internal/wsbomb"
	"github.com/heraldpush/herald/protocol"
)

// The attacks of issue 11, replayed against the real herald-server binary.

// endpoint registers a new channel on d and returns its endpoint URL.
func (d *device) endpoint() string {
	d.t.Helper()
	d.send(&protocol.Register{ChannelID: protocol.NewChannelID()})
	r, ok := d.recv().(*protocol.Register)
	if !ok || r.Status != 200 {
		d.t.Fatalf("register = %#v", r)
	}
	return r.PushEndpoint
}

// procStatus returns a field of /proc/<pid>/status in kB.
func procStatus(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestPoisonedAesgcmHeaders: an aesgcm push whose Encryption and Crypto-Key
// headers JSON-escape to more than a frame used to be stored (201) and then
// block the device for its TTL. Now it is refused, and 50 messages posted
// afterwards all arrive.
func TestPoisonedAesgcmHeaders(t *testing.T) {
	p := start(t, filepath.Join(t.TempDir(), "herald-server.db"))
	d := connect(t, p, "")
	ep := d.endpoint()

	poison := strings.Repeat("<", 8000)
	req, _ := http.NewRequest("POST", ep, strings.NewReader("xx"))
	req.Header.Set("TTL", "2592000")
	req.Header.Set("Content-Encoding", "aesgcm")
	req.Header.Set("Encryption", poison)
	req.Header.Set("Crypto-Key", poison)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("poisoned aesgcm post: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	if resp.StatusCode != 400 && resp.StatusCode != 413 {
		t.Fatalf("poisoned aesgcm post = %d, want 400 or 413", resp.StatusCode)
	}

	// A valid aesgcm post still goes through.
	req, _ = http.NewRequest("POST", ep, strings.NewReader("xx"))
	req.Header.Set("TTL", "60")
	req.Header.Set("Content-Encoding", "aesgcm")
	req.Header.Set("Encryption", `salt="lngarbyKfMoi9Z75xYXmkg"`)
	req.Header.Set("Crypto-Key", `dh=BDgpRKok2GZZDmS4r63vbJSUtcQx4Fq1V58-6-3NbZzSTlZsQiCEDTQy3CZ0ZMsqeqsEb7qW2blQHA4S48fynTk;p256ecdsa=BAa`)
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("valid aesgcm post = %d", resp.StatusCode)
	}
	if n, ok := d.recv().(*protocol.Notification); !ok || n.Headers["encryption"] != `salt="lngarbyKfMoi9Z75xYXmkg"` {
		t.Fatalf("valid aesgcm message = %#v", n)
	}

	const count = 50
	for i := range count {
		if code := post(t, ep, fmt.Sprintf("message %d", i)); code != 201 {
			t.Fatalf("post %d = %d", i, code)
		}
	}
	got := 0
	for got < count {
		n, ok := d.recv().(*protocol.Notification)
		if !ok {
			t.Fatalf("got %#v", n)
		}
		d.send(&protocol.Ack{Updates: []protocol.Update{{ChannelID: n.ChannelID, Version: n.Version}}})
		got++
	}
	t.Logf("%d of %d normal messages posted after the poisoned one arrived", got, count)
	d.quiet()
}

// TestUnackedMessageDoesNotBlock: a stored message the device never acks is
// sent at most --max-attempts times and then dropped (counted in
// herald_messages_undeliverable_total); while it is unacked the rest of the
// stored messages and a live one still arrive (after --ack-timeout the
// next batch follows).
func TestUnackedMessageDoesNotBlock(t *testing.T) {
	db := filepath.Join(t.TempDir(), "herald-server.db")
	p := start(t, db, "--max-attempts", "3", "--ack-timeout", "300ms")
	d := connect(t, p, "")
	ep := d.endpoint()
	uaid := d.uaid
	d.ws.Close()

	// Stored while away: one message the device will never ack, then 15 more.
	if code := post(t, ep, "poison"); code != 201 {
		t.Fatal(code)
	}
	for i := range 15 {
		if code := post(t, ep, fmt.Sprintf("stored %d", i)); code != 201 {
			t.Fatal(code)
		}
	}
	for attempt := 1; attempt <= 4; attempt++ {
		d = connect(t, p, uaid)
		if attempt == 4 {
			if code := post(t, ep, "live"); code != 201 {
				t.Fatal(code)
			}
		}
		seen := map[string]bool{}
		poison, live := false, false
		for !live || (!poison && attempt < 4) || (attempt == 1 && len(seen) < 15) {
			n, ok := d.recv().(*protocol.Notification)
			if !ok {
				t.Fatalf("attempt %d: got %#v", attempt, n)
			}
			body, _ := n.Body()
			switch s := string(body); s {
			case "poison":
				if attempt == 4 {
					t.Fatalf("poison sent a 4th time")
				}
				poison = true
				// Never acked. A live message must not wait for it.
				if code := post(t, ep, "live"); code != 201 {
					t.Fatal(code)
				}
				continue
			case "live":
				live = true
			default:
				seen[s] = true
			}
			d.send(&protocol.Ack{Updates: []protocol.Update{{ChannelID: n.ChannelID, Version: n.Version}}})
		}
		d.quiet()
		t.Logf("attempt %d: poison sent %v (not acked), %d stored messages and the live one arrived", attempt, poison, len(seen))
		d.ws.Close()
	}
	m := metrics(t, p)
	if !strings.Contains(m, "herald_messages_undeliverable_total 1\n") {
		t.Errorf("metrics:\n%s", grep(m, "undeliverable"))
	}
	t.Log(grep(m, "herald_messages_undeliverable_total "))
}

func metrics(t *testing.T, p *proc) string {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestCompressionBomb: 8 connections each send a 61 KB hello frame that
// inflates to 60 MiB. The server must close each with 1009 and stay under
// 100 MB of resident memory (it reached 1.2 GB before).
func TestCompressionBomb(t *testing.T) {
	p := start(t, filepath.Join(t.TempDir(), "herald-server.db"))
	pid := p.cmd.Process.Pid
	bomb := wsbomb.Deflate(60 << 20)
	if len(bomb) >= protocol.MaxFrameBytes {
		t.Fatalf("bomb of %d bytes is over the wire limit", len(bomb))
	}
	frame := wsbomb.Frame(bomb, true, true)
	before := procStatus(t, pid, "VmRSS")
	var wg sync.WaitGroup
	codes := make([]int, 8)
	for i := range codes {
		wg.Go(func() {
			c, err := wsbomb.Dial(p.addr)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			if _, err := c.Write(frame); err != nil {
				t.Errorf("write: %v", err)
				return
			}
			codes[i], err = c.ReadClose(30 * time.Second)
			if err != nil {
				t.Errorf("connection %d: no close frame: %v", i, err)
			}
		})
	}
	wg.Wait()
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("8 × %d-byte frames inflating to 60 MiB: close codes %v; server RSS %d kB before, peak %d kB", len(bomb), codes, before, peak)
	for i, c := range codes {
		if c != websocket.CloseMessageTooBig {
			t.Errorf("connection %d closed with %d, want 1009", i, c)
		}
	}
	if peak > 100<<10 {
		t.Errorf("server peak RSS %d kB, want < 100 MB", peak)
	}
	// The server still serves devices.
	d := connect(t, p, "")
	d.endpoint()
}

// TestChannelCap: 10,000 registrations on one device stop at --max-channels
// (default 1000) with register status 413; unregistering frees a place.
func TestChannelCap(t *testing.T) {
	p := start(t, filepath.Join(t.TempDir(), "herald-server.db"), "--sync", "normal")
	d := connect(t, p, "")
	const n = 10000
	start := time.Now()
	go func() {
		for range n {
			b, _ := protocol.Encode(&protocol.Register{ChannelID: protocol.NewChannelID()})
			if d.ws.WriteMessage(websocket.TextMessage, b) != nil {
				return
			}
		}
	}()
	statuses := map[int]int{}
	var first string
	for range n {
		r, ok := d.recv().(*protocol.Register)
		if !ok {
			t.Fatalf("got %#v", r)
		}
		statuses[r.Status]++
		if r.Status == 200 {
			first = r.ChannelID
		}
	}
	t.Logf("%d registrations on one device in %v: statuses %v", n, time.Since(start).Round(time.Millisecond), statuses)
	if statuses[200] != 1000 || statuses[413] != n-1000 {
		t.Fatalf("statuses %v, want 1000 × 200 and %d × 413", statuses, n-1000)
	}
	d.send(&protocol.Unregister{ChannelID: first})
	if r, ok := d.recv().(*protocol.Unregister); !ok || r.Status != 200 {
		t.Fatalf("unregister = %#v", r)
	}
	d.endpoint()
}

// TestUpgradeLimits: one client address gets at most --max-conns-ip
// websockets at once and --rate-limit-upgrade upgrades a second; beyond
// either the upgrade is answered 429 with Retry-After.
func TestUpgradeLimits(t *testing.T) {
	p := start(t, filepath.Join(t.TempDir(), "herald-server.db"), "--max-conns-ip", "3")
	var held []*device
	for range 3 {
		held = append(held, connect(t, p, ""))
	}
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/", nil)
	if err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("4th connection: %v %v", err, resp)
	}
	t.Logf("4th concurrent websocket from one address: %s, Retry-After %s", resp.Status, resp.Header.Get("Retry-After"))
	held[0].ws.Close()
	// The server notices the close and frees the place.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ws, resp, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/", nil)
		if err == nil {
			ws.Close()
			break
		}
		if resp == nil || resp.StatusCode != 429 || time.Now().After(deadline) {
			t.Fatalf("after a close: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// 2000 new devices from one address with the default upgrade rate.
	q := start(t, filepath.Join(t.TempDir(), "herald-server.db"))
	ok, refused := 0, 0
	for range 2000 {
		c, err := wsbomb.Dial(q.addr)
		switch {
		case err == nil:
			ok++
			c.Close()
		case c != nil && c.Response.StatusCode == 429:
			refused++
		default:
			t.Fatalf("dial: %v", err)
		}
	}
	t.Logf("2000 upgrades from one address: %d accepted, %d answered 429", ok, refused)
	if refused == 0 || ok < 200 {
		t.Errorf("%d accepted, %d refused; want the first 200 accepted and then 429s", ok, refused)
	}
}

// TestIdleDeviceDeleted: a device away longer than --device-idle is deleted
// with its channels (its endpoint answers 404) and gets a new uaid; a
// connected one is kept however long it stays.
func TestIdleDeviceDeleted(t *testing.T) {
	p := start(t, filepath.Join(t.TempDir(), "herald-server.db"), "--device-idle", "1s", "--sweep-interval", "100ms")
	stay := connect(t, p, "")
	stayEP := stay.endpoint()
	d := connect(t, p, "")
	ep := d.endpoint()
	d.ws.Close()
	deadline := time.Now().Add(20 * time.Second)
	for post(t, ep, "x") != 404 {
		if time.Now().After(deadline) {
			t.Fatal("endpoint of an idle device still accepted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The connected device outlived several idle times.
	if code := post(t, stayEP, "still here"); code != 201 {
		t.Fatalf("connected device's endpoint = %d", code)
	}
	if n, ok := stay.recv().(*protocol.Notification); !ok {
		t.Fatalf("got %#v", n)
	}
	d2 := connect(t, p, d.uaid)
	if d2.uaid == d.uaid {
		t.Fatal("deleted device kept its uaid")
	}
	t.Log(grep(metrics(t, p), "herald_devices_deleted_idle_total "))
}

// TestDatabaseMode: the database and its WAL are created 0600.
func TestDatabaseMode(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "herald-server.db")
	p := start(t, db)
	d := connect(t, p, "")
	d.endpoint()
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s %v", filepath.Base(f), st.Mode())
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(f), st.Mode())
		}
	}
}

// TestReplacedConnectionNormalClose: whoever learns a uaid can take the
// device's place; the replaced connection gets a normal close (1000), so
// the real device redials after its short back-off and takes it back,
// instead of 4774 ("do not reconnect soon": 5 minutes without push).
func TestReplacedConnectionNormalClose(t *testing.T) {
	p := start(t, filepath.Join(t.TempDir(), "herald-server.db"))
	real := connect(t, p, "")
	thief := connect(t, p, real.uaid)
	real.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := real.ws.ReadMessage()
	ce, ok := err.(*websocket.CloseError)
	if !ok {
		t.Fatalf("replaced connection: %v, want a close frame", err)
	}
	t.Logf("replaced connection closed with %d %q", ce.Code, ce.Text)
	if ce.Code != protocol.CloseNormal {
		t.Fatalf("replaced connection closed with %d, want 1000", ce.Code)
	}
	// The real device comes back and the thief is replaced in turn.
	again := connect(t, p, real.uaid)
	if again.uaid != real.uaid {
		t.Fatalf("uaid changed")
	}
	thief.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := thief.ws.ReadMessage(); !websocket.IsCloseError(err, protocol.CloseNormal) {
		t.Fatalf("thief's connection: %v", err)
	}
}

// TestLiveNotHeldBehindOtherAppsDrain: app A's stored batch that the device
// never acks (for up to --ack-timeout, 30 s here) holds neither app B's
// live message, which arrives at once, nor breaks A's order: A's live
// message still comes after A's stored ones.
func TestLiveNotHeldBehindOtherAppsDrain(t *testing.T) {
	db := filepath.Join(t.TempDir(), "herald-server.db")
	p := start(t, db, "--ack-timeout", "30s")
	d := connect(t, p, "")
	epA, epB := d.endpoint(), d.endpoint()
	uaid := d.uaid
	d.ws.Close()

	// More than a batch stored for A while away: the drain stays on.
	const stored = protocol.BatchSize + 5
	for i := range stored {
		if code := post(t, epA, fmt.Sprintf("A stored %d", i)); code != 201 {
			t.Fatal(code)
		}
	}
	d = connect(t, p, uaid)
	var first []*protocol.Notification
	for len(first) < protocol.BatchSize {
		n, ok := d.recv().(*protocol.Notification)
		if !ok {
			t.Fatalf("got %#v, want a notification", n)
		}
		first = append(first, n)
	}
	// A's batch stays unacked. A live message for A waits behind it; the
	// one for B must not.
	if code := post(t, epA, "A live"); code != 201 {
		t.Fatal(code)
	}
	if code := post(t, epB, "B live"); code != 201 {
		t.Fatal(code)
	}
	n, ok := d.recv().(*protocol.Notification) // 10 s deadline, well below the 30 s ack timeout
	if !ok {
		t.Fatalf("got %#v, want B's live notification", n)
	}
	body, _ := n.Body()
	if string(body) != "B live" {
		t.Fatalf("first frame after A's unacked batch: %q, want \"B live\"", body)
	}
	t.Logf("A's batch of %d unacked: B's live message arrived at once", len(first))
	d.send(&protocol.Ack{Updates: []protocol.Update{{ChannelID: n.ChannelID, Version: n.Version}}})

	// Now A is acked: the rest of A's stored messages, then A's live one.
	var got []string
	ack := func(n *protocol.Notification) {
		b, _ := n.Body()
		got = append(got, string(b))
		d.send(&protocol.Ack{Updates: []protocol.Update{{ChannelID: n.ChannelID, Version: n.Version}}})
	}
	for _, n := range first {
		ack(n)
	}
	for len(got) < stored+1 {
		n, ok := d.recv().(*protocol.Notification)
		if !ok {
			t.Fatalf("got %#v, want a notification", n)
		}
		ack(n)
	}
	d.quiet()
	for i := range stored {
		if got[i] != fmt.Sprintf("A stored %d", i) {
			t.Fatalf("A's messages out of order: %q", got)
		}
	}
	if got[stored] != "A live" {
		t.Fatalf("A's live message not last: %q", got)
	}
	t.Logf("A's %d stored messages, then A's live one, in order", stored)
}
