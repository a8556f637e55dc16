package helpers

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/heraldpush/herald/app"
)

// Dirs are the directories a Finder searches. The caller fills them from the
// environment (XDG variables, home directory).
type Dirs struct {
	// DataHome is $XDG_DATA_HOME; Herald manifests are in DataHome/herald/helpers.
	DataHome string
	// DataDirs is $XDG_DATA_DIRS, searched after DataHome, in order.
	DataDirs []string
	// LomiriDataHome holds the Lomiri-compatible files (normally
	// ~/.local/share): lomiri-push-service/helpers_data.json,
	// ubuntu-push-client/helpers_data.json and their helpers/ hook directories.
	LomiriDataHome string
	// LegacyDirs hold executables named after legacy ("_name") apps, such as
	// /usr/lib/lomiri-push-service/legacy-helpers.
	LegacyDirs []string
}

// Helper is an app's helper program.
type Helper struct {
	AppID  string // the app id it was looked up for (or registered under, for List)
	Exec   string // absolute path of the executable
	Source string // the manifest, data file or directory it was found in
	// Profile is the AppArmor helper profile of a click app's helper,
	// <pkg>_<hook>_<version> (the click hook id), when the helper was found
	// through the push-helper click hook; "" for Herald manifests and legacy
	// helpers, which run unconfined as upstream's legacy helpers do.
	Profile string
}

// Check reports whether the helper can be run: Exec exists and is a regular
// file executable by this user.
func (h Helper) Check() error {
	if h.Exec == "" {
		return errors.New("helper has no executable")
	}
	if !filepath.IsAbs(h.Exec) {
		return fmt.Errorf("helper executable %q is not an absolute path", h.Exec)
	}
	fi, err := os.Stat(h.Exec)
	if err != nil {
		return fmt.Errorf("cannot use helper executable: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("helper executable %q is not a regular file", h.Exec)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("helper executable %q is not executable", h.Exec)
	}
	if err := syscall.Access(h.Exec, 1 /* X_OK */); err != nil {
		return fmt.Errorf("helper executable %q is not executable by this user: %w", h.Exec, err)
	}
	return nil
}

const (
	maxManifestSize   = 64 << 10
	maxHelpersDataLen = 4 << 20
)

var lomiriSubdirs = []string{"lomiri-push-service", "ubuntu-push-client"}

// Finder finds apps' helpers. Files are re-read when they change (a stat per
// candidate file and lookup compares size, mtime, ctime and inode), so no
// background goroutine is needed. It is safe for concurrent use.
type Finder struct {
	dirs Dirs
	log  *slog.Logger

	mu    sync.Mutex        // guards cache
	cache map[string]cached // by file or directory path
}

type fileKey struct {
	mtime, ctime time.Time
	size         int64
	ino          uint64
}

type cached struct {
	key fileKey
	val any // manifest, helpersData or []string (a directory listing)
	err error
}

type manifest struct {
	Exec  string `json:"exec"`
	AppID string `json:"app_id"`
	exec  string // absolute, resolved against the real manifest's directory
}

type helpersData map[string]struct {
	Exec     string `json:"exec"`
	HelperID string `json:"helper_id"`
}

// NewFinder returns a Finder over d. A nil logger discards.
func NewFinder(d Dirs, logger *slog.Logger) *Finder {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Finder{dirs: d, log: logger, cache: map[string]cached{}}
}

func (f *Finder) heraldDirs() []string {
	var dirs []string
	for _, d := range append([]string{f.dirs.DataHome}, f.dirs.DataDirs...) {
		if d != "" {
			dirs = append(dirs, filepath.Join(d, "herald", "helpers"))
		}
	}
	return dirs
}

// Lookup finds appID's helper; first match wins:
//  1. Herald manifests DataHome/herald/helpers/<name>.json, then the same in
//     each of DataDirs, where name is the full app id, then (click ids)
//     pkg_app, then pkg. A manifest whose app_id is set and names another app
//     is skipped.
//  2. Click ids: the Lomiri helpers_data.json files (key pkg_app, then pkg),
//     then the hook files helpers/<pkg>_*.json beside them (sorted, first with
//     a non-empty exec and app_id empty or pkg_app).
//  3. Legacy ids (_name): the executable <dir>/<name> in LegacyDirs.
//
// Lookup does not check that the executable exists; see Helper.Check.
func (f *Finder) Lookup(appID string) (Helper, bool) {
	id, err := app.ParseID(appID)
	if err != nil {
		return Helper{}, false
	}
	for _, dir := range f.heraldDirs() {
		for _, name := range id.HelperNames() {
			p := filepath.Join(dir, name+".json")
			m, ok := f.manifest(p)
			if !ok || (m.AppID != "" && m.AppID != id.String() && m.AppID != id.Base()) {
				continue
			}
			return Helper{AppID: appID, Exec: m.exec, Source: p}, true
		}
	}
	if id.Form == app.FormClick && f.dirs.LomiriDataHome != "" {
		for _, sub := range lomiriSubdirs {
			p := filepath.Join(f.dirs.LomiriDataHome, sub, "helpers_data.json")
			data, ok := f.helpersData(p)
			if !ok {
				continue
			}
			for _, key := range []string{id.Base(), id.Package} {
				if e, ok := data[key]; ok {
					return Helper{AppID: appID, Exec: e.Exec, Source: p, Profile: hookProfile(e.HelperID)}, true
				}
			}
		}
		for _, sub := range lomiriSubdirs {
			dir := filepath.Join(f.dirs.LomiriDataHome, sub, "helpers")
			for _, name := range f.listDir(dir) {
				if !strings.HasPrefix(name, id.Package+"_") || !strings.HasSuffix(name, ".json") {
					continue
				}
				p := filepath.Join(dir, name)
				m, ok := f.manifest(p)
				if ok && (m.AppID == "" || m.AppID == id.Base()) {
					return Helper{AppID: appID, Exec: m.exec, Source: p, Profile: hookProfile(strings.TrimSuffix(name, ".json"))}, true
				}
			}
		}
	}
	if id.Form == app.FormLegacy {
		for _, dir := range f.dirs.LegacyDirs {
			p := filepath.Join(dir, id.App)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return Helper{AppID: appID, Exec: p, Source: dir}, true
			}
		}
	}
	return Helper{}, false
}

