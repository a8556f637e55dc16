package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/server"
)

// fakeBus records what the daemon asks of D-Bus (the D-Bus edge itself is
// tested in dbusapi and in the end-to-end tests).
type fakeBus struct {
	mu     sync.Mutex
	posts  map[string]int
	states chan string
	posted chan string
	up     []dbusapi.UPMessage
	ack    func(m dbusapi.UPMessage) bool
	upDone chan dbusapi.UPMessage
}

func newFakeBus() *fakeBus {
	return &fakeBus{posts: map[string]int{}, states: make(chan string, 1000), posted: make(chan string, 10000), upDone: make(chan dbusapi.UPMessage, 100)}
}

func (b *fakeBus) EmitPost(appID string) error {
	b.mu.Lock()
	b.posts[appID]++
	b.mu.Unlock()
	b.posted <- appID
	return nil
}
func (b *fakeBus) DeliverUnifiedPush(ctx context.Context, m dbusapi.UPMessage) (bool, error) {
	b.mu.Lock()
	b.up = append(b.up, m)
	ack := b.ack == nil || b.ack(m)
	b.mu.Unlock()
	b.upDone <- m
	return ack, nil
}
func (b *fakeBus) NewEndpoint(ctx context.Context, service, token, endpoint string, version int) error {
	return nil
}
func (b *fakeBus) Unregistered(ctx context.Context, service, token string, version int) error {
	return nil
}
func (b *fakeBus) Activatable(ctx context.Context, service string) (bool, error) {
	return service != "org.example.Gone", nil
}
func (b *fakeBus) SetStatus(st dbusapi.Status) {
	select {
	case b.states <- st.State:
	default:
	}
}

// testServer runs the real herald-server on a loopback listener.
type testServer struct {
	url, wsURL string
	stop       func()
}

func startServer(t *testing.T, dbPath, addr string) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	srv, err := server.New(server.Config{PublicURL: base, DBPath: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	ts := &testServer{url: base, wsURL: "ws://" + ln.Addr().String() + "/"}
	var once sync.Once
	ts.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) push(t *testing.T, tok, body string, ttl int) {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.url+"/wpush/v1/"+tok, strings.NewReader(body))
	req.Header.Set("TTL", fmt.Sprint(ttl))
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %s %s", resp.Status, b)
	}
}

type running struct {
	d      *Daemon
	st     *store.Store
	bus    *fakeBus
	cancel func()
}

func startDaemon(t *testing.T, dbPath, wsURL string, proc Processor, pres Presenter) *running {
	t.Helper()
	st, err := store.Open(context.Background(), dbPath, store.Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.DefaultConfig()
	cfg.Server = wsURL
	cfg.RequestTimeout.Duration = 10 * time.Second
	d := New(Options{Config: cfg, Store: st, Processor: proc, Presenter: pres})
	bus := newFakeBus()
	d.SetBus(bus)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	r := &running{d: d, st: st, bus: bus}
	var once sync.Once
	r.cancel = func() { once.Do(func() { cancel(); <-done; st.Close() }) }
	t.Cleanup(r.cancel)
	return r
}

func (r *running) waitQueued(t *testing.T, testApp string, n int) []string {
	t.Helper()
	var got []string
	deadline := time.After(15 * time.Second)
	for len(got) < n {
		select {
		case <-r.bus.posted:
		case <-deadline:
			t.Fatalf("%s: got %d of %d messages: %q", testApp, len(got), n, got)
		}
		msgs, err := r.d.PopAll(context.Background(), testApp)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, msgs...)
	}
	return got
}

