package lomiri

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldpush/herald/internal/testcert"
	wire "github.com/heraldpush/herald/protocol/lomiri"
	"github.com/heraldpush/herald/server"
)

func TestDeviceID(t *testing.T) {
	// base64(sha224(hex-decoded machine id)), computed independently.
	id, err := DeviceIDFromMachineID([]byte("0123456789abcdef0123456789abcdef\n"))
	if err != nil || id != "OvI1WHTJL6kyc4EQF8fd38l5xyNS3b30m9oOsQ==" {
		t.Fatalf("DeviceIDFromMachineID = %q, %v", id, err)
	}
	if len(id) != 40 {
		t.Fatalf("device id of %d characters, want 40", len(id))
	}
	if _, err := DeviceIDFromMachineID([]byte("not hex")); err == nil {
		t.Fatal("a non-hex machine id was accepted")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "machine-id")
	os.WriteFile(p, []byte("0123456789abcdef0123456789abcdef\n"), 0o644)
	if got, err := ReadDeviceID([]string{filepath.Join(dir, "missing"), p}); err != nil || got != id {
		t.Fatalf("ReadDeviceID = %q, %v", got, err)
	}
	if _, err := ReadDeviceID([]string{filepath.Join(dir, "missing")}); err == nil {
		t.Fatal("ReadDeviceID without a file succeeded")
	}
}

func TestMurmur3(t *testing.T) {
	// Values of the MurmurHash3 x64 128 reference (first 64 bits, seed 0).
	for in, want := range map[string]uint64{
		"":                    0,
		"a":                   0x85555565f6597889,
		"hello":               0xcbd8a7b341bd9b02,
		"0123456789abcdef":    0x4be06d94cf4ad1a7,
		"0123456789abcdefXYZ": 0x99d375026c4a901d,
		"ZBkgIedpEfGd/yZ6E2kKDgZBkgIedpEfGd/yZ6E2kKDg==": 0xa2029b5a31be6adb,
	} {
		if got := murmur3Sum64([]byte(in)); got != want {
			t.Errorf("murmur3(%q) = %x, want %x", in, got, want)
		}
	}
}

func TestRedialSchedule(t *testing.T) {
	s, err := New(Config{Addr: "h:1", DeviceID: "d", Handler: &recorder{}, Jitter: func(d time.Duration) time.Duration { return -d / 2 }})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1000, 0)
	var got []time.Duration
	for i := range 11 {
		got = append(got, s.nextDelay(false, t0.Add(time.Duration(i)*time.Hour)))
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5500 * time.Millisecond, 9500 * time.Millisecond,
		18500 * time.Millisecond, 33500 * time.Millisecond, 56500 * time.Millisecond, 95500 * time.Millisecond, 95500 * time.Millisecond, 95500 * time.Millisecond}
	if !slices.Equal(got, want) {
		t.Fatalf("failed dials wait %v, want %v", got, want)
	}
	// A connection that worked redials at once and starts the schedule over…
	if d := s.nextDelay(true, t0.Add(20*time.Hour)); d != 0 {
		t.Fatalf("after a healthy connection: %v, want 0", d)
	}
	// …unless the previous redial was less than 2 s ago.
	if d := s.nextDelay(true, t0.Add(20*time.Hour+time.Second)); d != 500*time.Millisecond {
		t.Fatalf("healthy but redialed 1 s ago: %v, want the first step", d)
	}
}

