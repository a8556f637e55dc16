package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/dbusapi"
	"github.com/heraldpush/herald/internal/harness"
)

// daemonRig is a private bus, herald-server, optionally a counting proxy,
// and heraldd dialing through it.
type daemonRig struct {
	bus    *harness.Bus
	srv    *harness.Server
	proxy  *harness.Proxy
	daemon *harness.Daemon
	conn   *dbus.Conn
	client *http.Client
}

func startDaemonRig(ctx context.Context, env *Env, withProxy bool, daemonEnv ...string) (*daemonRig, error) {
	r := &daemonRig{client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: 10 * time.Second}}
	var err error
	if r.bus, err = harness.StartBus(filepath.Join(env.Tmp, "bus")); err != nil {
		return nil, err
	}
	sdir := filepath.Join(env.Tmp, "server")
	if err := os.MkdirAll(sdir, 0o755); err != nil {
		r.close()
		return nil, err
	}
	if r.srv, err = harness.StartServer(filepath.Join(env.Bin, "herald-server"), sdir, "127.0.0.1:0",
		"--rate-limit-token", "0", "--rate-limit-ip", "0"); err != nil {
		r.close()
		return nil, err
	}
	target := r.srv.URL()
	if withProxy {
		if r.proxy, err = harness.StartProxy(r.srv.Addr); err != nil {
			r.close()
			return nil, err
		}
		target = "ws://" + r.proxy.Addr + "/"
	}
	if r.daemon, err = harness.StartDaemon(filepath.Join(env.Bin, "heraldd"), filepath.Join(env.Tmp, "home"), r.bus.Address, target, daemonEnv); err != nil {
		r.close()
		return nil, err
	}
	if r.conn, err = dbus.Connect(r.bus.Address); err != nil {
		r.close()
		return nil, err
	}
	if err := waitOwner(ctx, r.conn, dbusapi.DaemonName, 30*time.Second); err != nil {
		r.close()
		return nil, fmt.Errorf("%w\n%s", err, r.daemon.Tail(3000))
	}
	return r, nil
}

func (r *daemonRig) close() {
	if r.conn != nil {
		r.conn.Close()
	}
	if r.daemon != nil {
		r.daemon.Kill()
	}
	if r.proxy != nil {
		r.proxy.Close()
	}
	if r.srv != nil {
		r.srv.Kill()
	}
	if r.bus != nil {
		r.bus.Close()
	}
}

func (r *daemonRig) register(ctx context.Context, appID string) (string, error) {
	pkg, _, _ := strings.Cut(appID, "_")
	var token string
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := r.conn.Object("com.lomiri.PushNotifications", dbus.ObjectPath("/com/lomiri/PushNotifications/"+app.Quote(pkg))).
		CallWithContext(cctx, "com.lomiri.PushNotifications.Register", 0, appID).Store(&token)
	if err != nil {
		return "", fmt.Errorf("register %s: %w", appID, err)
	}
	return token, nil
}

func (r *daemonRig) push(token string, body []byte) error {
	return r.pushEncoded(token, body, "aes128gcm")
}

// pushEncoded posts body with the given Content-Encoding ("" for plaintext).
func (r *daemonRig) pushEncoded(token string, body []byte, encoding string) error {
	req, err := http.NewRequest(http.MethodPost, r.srv.HTTP()+"/wpush/v1/"+token, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("TTL", "3600")
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("push: status %d", resp.StatusCode)
	}
	return nil
}

func (r *daemonRig) counters(ctx context.Context) (map[string]uint64, error) {
	var c map[string]uint64
	err := r.conn.Object(dbusapi.DaemonName, dbusapi.DaemonPath).CallWithContext(ctx, dbusapi.DaemonIface+".Counters", 0).Store(&c)
	return c, err
}

// waitState polls the daemon's State property until it is want.
func (r *daemonRig) waitState(ctx context.Context, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		v, err := r.conn.Object(dbusapi.DaemonName, dbusapi.DaemonPath).GetProperty(dbusapi.DaemonIface + ".State")
		if err == nil && v.Value() == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon state is not %s after %s (%v)", want, timeout, v.Value())
		}
		settle(ctx, 20*time.Millisecond)
	}
}

