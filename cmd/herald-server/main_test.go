package main

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/internal/pgtest"
	"github.com/heraldpush/herald/protocol"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binary builds herald-server once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "herald-server-test-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", buildDir, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("cannot build herald-server: %v", buildErr)
	}
	return filepath.Join(buildDir, "herald-server")
}

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

type proc struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// start runs herald-server on a free port and waits for its "listening on" line.
func start(t *testing.T, db string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"--listen", "127.0.0.1:0", "--db", db, "--log-level", "debug"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	lines := make(chan string, 1)
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
				t.Errorf("more than one line on stdout: %q", sc.Text())
			}
		}
		err := cmd.Wait()
		close(exited)
		p.done <- err
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited // stderr is written until then
		if t.Failed() {
			t.Logf("herald-server stderr:\n%s", stderr.String())
		}
	})
	select {
	case line := <-lines:
		addr, ok := strings.CutPrefix(line, "listening on ")
		if !ok {
			t.Fatalf("first line %q", line)
		}
		p.addr = addr
	case err := <-p.done:
		t.Fatalf("herald-server exited: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("no listening line")
	}
	return p
}

func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("herald-server did not exit")
		return nil
	}
}

type device struct {
	t    *testing.T
	ws   *websocket.Conn
	uaid string
}

func connect(t *testing.T, p *proc, uaid string) *device {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+p.addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	d := &device{t: t, ws: ws}
	d.send(&protocol.Hello{UAID: uaid, UseWebPush: true})
	h, ok := d.recv().(*protocol.Hello)
	if !ok {
		t.Fatalf("no hello reply")
	}
	d.uaid = h.UAID
	return d
}

func (d *device) send(m protocol.Message) {
	b, _ := protocol.Encode(m)
	if err := d.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		d.t.Fatal(err)
	}
}

func (d *device) recv() protocol.Message {
	d.t.Helper()
	d.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := d.ws.ReadMessage()
	if err != nil {
		d.t.Fatalf("read: %v", err)
	}
	m, err := protocol.Decode(b)
	if err != nil {
		d.t.Fatal(err)
	}
	return m
}

// quiet checks that no notification is queued (the ping reply comes first).
func (d *device) quiet() {
	d.t.Helper()
	d.ws.WriteMessage(websocket.TextMessage, []byte("{}"))
	if m := d.recv(); m.Type() != protocol.TypePing {
		d.t.Fatalf("got %#v, want nothing but the ping reply", m)
	}
}

func post(t *testing.T, url string, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("TTL", "3600")
	req.Header.Set("Content-Encoding", "aes128gcm")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestCrashBeforeAck kills the server with SIGKILL after it answered 201 and
// before the device acked; after a restart on the same database the device
// gets the message exactly once, with either --sync mode (both survive a
// crash of the process).
func TestCrashBeforeAck(t *testing.T) {
	for _, mode := range []string{"full", "normal"} {
		t.Run(mode, func(t *testing.T) { testCrashBeforeAck(t, "--sync", mode) })
	}
}

func testCrashBeforeAck(t *testing.T, args ...string) {
	db := filepath.Join(t.TempDir(), "herald-server.db")
	p := start(t, db, args...)
	d := connect(t, p, "")
	chid := protocol.NewChannelID()
	d.send(&protocol.Register{ChannelID: chid})
	reg := d.recv().(*protocol.Register)
	token := reg.PushEndpoint[strings.LastIndex(reg.PushEndpoint, "/")+1:]
	if code := post(t, reg.PushEndpoint, "survives a crash"); code != 201 {
		t.Fatalf("post = %d", code)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait(t)

	p = start(t, db, args...)
	d = connect(t, p, d.uaid)
	n, ok := d.recv().(*protocol.Notification)
	if !ok {
		t.Fatal("message lost in the crash")
	}
	if b, _ := n.Body(); string(b) != "survives a crash" || n.ChannelID != chid {
		t.Fatalf("got %#v", n)
	}
	d.quiet() // exactly once
	d.send(&protocol.Ack{Updates: []protocol.Update{{ChannelID: chid, Version: n.Version, Code: 100}}})
	d.quiet()

	// SIGTERM: close frame 1001, exit 0, the ack is kept.
	p.cmd.Process.Signal(syscall.SIGTERM)
	d.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := d.ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != protocol.CloseGoingAway {
		t.Errorf("on SIGTERM the device got %v, want close 1001", err)
	}
	if err := p.wait(t); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	p = start(t, db, args...)
	d = connect(t, p, d.uaid)
	d.quiet()
	// The registration survived too.
	if code := post(t, "http://"+p.addr+"/wpush/v1/"+token, "again"); code != 201 {
		t.Errorf("post after restart = %d", code)
	}
	if _, ok := d.recv().(*protocol.Notification); !ok {
		t.Error("no live message after restart")
	}
}

func TestFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"bad log level", []string{"--log-level", "loud"}, "invalid --log-level"},
		{"tls cert without key", []string{"--tls-cert", "x.pem"}, "go together"},
		{"bad public url", []string{"--public-url", "ftp://x"}, "invalid public url"},
		{"bad sync mode", []string{"--sync", "off"}, "invalid --sync"},
		{"busy port", []string{"--listen", "256.0.0.1:1"}, "cannot listen"},
		{"node url with sqlite", []string{"--node-url", "http://127.0.0.1:1"}, "need a postgres --db"},
		{"postgres on all addresses without --node-url", []string{"--db", "postgres://127.0.0.1:1/x", "--listen", "0.0.0.0:0"}, "set --node-url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(binary(t), append([]string{"--db", filepath.Join(dir, "x.db")}, tt.args...)...)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tt.want) {
				t.Errorf("err %v, output %q, want %q", err, out, tt.want)
			}
		})
	}
	// STATE_DIRECTORY is the default place of the database.
	cmd := exec.Command(binary(t), "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "STATE_DIRECTORY="+dir)
	cmd.Dir = t.TempDir()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGINT: %v", err)
	}
	if !strings.HasPrefix(line, "listening on 127.0.0.1:") {
		t.Errorf("line %q", line)
	}
	if _, err := os.Stat(filepath.Join(dir, "herald-server.db")); err != nil {
		t.Errorf("database not in STATE_DIRECTORY: %v", err)
	}
}
