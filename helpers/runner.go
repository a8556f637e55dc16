package helpers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/heraldpush/herald/app"
)

// Defaults for the zero fields of Config.
const (
	DefaultConcurrency = 5
	DefaultTimeout     = 5 * time.Second
	DefaultMaxOutput   = 64 << 10
	DefaultKillGrace   = 500 * time.Millisecond
	// maxLogOutput caps the helper's stdout and stderr kept for the log.
	maxLogOutput = 4 << 10
)

// Config sets up a Runner. Zero fields take the defaults above.
type Config struct {
	Concurrency int           // helpers running at once, over all apps
	Timeout     time.Duration // per run; then SIGTERM, then SIGKILL after KillGrace
	TempDir     string        // where the in/out files go (created 0700 if missing); default os.TempDir()
	MaxOutput   int64         // output file limit; a larger output is a failure
	Logger      *slog.Logger  // nil discards
	KillGrace   time.Duration // between SIGTERM and SIGKILL of a timed-out helper
	Env         []string      // base environment of helpers; nil: this process's environment
	// CacheHome is $XDG_CACHE_HOME: a click app's scratch files go to
	// CacheHome/<pkg>/ (created 0700) as upstream, where the app's AppArmor
	// profile lets its helper read and write; "" or other ids use TempDir.
	CacheHome string
	// AppArmor says how confined helpers are run.
	AppArmor AppArmor
	// Shim, when set, is the command that runs each helper under RunShim
	// (heraldd: its own executable and ShimArg), so that every process a
	// helper starts dies with it, even one that left its process group with
	// setsid. Without it only the helper's process group is killed.
	Shim []string
}

// AppArmor configures the confinement of click helpers (Helper.Profile set):
// when AppArmor is enabled they run as `aa-exec -p <profile> -- exec in out`,
// which is what lomiri-app-launch's helper-helper runs; a helper whose
// profile is not loaded is refused. Legacy helpers and Herald manifests run
// unconfined.
type AppArmor struct {
	// FS is the AppArmor securityfs directory; it exists only when AppArmor
	// is enabled, and its "profiles" file lists the loaded profiles.
	// Default /sys/kernel/security/apparmor.
	FS string
	// Exec is the aa-exec program, looked up on PATH when not absolute.
	// Default "aa-exec".
	Exec string
}

// ErrConfinement is wrapped by Process when a confined helper cannot be run
// under its AppArmor profile.
var ErrConfinement = errors.New("cannot confine helper")

// Stats is the cost of one app's helper. Runs counts every run, Failures the
// runs that gave no usable output (Timeouts included), Total their wall time.
type Stats struct {
	Runs, Failures, Timeouts uint64
	Total                    time.Duration
}

// Runner runs helpers: at most Config.Concurrency at once, one per app at a
// time, each app's messages in the order Process was called. It is safe for
// concurrent use and starts no goroutine of its own.
type Runner struct {
	finder *Finder
	cfg    Config
	log    *slog.Logger
	env    []string
	slots  chan struct{} // a token per running helper

	mu    sync.Mutex           // guards apps and stats
	apps  map[string]*appQueue // present while the app has a helper running
	stats map[string]*Stats

	// onQueued, if set (tests), is called once a Process call holds its
	// place in the app's queue.
	onQueued func(appID, msgID string)
}

// appQueue holds the callers waiting for an app's turn; each channel is closed
// to hand the turn over.
type appQueue struct {
	waiters []chan struct{}
}

// NewRunner returns a Runner that finds helpers with f (nil: no app has a
// helper).
func NewRunner(f *Finder, cfg Config) *Runner {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = DefaultKillGrace
	}
	if cfg.TempDir == "" {
		cfg.TempDir = os.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AppArmor.FS == "" {
		cfg.AppArmor.FS = "/sys/kernel/security/apparmor"
	}
	if cfg.AppArmor.Exec == "" {
		cfg.AppArmor.Exec = "aa-exec"
	}
	base := cfg.Env
	if base == nil {
		base = os.Environ()
	}
	env := make([]string, 0, len(base)+2)
	for _, kv := range base {
		if keepEnv(kv) {
			env = append(env, kv)
		}
	}
	return &Runner{
		finder: f,
		cfg:    cfg,
		log:    cfg.Logger,
		env:    env,
		slots:  make(chan struct{}, cfg.Concurrency),
		apps:   map[string]*appQueue{},
		stats:  map[string]*Stats{},
	}
}

