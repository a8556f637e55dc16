package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/internal/harness"
)

// benchE2ELatency measures app server POST → app receives the Post signal,
// for 2,000 messages of 100 bytes sent at 200 messages/s (open loop), over
// loopback with durable storage on both ends.
func benchE2ELatency(ctx context.Context, env *Env) ([]Result, error) {
	const (
		count = 2000
		rate  = 200
		appID = "com.example.bench_bench"
	)
	bus, err := harness.StartBus(filepath.Join(env.Tmp, "bus"))
	if err != nil {
		return nil, err
	}
	defer bus.Close()
	sdir := filepath.Join(env.Tmp, "server")
	if err := os.MkdirAll(sdir, 0o755); err != nil {
		return nil, err
	}
	// 200 messages/s to one endpoint is above the default per-token limit.
	srv, err := harness.StartServer(filepath.Join(env.Bin, "herald-server"), sdir, "127.0.0.1:0", "--rate-limit-token", "0", "--rate-limit-ip", "0")
	if err != nil {
		return nil, err
	}
	defer srv.Kill()
	d, err := harness.StartDaemon(filepath.Join(env.Bin, "heraldd"), filepath.Join(env.Tmp, "home"), bus.Address, srv.URL(), env.daemonProfileEnv("e2e_latency"))
	if err != nil {
		return nil, err
	}
	defer d.Kill()
	conn, err := dbus.Connect(bus.Address)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := waitOwner(ctx, conn, "com.lomiri.PushNotifications", 30*time.Second); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, d.Tail(3000))
	}
	pkg, _, _ := strings.Cut(appID, "_")
	var token string
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = conn.Object("com.lomiri.PushNotifications", dbus.ObjectPath("/com/lomiri/PushNotifications/"+app.Quote(pkg))).
		CallWithContext(cctx, "com.lomiri.PushNotifications.Register", 0, appID).Store(&token)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	if err := conn.AddMatchSignal(dbus.WithMatchInterface("com.lomiri.Postal"), dbus.WithMatchMember("Post")); err != nil {
		return nil, err
	}
	sigs := make(chan *dbus.Signal, count+16)
	conn.Signal(sigs)

	url := srv.HTTP() + "/wpush/v1/" + token
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: 10 * time.Second}
	body := bytes.Repeat([]byte("x"), 100)
	// Warm up: one message end to end.
	if err := post(client, url, body); err != nil {
		return nil, err
	}
	select {
	case <-sigs:
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("warm-up message never arrived\n%s", d.Tail(3000))
	}

	sent := make([]time.Time, count)
	rtt := make([]float64, count) // POST → 201, ms
	var wg sync.WaitGroup
	var errMu sync.Mutex // guards postErr
	var postErr error
	tick := time.NewTicker(time.Second / rate)
	go func() {
		defer tick.Stop()
		for i := range count {
			<-tick.C
			sent[i] = time.Now()
			wg.Go(func() {
				defer func() { rtt[i] = float64(time.Since(sent[i])) / float64(time.Millisecond) }()
				if err := post(client, url, body); err != nil {
					errMu.Lock()
					postErr = err
					errMu.Unlock()
				}
			})
		}
	}()
	lat := make([]float64, 0, count)
	popper := conn.Object("com.lomiri.Postal", dbus.ObjectPath("/com/lomiri/Postal/"+app.Quote(pkg)))
	timeout := time.After(time.Duration(count/rate)*time.Second + 60*time.Second)
	for len(lat) < count {
		select {
		case s := <-sigs:
			if s.Name != "com.lomiri.Postal.Post" {
				continue
			}
			now := time.Now()
			lat = append(lat, float64(now.Sub(sent[len(lat)]))/float64(time.Millisecond))
			if len(lat)%200 == 0 {
				go popper.Call("com.lomiri.Postal.PopAll", 0, appID) // keep the queue short, off the clock
			}
		case <-timeout:
			errMu.Lock()
			err := postErr
			errMu.Unlock()
			return nil, fmt.Errorf("only %d of %d messages arrived (last post error: %v)", len(lat), count, err)
		}
	}
	wg.Wait()
	if env.DaemonProfile != "" {
		_ = d.Stop(10 * time.Second) // a clean exit writes the profile
	}
	if postErr != nil {
		return nil, postErr
	}
	slices.Sort(lat)
	p50 := lat[len(lat)*50/100]
	p99 := lat[len(lat)*99/100]
	slices.Sort(rtt)
	note := fmt.Sprintf("%d x 100 B at %d/s, POST → Post signal, max %.2f ms; of it POST → 201 (server, durable) p50 %.2f ms",
		count, rate, lat[len(lat)-1], rtt[len(rtt)/2])
	return []Result{
		{Name: "e2e_latency_p50_ms", Label: "end-to-end latency p50", Value: p50, Unit: "ms", Target: 1, Lower: true, Note: note},
		{Name: "e2e_latency_p99_ms", Label: "end-to-end latency p99", Value: p99, Unit: "ms", Target: 3, Lower: true, Note: note},
	}, nil
}

func post(client *http.Client, url string, body []byte) error {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("TTL", "3600")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("POST %s: status %d", url, resp.StatusCode)
	}
	return nil
}

// waitOwner waits until name has an owner on conn's bus.
func waitOwner(ctx context.Context, conn *dbus.Conn, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var has bool
		if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has); err != nil {
			return err
		}
		if has {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s has no owner after %s", name, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