func TestRegisterPushPopAll(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, filepath.Join(dir, "server.db"), "127.0.0.1:0")
	dbPath := filepath.Join(dir, "herald.db")
	r := startDaemon(t, dbPath, ts.wsURL, nil, nil)
	ctx := context.Background()
	const testApp = "com.example.chat_chat"
	tok, err := r.d.RegisterLomiri(ctx, testApp)
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := r.d.RegisterLomiri(ctx, testApp)
	if err != nil || tok2 != tok {
		t.Fatalf("second RegisterLomiri = %q, %v; want the same token %q", tok2, err, tok)
	}
	for i := range 5 {
		ts.push(t, tok, fmt.Sprintf(`{"n":%d}`, i), 60)
	}
	got := r.waitQueued(t, testApp, 5)
	want := []string{`{"n":0}`, `{"n":1}`, `{"n":2}`, `{"n":3}`, `{"n":4}`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("queue (-want +got):\n%s", diff)
	}
	regs, err := r.d.Registrations(ctx)
	if err != nil || len(regs) != 1 || regs[0].AppID != testApp || !strings.HasSuffix(regs[0].Endpoint, "/"+tok) {
		t.Fatalf("Registrations = %+v, %v", regs, err)
	}
	if st := r.d.Status(ctx); st.State != "connected" || st.ConnectedSince.IsZero() {
		t.Fatalf("Status = %+v", st)
	}
	c, _ := r.d.Counters(ctx)
	if c["messages_received"] != 5 || c["messages_delivered"] != 5 {
		t.Fatalf("counters = %v", c)
	}

	// After a restart the registration and its token survive, and
	// messages sent while the daemon was down arrive.
	r.cancel()
	ts.push(t, tok, `"offline"`, 60)
	r = startDaemon(t, dbPath, ts.wsURL, nil, nil)
	if tok3, err := r.d.RegisterLomiri(ctx, testApp); err != nil || tok3 != tok {
		t.Fatalf("RegisterLomiri after restart = %q, %v; want %q", tok3, err, tok)
	}
	if got := r.waitQueued(t, testApp, 1); !slices.Equal(got, []string{`"offline"`}) {
		t.Fatalf("after restart: %q", got)
	}
}

// When the server forgot the device (new uaid), the daemon registers again
// and the app gets a new token at its next Register.
func TestNewUAIDReregisters(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, filepath.Join(dir, "server1.db"), "127.0.0.1:0")
	addr := strings.TrimPrefix(ts.url, "http://")
	r := startDaemon(t, filepath.Join(dir, "herald.db"), ts.wsURL, nil, nil)
	ctx := context.Background()
	const testApp = "com.example.news_news"
	tok, err := r.d.RegisterLomiri(ctx, testApp)
	if err != nil {
		t.Fatal(err)
	}
	oldUAID, _ := r.st.UAID(ctx)
	ts.stop()
	for len(r.bus.states) > 0 {
		<-r.bus.states
	}
	ts = startServer(t, filepath.Join(dir, "server2.db"), addr) // a server with no state
	r.d.Reconnect(ctx)
	// Wait for the connection to the new server. The session may have
	// redialled by itself before Reconnect, whose close then ends that
	// connection: a register caught by it fails as offline, and is tried
	// again at the next connection.
	var newTok string
	deadline := time.After(15 * time.Second)
	for {
		select {
		case st := <-r.bus.states:
			if st != "connected" {
				continue
			}
		case <-deadline:
			t.Fatalf("no connection to the new server: %v", err)
		}
		newTok, err = r.d.RegisterLomiri(ctx, testApp)
		if !errors.Is(err, dbusapi.ErrOffline) {
			break
		}
	}
	if err != nil || newTok == tok {
		t.Fatalf("RegisterLomiri after the server lost the device = %q, %v; want a new token", newTok, err)
	}
	if u, _ := r.st.UAID(ctx); u == oldUAID || u == "" {
		t.Fatalf("uaid not replaced: %q", u)
	}
	if reg, err := r.st.LomiriRegistration(ctx, testApp); err != nil || reg.Stale || token(reg) != newTok {
		t.Fatalf("stored registration = %+v, %v", reg, err)
	}
	ts.push(t, newTok, `"after"`, 60)
	if got := r.waitQueued(t, testApp, 1); !slices.Equal(got, []string{`"after"`}) {
		t.Fatalf("got %q", got)
	}
}

// recorder is a Processor and Presenter that records its calls.
type recorder struct {
	mu        sync.Mutex
	processed []string
	presented []string
}

func (p *recorder) Process(ctx context.Context, appID, msgID string, payload []byte) (Output, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.processed = append(p.processed, string(payload))
	return Output{Message: []byte(`"helper:` + string(payload) + `"`), Notification: &app.Notification{Tag: "t"}}, nil
}
func (p *recorder) Present(ctx context.Context, appID, msgID string, n *app.Notification) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.presented = append(p.presented, msgID)
	return nil
}
func (p *recorder) ListPersistent(ctx context.Context, appID string) ([]string, error) {
	return nil, nil
}
func (p *recorder) ClearPersistent(ctx context.Context, appID string, tags []string) (uint32, error) {
	return 0, nil
}
func (p *recorder) SetCounter(ctx context.Context, appID string, count int32, visible bool) error {
	return nil
}

