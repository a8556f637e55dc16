package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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

// startBenchServer runs bin/herald-server with rate limits off on a sqlite
// database in env.Tmp and waits for its "listening on" line.
func startBenchServer(ctx context.Context, env *Env) (*benchServer, error) {
	bin := filepath.Join(env.Bin, "herald-server")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no herald-server binary (run make build): %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, "--listen", "127.0.0.1:0", "--db", filepath.Join(env.Tmp, "herald-server.db"),
		"--rate-limit-token", "0", "--rate-limit-ip", "0", "--log-level", "warn")
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

func benchServerThroughput(ctx context.Context, env *Env) ([]Result, error) {
	const (
		devices    = 1000
		publishers = 128
		window     = 10 * time.Second
		drainMax   = 10 * time.Second
	)
	srv, err := startBenchServer(ctx, env)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	devs, err := dialMany(ctx, srv.addr, devices, 64, true)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, d := range devs {
			d.ws.Close()
		}
	}()
	env.Logf("server_throughput: %d devices connected", devices)

	// Devices ack every notification as it arrives.
	var delivered, accepted, failed atomic.Int64
	var lastAck atomic.Int64 // unix nanos of the latest ack
	var readers sync.WaitGroup
	for _, d := range devs {
		readers.Go(func() {
			for {
				_, f, err := d.ws.ReadMessage()
				if err != nil {
					return
				}
				m, err := protocol.Decode(f)
				n, ok := m.(*protocol.Notification)
				if err != nil || !ok {
					continue
				}
				b, _ := protocol.Encode(&protocol.Ack{Updates: []protocol.Update{{ChannelID: n.ChannelID, Version: n.Version, Code: 100}}})
				if d.ws.WriteMessage(websocket.TextMessage, b) != nil {
					return
				}
				delivered.Add(1)
				lastAck.Store(time.Now().UnixNano())
			}
		})
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConns: publishers * 2, MaxIdleConnsPerHost: publishers * 2, DisableCompression: true}}
	body := bytes.Repeat([]byte("x"), 100)
	start := time.Now()
	pubCtx, stopPub := context.WithTimeout(ctx, window)
	defer stopPub()
	var pubs sync.WaitGroup
	var next atomic.Int64
	for range publishers {
		pubs.Go(func() {
			for pubCtx.Err() == nil {
				ep := devs[int(next.Add(1))%devices].endpoint
				req, _ := http.NewRequestWithContext(pubCtx, "POST", ep, bytes.NewReader(body))
				req.Header.Set("TTL", "600")
				req.Header.Set("Content-Encoding", "aes128gcm")
				resp, err := client.Do(req)
				if err != nil {
					if pubCtx.Err() == nil {
						failed.Add(1)
					}
					continue
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusCreated {
					accepted.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	pubs.Wait()
	pubElapsed := time.Since(start)
	acc := accepted.Load()
	// Drain: wait until every accepted message is acked (or drainMax).
	deadline := time.Now().Add(drainMax)
	for delivered.Load() < acc && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond) // polling a counter, not waiting for an event
	}
	del := delivered.Load()
	ackElapsed := time.Duration(lastAck.Load() - start.UnixNano())
	if ackElapsed < pubElapsed {
		ackElapsed = pubElapsed
	}
	for _, d := range devs {
		d.ws.Close()
	}
	readers.Wait()
	if acc == 0 {
		return nil, fmt.Errorf("no message accepted (%d failed)", failed.Load())
	}
	accRate := float64(acc) / pubElapsed.Seconds()
	delRate := float64(del) / ackElapsed.Seconds()
	note := fmt.Sprintf("%d devices, %d publishers, %s: %d accepted (%.0f/s), %d delivered+acked in %.1fs, %d failed",
		devices, publishers, window, acc, accRate, del, ackElapsed.Seconds(), failed.Load())
	return []Result{
		{Name: "server_throughput_msgs_per_s", Label: "server: delivered+acked msgs/s (1,000 devices, durable)", Value: delRate,
			Unit: "msgs/s", Target: 20000, Note: note},
		{Name: "server_accepted_msgs_per_s", Label: "server: accepted (201) msgs/s", Value: accRate,
			Unit: "msgs/s", Target: 20000, Note: "same run"},
	}, nil
}

func benchServerIdleConn(ctx context.Context, env *Env) ([]Result, error) {
	const conns = 10000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) // inherited by herald-server
	}
	if lim.Cur < conns+100 {
		return nil, fmt.Errorf("RLIMIT_NOFILE %d is below %d", lim.Cur, conns+100)
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
		Unit: "bytes", Target: 20480, Lower: true,
		Note: fmt.Sprintf("%d conns opened in %.1fs; VmRSS %.1f MB → %.1f MB", conns, opened.Seconds(),
			float64(before)/1e6, float64(after)/1e6),
	}}, nil
}

// settle lets the server become idle (a fixed wait is the measurement here).
func settle(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