// droppedEnv are the variables a helper never inherits: Herald's own per-run
// ones, and what systemd and the bus daemon meant for heraldd alone (a helper
// with NOTIFY_SOCKET could tell systemd that heraldd is ready, stopping or
// alive; LISTEN_FDS names file descriptors it does not have).
var droppedEnv = []string{"HERALD_APP_ID=", "HERALD_MESSAGE_ID=", "NOTIFY_SOCKET=", "WATCHDOG_", "DBUS_STARTER_", "LISTEN_"}

// keepEnv reports whether the environment entry kv may reach a helper.
func keepEnv(kv string) bool {
	for _, p := range droppedEnv {
		if strings.HasPrefix(kv, p) {
			return false
		}
	}
	return true
}

// Process runs appID's helper on payload (or parses the payload when the app has no helper) and always returns a
// usable Output: on failure Output = {Message: raw payload} and err says why (ErrTimeout, ErrExit, ErrBadOutput…).
//
// As upstream, the exit status does not count when the output file is valid
// (it is logged); without usable output a non-zero exit is the reason given.
// When ctx ends, a waiting call returns and a running helper's process group
// is killed; err is then ctx.Err(), and the message should be processed again
// later.
func (r *Runner) Process(ctx context.Context, appID, msgID string, payload []byte) (*Output, error) {
	var h Helper
	ok := false
	if r.finder != nil {
		h, ok = r.finder.Lookup(appID)
	}
	if !ok {
		return PayloadOutput(payload), nil
	}
	if err := r.acquire(ctx, appID, msgID); err != nil {
		return RawOutput(payload), err
	}
	start := time.Now()
	out, res, err := r.run(ctx, h, msgID, payload)
	elapsed := time.Since(start)
	r.release(appID)

	r.mu.Lock()
	st := r.stats[appID]
	if st == nil {
		st = &Stats{}
		r.stats[appID] = st
	}
	st.Runs++
	st.Total += elapsed
	if err != nil && !res.canceled {
		st.Failures++
		if res.timedOut {
			st.Timeouts++
		}
	}
	r.mu.Unlock()

	switch {
	case err == nil:
		r.log.Debug("helper ran", "app_id", appID, "msg_id", msgID, "duration", elapsed, "output", res.logs)
		return out, nil
	case res.canceled:
		r.log.Info("helper stopped", "app_id", appID, "msg_id", msgID, "err", err)
	default:
		r.log.Warn("helper failed; queuing the raw payload", "app_id", appID, "msg_id", msgID,
			"exec", h.Exec, "duration", elapsed, "err", err, "output_bytes", res.logLen)
		r.log.Debug("helper failure output", "app_id", appID, "msg_id", msgID, "output", res.logs)
	}
	return RawOutput(payload), err
}

// Stats returns a copy of the per-app helper statistics.
func (r *Runner) Stats() map[string]Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]Stats, len(r.stats))
	for k, v := range r.stats {
		m[k] = *v
	}
	return m
}

// acquire waits for appID's turn (FIFO), then for a free slot.
func (r *Runner) acquire(ctx context.Context, appID, msgID string) error {
	r.mu.Lock()
	q, busy := r.apps[appID]
	if !busy {
		r.apps[appID] = &appQueue{}
		r.mu.Unlock()
		if r.onQueued != nil {
			r.onQueued(appID, msgID)
		}
	} else {
		turn := make(chan struct{})
		q.waiters = append(q.waiters, turn)
		r.mu.Unlock()
		if r.onQueued != nil {
			r.onQueued(appID, msgID)
		}
		select {
		case <-turn:
		case <-ctx.Done():
			r.mu.Lock()
			if i := indexOf(q.waiters, turn); i >= 0 {
				q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
				r.mu.Unlock()
				return ctx.Err()
			}
			r.mu.Unlock()
			r.releaseApp(appID) // the turn was handed over meanwhile: pass it on
			return ctx.Err()
		}
	}
	select {
	case r.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		r.releaseApp(appID)
		return ctx.Err()
	}
}

func indexOf(chs []chan struct{}, ch chan struct{}) int {
	for i, c := range chs {
		if c == ch {
			return i
		}
	}
	return -1
}

