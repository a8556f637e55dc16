package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/internal/harness"
	"github.com/heraldpush/herald/internal/pgtest"
)

// The chaos tests run the real heraldd and herald-server binaries on a
// private bus. HERALD_CHAOS_SCALE=N multiplies their messages and faults.

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func binaries(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"dbus-daemon", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (make test installs it): %v", tool, err)
		}
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "heraldd-test-bin-")
		if buildErr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			buildErr = harness.Build(ctx, binDir)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func scale() int {
	if n, err := strconv.Atoi(os.Getenv("HERALD_CHAOS_SCALE")); err == nil && n > 0 {
		return n
	}
	return 1
}

type rig struct {
	t      *testing.T
	bin    string
	bus    *harness.Bus
	server *harness.Server
	// nodes, when set, are herald-server nodes on one PostgreSQL database;
	// the device reaches them through proxy, app servers post to any live one.
	nodes  []*harness.Server
	nodeMu sync.RWMutex // held for reading by a push, for writing to take a node out
	on     int          // guarded by nodeMu: node the proxy sends the device to
	down   int          // guarded by nodeMu: node being killed, or -1
	turn   atomic.Int64
	proxy  *harness.Proxy
	daemon *harness.Daemon
	conn   *dbus.Conn
	names  chan string // new owners of org.herald.Daemon
}

func newRig(t *testing.T, withProxy bool) *rig {
	return newRigNodes(t, withProxy, 0)
}

// newRigNodes is newRig with nodes herald-server nodes on one PostgreSQL
// database (0: one server on a sqlite file); with nodes, the device always
// connects through the proxy.
func newRigNodes(t *testing.T, withProxy bool, nodes int) *rig {
	t.Helper()
	r := &rig{t: t, bin: binaries(t), names: make(chan string, 100), down: -1}
	dir := t.TempDir()
	var err error
	if r.bus, err = harness.StartBus(filepath.Join(dir, "bus")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.bus.Close)
	serverArgs := []string{"--rate-limit-token", "0", "--rate-limit-ip", "0"}
	if nodes == 0 {
		if err := os.MkdirAll(filepath.Join(dir, "server"), 0o700); err != nil {
			t.Fatal(err)
		}
		if r.server, err = harness.StartServer(filepath.Join(r.bin, "herald-server"), filepath.Join(dir, "server"), "127.0.0.1:0", serverArgs...); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.server.Kill() })
	} else {
		db := pgtest.Database(t)
		for i := range nodes {
			sdir := filepath.Join(dir, fmt.Sprintf("node%d", i))
			if err := os.MkdirAll(sdir, 0o700); err != nil {
				t.Fatal(err)
			}
			n, err := harness.StartServerDB(filepath.Join(r.bin, "herald-server"), sdir, "127.0.0.1:0", db, serverArgs...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("node %d log tail:\n%s", i, n.Tail(3000))
				}
				n.Kill()
			})
			r.nodes = append(r.nodes, n)
		}
		r.server = r.nodes[0]
		withProxy = true
	}
	target := r.server.URL()
	if withProxy {
		if r.proxy, err = harness.StartProxy(r.server.Addr); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.proxy.Close)
		target = "ws://" + r.proxy.Addr + "/"
	}
	if r.conn, err = dbus.Connect(r.bus.Address); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.conn.Close() })
	if err := r.conn.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, dbusapi.DaemonName)); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan *dbus.Signal, 100)
	r.conn.Signal(sigs)
	go func() {
		for s := range sigs {
			if len(s.Body) == 3 {
				if owner, _ := s.Body[2].(string); owner != "" {
					r.names <- owner
				}
			}
		}
	}()
	// Faults come faster than a real network's, so the redial backoff is
	// capped low (its schedule is tested in client/session).
	conf := filepath.Join(dir, "heraldd.toml")
	if err := os.WriteFile(conf, []byte("reconnect_min = \"50ms\"\nreconnect_max = \"300ms\"\ndurability = \"normal\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r.daemon, err = harness.StartDaemon(filepath.Join(r.bin, "heraldd"), filepath.Join(dir, "home"), r.bus.Address, target, nil, "--config", conf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("heraldd log tail:\n%s", r.daemon.Tail(4000))
		}
		r.daemon.Kill()
	})
	r.waitReady()
	return r
}

// waitReady waits until heraldd owns its names again.
func (r *rig) waitReady() {
	r.t.Helper()
	select {
	case <-r.names:
	case <-r.daemon.Done():
		r.t.Fatalf("heraldd exited:\n%s", r.daemon.Tail(4000))
	case <-time.After(30 * time.Second):
		r.t.Fatalf("heraldd did not own its names:\n%s", r.daemon.Tail(4000))
	}
}

func (r *rig) killDaemon() {
	r.daemon.Kill()
	if err := r.daemon.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.waitReady()
}

