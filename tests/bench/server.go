package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// benchServer is a herald-server process started for a figure.
type benchServer struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// startBenchServer runs bin/herald-server with rate and connection limits
// off on a sqlite database in env.Tmp, with extra arguments, and waits for its
// "listening on" line.
func startBenchServer(ctx context.Context, env *Env, extra ...string) (*benchServer, error) {
	return startBenchServerDB(ctx, env, filepath.Join(env.Tmp, "herald-server.db"), extra...)
}

// startBenchServerDB is startBenchServer on db (a file or a postgres URL).
func startBenchServerDB(ctx context.Context, env *Env, db string, extra ...string) (*benchServer, error) {
	bin := filepath.Join(env.Bin, "herald-server")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no herald-server binary (run make build): %w", err)
	}
	args := []string{"--listen", "127.0.0.1:0", "--db", db, "--log-level", "warn"}
	args = append(args, unlimitedArgs(bin)...)
	cmd := exec.CommandContext(ctx, bin, append(args, extra...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &benchServer{cmd: cmd, done: make(chan error, 1)}
	line := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		l, _ := r.ReadString('\n')
		line <- l
		_, _ = r.WriteTo(devNull{})
		s.done <- cmd.Wait()
	}()
	select {
	case l := <-line:
		addr, ok := strings.CutPrefix(strings.TrimSpace(l), "listening on ")
		if !ok {
			s.stop()
			return nil, fmt.Errorf("herald-server printed %q", l)
		}
		s.addr = addr
		return s, nil
	case <-time.After(30 * time.Second):
		s.stop()
		return nil, errors.New("herald-server did not start")
	}
}

// unlimitedArgs are the flags that lift the server's per-client limits
// (the load generator is one client with thousands of connections), each
// only if this herald-server has it.
func unlimitedArgs(bin string) []string {
	help, _ := exec.Command(bin, "-h").CombinedOutput()
	var args []string
	for _, f := range [][2]string{
		{"rate-limit-token", "0"}, {"rate-limit-ip", "0"}, {"rate-limit-upgrade", "0"},
		{"max-conns-ip", "100000"},
	} {
		if bytes.Contains(help, []byte("-"+f[0]+" ")) {
			args = append(args, "--"+f[0], f[1])
		}
	}
	return args
}

type devNull struct{}

func (devNull) Write(p []byte) (int, error) { return len(p), nil }

func (s *benchServer) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// rss reads VmRSS of the server process in bytes.
func (s *benchServer) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// cpu returns the CPU time (user+system) the server process has used.
func (s *benchServer) cpu() (time.Duration, error) {
	return procCPU(s.cmd.Process.Pid)
}

// procCPU returns the CPU time (user+system) process pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// selfCPU returns the CPU time (user+system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Bits a tracker sets per message id.
const (
	published = 1 << iota // the publisher got 201 with this id in Location
	acked                 // the device acked this version
)

// tracker matches accepted message ids with acked versions (for Web Push the
// version is the id): both counts those seen on both sides.
type tracker struct {
	shards [64]struct {
		mu sync.Mutex
		m  map[string]uint8 // guarded by mu; bits seen so far
	}
	both atomic.Int64
	last atomic.Int64 // unix nanos when both last grew
}

func (t *tracker) mark(id string, bit uint8) {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	sh := &t.shards[h%uint32(len(t.shards))]
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = map[string]uint8{}
	}
	old := sh.m[id]
	now := old | bit
	if now == published|acked {
		delete(sh.m, id) // counted; a repeated ack counts nothing
	} else {
		sh.m[id] = now
	}
	sh.mu.Unlock()
	if now == published|acked && old != now {
		t.both.Add(1)
		t.last.Store(time.Now().UnixNano())
	}
}

// notificationIDs takes channelID and version from a notification frame as
// herald-server writes it, or else through protocol.Decode.
func notificationIDs(f []byte) (chid, version string, ok bool) {
	const head, mid = `{"messageType":"notification","channelID":"`, `","version":"`
	if rest, found := bytes.CutPrefix(f, []byte(head)); found {
		if c, rest, found := bytes.Cut(rest, []byte(mid)); found && bytes.IndexByte(c, '\\') < 0 {
			if v, _, found := bytes.Cut(rest, []byte(`"`)); found && bytes.IndexByte(v, '\\') < 0 {
				return string(c), string(v), true
			}
		}
	}
	m, err := protocol.Decode(f)
	n, isN := m.(*protocol.Notification)
	if err != nil || !isN {
		return "", "", false
	}
	return n.ChannelID, n.Version, true
}