func (r *Runner) release(appID string) {
	<-r.slots
	r.releaseApp(appID)
}

func (r *Runner) releaseApp(appID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.apps[appID]
	if len(q.waiters) == 0 {
		delete(r.apps, appID)
		return
	}
	next := q.waiters[0]
	q.waiters = q.waiters[1:]
	close(next)
}

// result says how a run ended, beside its error.
type result struct {
	timedOut, canceled bool
	logs               string // stdout and stderr, capped
	logLen             int    // their full length
}

func (r *Runner) run(ctx context.Context, h Helper, msgID string, payload []byte) (*Output, result, error) {
	var res result
	dir := r.scratchDir(h.AppID)
	in, err := r.tempFile(dir, payload)
	if err != nil {
		return nil, res, fmt.Errorf("%w: cannot create input file: %w", ErrStart, err)
	}
	defer os.Remove(in)
	out, err := r.tempFile(dir, nil)
	if err != nil {
		return nil, res, fmt.Errorf("%w: cannot create output file: %w", ErrStart, err)
	}
	defer os.Remove(out)

	logs := &cappedBuffer{max: maxLogOutput}
	env := append(r.env[:len(r.env):len(r.env)], "HERALD_APP_ID="+h.AppID, "HERALD_MESSAGE_ID="+msgID)
	argv, err := r.command(h, in, out)
	if err != nil {
		return nil, res, err
	}
	if len(r.cfg.Shim) > 0 {
		argv = append(r.cfg.Shim[:len(r.cfg.Shim):len(r.cfg.Shim)], argv...)
	}
	cmd := &exec.Cmd{
		Path:        argv[0],
		Args:        argv,
		Env:         env,
		Stdout:      logs,
		Stderr:      logs,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
		WaitDelay:   r.cfg.KillGrace,
	}
	if err := cmd.Start(); err != nil {
		return nil, res, fmt.Errorf("%w %q: %w", ErrStart, argv[0], err)
	}
	k := &killer{pgid: cmd.Process.Pid, grace: r.cfg.KillGrace}
	timer := time.AfterFunc(r.cfg.Timeout, k.timeout)
	stopCancel := context.AfterFunc(ctx, k.cancel)
	waitExited(cmd.Process.Pid)
	// The leader is a zombie now, so its pid and process group cannot be
	// reused: kill what it left behind before reaping it.
	res.timedOut, res.canceled = k.finish()
	timer.Stop()
	stopCancel()
	_ = syscall.Kill(-k.pgid, syscall.SIGKILL)
	werr := cmd.Wait()
	res.logs, res.logLen = logs.String(), logs.n

	switch {
	case res.canceled:
		return nil, res, ctx.Err()
	case res.timedOut:
		return nil, res, fmt.Errorf("%w after %s", ErrTimeout, r.cfg.Timeout)
	}
	var exitErr error
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		exitErr = fmt.Errorf("%w: %s", ErrExit, ee.ProcessState)
	} else if werr != nil && !errors.Is(werr, exec.ErrWaitDelay) {
		exitErr = fmt.Errorf("%w: %w", ErrExit, werr)
	}
	o, err := r.readOutput(out)
	if err != nil && exitErr != nil {
		return nil, res, fmt.Errorf("%w (%w)", exitErr, err)
	}
	if exitErr != nil {
		r.log.Info("helper output used despite its exit status, as upstream", "app_id", h.AppID, "msg_id", msgID, "err", exitErr)
	}
	return o, res, err
}

// command is the argv that runs h on in and out: under aa-exec for a click
// helper when AppArmor is enabled (see AppArmor), else the helper itself.
func (r *Runner) command(h Helper, in, out string) ([]string, error) {
	plain := []string{h.Exec, in, out}
	if h.Profile == "" {
		return plain, nil
	}
	profiles, err := os.ReadFile(filepath.Join(r.cfg.AppArmor.FS, "profiles"))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(r.cfg.AppArmor.FS); errors.Is(serr, fs.ErrNotExist) {
			return plain, nil // AppArmor is not enabled: nothing to confine with
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w %q under AppArmor profile %q: cannot read the loaded profiles: %w", ErrConfinement, h.Exec, h.Profile, err)
	}
	if !profileLoaded(profiles, h.Profile) {
		return nil, fmt.Errorf("%w %q: AppArmor is enabled but profile %q is not loaded; helper refused", ErrConfinement, h.Exec, h.Profile)
	}
	aa, err := exec.LookPath(r.cfg.AppArmor.Exec)
	if err != nil {
		return nil, fmt.Errorf("%w %q under AppArmor profile %q: %w", ErrConfinement, h.Exec, h.Profile, err)
	}
	return []string{aa, "-p", h.Profile, "--", h.Exec, in, out}, nil
}