// List returns every registered helper, one per app id or package key, sorted
// by AppID, as Lookup would find them (for `herald doctor`).
func (f *Finder) List() []Helper {
	seen := map[string]bool{}
	var hs []Helper
	add := func(h Helper) {
		if !seen[h.AppID] {
			seen[h.AppID] = true
			hs = append(hs, h)
		}
	}
	for _, dir := range f.heraldDirs() {
		for _, name := range f.listDir(dir) {
			if !strings.HasSuffix(name, ".json") {
				continue
			}
			p := filepath.Join(dir, name)
			if m, ok := f.manifest(p); ok {
				add(Helper{AppID: strings.TrimSuffix(name, ".json"), Exec: m.exec, Source: p})
			}
		}
	}
	if f.dirs.LomiriDataHome != "" {
		for _, sub := range lomiriSubdirs {
			p := filepath.Join(f.dirs.LomiriDataHome, sub, "helpers_data.json")
			data, _ := f.helpersData(p)
			for _, key := range slices.Sorted(maps.Keys(data)) {
				add(Helper{AppID: key, Exec: data[key].Exec, Source: p})
			}
		}
		for _, sub := range lomiriSubdirs {
			dir := filepath.Join(f.dirs.LomiriDataHome, sub, "helpers")
			for _, name := range f.listDir(dir) {
				p := filepath.Join(dir, name)
				m, ok := f.manifest(p)
				if !ok || !strings.HasSuffix(name, ".json") {
					continue
				}
				key := m.AppID
				if key == "" {
					key, _, _ = strings.Cut(name, "_")
				}
				add(Helper{AppID: key, Exec: m.exec, Source: p})
			}
		}
	}
	for _, dir := range f.dirs.LegacyDirs {
		for _, name := range f.listDir(dir) {
			p := filepath.Join(dir, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				add(Helper{AppID: "_" + name, Exec: p, Source: dir})
			}
		}
	}
	slices.SortFunc(hs, func(a, b Helper) int { return strings.Compare(a.AppID, b.AppID) })
	return hs
}

