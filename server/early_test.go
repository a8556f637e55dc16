package server

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// gatedStore is a real SQLiteStore whose Put waits at a gate: the test sees
// the moment a Put starts (entered) and lets it go on (release nil) or fail
// (release an error). The commit is thereby held open as long as the test
// likes, so "the frame arrives while the commit runs" needs no timing.
type gatedStore struct {
	Store
	entered chan struct{}
	release chan error
}

func (g *gatedStore) Put(ctx context.Context, m *Message, o PutOptions, now time.Time) (bool, int, error) {
	g.entered <- struct{}{}
	if err := <-g.release; err != nil {
		return false, 0, err
	}
	return g.Store.Put(ctx, m, o, now)
}

func startGated(t *testing.T) (*testServer, *gatedStore) {
	t.Helper()
	st, err := OpenSQLite(filepath.Join(t.TempDir(), "gated.db"))
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedStore{Store: st, entered: make(chan struct{}), release: make(chan error)}
	ts := startServer(t, func(c *Config) { c.Store = g })
	return ts, g
}

// pushAsync posts in the background and returns the channel of its answer.
func (ts *testServer) pushAsync(ep string) <-chan response {
	out := make(chan response, 1)
	go func() { out <- ts.push(ep, []byte("early"), nil) }()
	return out
}

func TestDeliverWhileStoring(t *testing.T) {
	ts, g := startGated(t)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")

	// Acked before the commit: the device has it durably, so the store
	// never writes it, and the app server gets its 201 after the commit.
	res := ts.pushAsync(ep)
	<-g.entered
	n := d.notification() // written while Put is held at the gate
	select {
	case r := <-res:
		t.Fatalf("answered %d before the commit", r.status)
	default:
	}
	d.ack(n)
	d.quiet() // the ack is handled
	g.release <- nil
	if r := <-res; r.status != 201 {
		t.Fatalf("push = %d %s", r.status, r.body)
	}
	if got := ts.pending(d.uaid); got != 0 {
		t.Errorf("%d messages stored after an ack that came before the commit, want 0", got)
	}

	// Acked after the commit: stored, then deleted like any acked message.
	res = ts.pushAsync(ep)
	<-g.entered
	n = d.notification()
	g.release <- nil
	if r := <-res; r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}
	if got := ts.pending(d.uaid); got != 1 {
		t.Fatalf("%d messages stored after the commit, want 1", got)
	}
	d.ack(n)
	waitPending(t, ts, d, 0)

	// The commit fails after the device got the frame: 503 (the app server
	// retries), nothing stored, and the device's late ack is harmless.
	res = ts.pushAsync(ep)
	<-g.entered
	n = d.notification()
	g.release <- errors.New("disk on fire")
	if r := <-res; r.status != 503 {
		t.Fatalf("push with a failed commit = %d, want 503", r.status)
	}
	d.ack(n)
	d.quiet()
	if got := ts.pending(d.uaid); got != 0 {
		t.Errorf("%d messages stored after a failed commit", got)
	}

	// The device goes away before it acks and before the commit: the stored
	// message reaches its next connection.
	res = ts.pushAsync(ep)
	<-g.entered
	n = d.notification()
	d.ws.Close()
	g.release <- nil
	if r := <-res; r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}
	d2 := ts.connect(d.uaid)
	if n2 := d2.notification(); n2.Version != n.Version {
		t.Fatalf("redelivered %q, want %q", n2.Version, n.Version)
	}
	d2.ack(n)
	waitPending(t, ts, d2, 0)
}

// TestDeliverWhileStoringWaitsBehindDrain: a device still being sent its
// stored messages gets a new one after them, not while it is being stored.
func TestDeliverWhileStoringWaitsBehindDrain(t *testing.T) {
	ts, g := startGated(t)
	d := ts.connect("")
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	for range protocol.BatchSize + 1 {
		res := ts.pushAsync(ep)
		<-g.entered
		g.release <- nil
		if r := <-res; r.status != 201 {
			t.Fatalf("push = %d", r.status)
		}
	}
	d = ts.connect(d.uaid)
	var batch []*protocol.Notification
	for range protocol.BatchSize {
		batch = append(batch, d.notification())
	}
	res := ts.pushAsync(ep)
	<-g.entered
	d.quiet() // nothing written while the stored batch is unacked
	g.release <- nil
	if r := <-res; r.status != 201 {
		t.Fatalf("push = %d", r.status)
	}
	d.ack(batch...)
	for range 2 { // the 11th stored one, then the new one
		d.ack(d.notification())
	}
	d.quiet()
}

// waitPending waits until the store holds want messages of d (deletions
// after an ack commit in the background); quiet round trips pace the loop.
func waitPending(t *testing.T, ts *testServer, d *device, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for ts.pending(d.uaid) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages stored, want %d", ts.pending(d.uaid), want)
		}
		d.quiet()
	}
}

// A device that acks a message while its put waits for that ack
// (Config.EarlyAckWait) holds it durably: the store is never asked to
// write it, and the app server gets its 201 at the ack.
func TestAckedBeforeStore(t *testing.T) {
	st, err := OpenSQLite(filepath.Join(t.TempDir(), "gated.db"))
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedStore{Store: st, entered: make(chan struct{}), release: make(chan error)}
	// The first message of a connection waits the whole bound: an hour, so
	// nothing here depends on how fast the device is.
	ts := startServer(t, func(c *Config) { c.Store = g; c.EarlyAckWait = time.Hour })
	for i := range 2 {
		d := ts.connect("")
		ep := d.register(protocol.NewChannelID(), "")
		res := ts.pushAsync(ep)
		d.ack(d.notification())
		select {
		case r := <-res:
			if r.status != 201 {
				t.Fatalf("push %d = %d %s", i, r.status, r.body)
			}
		case <-g.entered:
			t.Fatalf("message %d went to the store after its device acked it", i)
		}
		if got := ts.pending(d.uaid); got != 0 {
			t.Errorf("%d messages stored for device %d, want 0", got, i)
		}
	}
}

// The wait for an early ack follows the device's usual ack time: twice it,
// within the bound, and none for a device that acks later than the bound.
func TestEarlyWait(t *testing.T) {
	c := &conn{s: &Server{cfg: Config{EarlyAckWait: 5 * time.Millisecond}}}
	if got := c.earlyWait(); got != 5*time.Millisecond {
		t.Errorf("before any ack: %v, want the bound", got)
	}
	c.noteAckRTT(time.Millisecond)
	if got := c.earlyWait(); got != 2*time.Millisecond {
		t.Errorf("device acking in 1ms: %v, want 2ms", got)
	}
	for range 50 {
		c.noteAckRTT(20 * time.Millisecond) // heraldd's ack delay
	}
	if got := c.earlyWait(); got != 0 {
		t.Errorf("device acking in 20ms: %v, want no wait", got)
	}
	for range 50 {
		c.noteAckRTT(3 * time.Millisecond)
	}
	if got := c.earlyWait(); got != 5*time.Millisecond {
		t.Errorf("device acking in 3ms again: %v, want the bound", got)
	}
	c.s.cfg.EarlyAckWait = -1
	if got := c.earlyWait(); got != 0 {
		t.Errorf("waiting off: %v, want 0", got)
	}
}