func (r *rig) register(appID string) string {
	r.t.Helper()
	aid, err := app.ParseID(appID)
	if err != nil {
		r.t.Fatal(err)
	}
	var tok string
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.conn.Object("com.lomiri.PushNotifications", dbus.ObjectPath("/com/lomiri/PushNotifications/"+app.Quote(aid.Package))).
		CallWithContext(ctx, "com.lomiri.PushNotifications.Register", 0, appID).Store(&tok)
	if err != nil {
		r.t.Fatalf("Register(%s): %v", appID, err)
	}
	return tok
}

func (r *rig) popAll(appID string) ([]string, error) {
	aid, err := app.ParseID(appID)
	if err != nil {
		return nil, err
	}
	var msgs []string
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = r.conn.Object("com.lomiri.Postal", dbus.ObjectPath("/com/lomiri/Postal/"+app.Quote(aid.Package))).
		CallWithContext(ctx, "com.lomiri.Postal.PopAll", 0, appID).Store(&msgs)
	return msgs, err
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func (r *rig) push(tok string, body []byte) (int, error) {
	base := r.server.HTTP()
	if len(r.nodes) > 0 {
		// Like a load balancer: any live node, in turn.
		r.nodeMu.RLock()
		defer r.nodeMu.RUnlock()
		i := int(r.turn.Add(1) % int64(len(r.nodes)))
		if i == r.down {
			i = (i + 1) % len(r.nodes)
		}
		base = r.nodes[i].HTTP()
	}
	req, err := http.NewRequest(http.MethodPost, base+"/wpush/v1/"+tok, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("TTL", "3600")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

type chaosMsg struct {
	App int `json:"app"`
	Seq int `json:"seq"`
}

// chaos sends msgs messages to apps apps while fault() is called faults
// times at random moments, then checks that every message answered 201
// reached its app exactly once, in order.
func chaos(t *testing.T, r *rig, msgs, faults int, fault func(i int)) {
	chaosPaused(t, r, msgs, faults, fault, &sync.RWMutex{})
}

// chaosPaused is chaos where pushes wait while a fault holds pause.
func chaosPaused(t *testing.T, r *rig, msgs, faults int, fault func(i int), pause *sync.RWMutex) {
	const apps = 5
	appIDs := make([]string, apps)
	tokens := make([]string, apps)
	for i := range apps {
		appIDs[i] = fmt.Sprintf("com.example.chaos%d_app", i)
		tokens[i] = r.register(appIDs[i])
	}
	must := make([]map[int]bool, apps)  // answered 201
	maybe := make([]map[int]bool, apps) // outcome unknown (connection error)
	for i := range apps {
		must[i], maybe[i] = map[int]bool{}, map[int]bool{}
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		// Paced like a busy app server: a channel keeps at most 100 pending
		// messages (DESIGN §3), so an unpaced flood during an outage would
		// legitimately drop the oldest.
		tick := time.NewTicker(time.Second / 300)
		defer tick.Stop()
		for n := range msgs {
			<-tick.C
			app := n % apps
			body, _ := json.Marshal(chaosMsg{App: app, Seq: n})
			pause.RLock()
			status, err := r.push(tokens[app], body)
			pause.RUnlock()
			switch {
			case err != nil:
				maybe[app][n] = true
			case status == http.StatusCreated:
				must[app][n] = true
			}
		}
	}()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for i := range faults {
		// A fault after a random number of pushes (no timing assumptions).
		wait := time.Duration(rng.IntN(150)) * time.Millisecond
		select {
		case <-time.After(wait):
		case <-sent:
		}
		fault(i)
	}
	<-sent
	posts := watchPosts(t, r)
	got := make([][]chaosMsg, apps)
	deadline := time.Now().Add(20 * time.Second)
	for i := range apps {
		for {
			ms, err := r.popAll(appIDs[i])
			if err != nil {
				t.Fatalf("PopAll(%s): %v", appIDs[i], err)
			}
			for _, m := range ms {
				var c chaosMsg
				if err := json.Unmarshal([]byte(m), &c); err != nil {
					t.Fatalf("%s got %q", appIDs[i], m)
				}
				got[i] = append(got[i], c)
			}
			have := map[int]bool{}
			for _, c := range got[i] {
				have[c.Seq] = true
			}
			missing := 0
			for n := range must[i] {
				if !have[n] {
					missing++
				}
			}
			if missing == 0 {
				break
			}
			if time.Now().After(deadline) {
				var inbox []map[string]dbus.Variant
				var counters map[string]uint64
				obj := r.conn.Object(dbusapi.DaemonName, dbusapi.DaemonPath)
				_ = obj.Call(dbusapi.DaemonIface+".Inbox", 0, appIDs[i]).Store(&inbox)
				_ = obj.Call(dbusapi.DaemonIface+".Counters", 0).Store(&counters)
				t.Fatalf("%s: %d of %d acknowledged messages missing; daemon inbox holds %d; counters %v",
					appIDs[i], missing, len(must[i]), len(inbox), counters)
			}
			// Wait for the next Post signal instead of spinning.
			select {
			case <-posts:
			case <-time.After(time.Until(deadline)):
			}
		}
	}
	total, delivered, dups := 0, 0, 0
	for i := range apps {
		seen := map[int]bool{}
		last := -1
		for _, c := range got[i] {
			if c.App != i {
				t.Errorf("%s got a message of app %d", appIDs[i], c.App)
			}
			if seen[c.Seq] {
				dups++
				t.Errorf("%s got message %d twice", appIDs[i], c.Seq)
			}
			if c.Seq <= last {
				t.Errorf("%s got message %d after %d", appIDs[i], c.Seq, last)
			}
			if !must[i][c.Seq] && !maybe[i][c.Seq] {
				t.Errorf("%s got message %d that was never accepted", appIDs[i], c.Seq)
			}
			seen[c.Seq], last = true, c.Seq
		}
		total += len(must[i])
		delivered += len(got[i])
	}
	// Every accepted message was found above (or the test failed there).
	t.Logf("%d messages accepted, %d faults: %d delivered, 0 lost, %d duplicated", total, faults, delivered, dups)
	if total == 0 {
		t.Errorf("no message was accepted by the server")
	}
}

// watchPosts returns a channel that gets every Post signal.
func watchPosts(t *testing.T, r *rig) <-chan *dbus.Signal {
	c, err := dbus.Connect(r.bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.AddMatchSignal(dbus.WithMatchInterface("com.lomiri.Postal"), dbus.WithMatchMember("Post")); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *dbus.Signal, 10000)
	c.Signal(ch)
	return ch
}

func TestChaosDaemonKilled(t *testing.T) {
	r := newRig(t, false)
	chaos(t, r, 1000*scale(), 10*scale(), func(int) { r.killDaemon() })
}

func TestChaosServerKilled(t *testing.T) {
	r := newRig(t, false)
	// App servers retry while the push server is down: pushes pause then.
	var pause sync.RWMutex
	chaosPaused(t, r, 1000*scale(), 5*scale(), func(int) {
		pause.Lock()
		defer pause.Unlock()
		r.server.Kill()
		if err := r.server.Restart(); err != nil {
			t.Fatal(err)
		}
	}, &pause)
}

// TestChaosNodeKilled runs two herald-server nodes on one PostgreSQL
// database. Each fault SIGKILLs the node holding the device while app servers
// go on posting to the other one; the device reconnects to the survivor (the
// proxy stands for a load balancer taking the dead node out), the dead node
// restarts. Every accepted message arrives once, in order.
func TestChaosNodeKilled(t *testing.T) {
	r := newRigNodes(t, true, 2)
	chaos(t, r, 1000*scale(), 5*scale(), func(int) {
		r.nodeMu.Lock()
		victim := r.on
		r.down, r.on = victim, (victim+1)%len(r.nodes)
		r.proxy.SetTarget(r.nodes[r.on].Addr)
		r.nodeMu.Unlock()
		r.nodes[victim].Kill()
		if err := r.nodes[victim].Restart(); err != nil {
			t.Fatal(err)
		}
		r.nodeMu.Lock()
		r.down = -1
		r.nodeMu.Unlock()
	})
}

func TestChaosConnectionCut(t *testing.T) {
	r := newRig(t, true)
	chaos(t, r, 1000*scale(), 20*scale(), func(int) { r.proxy.Cut() })
}

// TestSystemdLifecycle checks the sd_notify messages (READY=1 once the
// names are owned, STATUS= with the connection state, WATCHDOG=1, and
// STOPPING=1 on SIGTERM) and a clean exit.
func TestSystemdLifecycle(t *testing.T) {
	bin := binaries(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	msgs := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	bus, err := harness.StartBus(filepath.Join(dir, "bus"))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	if err := os.MkdirAll(filepath.Join(dir, "server"), 0o700); err != nil {
		t.Fatal(err)
	}
	srv, err := harness.StartServer(filepath.Join(bin, "herald-server"), filepath.Join(dir, "server"), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Kill()
	d, err := harness.StartDaemon(filepath.Join(bin, "heraldd"), filepath.Join(dir, "home"), bus.Address, srv.URL(),
		[]string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=200000"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill()
	next := func(prefix string) string {
		t.Helper()
		for {
			select {
			case m := <-msgs:
				if strings.HasPrefix(m, prefix) {
					return m
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no %s from heraldd:\n%s", prefix, d.Tail(3000))
			}
		}
	}
	next("READY=1")
	conn, err := dbus.Connect(bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusapi.DaemonName).Store(&has); err != nil || !has {
		t.Fatalf("READY=1 before %s was owned (%v)", dbusapi.DaemonName, err)
	}
	next("WATCHDOG=1")
	// A registration makes it connect: STATUS= follows the state.
	var tok string
	err = conn.Object("com.lomiri.PushNotifications", "/com/lomiri/PushNotifications/com_2eexample_2esd").
		Call("com.lomiri.PushNotifications.Register", 0, "com.example.sd_sd").Store(&tok)
	if err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(next("STATUS="), "connected") {
	}
	if err := d.Stop(20 * time.Second); err != nil {
		t.Fatalf("heraldd did not exit cleanly on SIGTERM: %v\n%s", err, d.Tail(3000))
	}
	next("STOPPING=1")
}
