package client

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/client/push"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
)

// attemptLog records UnifiedPush delivery attempts with the (bubble's)
// time they were made.
type attemptLog struct {
	mu  sync.Mutex
	got []attempt
}

type attempt struct {
	body  string
	token string
	at    time.Time
	acked bool
}

// TestUnifiedPushDeliveryPerRegistration runs the owner loop in a synctest
// bubble (fake time, no real sleeps): an app with two registrations (two
// tokens) gets each message with its own registration's token; the
// connector of one registration fails, and its message is retried with
// backoff (2 s, then 4 s more) until acked, while the other registration's
// messages are delivered at once; a message whose TTL ends while it is
// retried is dropped and counted as expired.
func TestUnifiedPushDeliveryPerRegistration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		st, err := store.Open(ctx, filepath.Join(t.TempDir(), "herald.db"), store.Options{Synchronous: "NORMAL"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		const up = "org.example.Up"
		for _, r := range []store.Registration{
			{ChannelID: "11111111-1111-4111-8111-111111111111", AppID: up, Kind: app.KindUnifiedPush, Service: up, UPToken: "failing", UPVersion: 2, Endpoint: "x"},
			{ChannelID: "22222222-2222-4222-8222-222222222222", AppID: up, Kind: app.KindUnifiedPush, Service: up, UPToken: "working", UPVersion: 2, Endpoint: "y"},
		} {
			if err := st.PutRegistration(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		t0 := time.Now()
		in := []store.Incoming{
			{MsgID: "f1", AppID: up, ChannelID: "11111111-1111-4111-8111-111111111111", Version: "1", Body: []byte("to failing"), Received: t0},
			{MsgID: "w1", AppID: up, ChannelID: "22222222-2222-4222-8222-222222222222", Version: "1", Body: []byte("to working 1"), Received: t0},
			{MsgID: "w2", AppID: up, ChannelID: "22222222-2222-4222-8222-222222222222", Version: "2", Body: []byte("to working 2"), Received: t0},
			{MsgID: "f2", AppID: up, ChannelID: "11111111-1111-4111-8111-111111111111", Version: "2", Body: []byte("expires"), Received: t0, Expires: t0.Add(5 * time.Second)},
		}
		if _, err := st.Receive(ctx, in); err != nil {
			t.Fatal(err)
		}
		log := &attemptLog{}
		bus := newFakeBus()
		bus.upDone = make(chan dbusapi.UPMessage, 1000)
		bus.ack = func(m dbusapi.UPMessage) bool {
			// The failing connector answers with an error until 6 s passed.
			ok := m.Token == "working" || time.Since(t0) >= 6*time.Second
			log.got = append(log.got, attempt{body: string(m.Body), token: m.Token, at: time.Now(), acked: ok})
			if (m.Token == "working") != (string(m.Body) == "to working 1" || string(m.Body) == "to working 2") {
				t.Errorf("message %q delivered with token %q", m.Body, m.Token)
			}
			return ok
		}
		cfg := config.DefaultConfig()
		cfg.Server = ""
		d := New(Options{Config: cfg, Store: st})
		d.SetBus(bus)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { d.Run(rctx); close(done) }()
		defer func() { cancel(); <-done }()

		time.Sleep(time.Minute) // fake time: every retry runs
		synctest.Wait()
		bus.mu.Lock()
		byBody := map[string][]time.Duration{}
		acked := map[string]bool{}
		for _, a := range log.got {
			byBody[a.body] = append(byBody[a.body], a.at.Sub(t0))
			acked[a.body] = acked[a.body] || a.acked
		}
		bus.mu.Unlock()
		// The working registration's messages went at once, not held back
		// by the failing registration's first message.
		for _, b := range []string{"to working 1", "to working 2"} {
			if got := byBody[b]; len(got) != 1 || got[0] != 0 || !acked[b] {
				t.Errorf("%q attempts at %v (acked %v), want one at once", b, got, acked[b])
			}
		}
		// The failing one was retried with backoff (2 s, then 4 s more)
		// until its connector answered.
		if got, want := byBody["to failing"], []time.Duration{0, 2 * time.Second, 6 * time.Second}; !slices.Equal(got, want) || !acked["to failing"] {
			t.Errorf("failing registration's message attempts at %v (acked %v), want %v then acked", got, acked["to failing"], want)
		}
		// The one whose TTL ended while retried was dropped, never acked.
		if acked["expires"] {
			t.Error("an expired message was delivered")
		}
		c, _ := d.Counters(ctx)
		if c["messages_delivered"] != 3 || c["messages_expired"] != 1 {
			t.Fatalf("counters %v: want 3 delivered, 1 expired", c)
		}
	})
}

// TestDrainDefersThePipeline: in a synctest bubble, batches of a draining
// server are stored at once but their apps' pipelines start only when
// burstQuiet passed without another draining batch; a live batch during the
// burst does not extend it.
func TestDrainDefersThePipeline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		st, err := store.Open(ctx, filepath.Join(t.TempDir(), "herald.db"), store.Options{Synchronous: "NORMAL"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		const a = "com.example.drain_drain"
		const ch = "33333333-3333-4333-8333-333333333333"
		if err := st.PutRegistration(ctx, store.Registration{ChannelID: ch, AppID: a, Kind: app.KindLomiri, Endpoint: "x"}); err != nil {
			t.Fatal(err)
		}
		cfg := config.DefaultConfig()
		cfg.Server = ""
		d := New(Options{Config: cfg, Store: st})
		bus := newFakeBus()
		d.SetBus(bus)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { d.Run(rctx); close(done) }()
		defer func() { cancel(); <-done }()
		synctest.Wait()

		n := 0
		batch := func(draining bool) {
			n++
			res := d.Receive(ctx, push.Batch{Backend: app.BackendAutopush, Draining: draining,
				Messages: []push.Message{{ChannelID: ch, ServerID: fmt.Sprint(n), Body: []byte(fmt.Sprint(n))}}})
			if res[0] != nil {
				t.Fatalf("Receive: %v", res[0])
			}
		}
		posts := func() int {
			synctest.Wait()
			return len(bus.posted)
		}
		batch(true)
		time.Sleep(burstQuiet / 2)
		batch(true) // extends the burst
		time.Sleep(burstQuiet / 2)
		batch(false) // live: joins the burst, does not extend it
		if got := posts(); got != 0 {
			t.Fatalf("%d Post signals during the burst, want none", got)
		}
		time.Sleep(burstQuiet/2 - time.Millisecond)
		if got := posts(); got != 0 {
			t.Fatalf("%d Post signals before burstQuiet after the last draining batch", got)
		}
		time.Sleep(time.Millisecond)
		if got := posts(); got == 0 {
			t.Fatal("no Post signal when the burst ended")
		}
		if msgs, _ := d.PopAll(ctx, a); len(msgs) != 3 {
			t.Fatalf("queued %q, want the three messages", msgs)
		}
		// Without a drain a live message goes through at once.
		for len(bus.posted) > 0 {
			<-bus.posted
		}
		batch(false)
		if got := posts(); got == 0 {
			t.Fatal("a live message outside a burst was not processed at once")
		}
		// A reconnect drain's batch, even a small one, waits drainQuiet.
		if msgs, _ := d.PopAll(ctx, a); len(msgs) != 1 {
			t.Fatalf("queued %q, want the live message", msgs)
		}
		for len(bus.posted) > 0 {
			<-bus.posted
		}
		n++
		if res := d.Receive(ctx, push.Batch{Backend: app.BackendAutopush, Draining: true, Reconnect: true,
			Messages: []push.Message{{ChannelID: ch, ServerID: fmt.Sprint(n), Body: []byte(fmt.Sprint(n))}}}); res[0] != nil {
			t.Fatalf("Receive: %v", res[0])
		}
		time.Sleep(drainQuiet - time.Millisecond)
		if got := posts(); got != 0 {
			t.Fatalf("%d Post signals before drainQuiet after a reconnect batch", got)
		}
		time.Sleep(time.Millisecond)
		if got := posts(); got == 0 {
			t.Fatal("no Post signal drainQuiet after a reconnect batch")
		}
	})
}

