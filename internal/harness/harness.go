// Package harness runs Herald's real binaries for end-to-end tests and
// benchmarks: a private dbus-daemon, herald-server, heraldd, and a loopback
// TCP proxy that can cut connections. It takes no testing.T so that the
// benchmark program can use it too; every process it starts is stopped by
// Close.
package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build compiles heraldd, herald and herald-server into dir. It runs `go
// build` from the module root found above the working directory.
func Build(ctx context.Context, dir string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator), "./cmd/heraldd", "./cmd/herald", "./cmd/herald-server")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("cannot build binaries: %w\n%s", err, out)
	}
	return nil
}

// BuildTool compiles the main package at pkg (relative to the module root,
// e.g. "./internal/testapps/upconnector") into dir and returns its path.
func BuildTool(ctx context.Context, dir, pkg string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cannot build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// ModuleRoot returns the directory holding go.mod above the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find go.mod above the working directory")
		}
		dir = parent
	}
}

// Proc is a started child process with its output kept in a log file.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string
	done chan struct{}
	err  error
}

// start runs cmd with stdout and stderr appended to logPath.
func start(name string, cmd *exec.Cmd, logPath string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot start %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Kill sends SIGKILL to the process group and waits for the exit.
func (p *Proc) Kill() {
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to timeout, then kills. It returns the
// process's exit error (nil for a clean exit after SIGTERM).
func (p *Proc) Stop(timeout time.Duration) error {
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s did not stop within %s", p.Name, timeout)
	}
}

// Tail returns the last n bytes of the process's log, for failure messages.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Bus is a private dbus-daemon.
type Bus struct {
	Address    string
	ServiceDir string
	proc       *Proc
}

// StartBus runs a private session-type dbus-daemon in dir with an allow-all
// policy and a service directory dir/services for activation.
func StartBus(dir string) (*Bus, error) {
	svc := filepath.Join(dir, "services")
	if err := os.MkdirAll(svc, 0o755); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "bus")
	conf := fmt.Sprintf(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=%s</listen>
  <servicedir>%s</servicedir>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
  <limit name="reply_timeout">60000</limit>
</busconfig>
`, sock, svc)
	confPath := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	cmd := exec.Command("dbus-daemon", "--config-file="+confPath, "--nofork", "--print-address=1")
	cmd.Stdout = pw
	p, err := start("dbus-daemon", cmd, filepath.Join(dir, "dbus-daemon.log"))
	if err != nil {
		return nil, err
	}
	line, err := readLine(pr, 20*time.Second)
	go io.Copy(io.Discard, pr) //nolint:errcheck // keeps the pipe drained
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("dbus-daemon: %w", err)
	}
	return &Bus{Address: strings.TrimSpace(line), ServiceDir: svc, proc: p}, nil
}

// Close stops the bus.
func (b *Bus) Close() { b.proc.Kill() }

func readLine(r io.Reader, timeout time.Duration) (string, error) {
	ch := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		if err != nil {
			errc <- err
			return
		}
		ch <- line
	}()
	select {
	case l := <-ch:
		return l, nil
	case err := <-errc:
		return "", err
	case <-time.After(timeout):
		return "", fmt.Errorf("no output within %s", timeout)
	}
}

// Server is a running herald-server.
type Server struct {
	Bin  string
	DB   string
	Addr string // host:port it listens on
	Dir  string
	Args []string
	*Proc
}

// URL is the websocket URL devices dial.
func (s *Server) URL() string { return "ws://" + s.Addr + "/" }

// HTTP is the base URL app servers post to.
func (s *Server) HTTP() string { return "http://" + s.Addr }

// StartServer runs bin (herald-server) on addr ("127.0.0.1:0" for any port)
// with its database in dir.
func StartServer(bin, dir, addr string, extra ...string) (*Server, error) {
	return StartServerDB(bin, dir, addr, filepath.Join(dir, "herald-server.db"), extra...)
}

// StartServerDB is StartServer with the database db: a sqlite file or a
// postgres:// URL (several servers on one URL are the nodes of one service).
func StartServerDB(bin, dir, addr, db string, extra ...string) (*Server, error) {
	s := &Server{Bin: bin, DB: db, Dir: dir, Args: extra}
	if err := s.start(addr); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start(addr string) error {
	args := append([]string{"--listen", addr, "--db", s.DB}, s.Args...)
	pr, pw := io.Pipe()
	cmd := exec.Command(s.Bin, args...)
	cmd.Stdout = pw
	p, err := start("herald-server", cmd, filepath.Join(s.Dir, "herald-server.log"))
	if err != nil {
		return err
	}
	line, err := readLine(pr, 30*time.Second)
	go io.Copy(io.Discard, pr) //nolint:errcheck
	if err != nil {
		p.Kill()
		return fmt.Errorf("herald-server did not report its address: %w\n%s", err, p.Tail(2000))
	}
	line = strings.TrimSpace(line)
	a, ok := strings.CutPrefix(line, "listening on ")
	if !ok {
		p.Kill()
		return fmt.Errorf("herald-server printed %q, want \"listening on host:port\"", line)
	}
	if s.Addr == "" {
		s.Addr = a // a restart listens on the same address; Addr is read concurrently
	} else if a != s.Addr {
		p.Kill()
		return fmt.Errorf("herald-server restarted on %s, want %s", a, s.Addr)
	}
	s.Proc = p
	return nil
}

// Restart starts the server again on the same address and database (after
// Kill or Stop).
func (s *Server) Restart() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.start(s.Addr)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		// The port may still be held for a moment by the killed process.
		time.Sleep(50 * time.Millisecond)
	}
}

// Daemon is a running heraldd.
type Daemon struct {
	Bin      string
	Dir      string // HOME and XDG dirs live here
	StateDir string
	Server   string
	Env      []string
	Args     []string
	*Proc
}

// StartDaemon runs heraldd on the bus at busAddr, with its state and XDG
// directories under dir, dialing serverURL. extraEnv entries are added to the
// environment.
func StartDaemon(bin, dir, busAddr, serverURL string, extraEnv []string, args ...string) (*Daemon, error) {
	d := &Daemon{Bin: bin, Dir: dir, StateDir: filepath.Join(dir, "state", "herald"), Server: serverURL, Args: args}
	for _, sub := range []string{"config", "data", "cache", "state", "runtime"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	d.Env = append(CleanEnv(),
		"DBUS_SESSION_BUS_ADDRESS="+busAddr,
		"HOME="+dir,
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CACHE_HOME="+filepath.Join(dir, "cache"),
		"XDG_STATE_HOME="+filepath.Join(dir, "state"),
		"XDG_RUNTIME_DIR="+filepath.Join(dir, "runtime"),
		"XDG_CONFIG_DIRS="+filepath.Join(dir, "etc-xdg"),
		"XDG_DATA_DIRS="+filepath.Join(dir, "share"),
	)
	d.Env = append(d.Env, extraEnv...)
	if err := d.Start(); err != nil {
		return nil, err
	}
	return d, nil
}

// Start starts heraldd (again).
func (d *Daemon) Start() error {
	args := append([]string{"--state-dir", d.StateDir}, d.Args...)
	if d.Server != "" {
		args = append([]string{"--server", d.Server}, args...)
	}
	cmd := exec.Command(d.Bin, args...)
	cmd.Env = d.Env
	p, err := start("heraldd", cmd, filepath.Join(d.Dir, "heraldd.log"))
	if err != nil {
		return err
	}
	d.Proc = p
	return nil
}

// CleanEnv is the environment without the session bus and XDG variables of
// the calling process.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "DBUS_SESSION_BUS_ADDRESS" || k == "DISPLAY" || k == "NOTIFY_SOCKET" || strings.HasPrefix(k, "XDG_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Proxy forwards TCP connections from a loopback listener to a target and can
// cut every open connection at once. It counts the bytes in each direction.
type Proxy struct {
	Addr string
	ln   net.Listener

	mu     sync.Mutex // guards target, conns, frozen, up, down, closed
	target string
	conns  map[net.Conn]struct{}
	frozen map[net.Conn]bool // connections whose bytes are dropped (Freeze)
	up     int64             // client → target
	down   int64             // target → client
	wg     sync.WaitGroup
}

// StartProxy listens on a free loopback port and forwards to target.
func StartProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		t, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		p.conns[t] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(t, c, &p.up)
		go p.pipe(c, t, &p.down)
	}
}

func (p *Proxy) pipe(dst, src net.Conn, counter *int64) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			*counter += int64(n)
			frozen := p.frozen[src]
			p.mu.Unlock()
			if frozen {
				continue // a dead path: bytes vanish, nobody is told
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	delete(p.frozen, dst)
	delete(p.frozen, src)
	p.mu.Unlock()
}

// Freeze makes every open connection through the proxy a dead path, as
// after a suspend behind a NAT that forgot it: bytes in either direction
// vanish and neither end is told. New connections work. It returns how
// many connection pairs were frozen.
func (p *Proxy) Freeze() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen == nil {
		p.frozen = map[net.Conn]bool{}
	}
	for c := range p.conns {
		p.frozen[c] = true
	}
	return len(p.conns) / 2
}

// SetTarget makes new connections go to target (like a load balancer taking
// a dead backend out); open ones stay.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Cut closes every open connection through the proxy; new ones are accepted.
// It returns how many connection pairs were cut.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return len(conns) / 2
}

// Bytes returns the bytes forwarded client→target and target→client.
func (p *Proxy) Bytes() (up, down int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up, p.down
}

// Close stops the proxy and cuts every connection.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// StartXvfb runs Xvfb on a free display (it picks the number itself) and
// returns the display name ":N" and the process.
func StartXvfb(dir string) (string, *Proc, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", nil, err
	}
	defer r.Close()
	cmd := exec.Command("Xvfb", "-displayfd", "3", "-nolisten", "tcp", "-screen", "0", "800x600x24")
	cmd.ExtraFiles = []*os.File{w}
	p, err := start("Xvfb", cmd, filepath.Join(dir, "xvfb.log"))
	w.Close()
	if err != nil {
		return "", nil, err
	}
	line, err := readLine(r, 30*time.Second)
	n := strings.TrimSpace(line)
	if err != nil || n == "" {
		p.Kill()
		return "", nil, fmt.Errorf("Xvfb printed no display number: %v\n%s", err, p.Tail(2000))
	}
	return ":" + n, p, nil
}

// StartDunst runs the dunst notification server with config on display and
// the bus at busAddr. The caller waits for org.freedesktop.Notifications to
// get its owner.
func StartDunst(dir, busAddr, display, config string) (*Proc, error) {
	rt := filepath.Join(dir, "dunst-runtime")
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return nil, err
	}
	cmd := exec.Command("dunst", "-config", config)
	cmd.Env = append(CleanEnv(), "DBUS_SESSION_BUS_ADDRESS="+busAddr, "DISPLAY="+display, "WAYLAND_DISPLAY=", "XDG_RUNTIME_DIR="+rt)
	return start("dunst", cmd, filepath.Join(dir, "dunst.log"))
}