// appendAck appends the ack frame protocol.Encode writes for one delivered
// message with plain (unescaped) ids.
func appendAck(b []byte, chid, version string) []byte {
	b = append(b, `{"messageType":"ack","updates":[{"channelID":"`...)
	b = append(b, chid...)
	b = append(b, `","version":"`...)
	b = append(b, version...)
	return append(b, `","code":100}]}`...)
}

// publisher posts on one keep-alive HTTP/1.1 connection.
type publisher struct {
	c    net.Conn
	br   *bufio.Reader
	host string
	req  []byte
	dead bool // the server closes the connection after this response
}

func dialPublisher(ctx context.Context, addr string) (*publisher, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &publisher{c: c, br: bufio.NewReaderSize(c, 4096), host: addr}, nil
}

func (p *publisher) close() { p.c.Close() }

// post sends a Web Push message and returns the id from Location.
func (p *publisher) post(path string, body []byte) (id string, status int, err error) {
	b := append(p.req[:0], "POST "...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, p.host...)
	b = append(b, "\r\nTTL: 600\r\nContent-Encoding: aes128gcm\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	p.req = b
	p.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := p.c.Write(b); err != nil {
		p.c.Close()
		return "", 0, err
	}
	resp, err := http.ReadResponse(p.br, nil)
	if err != nil {
		p.c.Close()
		return "", 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		p.c.Close()
		return "", 0, err
	}
	p.dead = resp.Close
	loc := resp.Header.Get("Location")
	return loc[strings.LastIndexByte(loc, '/')+1:], resp.StatusCode, nil
}

// benchDevice is one websocket device.
type benchDevice struct {
	ws       *websocket.Conn
	endpoint string
}

// dialDevice connects, says hello and registers one channel when register is set.
func dialDevice(ctx context.Context, addr string, local net.IP, register bool) (*benchDevice, error) {
	d := websocket.Dialer{
		HandshakeTimeout: 30 * time.Second,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
		NetDialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			nd := net.Dialer{Timeout: 30 * time.Second}
			if local != nil {
				nd.LocalAddr = &net.TCPAddr{IP: local}
			}
			return nd.DialContext(ctx, network, a)
		},
	}
	ws, _, err := d.DialContext(ctx, "ws://"+addr+"/", nil)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*benchDevice, error) { ws.Close(); return nil, err }
	ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"messageType":"hello","use_webpush":true,"broadcasts":{}}`)); err != nil {
		return fail(err)
	}
	if _, _, err := ws.ReadMessage(); err != nil {
		return fail(err)
	}
	dev := &benchDevice{ws: ws}
	if register {
		b, _ := protocol.Encode(&protocol.Register{ChannelID: protocol.NewChannelID()})
		if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
			return fail(err)
		}
		_, f, err := ws.ReadMessage()
		if err != nil {
			return fail(err)
		}
		m, err := protocol.Decode(f)
		r, ok := m.(*protocol.Register)
		if err != nil || !ok || r.Status != 200 {
			return fail(fmt.Errorf("register failed: %s", f))
		}
		dev.endpoint = r.PushEndpoint
	}
	ws.SetReadDeadline(time.Time{})
	return dev, nil
}

// dialMany opens n devices, at most par at a time, spread over 127.0.0.2-5.
func dialMany(ctx context.Context, addr string, n, par int, register bool) ([]*benchDevice, error) {
	devs := make([]*benchDevice, n)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			d, err := dialDevice(ctx, addr, net.IPv4(127, 0, 0, byte(2+i%4)), register)
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("device %d: %w", i, err)
				}
				mu.Unlock()
				return
			}
			devs[i] = d
		})
	}
	wg.Wait()
	if firstErr != nil {
		for _, d := range devs {
			if d != nil {
				d.ws.Close()
			}
		}
		return nil, firstErr
	}
	return devs, nil
}

func benchServerThroughput(ctx context.Context, env *Env) (_ []Result, err error) {
	var extra []string
	var pprofAddr string
	if env.CPUProfile != "" {
		if pprofAddr, err = freeAddr(); err != nil {
			return nil, err
		}
		extra = append(extra, "--pprof", pprofAddr)
	}
	srv, err := startBenchServer(ctx, env, extra...)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	t, err := throughput(ctx, env, []*benchServer{srv}, nil, pprofAddr)
	if err != nil {
		return nil, err
	}
	return []Result{
		{Name: "server_throughput_msgs_per_s", Label: "server: delivered+acked msgs/s (1,000 devices, durable)", Value: t.delRate,
			Unit: "msgs/s", Target: 25000, Note: t.note},
		{Name: "server_accepted_msgs_per_s", Label: "server: accepted (201) msgs/s", Value: t.accRate,
			Unit: "msgs/s", Target: 25000, Note: "same run"},
		{Name: "server_cpu_us_per_msg", Label: "server: CPU per delivered message", Value: t.cpuPerMsg,
			Unit: "µs", Target: 40, Lower: true, Note: "same run: user+system CPU of herald-server / messages delivered and acked"},
	}, nil
}

// throughputRun is what one throughput measurement found.
type throughputRun struct {
	acc, del         int64
	accRate, delRate float64
	cpuPerMsg        float64 // µs of all nodes per delivered message
	note             string
}

// throughput connects 1,000 devices spread over nodes (in equal parts) and
// has 128 publishers post to the nodes in turn, so that with several nodes
// most messages reach their device through another node. extra, when set,
// is called before (false) and after (true) the window and what it returns
// after is added to the note. With pprofAddr, the first node's CPU profile
// is fetched in the middle of the window.
func throughput(ctx context.Context, env *Env, nodes []*benchServer, extra func(done bool) string, pprofAddr string) (throughputRun, error) {
	const (
		devices    = 1000
		publishers = 128
		window     = 10 * time.Second
		drainMax   = 10 * time.Second
	)
	var run throughputRun
	var devs []*benchDevice
	defer func() {
		for _, d := range devs {
			d.ws.Close()
		}
	}()
	for i, n := range nodes {
		count := devices / len(nodes)
		if i == len(nodes)-1 {
			count += devices % len(nodes)
		}
		ds, err := dialMany(ctx, n.addr, count, 64, true)
		if err != nil {
			return run, err
		}
		devs = append(devs, ds...)
	}
	env.Logf("throughput: %d devices connected to %d node(s)", len(devs), len(nodes))

	// Devices ack every notification as it arrives. A message counts once
	// its publisher got 201 (with its id in Location) and its device acked
	// that id: the tracker matches both.
	var tr tracker
	var accepted, failed atomic.Int64
	var readers sync.WaitGroup
	for _, d := range devs {
		readers.Go(func() {
			var buf bytes.Buffer
			var ack []byte
			for {
				_, r, err := d.ws.NextReader()
				if err != nil {
					return
				}
				buf.Reset()
				if _, err := buf.ReadFrom(r); err != nil {
					return
				}
				chid, version, ok := notificationIDs(buf.Bytes())
				if !ok {
					continue
				}
				ack = appendAck(ack[:0], chid, version)
				if d.ws.WriteMessage(websocket.TextMessage, ack) != nil {
					return
				}
				tr.mark(version, acked)
			}
		})
	}

	paths := make([]string, len(devs))
	for i, d := range devs {
		u, err := url.Parse(d.endpoint)
		if err != nil {
			return run, err
		}
		paths[i] = u.Path
	}
	body := bytes.Repeat([]byte("x"), 100)
	cpuAll := func() time.Duration {
		var sum time.Duration
		for _, n := range nodes {
			c, _ := n.cpu()
			sum += c
		}
		return sum
	}
	srvCPU0 := cpuAll()
	if extra != nil {
		extra(false)
	}
	genCPU0 := selfCPU()
	start := time.Now()
	pubCtx, stopPub := context.WithTimeout(ctx, window)
	defer stopPub()
	profDone := make(chan error, 1)
	if pprofAddr != "" {
		// The middle of the window: past the start, done before the end.
		go func() { profDone <- fetchProfile(ctx, pprofAddr, window/2, env.CPUProfile) }()
	} else {
		profDone <- nil
	}
	var pubs sync.WaitGroup
	var next atomic.Int64
	for j := range publishers {
		addr := nodes[j%len(nodes)].addr
		pubs.Go(func() {
			// One keep-alive HTTP/1.1 connection per publisher, written and
			// read in this goroutine (net/http's client adds two goroutine
			// hops per request). A request begun is always finished.
			p, err := dialPublisher(ctx, addr)
			if err != nil {
				failed.Add(1)
				return
			}
			defer func() { p.close() }()
			for pubCtx.Err() == nil {
				id, status, err := p.post(paths[int(next.Add(1))%len(paths)], body)
				switch {
				case err != nil:
					failed.Add(1)
				case status == http.StatusCreated && id != "":
					accepted.Add(1)
					tr.mark(id, published)
				default:
					failed.Add(1)
				}
				if err != nil || p.dead {
					p.close()
					if p, err = dialPublisher(ctx, addr); err != nil {
						failed.Add(1)
						return
					}
				}
			}
		})
	}
	pubs.Wait()
	pubElapsed := time.Since(start)
	if err := <-profDone; err != nil {
		env.Logf("server_throughput: no profile: %v", err)
	} else if pprofAddr != "" {
		env.Logf("server_throughput: CPU profile of the server in %s (go tool pprof -top %s)", env.CPUProfile, env.CPUProfile)
	}
	acc := accepted.Load()
	// Drain: wait until every accepted message is acked (or drainMax).
	deadline := time.Now().Add(drainMax)
	for tr.both.Load() < acc && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond) // polling a counter, not waiting for an event
	}
	del := tr.both.Load()
	srvCPU1 := cpuAll()
	genCPU := selfCPU() - genCPU0
	extraNote := ""
	if extra != nil {
		extraNote = extra(true)
	}
	ackElapsed := time.Duration(tr.last.Load() - start.UnixNano())
	if ackElapsed < pubElapsed {
		ackElapsed = pubElapsed
	}
	for _, d := range devs {
		d.ws.Close()
	}
	readers.Wait()
	if acc == 0 {
		return run, fmt.Errorf("no message accepted (%d failed)", failed.Load())
	}
	run.acc, run.del = acc, del
	run.accRate = float64(acc) / pubElapsed.Seconds()
	run.delRate = float64(del) / ackElapsed.Seconds()
	// CPU per message is steadier than the rate on a shared machine.
	perMsg := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(max(del, 1)) }
	run.cpuPerMsg = perMsg(srvCPU1 - srvCPU0)
	run.note = fmt.Sprintf("%d devices on %d node(s), %d publishers, %s: %d accepted (%.0f/s), %d delivered+acked in %.1fs, %d failed; CPU/msg: server %.0f µs (all nodes), load generator %.0f µs%s",
		len(devs), len(nodes), publishers, window, acc, run.accRate, del, ackElapsed.Seconds(), failed.Load(), run.cpuPerMsg, perMsg(genCPU), extraNote)
	return run, nil
}

// benchServerIdleConn opens 19,000 idle device websockets (the server and
// this load generator each hold one descriptor per connection, within a
// per-process limit of 20,000) and divides the server's RSS growth by them.
func benchServerIdleConn(ctx context.Context, env *Env) ([]Result, error) {
	const conns = 19000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) // inherited by herald-server
	}
	if lim.Cur < conns+200 {
		return nil, fmt.Errorf("RLIMIT_NOFILE %d is below %d", lim.Cur, conns+200)
	}
	srv, err := startBenchServer(ctx, env)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	// Warm up: one connection, so that lazily started parts are counted in the base.
	warm, err := dialDevice(ctx, srv.addr, nil, true)
	if err != nil {
		return nil, err
	}
	warm.ws.Close()
	settle(ctx, 2*time.Second)
	before, err := srv.rss()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	devs, err := dialMany(ctx, srv.addr, conns, 64, false)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, d := range devs {
			d.ws.Close()
		}
	}()
	opened := time.Since(start)
	settle(ctx, 10*time.Second)
	after, err := srv.rss()
	if err != nil {
		return nil, err
	}
	per := float64(after-before) / conns
	return []Result{{
		Name: "server_bytes_per_idle_conn", Label: "server: bytes per idle device connection", Value: per,
		Unit: "bytes", Target: 8192, Lower: true,
		Note: fmt.Sprintf("%d conns opened in %.1fs; VmRSS %.1f MB → %.1f MB", conns, opened.Seconds(),
			float64(before)/1e6, float64(after)/1e6),
	}}, nil
}

// freeAddr returns a loopback address with a port that is free now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// fetchProfile waits for delay, then takes a 3-second CPU profile from the
// server's --pprof address and writes it to path.
func fetchProfile(ctx context.Context, addr string, delay time.Duration, path string) error {
	settle(ctx, delay-2*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/profile?seconds=3", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// settle lets the server become idle (a fixed wait is the measurement here).
func settle(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// benchServerLatency measures the server alone: POST of a 100-byte Web Push
// message → its notification frame read by the connected device, for 2,000
// messages at 200/s (open loop) on one keep-alive connection; the device acks
// each frame as it arrives, as heraldd does.
func benchServerLatency(ctx context.Context, env *Env) ([]Result, error) {
	const (
		count = 2000
		rate  = 200
	)
	srv, err := startBenchServer(ctx, env)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	dev, err := dialDevice(ctx, srv.addr, nil, true)
	if err != nil {
		return nil, err
	}
	defer dev.ws.Close()
	u, err := url.Parse(dev.endpoint)
	if err != nil {
		return nil, err
	}
	pub, err := dialPublisher(ctx, srv.addr)
	if err != nil {
		return nil, err
	}
	defer func() { pub.close() }()

	// Arrival time of each version, read by the device goroutine.
	var mu sync.Mutex
	arrived := make(map[string]time.Time, count+1)
	got := make(chan struct{}, count+1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		var ack []byte
		for {
			_, f, err := dev.ws.ReadMessage()
			now := time.Now()
			if err != nil {
				return
			}
			chid, version, ok := notificationIDs(f)
			if !ok {
				continue
			}
			mu.Lock()
			arrived[version] = now
			mu.Unlock()
			ack = appendAck(ack[:0], chid, version)
			if dev.ws.WriteMessage(websocket.TextMessage, ack) != nil {
				return
			}
			got <- struct{}{}
		}
	}()
	body := bytes.Repeat([]byte("x"), 100)
	// Warm up.
	if _, status, err := pub.post(u.Path, body); err != nil || status != http.StatusCreated {
		return nil, fmt.Errorf("warm-up post: status %d, %v", status, err)
	}
	select {
	case <-got:
	case <-time.After(30 * time.Second):
		return nil, errors.New("warm-up message never arrived")
	}

	ids := make([]string, count)
	sent := make([]time.Time, count)
	rtt := make([]float64, count) // POST → 201
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	for i := range count {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		sent[i] = time.Now()
		id, status, err := pub.post(u.Path, body)
		if err != nil || status != http.StatusCreated {
			return nil, fmt.Errorf("post %d: status %d, %v", i, status, err)
		}
		rtt[i] = ms(time.Since(sent[i]))
		ids[i] = id
	}
	for range count {
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			return nil, errors.New("not every message arrived")
		}
	}
	lat := make([]float64, 0, count)
	mu.Lock()
	for i, id := range ids {
		if t, ok := arrived[id]; ok {
			lat = append(lat, ms(t.Sub(sent[i])))
		}
	}
	mu.Unlock()
	if len(lat) != count {
		return nil, fmt.Errorf("%d of %d messages matched", len(lat), count)
	}
	slices.Sort(lat)
	slices.Sort(rtt)
	note := fmt.Sprintf("%d x 100 B at %d/s, 1 device, POST → notification frame read by the device; max %.2f ms; POST → 201 (durable commit) p50 %.2f ms, p99 %.2f ms",
		count, rate, lat[len(lat)-1], rtt[len(rtt)/2], rtt[len(rtt)*99/100])
	return []Result{
		{Name: "server_latency_p50_ms", Label: "server latency p50 (POST → device frame)", Value: lat[len(lat)*50/100], Unit: "ms", Target: 0.35, Lower: true, Note: note},
		{Name: "server_latency_p99_ms", Label: "server latency p99 (POST → device frame)", Value: lat[len(lat)*99/100], Unit: "ms", Target: 0.7, Lower: true, Note: "same run"},
	}, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
