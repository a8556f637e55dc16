// Package pgtest runs a throwaway PostgreSQL cluster for tests and
// benchmarks: initdb in a temp dir, postgres listening only on a unix socket
// in that dir, a fresh database per caller, everything removed by Stop.
//
// As root it runs initdb and postgres as the postgres user (both refuse to
// run as root). It uses the binaries of the newest PostgreSQL under
// /usr/lib/postgresql (Debian's layout) or on PATH.
package pgtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrMissing is returned by Start when PostgreSQL is not installed.
var ErrMissing = errors.New("PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/deps.sh installs it)")

// Cluster is a running throwaway cluster.
type Cluster struct {
	Dir  string // data directory and socket directory
	Port int
	Log  string // the server's log file

	cmd  *exec.Cmd
	done chan struct{}
	n    atomic.Int64
	stop sync.Once
}

// BinDir returns the directory of initdb and postgres.
func BinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrMissing
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Options tune a cluster.
type Options struct {
	// Durable keeps PostgreSQL's default durability (fsync, synchronous
	// commit, full page writes), for benchmarks; tests turn it off.
	Durable bool
}

// Start initialises and starts a cluster. Settings favour speed over
// durability (fsync off): the cluster lives only as long as a test.
func Start() (*Cluster, error) { return StartWith(Options{}) }

// StartWith is Start with options.
func StartWith(o Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "herald-pg-")
	if err != nil {
		return nil, err
	}
	cred, err := credential(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	data := filepath.Join(dir, "data")
	c := &Cluster{Dir: dir, Log: filepath.Join(dir, "postgres.log"), done: make(chan struct{})}
	fail := func(err error) (*Cluster, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %w\n%s", err, out))
	}
	if c.Port, err = freePort(); err != nil {
		return fail(err)
	}
	args := []string{"-D", data, "-p", strconv.Itoa(c.Port), "-k", dir, "-c", "listen_addresses=", "-c", "max_connections=200"}
	if !o.Durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "shared_buffers=32MB")
	}
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), args...)
	c.cmd.Dir = dir
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(c.Log)
	if err != nil {
		return fail(err)
	}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return fail(err)
	}
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		return fail(fmt.Errorf("cannot start postgres: %w", err))
	}
	ready := make(chan struct{})
	go func() {
		defer logf.Close()
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if strings.Contains(sc.Text(), "ready to accept connections") {
				once.Do(func() { close(ready) })
			}
		}
		io.Copy(logf, stderr)
	}()
	go func() {
		c.cmd.Wait()
		close(c.done)
	}()
	select {
	case <-ready:
	case <-c.done:
		b, _ := os.ReadFile(c.Log)
		return fail(fmt.Errorf("postgres exited at start:\n%s", b))
	case <-time.After(60 * time.Second):
		c.Stop()
		return nil, errors.New("postgres did not become ready within 60 s")
	}
	return c, nil
}

// credential makes dir usable by the postgres user when running as root and
// returns the credential to run the server binaries with (nil: as we are).
func credential(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres user to run PostgreSQL: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Pid returns the process id of the postmaster (the parent of every
// PostgreSQL process of the cluster).
func (c *Cluster) Pid() int { return c.cmd.Process.Pid }

// URL returns the connection URL of database db.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@/%s?host=%s&port=%d&sslmode=disable", db, c.Dir, c.Port)
}

// NewDatabase creates an empty database and returns its URL.
func (c *Cluster) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("herald_%d_%d", os.Getpid(), c.n.Add(1))
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("cannot connect to the test cluster: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("cannot create database: %w", err)
	}
	return c.URL(name), nil
}

// Stop kills the server and removes its directory.
func (c *Cluster) Stop() {
	c.stop.Do(func() {
		if c.cmd != nil && c.cmd.Process != nil {
			// SIGQUIT is postgres's immediate shutdown.
			_ = c.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-c.done:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
				<-c.done
			}
		}
		os.RemoveAll(c.Dir)
	})
}

// Required reports whether a missing PostgreSQL must fail the tests rather
// than skip them: in CI (CI=true) it must be there.
func Required() bool { return os.Getenv("CI") == "true" }

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Database returns the URL of a fresh database on the test binary's shared
// cluster, started on first use. Without PostgreSQL it skips the test, or
// fails it in CI. Call StopShared from TestMain after m.Run.
func Database(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() { shared.c, shared.err = Start() })
	if shared.err != nil {
		if errors.Is(shared.err, ErrMissing) && !Required() {
			t.Skipf("skipped: %v", shared.err)
		}
		t.Fatalf("cannot start PostgreSQL: %v", shared.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, err := shared.c.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// StopShared stops the shared cluster if Database started it.
func StopShared() {
	if shared.c != nil {
		shared.c.Stop()
	}
}
