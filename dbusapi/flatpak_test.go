package dbusapi

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needBwrap returns bwrap's path; without it the test skips, or fails in
// CI (scripts/deps.sh installs bubblewrap).
func needBwrap(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("bwrap")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("bwrap (Debian package bubblewrap) is missing")
		}
		t.Skip("bwrap (Debian package bubblewrap) is missing")
	}
	return p
}

// sandbox is a process tree run by real bwrap the way flatpak run does:
// new mount and pid namespaces, a tmpfs root holding the system's /usr and
// a .flatpak-info at /. Its command waits for a line on stdin first, so
// that the test can write (or not) the instance data before it runs.
type sandbox struct {
	cmd   *exec.Cmd
	child int    // bwrap's child-pid (pid 1 of the sandbox), from --info-fd
	info  []byte // bwrap's --info-fd JSON, what flatpak writes as bwrapinfo.json
	stdin interface{ Write([]byte) (int, error) }
	out   strings.Builder
}

func startSandbox(t *testing.T, flatpakInfo string, argv ...string) *sandbox {
	t.Helper()
	bwrap := needBwrap(t)
	infoFile := filepath.Join(t.TempDir(), "flatpak-info")
	if err := os.WriteFile(infoFile, []byte(flatpakInfo), 0o644); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tmp := os.TempDir()
	args := []string{
		"--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
		"--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
		"--proc", "/proc", "--dev", "/dev", "--bind", tmp, tmp,
		"--unshare-pid", "--die-with-parent",
		"--ro-bind", infoFile, "/.flatpak-info", "--info-fd", "3",
		"--", "sh", "-c", `read go; exec "$@"`, "sh",
	}
	s := &sandbox{cmd: exec.Command(bwrap, append(args, argv...)...)}
	s.cmd.ExtraFiles = []*os.File{w}
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	in, err := s.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.stdin = in
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() {
		in.Close()
		s.cmd.Process.Kill()
		s.cmd.Wait()
	})
	var raw json.RawMessage
	if err := json.NewDecoder(r).Decode(&raw); err != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		t.Fatalf("bwrap --info-fd: %v\n%s", err, s.out.String())
	}
	s.info = raw
	child, ok := BwrapChildPID(raw)
	if !ok {
		t.Fatalf("bwrap info %s", raw)
	}
	s.child = child
	return s
}

// caller returns the host pid of the sandbox's command (the child of its
// pid 1), waiting for bwrap to start it.
func (s *sandbox) caller(t *testing.T) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(s.child), "task", strconv.Itoa(s.child), "children"))
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid, _ := strconv.Atoi(f[0])
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox pid 1 (%d) started no command\n%s", s.child, s.out.String())
		}
		time.Sleep(10 * time.Millisecond) // polling /proc for the process to appear, not a timing assertion
	}
}

// writeInstance writes <runtimeDir>/.flatpak/<id>/bwrapinfo.json, as flatpak
// run does outside the sandbox.
func writeInstance(t *testing.T, runtimeDir, id string, bwrapinfo []byte) {
	t.Helper()
	dir := filepath.Join(runtimeDir, ".flatpak", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bwrapinfo.json"), bwrapinfo, 0o644); err != nil {
		t.Fatal(err)
	}
}

func flatpakInfo(appID, instance string) string {
	s := "[Application]\nname=" + appID + "\n"
	if instance != "" {
		s += "\n[Instance]\ninstance-id=" + instance + "\n"
	}
	return s
}

// TestFlatpakIdentityRealSandbox runs callers under real bwrap: one with a
// real instance (its bwrapinfo.json names a process of its pid namespace)
// is the Flatpak app; one with only a .flatpak-info of its own making, or
// an instance whose child-pid is in another pid namespace, or whose pid
// the bus no longer names, is not.
func TestFlatpakIdentityRealSandbox(t *testing.T) {
	runtimeDir := t.TempDir()
	always := func() bool { return true }
	check := func(name string, pid int, samePID func() bool, wantApp string, wantConfined bool) {
		t.Helper()
		id := identify("/proc", runtimeDir, 1000, uint32(pid), "", samePID)
		_, err := flatpakIdentity("/proc", runtimeDir, pid, samePID)
		t.Logf("%s: %s (%v)", name, id, err)
		if id.AppID != wantApp || id.Confined != wantConfined {
			t.Errorf("%s: identify = %+v; want app %q confined %v", name, id, wantApp, wantConfined)
		}
	}

	real := startSandbox(t, flatpakInfo("org.example.App", "1001"), "sleep", "60")
	writeInstance(t, runtimeDir, "1001", real.info)
	real.stdin.Write([]byte("go\n"))
	realCaller := real.caller(t)
	check("real instance", realCaller, always, "org.example.App", true)
	check("real instance, pid no longer the bus's", realCaller, func() bool { return false }, "", false)

	noInst := startSandbox(t, flatpakInfo("org.example.Fake", "1002"), "sleep", "60")
	noInst.stdin.Write([]byte("go\n"))
	check("fake .flatpak-info, no instance", noInst.caller(t), always, "", false)

	noID := startSandbox(t, flatpakInfo("org.example.Fake", ""), "sleep", "60")
	noID.stdin.Write([]byte("go\n"))
	check("fake .flatpak-info without instance-id", noID.caller(t), always, "", false)

	// An instance whose child-pid is the real sandbox's pid 1: another pid
	// namespace than this caller's.
	other := startSandbox(t, flatpakInfo("org.example.Fake", "1003"), "sleep", "60")
	writeInstance(t, runtimeDir, "1003", real.info)
	other.stdin.Write([]byte("go\n"))
	check("instance naming another pid namespace", other.caller(t), always, "", false)

	// An instance naming this test process (the daemon's own namespaces).
	self := startSandbox(t, flatpakInfo("org.example.Fake", "1004"), "sleep", "60")
	writeInstance(t, runtimeDir, "1004", []byte(`{"child-pid": `+strconv.Itoa(os.Getpid())+`}`))
	self.stdin.Write([]byte("go\n"))
	check("instance naming the daemon's pid namespace", self.caller(t), always, "", false)

	// The instance data is a symlink to a real one: refused (O_NOFOLLOW).
	link := startSandbox(t, flatpakInfo("org.example.Fake", "1005"), "sleep", "60")
	if err := os.MkdirAll(filepath.Join(runtimeDir, ".flatpak", "1005"), 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(runtimeDir, ".flatpak", "1005", "real.json")
	if err := os.WriteFile(target, link.info, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(runtimeDir, ".flatpak", "1005", "bwrapinfo.json")); err != nil {
		t.Fatal(err)
	}
	link.stdin.Write([]byte("go\n"))
	check("bwrapinfo.json a symlink", link.caller(t), always, "", false)

	// A process in the daemon's mount namespace naming a real instance id
	// cannot have the .flatpak-info at its root: this test process.
	check("the daemon's own namespaces", os.Getpid(), always, "", false)
}
