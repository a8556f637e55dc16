package server

import (
	"strconv"
	"testing"

	"github.com/heraldpush/herald/protocol"
)

// TestBatchExtension: a device that asks for larger batches (extension
// "batch", named in the hello reply) gets its stored messages 100 at a time,
// the next batch as soon as half of the current one is acked, in order and
// each once.
func TestBatchExtension(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.dial()
	d.send(&protocol.Hello{UseWebPush: true})
	h, ok := d.recv().(*protocol.Hello)
	if !ok || !h.Supports(protocol.ExtBatch) {
		t.Fatalf("hello reply %#v does not name %q", h, protocol.ExtBatch)
	}
	d.uaid = h.UAID
	ep := d.register(protocol.NewChannelID(), "")
	d.ws.Close()
	const total = 250
	for i := range total {
		if r := ts.push(ep, []byte(strconv.Itoa(i)), map[string]string{"TTL": "600"}); r.status != 201 {
			t.Fatalf("push %d = %d", i, r.status)
		}
	}
	// The pending limit per channel keeps the newest 100.
	first := total - ts.srv.cfg.MaxPending
	if first < 0 {
		first = 0
	}
	next := first
	expect := func(n *protocol.Notification) {
		t.Helper()
		b, _ := n.Body()
		if string(b) != strconv.Itoa(next) {
			t.Fatalf("got message %q, want %d (in order, once)", b, next)
		}
		next++
	}

	d = ts.connect(d.uaid)
	// Before the device asks, the first batch is the default size.
	var batch []*protocol.Notification
	for range protocol.BatchSize {
		n := d.notification()
		expect(n)
		batch = append(batch, n)
	}
	d.send(&protocol.Batch{Size: 40})
	if b, ok := d.recv().(*protocol.Batch); !ok || b.Status != 200 || b.Size != 40 {
		t.Fatalf("batch reply %#v", b)
	}
	// 10 unacked is at most half a batch of 40: the next 40 follow at once.
	first10 := batch
	batch = nil
	for range 40 {
		n := d.notification()
		expect(n)
		batch = append(batch, n)
	}
	d.quiet() // 50 unacked
	d.ack(first10...)
	d.quiet()            // 40 unacked
	d.ack(batch[:19]...) // 21 of 40 unacked: more than half
	d.quiet()
	d.ack(batch[19]) // 20 left: the next 40 are read
	for range 40 {
		expect(d.notification())
	}
	d.quiet()
	if want := first + protocol.BatchSize + 80; next != want || next > total {
		t.Fatalf("delivered up to %d, want %d", next, want)
	}
}

// TestBatchExtensionRejectsOversize: a batch beyond MaxBatchSize is a
// malformed frame.
func TestBatchExtensionRejectsOversize(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.connect("")
	d.sendRaw(`{"messageType":"batch","size":100000}`)
	if code := d.closed(); code != 1002 {
		t.Fatalf("close code %d, want 1002", code)
	}
}
