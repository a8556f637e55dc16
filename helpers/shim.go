package helpers

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ShimArg, as the first argument of heraldd, makes it run RunShim on the
// rest of its arguments instead of starting the daemon (Config.Shim).
const ShimArg = "__herald-helper-shim"

// RunShim runs argv (a helper command) as its child and makes itself a
// child subreaper: every process the helper leaves behind, including those
// that called setsid or double-forked to leave its process group, becomes
// the shim's child when its parent dies. When the helper exits, or when
// SIGTERM or SIGINT comes (a timeout: the helper is killed), the shim kills
// and reaps every process below it, then exits with the helper's status
// (128+signal when it was killed by one). This is the "pid tracking" used
// where no transient systemd scope or cgroup of our own is available.
func RunShim(argv []string) int {
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "helper shim: no command")
		return 127
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "helper shim: cannot become a subreaper:", err)
		return 127
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "helper shim:", err)
		return 127
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-sigs:
		_ = cmd.Process.Kill()
		<-done
	}
	killBelow()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// killBelow kills and reaps every child of this process until none is left
// (the children of a killed one become ours in turn).
func killBelow() {
	self := os.Getpid()
	for range 10000 {
		kids := childrenOf(self)
		if len(kids) == 0 {
			return
		}
		for _, p := range kids {
			_ = unix.Kill(p, unix.SIGKILL)
		}
		for _, p := range kids {
			var ws unix.WaitStatus
			for {
				if _, err := unix.Wait4(p, &ws, 0, nil); err != unix.EINTR {
					break
				}
			}
		}
	}
}

// childrenOf lists the processes whose parent is pid (from /proc).
func childrenOf(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}