// procStatus returns the fields of /proc/<pid>/status and the voluntary
// context switches summed over every thread.
func procStatus(pid int) (rss int64, switches int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			rss = kb * 1024
		}
	}
	f.Close()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				switches += n
			}
		}
	}
	return rss, switches, nil
}

// benchDaemonIdle measures an idle connected heraldd with one registered
// app over a minute: its RSS at the end, and its wakeups (voluntary context
// switches of all threads). The server's keepalive is 5 minutes, so no
// keepalive falls in the minute and none is subtracted.
func benchDaemonIdle(ctx context.Context, env *Env) ([]Result, error) {
	r, err := startDaemonRig(ctx, env, false)
	if err != nil {
		return nil, err
	}
	defer r.close()
	if _, err := r.register(ctx, "com.example.idle_idle"); err != nil {
		return nil, err
	}
	if err := r.waitState(ctx, "connected", 30*time.Second); err != nil {
		return nil, err
	}
	r.conn.Close() // no D-Bus traffic during the minute
	r.conn = nil
	settle(ctx, 30*time.Second) // let start-up work (GC, scavenger) finish
	pid := r.daemon.Pid()
	_, before, err := procStatus(pid)
	if err != nil {
		return nil, err
	}
	const minute = 60 * time.Second
	env.Logf("daemon_idle: watching heraldd (pid %d) idle for %s", pid, minute)
	settle(ctx, minute)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	rss, after, err := procStatus(pid)
	if err != nil {
		return nil, err
	}
	wakeups := float64(after - before)
	return []Result{
		{Name: "daemon_idle_rss_bytes", Label: "daemon idle RSS", Value: float64(rss), Unit: "B", Target: 12 << 20, Lower: true,
			Note: fmt.Sprintf("VmRSS after 60 s idle, connected, 1 app (%.1f MiB)", float64(rss)/(1<<20))},
		{Name: "daemon_idle_wakeups_per_min", Label: "daemon idle wakeups", Value: wakeups, Unit: "/min", Target: 2, Lower: true,
			Note: "voluntary context switches of all threads over 60 s, after 30 s of settling; server keepalive 5 min (none in the window)"},
	}, nil
}

// benchWireBytes counts the bytes between heraldd and herald-server (both
// directions, through a loopback proxy) per delivered 100-byte message,
// its ack included, over 1,000 messages sent one at a time.
func benchWireBytes(ctx context.Context, env *Env) ([]Result, error) {
	const count = 1000
	r, err := startDaemonRig(ctx, env, true)
	if err != nil {
		return nil, err
	}
	defer r.close()
	const appID = "com.example.wire_wire"
	token, err := r.register(ctx, appID)
	if err != nil {
		return nil, err
	}
	if err := r.waitState(ctx, "connected", 30*time.Second); err != nil {
		return nil, err
	}
	if err := r.conn.AddMatchSignal(dbus.WithMatchInterface("com.lomiri.Postal"), dbus.WithMatchMember("Post")); err != nil {
		return nil, err
	}
	sigs := make(chan *dbus.Signal, count+16)
	r.conn.Signal(sigs)
	// measure sends count messages one at a time and returns the bytes on the
	// wire per message, both directions.
	measure := func(body []byte, encoding string) (float64, int64, int64, error) {
		up0, down0 := r.proxy.Bytes()
		c0, err := r.counters(ctx)
		if err != nil {
			return 0, 0, 0, err
		}
		for i := range count {
			if err := r.pushEncoded(token, body, encoding); err != nil {
				return 0, 0, 0, err
			}
			select {
			case <-sigs:
			case <-time.After(10 * time.Second):
				return 0, 0, 0, fmt.Errorf("message %d not delivered", i)
			case <-ctx.Done():
				return 0, 0, 0, ctx.Err()
			}
		}
		// Acks are sent before the Post signal; let the last one cross the proxy.
		settle(ctx, 200*time.Millisecond)
		up1, down1 := r.proxy.Bytes()
		c1, err := r.counters(ctx)
		if err != nil {
			return 0, 0, 0, err
		}
		if got := c1["messages_received"] - c0["messages_received"]; got != count {
			return 0, 0, 0, fmt.Errorf("daemon received %d messages, want %d", got, count)
		}
		return float64((up1-up0)+(down1-down0)) / count, up1 - up0, down1 - down0, nil
	}
	// A 100-byte plaintext JSON message, as a Lomiri app server sends through
	// /wpush or /notify.
	plain := []byte(`{"from":"Alice","text":"Are we still on for lunch tomorrow at noon? I booked the usual place."}`)
	plain = append(plain, bytes.Repeat([]byte(" "), 100-len(plain))...)
	per, up, down, err := measure(plain, "")
	if err != nil {
		return nil, err
	}
	// A 100-byte encrypted (random) body, as a Web Push app server sends.
	random := make([]byte, 100)
	_, _ = rand.Read(random)
	perEnc, _, _, err := measure(random, "aes128gcm")
	if err != nil {
		return nil, err
	}
	return []Result{{Name: "wire_bytes_per_message", Label: "wire bytes per 100 B message", Value: per, Unit: "B", Target: 250, Lower: true,
		Note: fmt.Sprintf("%d plaintext JSON messages with their acks (compact frames when both ends have the extension, else JSON with permessage-deflate); device→server %d B, server→device %d B (TCP payload incl. websocket framing); a 100 B encrypted (incompressible) body: %.0f B", count, up, down, perEnc)}}, nil
}