// TestPipelineMark: a pass reads the inbox after the messages it already
// queued (the app has not taken them), and every message still reaches the
// queue in order.
func TestPipelineMark(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		st, err := store.Open(ctx, filepath.Join(t.TempDir(), "herald.db"), store.Options{Synchronous: "NORMAL"})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		const a = "com.example.mark_mark"
		const ch = "44444444-4444-4444-8444-444444444444"
		if err := st.PutRegistration(ctx, store.Registration{ChannelID: ch, AppID: a, Kind: app.KindLomiri, Endpoint: "x"}); err != nil {
			t.Fatal(err)
		}
		cfg := config.DefaultConfig()
		cfg.Server = ""
		d := New(Options{Config: cfg, Store: st})
		bus := newFakeBus()
		d.SetBus(bus)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { d.Run(rctx); close(done) }()
		defer func() { cancel(); <-done }()
		synctest.Wait()
		for i := range 5 {
			res := d.Receive(ctx, push.Batch{Backend: app.BackendAutopush,
				Messages: []push.Message{{ChannelID: ch, ServerID: fmt.Sprint(i), Body: []byte(fmt.Sprint(i))}}})
			if res[0] != nil {
				t.Fatalf("Receive: %v", res[0])
			}
			synctest.Wait()
			if got := len(bus.posted); got != i+1 {
				t.Fatalf("%d Post signals after %d messages", got, i+1)
			}
			msgs, err := st.Inbox(ctx, a)
			if err != nil {
				t.Fatal(err)
			}
			if last := msgs[len(msgs)-1]; d.pipelineMark(a) != last.Seq || last.Step != app.StepQueued {
				t.Fatalf("after message %d: mark %d, last message %d at %s", i, d.pipelineMark(a), last.Seq, last.Step)
			}
		}
		msgs, _ := d.PopAll(ctx, a)
		if fmt.Sprint(msgs) != "[0 1 2 3 4]" {
			t.Fatalf("queued %q, want the five messages in order", msgs)
		}
	})
}
