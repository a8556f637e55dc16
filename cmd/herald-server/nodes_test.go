package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldpush/herald/internal/pgtest"
	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/server"
)

// register registers a new channel and returns its endpoint token.
func (d *device) register(t *testing.T) (chid, token string) {
	t.Helper()
	chid = protocol.NewChannelID()
	d.send(&protocol.Register{ChannelID: chid})
	reg, ok := d.recv().(*protocol.Register)
	if !ok || reg.Status != 200 {
		t.Fatalf("register: %#v", reg)
	}
	return chid, reg.PushEndpoint[strings.LastIndex(reg.PushEndpoint, "/")+1:]
}

// notification reads the next frame and returns its body.
func (d *device) notification(t *testing.T) *protocol.Notification {
	t.Helper()
	n, ok := d.recv().(*protocol.Notification)
	if !ok {
		t.Fatal("got another frame than a notification")
	}
	return n
}

func (d *device) ack(n *protocol.Notification) {
	d.send(&protocol.Ack{Updates: []protocol.Update{{ChannelID: n.ChannelID, Version: n.Version, Code: protocol.AckDelivered}}})
}

func body(n *protocol.Notification) string {
	b, _ := n.Body()
	return string(b)
}

// Two herald-server processes on one PostgreSQL database: a device on node A
// gets what is posted to node B at once. Node A is SIGKILLed with messages
// unacked and more posted to B meanwhile; the device connects to B and gets
// every one of them, once.
func TestTwoNodesKill(t *testing.T) {
	db := pgtest.Database(t)
	a, b := start(t, db), start(t, db)
	d := connect(t, a, "")
	chid, token := d.register(t)
	viaB := "http://" + b.addr + "/wpush/v1/" + token
	if code := post(t, viaB, "live across nodes"); code != 201 {
		t.Fatalf("post to B = %d", code)
	}
	n := d.notification(t)
	if body(n) != "live across nodes" || n.ChannelID != chid {
		t.Fatalf("got %q", body(n))
	}
	d.ack(n)
	d.quiet()
	t.Logf("device on node A %s got a message posted to node B %s", a.addr, b.addr)

	// Delivered on A but not acked when A dies.
	if code := post(t, viaB, "unacked on A"); code != 201 {
		t.Fatalf("post = %d", code)
	}
	if got := body(d.notification(t)); got != "unacked on A" {
		t.Fatalf("got %q", got)
	}
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.wait(t)
	// Posted while the device is away: B finds the stale route to A, cannot
	// reach A, clears it and keeps the message.
	if code := post(t, viaB, "while away"); code != 201 {
		t.Fatalf("post while away = %d", code)
	}
	d = connect(t, b, d.uaid)
	want := map[string]bool{"unacked on A": true, "while away": true}
	for range len(want) {
		n := d.notification(t)
		if !want[body(n)] {
			t.Fatalf("unexpected or repeated %q", body(n))
		}
		delete(want, body(n))
		d.ack(n)
	}
	d.quiet() // nothing twice
	if code := post(t, viaB, "after the move"); code != 201 {
		t.Fatalf("post = %d", code)
	}
	if got := body(d.notification(t)); got != "after the move" {
		t.Fatalf("got %q", got)
	}
	t.Log("node A killed: the device moved to node B and got every pending message once")
}

// herald-server migrate copies a sqlite deployment with pending messages into
// PostgreSQL; a node on PostgreSQL then delivers them.
func TestMigrate(t *testing.T) {
	file := filepath.Join(t.TempDir(), "herald-server.db")
	p := start(t, file)
	d := connect(t, p, "")
	_, token := d.register(t)
	d.ws.Close()
	for _, m := range []string{"one", "two", "three"} {
		if code := post(t, "http://"+p.addr+"/wpush/v1/"+token, m); code != 201 {
			t.Fatalf("post = %d", code)
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatal(err)
	}

	url := pgtest.Database(t)
	out, err := exec.Command(binary(t), "migrate", "--from", file, "--to", url).CombinedOutput()
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "migrated 1 devices, 1 channels, 3 pending messages") {
		t.Fatalf("migrate said %q", out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
	// Again: nothing is copied twice.
	if out, err := exec.Command(binary(t), "migrate", "--from", file, "--to", url).CombinedOutput(); err != nil {
		t.Fatalf("second migrate: %v\n%s", err, out)
	}

	q := start(t, url)
	d = connect(t, q, d.uaid)
	for _, want := range []string{"one", "two", "three"} {
		n := d.notification(t)
		if body(n) != want {
			t.Fatalf("got %q, want %q", body(n), want)
		}
		d.ack(n)
	}
	d.quiet()
	if code := post(t, "http://"+q.addr+"/wpush/v1/"+token, "new"); code != 201 {
		t.Fatalf("post to the migrated endpoint = %d", code)
	}
	n := d.notification(t)
	if body(n) != "new" {
		t.Fatalf("got %q", body(n))
	}
	d.ack(n)
	d.quiet()
	// The source is a sqlite file that must exist.
	if out, err := exec.Command(binary(t), "migrate", "--from", filepath.Join(t.TempDir(), "none.db"), "--to", url).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "cannot read --from") {
		t.Errorf("migrate from a missing file: %v %q", err, out)
	}
	st, err := server.OpenPostgres(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ms, err := st.Pending(context.Background(), d.uaid, 0, 100, time.Now())
	if err != nil || len(ms) != 0 {
		t.Errorf("after acks %d pending, %v", len(ms), err)
	}
}