// benchReconnectDrain stores 10,000 messages (100 apps × 100, the pending
// limit per channel) while heraldd is stopped, then starts it and measures
// the time until every message is in its inbox.
func benchReconnectDrain(ctx context.Context, env *Env) ([]Result, error) {
	const apps, per = 100, 100
	r, err := startDaemonRig(ctx, env, false, env.daemonProfileEnv("reconnect_drain")...)
	if err != nil {
		return nil, err
	}
	defer r.close()
	tokens := make([]string, apps)
	for i := range apps {
		if tokens[i], err = r.register(ctx, fmt.Sprintf("com.example.drain%d_app", i)); err != nil {
			return nil, err
		}
	}
	c0, err := r.counters(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.daemon.Stop(10 * time.Second); err != nil {
		var ee interface{ ExitCode() int }
		if !errors.As(err, &ee) {
			return nil, fmt.Errorf("stop heraldd: %w", err)
		}
	}
	env.Logf("reconnect_drain: storing %d messages while heraldd is stopped", apps*per)
	body := bytes.Repeat([]byte("x"), 100)
	errs := make(chan error, apps)
	for i := range apps {
		go func() {
			for range per {
				if err := r.push(tokens[i], body); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range apps {
		if err := <-errs; err != nil {
			return nil, err
		}
	}
	srvCPU0, _ := procCPU(r.srv.Pid())
	start := time.Now()
	if err := r.daemon.Start(); err != nil {
		return nil, err
	}
	want := c0["messages_received"] + apps*per
	var got uint64
	for {
		c, err := r.counters(ctx)
		if err == nil {
			got = c["messages_received"]
			if got >= want {
				break
			}
		}
		if time.Since(start) > 2*time.Minute {
			return nil, fmt.Errorf("only %d of %d messages drained after 2 min", got-c0["messages_received"], apps*per)
		}
		settle(ctx, 10*time.Millisecond)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	secs := time.Since(start).Seconds()
	// CPU is steadier than the wall clock on a shared machine.
	srvCPU1, _ := procCPU(r.srv.Pid())
	dCPU, _ := procCPU(r.daemon.Pid())
	if env.DaemonProfile != "" {
		_ = r.daemon.Stop(10 * time.Second) // a clean exit writes the profile
	}
	return []Result{{Name: "reconnect_drain_10k_s", Label: "reconnect drain of 10k messages", Value: secs, Unit: "s", Target: 1, Lower: true,
		Note: fmt.Sprintf("from heraldd start (process start included) until 10,000 stored messages are in its inbox (Counters, polled every 10 ms); CPU: heraldd %.2f s (start-up included), herald-server %.2f s",
			dCPU.Seconds(), (srvCPU1 - srvCPU0).Seconds())}}, nil
}