func TestRegistrarErrors(t *testing.T) {
	var calls atomic.Int32
	status := 500
	body := `{"ok":true,"token":"T"}`
	var gotPath, gotBody string
	var mu sync.Mutex
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		b := make([]byte, 512)
		n, _ := r.Body.Read(b)
		mu.Lock()
		gotPath, gotBody = r.URL.Path, string(b[:n])
		mu.Unlock()
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	defer ts.Close()
	r := &Registrar{URL: ts.URL + "/some/base", DeviceID: "DEV", Backoff: time.Millisecond}
	ctx := context.Background()

	if _, err := r.Register(ctx, "a_b"); !errors.Is(err, ErrBadServer) || calls.Load() != 3 {
		t.Fatalf("5xx: %v after %d calls, want bad server after 3", err, calls.Load())
	}
	for _, tt := range []struct {
		status int
		body   string
		want   error
	}{
		{401, `{}`, ErrBadAuth},
		{400, `{"error":"invalid-request","message":"Missing id field"}`, ErrBadRequest},
		{200, `{"ok":true}`, ErrBadToken},
		{200, `{"ok":false,"token":"x"}`, ErrBadToken},
		{200, `nope`, ErrBadToken},
	} {
		calls.Store(0)
		status, body = tt.status, tt.body
		if _, err := r.Register(ctx, "a_b"); !errors.Is(err, tt.want) || calls.Load() != 1 {
			t.Errorf("%d %s: %v after %d calls, want %v after 1", tt.status, tt.body, err, calls.Load(), tt.want)
		}
	}
	status, body = 200, `{"ok":true,"token":"TOK"}`
	tok, err := r.Register(ctx, "a_b")
	mu.Lock()
	defer mu.Unlock()
	if err != nil || tok != "TOK" || gotPath != "/register" || gotBody != `{"appid":"a_b","deviceid":"DEV"}` {
		t.Fatalf("Register = %q, %v; request %s %s", tok, err, gotPath, gotBody)
	}
}

// recorder is a Handler keeping everything in memory (the daemon's store
// is tested with the daemon).
type recorder struct {
	mu     sync.Mutex
	seen   map[string]bool
	msgs   []wire.Notification
	levels map[string]int64
	states []State
	failOn int // nak the failOn-th batch (1-based) when > 0
	n      int
	events chan string
}

func newRecorder() *recorder {
	return &recorder{seen: map[string]bool{}, levels: map[string]int64{}, events: make(chan string, 100)}
}

func (r *recorder) Levels(ctx context.Context) (map[string]int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps(r.levels), nil
}

func maps(m map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (r *recorder) Notifications(ctx context.Context, ns []wire.Notification) error {
	r.mu.Lock()
	r.n++
	if r.n == r.failOn {
		r.mu.Unlock()
		r.events <- "nak"
		return errors.New("disk full")
	}
	for _, n := range ns {
		if !r.seen[n.MsgID] {
			r.seen[n.MsgID] = true
			r.msgs = append(r.msgs, n)
		}
	}
	r.mu.Unlock()
	r.events <- "notifications"
	return nil
}

func (r *recorder) Broadcast(ctx context.Context, b *wire.Broadcast) error {
	r.mu.Lock()
	r.levels[b.ChanId] = b.TopLevel
	r.mu.Unlock()
	r.events <- "broadcast"
	return nil
}

func (r *recorder) StateChanged(st State, since time.Time, err error) {
	r.mu.Lock()
	r.states = append(r.states, st)
	r.mu.Unlock()
	if st == StateConnected || st == StateBackoff {
		r.events <- string(st)
	}
}

func (r *recorder) wait(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-r.events:
			if e == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %s event", want)
		}
	}
}

type world struct {
	t      *testing.T
	srv    *server.Server
	http   string // http://127.0.0.1:port
	lomiri string // 127.0.0.1:port
	cert   *testcert.Cert
	cancel context.CancelFunc
	done   chan error
	db     string
}

// startServer runs herald-server's code with a Lomiri TLS listener.
func startServer(t *testing.T, db string) *world {
	t.Helper()
	cert, err := testcert.New("push.test")
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, cert: cert, db: db}
	w.start()
	t.Cleanup(w.stop)
	return w
}

func (w *world) start() {
	t := w.t
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.http, w.lomiri = "http://"+ln.Addr().String(), lln.Addr().String()
	w.srv, err = server.New(server.Config{PublicURL: w.http, DBPath: w.db, TokenLimit: server.Limit{Rate: -1}, IPLimit: server.Limit{Rate: -1},
		LomiriHosts: []string{w.lomiri}, LomiriDomain: "push.test"})
	if err != nil {
		t.Fatal(err)
	}
	tc, _ := w.cert.TLS()
	if err := w.srv.ServeLomiri(tls.NewListener(lln, &tls.Config{Certificates: []tls.Certificate{tc}})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done = cancel, make(chan error, 1)
	go func() { w.done <- w.srv.Serve(ctx, ln) }()
}

func (w *world) stop() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.done
	w.cancel = nil
}

