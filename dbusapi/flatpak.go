package dbusapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/heraldpush/herald/app"
)

// Flatpak identity. A .flatpak-info under /proc/<pid>/root is a path the
// caller controls: any process of the user can make a mount namespace with
// such a file at its root. So a caller counts as a Flatpak app only when
//
//   - its pid, pinned by a pidfd taken at once and re-checked against the
//     bus's credentials (a recycled pid is refused), still runs after every
//     /proc read below;
//   - its .flatpak-info (read through /proc/<pid>/root, no symlink at the
//     end) names an [Instance] instance-id;
//   - that instance exists where flatpak run writes it, outside the
//     sandbox: <runtime dir>/.flatpak/<instance-id>/bwrapinfo.json names a
//     child-pid whose pid namespace is the caller's;
//   - the caller's mount namespace is not the daemon's.
//
// The residual risk is in docs/architecture.md.

// FlatpakInstance reads [Instance] instance-id from a .flatpak-info. ok is
// false when there is none or it is not a plain name.
func FlatpakInstance(b []byte) (id string, ok bool) {
	kf, err := app.ParseKeyFile(b)
	if err != nil {
		return "", false
	}
	v, found := kf.Get("Instance", "instance-id")
	if !found || v == "" || len(v) > 64 || v == "." || v == ".." || strings.ContainsAny(v, "/\x00") {
		return "", false
	}
	return v, true
}

// BwrapChildPID reads child-pid from a bwrapinfo.json (bwrap --info-fd).
func BwrapChildPID(b []byte) (int, bool) {
	var info struct {
		ChildPID int `json:"child-pid"`
	}
	if json.Unmarshal(b, &info) != nil || info.ChildPID <= 0 {
		return 0, false
	}
	return info.ChildPID, true
}

// readNoFollow reads at most max bytes of path, refusing a symlink as its
// last element.
func readNoFollow(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return b, nil
}

// nsInode is the inode of /proc/<pid>/ns/<kind>.
func nsInode(procRoot string, pid int, kind string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(procRoot, strconv.Itoa(pid), "ns", kind), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// errNotFlatpak is any reason a caller is not taken as a Flatpak app.
var errNotFlatpak = errors.New("not a flatpak instance")

// flatpakIdentity checks pid as described above. samePID re-reads the
// caller's credentials from the bus and reports whether they still name
// pid. info is the caller's .flatpak-info; err says why it is not a
// Flatpak app (errNotFlatpak wrapped), also for a caller with no
// .flatpak-info at all (os.ErrNotExist wrapped).
func flatpakIdentity(procRoot, runtimeDir string, pid int, samePID func() bool) (info []byte, err error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: pidfd_open %d: %w", errNotFlatpak, pid, err)
	}
	defer unix.Close(pidfd)
	if samePID != nil && !samePID() {
		return nil, fmt.Errorf("%w: the caller's pid changed", errNotFlatpak)
	}
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	info, err = readNoFollow(filepath.Join(dir, "root", ".flatpak-info"), maxProcFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotFlatpak, err)
	}
	inst, ok := FlatpakInstance(info)
	if !ok {
		return nil, fmt.Errorf("%w: .flatpak-info names no instance", errNotFlatpak)
	}
	if runtimeDir == "" {
		return nil, fmt.Errorf("%w: no runtime directory to find instance %s", errNotFlatpak, inst)
	}
	bi, err := readNoFollow(filepath.Join(runtimeDir, ".flatpak", inst, "bwrapinfo.json"), maxProcFile)
	if err != nil {
		return nil, fmt.Errorf("%w: instance %s: %w", errNotFlatpak, inst, err)
	}
	child, ok := BwrapChildPID(bi)
	if !ok {
		return nil, fmt.Errorf("%w: instance %s: bwrapinfo.json names no child-pid", errNotFlatpak, inst)
	}
	callerPID, err := nsInode(procRoot, pid, "pid")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotFlatpak, err)
	}
	childPID, err := nsInode(procRoot, child, "pid")
	if err != nil || childPID != callerPID {
		return nil, fmt.Errorf("%w: instance %s: its child-pid %d is not in the caller's pid namespace", errNotFlatpak, inst, child)
	}
	callerMnt, err := nsInode(procRoot, pid, "mnt")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotFlatpak, err)
	}
	ownMnt, err := nsInode(procRoot, os.Getpid(), "mnt")
	if err != nil || callerMnt == ownMnt {
		return nil, fmt.Errorf("%w: the caller shares the daemon's mount namespace", errNotFlatpak)
	}
	// Every read above was of the pidfd's process if it still runs now (a
	// pid is not reused while its process runs).
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		return nil, fmt.Errorf("%w: the caller exited", errNotFlatpak)
	}
	return info, nil
}