// profileLoaded reports whether the securityfs "profiles" listing (lines
// "<name> (<mode>)") holds name.
func profileLoaded(list []byte, name string) bool {
	for line := range strings.Lines(string(list)) {
		n, _, ok := strings.Cut(strings.TrimRight(line, "\n"), " (")
		if ok && n == name {
			return true
		}
	}
	return false
}

// scratchDir is where the in and out files of appID's helper go: the click
// package's cache dir as upstream, else TempDir.
func (r *Runner) scratchDir(appID string) string {
	if id, err := app.ParseID(appID); err == nil && id.Form == app.FormClick && r.cfg.CacheHome != "" {
		return filepath.Join(r.cfg.CacheHome, id.Package)
	}
	return r.cfg.TempDir
}

func (r *Runner) readOutput(path string) (*Output, error) {
	// O_NONBLOCK: a helper that replaced its output with a FIFO must not
	// block us; O_NOFOLLOW: nor make us read another file.
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: output file removed", ErrNoOutput)
		}
		return nil, fmt.Errorf("%w: cannot open output file: %w", ErrBadOutput, err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOutput, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: output is not a regular file", ErrBadOutput)
	}
	max := r.cfg.MaxOutput
	if fi.Size() > max {
		return nil, fmt.Errorf("%w: output is %d bytes, more than the %d byte limit", ErrBadOutput, fi.Size(), max)
	}
	b, err := io.ReadAll(io.LimitReader(fh, max+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: cannot read output: %w", ErrBadOutput, err)
	case int64(len(b)) > max:
		return nil, fmt.Errorf("%w: output is more than the %d byte limit", ErrBadOutput, max)
	case len(b) == 0:
		return nil, ErrNoOutput
	}
	return ParseOutput(b)
}

// tempFile creates a 0600 file "push-helper*" (upstream's prefix) in dir
// holding content and returns its path.
func (r *Runner) tempFile(dir string, content []byte) (string, error) {
	fh, err := os.CreateTemp(dir, "push-helper*")
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", err
		}
		fh, err = os.CreateTemp(dir, "push-helper*")
	}
	if err != nil {
		return "", err
	}
	_, werr := fh.Write(content)
	if err := errors.Join(werr, fh.Close()); err != nil {
		os.Remove(fh.Name())
		return "", err
	}
	return fh.Name(), nil
}

// waitExited blocks until the process pid has exited, without reaping it.
func waitExited(pid int) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return
		}
	}
}

// killer signals a helper's process group from timers and context
// callbacks, never after finish (the group may be gone then).
type killer struct {
	pgid  int
	grace time.Duration

	mu                 sync.Mutex // guards the fields below
	done               bool
	timedOut, canceled bool
	kill               *time.Timer // SIGKILL after SIGTERM
}

func (k *killer) timeout() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.done || k.canceled {
		return
	}
	k.timedOut = true
	_ = syscall.Kill(-k.pgid, syscall.SIGTERM)
	k.kill = time.AfterFunc(k.grace, k.forceKill)
}

func (k *killer) forceKill() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.done {
		_ = syscall.Kill(-k.pgid, syscall.SIGKILL)
	}
}

func (k *killer) cancel() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.done || k.timedOut {
		if !k.done {
			_ = syscall.Kill(-k.pgid, syscall.SIGKILL)
		}
		return
	}
	k.canceled = true
	_ = syscall.Kill(-k.pgid, syscall.SIGKILL)
}

func (k *killer) finish() (timedOut, canceled bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.done = true
	if k.kill != nil {
		k.kill.Stop()
	}
	return k.timedOut, k.canceled
}

// cappedBuffer keeps the first max bytes written to it and counts the rest.
// exec.Cmd writes to it from one goroutine at a time and Wait orders those
// writes before our reads.
type cappedBuffer struct {
	max int
	b   []byte
	n   int
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.n += len(p)
	if room := c.max - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *cappedBuffer) String() string { return string(c.b) }