// A restart resumes each message from the step it reached: nothing is
// processed or shown twice, expired messages are never shown, and the
// queue keeps arrival order.
func TestResumeFromEachStep(t *testing.T) {
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "herald.db")
	st, err := store.Open(ctx, dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	const testApp = "com.example.app_app"
	var in []store.Incoming
	for i, id := range []string{"m-received", "m-processed", "m-presented", "m-expired", "m-queued"} {
		m := store.Incoming{MsgID: id, AppID: testApp, ChannelID: "c", Version: fmt.Sprint(i), Body: []byte(id), Received: now}
		if id == "m-expired" {
			m.Expires = now.Add(-time.Second)
		}
		in = append(in, m)
	}
	if _, err := st.Receive(ctx, in); err != nil {
		t.Fatal(err)
	}
	msgs, _ := st.Pending(ctx, testApp, 10)
	// The state a crash left: each message stopped at another step.
	steps := map[string]func(seq int64) error{
		"m-processed": func(seq int64) error { return st.Processed(ctx, seq, []byte(`"p"`), &app.Notification{}) },
		"m-presented": func(seq int64) error {
			if err := st.Processed(ctx, seq, []byte(`"pr"`), &app.Notification{}); err != nil {
				return err
			}
			return st.SetStep(ctx, seq, app.StepPresented)
		},
		"m-expired": func(seq int64) error { return st.Processed(ctx, seq, []byte(`"x"`), &app.Notification{}) },
		"m-queued":  func(seq int64) error { return st.Processed(ctx, seq, []byte(`"q"`), nil) },
	}
	for _, m := range msgs {
		if f := steps[m.MsgID]; f != nil {
			if err := f(m.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	st.Close()

	rec := &recorder{}
	r := startDaemon(t, dbPath, "", rec, rec)
	got := r.waitQueued(t, testApp, 4)
	want := []string{`"helper:m-received"`, `"p"`, `"pr"`, `"q"`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("queue (-want +got):\n%s", diff)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if diff := cmp.Diff([]string{"m-received"}, rec.processed); diff != "" {
		t.Errorf("helper runs (-want +got):\n%s", diff)
	}
	slices.Sort(rec.presented)
	if diff := cmp.Diff([]string{"m-processed", "m-received"}, rec.presented); diff != "" {
		t.Errorf("presented (-want +got):\n%s", diff)
	}
}

// UnifiedPush messages are passed raw and stay queued until the connector
// acknowledges them.
func TestUnifiedPushRedelivery(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, filepath.Join(dir, "server.db"), "127.0.0.1:0")
	r := startDaemon(t, filepath.Join(dir, "herald.db"), ts.wsURL, nil, nil)
	ctx := context.Background()
	var mu sync.Mutex
	refuse := 1
	r.bus.mu.Lock()
	r.bus.ack = func(m dbusapi.UPMessage) bool {
		mu.Lock()
		defer mu.Unlock()
		if refuse > 0 {
			refuse--
			return false
		}
		return true
	}
	r.bus.mu.Unlock()
	ep, err := r.d.RegisterUnifiedPush(ctx, dbusapi.UPRegistration{AppID: "org.example.Up", Service: "org.example.Up", Token: "tok-1", Version: 2})
	if err != nil {
		t.Fatal(err)
	}
	body := "\x00\x01binary\xff"
	ts.push(t, lastPathElement(ep), body, 60)
	var got []dbusapi.UPMessage
	for len(got) < 2 {
		select {
		case m := <-r.bus.upDone:
			got = append(got, m)
		case <-time.After(20 * time.Second):
			t.Fatalf("got %d deliveries, want 2 (one refused, one acked)", len(got))
		}
	}
	for _, m := range got {
		if string(m.Body) != body || m.Token != "tok-1" || m.Service != "org.example.Up" || m.Version != 2 {
			t.Fatalf("delivery = %+v", m)
		}
	}
	if got[0].ID != got[1].ID {
		t.Fatalf("redelivery has another id: %q vs %q", got[0].ID, got[1].ID)
	}
	c, _ := r.d.Counters(ctx)
	if c["redeliveries"] != 1 {
		t.Fatalf("counters = %v", c)
	}
}

// Message ids are unique 32-digit hex strings that sort in creation order.
func TestMsgIDOrdered(t *testing.T) {
	prev := ""
	seen := map[string]bool{}
	for range 1000 {
		id := newMsgID()
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("msg id %q is not 32 hex digits", id)
		}
		if seen[id] {
			t.Fatalf("msg id %q repeated", id)
		}
		seen[id] = true
		if id[:16] < prev[:min(len(prev), 16)] {
			t.Fatalf("msg id %q sorts before the earlier %q", id, prev)
		}
		prev = id
	}
}
