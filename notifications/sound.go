package notifications

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/heraldpush/herald/app"
)

// defaultSoundName is the freedesktop sound theme name used for "sound": true.
const defaultSoundName = "message-new-instant"

// playTimeout bounds a sound player run.
const playTimeout = 30 * time.Second

// ErrBadSoundPath is returned for a sound path that escapes the sound dirs.
var ErrBadSoundPath = errors.New("sound path is outside the app's and the system sound dirs")

// ResolveSound finds the file of an app's relative sound path: first
// <dir>/<pkg>/<path> in every data dir, then <dir>/sounds/<path> and
// <dir>/<path> when that lies under <dir>/sounds/. A path with a ".."
// element, or an absolute path not under one of those dirs, is refused with
// ErrBadSoundPath. Symbolic links are resolved before the check.
func ResolveSound(dataDirs []string, appID, path string) (string, error) {
	if path == "" || strings.ContainsRune(path, 0) {
		return "", fmt.Errorf("%w: empty path", ErrBadSoundPath)
	}
	for _, el := range strings.Split(filepath.ToSlash(path), "/") {
		if el == ".." {
			return "", fmt.Errorf("%w: %q contains ..", ErrBadSoundPath, path)
		}
	}
	aid, err := app.ParseID(appID)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadSoundPath, err)
	}
	pkg := aid.Package // the app's own sound dir: its package, or a legacy app's name
	if pkg == "" {
		pkg = aid.App
	}
	type cand struct{ file, root string }
	var cands []cand
	if filepath.IsAbs(path) {
		for _, d := range dataDirs {
			if d == "" {
				continue
			}
			for _, root := range []string{filepath.Join(d, pkg), filepath.Join(d, "sounds")} {
				if within(root, path) {
					cands = append(cands, cand{filepath.Clean(path), root})
				}
			}
		}
		if len(cands) == 0 {
			return "", fmt.Errorf("%w: %q", ErrBadSoundPath, path)
		}
	} else {
		clean := filepath.Clean(path)
		for _, d := range dataDirs {
			if d != "" {
				cands = append(cands, cand{filepath.Join(d, pkg, clean), filepath.Join(d, pkg)})
			}
		}
		for _, d := range dataDirs {
			if d == "" {
				continue
			}
			root := filepath.Join(d, "sounds")
			cands = append(cands, cand{filepath.Join(root, clean), root})
			if within(root, filepath.Join(d, clean)) {
				cands = append(cands, cand{filepath.Join(d, clean), root})
			}
		}
	}
	for _, c := range cands {
		real, err := filepath.EvalSymlinks(c.file)
		if err != nil {
			continue
		}
		root, err := filepath.EvalSymlinks(c.root)
		if err != nil || !within(root, real) {
			continue
		}
		if st, err := os.Stat(real); err == nil && st.Mode().IsRegular() {
			return c.file, nil
		}
	}
	return "", fmt.Errorf("sound %q of %q not found: %w", path, appID, os.ErrNotExist)
}

// within reports whether path is strictly inside dir (both cleaned).
func within(dir, path string) bool {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// defaultSoundFile finds the freedesktop theme's default message sound.
func defaultSoundFile(dataDirs []string) string {
	for _, d := range dataDirs {
		for _, ext := range []string{".oga", ".ogg", ".wav"} {
			f := filepath.Join(d, "sounds", "freedesktop", "stereo", defaultSoundName+ext)
			if st, err := os.Stat(f); err == nil && st.Mode().IsRegular() {
				return f
			}
		}
	}
	return ""
}

// playerCommand picks a sound player on PATH for a file (or, with
// canberra-gtk-play only, a theme sound name). It returns nil when there is
// none.
func playerCommand(ctx context.Context, lookPath func(string) (string, error), file, name string) *exec.Cmd {
	if file != "" {
		for _, p := range []string{"paplay", "pw-play"} {
			if path, err := lookPath(p); err == nil {
				return exec.CommandContext(ctx, path, file)
			}
		}
	}
	if path, err := lookPath("canberra-gtk-play"); err == nil {
		if file != "" {
			return exec.CommandContext(ctx, path, "-f", file)
		}
		if name != "" {
			return exec.CommandContext(ctx, path, "-i", name)
		}
	}
	return nil
}