// hookProfile returns the click hook id <pkg>_<hook>_<version> when id is
// one, else "".
func hookProfile(id string) string {
	if a, err := app.ParseID(id); err != nil || a.Form != app.FormClick || a.Version == "" {
		return ""
	}
	return id
}

func (f *Finder) manifest(path string) (manifest, bool) {
	v, ok := f.load(path, maxManifestSize, func(b []byte) (any, error) {
		var m manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, err
		}
		if m.Exec == "" {
			return nil, errors.New("no exec")
		}
		m.exec = m.Exec
		if !filepath.IsAbs(m.exec) {
			real, err := filepath.EvalSymlinks(path)
			if err != nil {
				return nil, err
			}
			if m.exec, err = resolveInside(filepath.Dir(real), m.Exec); err != nil {
				return nil, err
			}
		}
		return m, nil
	})
	if !ok {
		return manifest{}, false
	}
	return v.(manifest), true
}

// resolveInside resolves the relative exec of a manifest in dir, which must
// stay inside dir: no ".." element, and no symlink that leads out of it. It
// returns the real path, so that a symlink swapped later is not followed.
func resolveInside(dir, rel string) (string, error) {
	for _, e := range strings.Split(filepath.ToSlash(rel), "/") {
		if e == ".." {
			return "", fmt.Errorf("exec %q leaves the package directory", rel)
		}
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	p := filepath.Join(realDir, rel)
	real, err := filepath.EvalSymlinks(p)
	if errors.Is(err, fs.ErrNotExist) {
		if _, lerr := os.Lstat(p); lerr == nil {
			return "", fmt.Errorf("exec %q is a dangling symlink", rel)
		}
		// Not there (yet): running it fails with ErrStart, as before;
		// lexically it is inside.
		return p, nil
	}
	if err != nil {
		return "", fmt.Errorf("exec %q: %w", rel, err)
	}
	if !strings.HasPrefix(real, realDir+string(filepath.Separator)) {
		return "", fmt.Errorf("exec %q resolves to %q, outside the package directory", rel, real)
	}
	return real, nil
}

func (f *Finder) helpersData(path string) (helpersData, bool) {
	v, ok := f.load(path, maxHelpersDataLen, func(b []byte) (any, error) {
		var d helpersData
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, err
		}
		for k, e := range d {
			if !filepath.IsAbs(e.Exec) {
				f.log.Warn("ignoring helper entry without an absolute exec", "path", path, "key", k)
				delete(d, k)
			}
		}
		return d, nil
	})
	if !ok {
		return nil, false
	}
	return v.(helpersData), true
}

// listDir returns the sorted names in dir, cached until dir changes.
func (f *Finder) listDir(dir string) []string {
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		f.forget(dir)
		return nil
	}
	key := keyOf(fi)
	if c, ok := f.cached(dir); ok && c.key == key {
		names, _ := c.val.([]string)
		return names
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		f.log.Debug("cannot list helper directory", "path", dir, "err", err)
		return nil
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	f.store(dir, cached{key: key, val: names})
	return names
}

// load returns the parsed content of the file at path, parsing it again only
// when the file changed. A missing, oversized or invalid file gives false.
func (f *Finder) load(path string, max int64, parse func([]byte) (any, error)) (any, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			f.log.Debug("cannot stat helper file", "path", path, "err", err)
		}
		f.forget(path)
		return nil, false
	}
	key := keyOf(fi)
	if c, ok := f.cached(path); ok && c.key == key {
		return c.val, c.err == nil
	}
	val, err := readAndParse(path, fi, max, parse)
	if err != nil {
		f.log.Warn("ignoring invalid helper file", "path", path, "err", err)
	}
	f.store(path, cached{key: key, val: val, err: err})
	return val, err == nil
}

func readAndParse(path string, fi fs.FileInfo, max int64, parse func([]byte) (any, error)) (any, error) {
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return parse(b)
}

func (f *Finder) cached(path string) (cached, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.cache[path]
	return c, ok
}

func (f *Finder) store(path string, c cached) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cache[path] = c
}

func (f *Finder) forget(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.cache, path)
}

func keyOf(fi fs.FileInfo) fileKey {
	k := fileKey{mtime: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		k.ctime = time.Unix(st.Ctim.Unix())
		k.ino = st.Ino
	}
	return k
}