func (w *world) notify(tok, app string, data any) {
	w.t.Helper()
	b, _ := json.Marshal(map[string]any{"appid": app, "token": tok, "expire_on": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "data": data})
	resp, err := http.Post(w.http+"/notify", "application/json", strings.NewReader(string(b)))
	if err != nil {
		w.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		w.t.Fatalf("/notify = %s", resp.Status)
	}
}

func (w *world) broadcast(data any) {
	w.t.Helper()
	b, _ := json.Marshal(map[string]any{"channel": "system", "expire_on": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "data": data})
	resp, err := http.Post(w.http+"/broadcast", "application/json", strings.NewReader(string(b)))
	if err != nil {
		w.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		w.t.Fatalf("/broadcast = %s", resp.Status)
	}
}

func runSession(t *testing.T, cfg Config) *Session {
	t.Helper()
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.SetWanted(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func TestSessionAgainstHeraldServer(t *testing.T) {
	w := startServer(t, filepath.Join(t.TempDir(), "s.db"))
	const dev, app = "DEVICE", "com.example.app_app"
	reg := &Registrar{URL: w.http, DeviceID: dev}
	tok, err := reg.Register(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	w.notify(tok, app, map[string]int{"n": 1})
	w.broadcast(map[string]any{"ubports/stable/mako": []any{7, ""}})

	rec := newRecorder()
	// Host discovery through /delivery-hosts; the pinned certificate names push.test.
	s := runSession(t, Config{Addr: w.http + "/delivery-hosts", CertPEM: w.cert.CertPEM, DeviceID: dev, Handler: rec,
		Info: map[string]any{"device": "mako", "channel": "ubports/stable", "build_number": 3}})
	rec.wait(t, string(StateConnected))
	rec.wait(t, "notifications")
	if s.Host() != w.lomiri {
		t.Fatalf("connected to %q, want %q", s.Host(), w.lomiri)
	}
	w.notify(tok, app, "live")
	rec.wait(t, "notifications")
	rec.mu.Lock()
	var got []string
	for _, n := range rec.msgs {
		got = append(got, n.AppID+" "+string(n.Payload))
	}
	rec.mu.Unlock()
	if fmt.Sprint(got) != `[com.example.app_app {"n":1} com.example.app_app "live"]` {
		t.Fatalf("got %v", got)
	}
	// The broadcast came on connect too (the server handles one exchange
	// at a time, so it was acked before the live message was sent).
	rec.mu.Lock()
	level := rec.levels["0"]
	rec.mu.Unlock()
	if level != 1 {
		t.Fatalf("broadcast level %d, want 1", level)
	}
}

func TestSessionNakRedelivers(t *testing.T) {
	w := startServer(t, filepath.Join(t.TempDir(), "s.db"))
	reg := &Registrar{URL: w.http, DeviceID: "D"}
	tok, _ := reg.Register(context.Background(), "a.b_c")
	w.notify(tok, "a.b_c", 1)
	rec := newRecorder()
	rec.failOn = 1
	runSession(t, Config{Addr: w.lomiri, CertPEM: w.cert.CertPEM, DeviceID: "D", Handler: rec, Delays: []time.Duration{time.Millisecond}})
	rec.wait(t, "nak")
	rec.wait(t, "notifications") // the next connection gets it again
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.msgs) != 1 || string(rec.msgs[0].Payload) != "1" {
		t.Fatalf("got %+v", rec.msgs)
	}
}

func TestSessionRefusesWrongCertificate(t *testing.T) {
	w := startServer(t, filepath.Join(t.TempDir(), "s.db"))
	other, err := testcert.New("push.test")
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	// Pinned to another certificate with the same name: the handshake fails.
	s := runSession(t, Config{Addr: w.lomiri, CertPEM: other.CertPEM, DeviceID: "D", Handler: rec, Delays: []time.Duration{time.Hour}})
	rec.wait(t, string(StateBackoff))
	if s.Connected() {
		t.Fatal("connected with a certificate that is not pinned")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if slices.Contains(rec.states, StateConnected) {
		t.Fatal("reported connected")
	}
}
