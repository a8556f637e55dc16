package helpers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// LegacyDirs are the directories of legacy ("_name") helpers, of both names
// of the Lomiri push service.
func LegacyDirs() []string {
	return []string{"/usr/lib/lomiri-push-service/legacy-helpers", "/usr/lib/ubuntu-push-client/legacy-helpers"}
}

// HelperEntry is one entry of helpers_data.json.
type HelperEntry struct {
	Exec     string `json:"exec"`
	HelperID string `json:"helper_id"`
}

// ClickHook is what the push-helper click hook builds from a hook directory
// (…/lomiri-push-service/helpers): the helper database and the entries of
// the System Settings "applications" list.
type ClickHook struct {
	Data map[string]HelperEntry
	// Apps are "pkg/app/version" for every app of a package with a helper
	// (as upstream's click-hook and lomiri-system-settings expect).
	Apps []string
}

// BuildClickHook reads the hook files <pkg>_<hook>_<version>.json in dir
// (symbolic links into the installed click packages), as upstream's
// click-hook does: the key is the hook's app_id (one with three or more "_"
// fields loses the last, the version) or else the package; exec is made
// absolute against the real (symlink-resolved) hook file. A hook without an
// app_id serves every app of the package: they are read from the package's
// click manifest (.click/info/<pkg>.manifest above the hook file, the apps
// with a "desktop" hook). Invalid hook files are skipped and reported in
// the returned error, after everything valid was read. A missing dir is
// empty.
func BuildClickHook(dir string) (ClickHook, error) {
	h := ClickHook{Data: map[string]HelperEntry{}}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return h, fmt.Errorf("cannot read hook directory: %w", err)
	}
	var errs []error
	apps := map[string]bool{}
	for _, e := range ents {
		name := e.Name()
		id, ok := strings.CutSuffix(name, ".json")
		if !ok || hookProfile(id) == "" {
			continue
		}
		parts := strings.Split(id, "_")
		pkg, version := parts[0], parts[2]
		p := filepath.Join(dir, name)
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("hook %s: %w", name, err))
			continue
		}
		b, err := readLimited(real, maxManifestSize)
		if err != nil {
			errs = append(errs, fmt.Errorf("hook %s: %w", name, err))
			continue
		}
		var m manifest
		if err := json.Unmarshal(b, &m); err != nil || m.Exec == "" {
			errs = append(errs, fmt.Errorf("hook %s: not a helper manifest with an exec", name))
			continue
		}
		exec := m.Exec
		if !filepath.IsAbs(exec) {
			if exec, err = resolveInside(filepath.Dir(real), exec); err != nil {
				errs = append(errs, fmt.Errorf("hook %s: %w", name, err))
				continue
			}
		}
		key := pkg
		var hookApps []string
		if m.AppID != "" {
			f := strings.Split(m.AppID, "_")
			if len(f) >= 3 {
				f = f[:len(f)-1]
			}
			key = strings.Join(f, "_")
			if len(f) == 2 {
				hookApps = []string{f[1]}
			}
		} else {
			hookApps = manifestApps(filepath.Dir(real), pkg)
		}
		h.Data[key] = HelperEntry{Exec: exec, HelperID: id}
		for _, a := range hookApps {
			apps[pkg+"/"+a+"/"+version] = true
		}
	}
	for a := range apps {
		h.Apps = append(h.Apps, a)
	}
	sort.Strings(h.Apps)
	return h, errors.Join(errs...)
}

// manifestApps returns the apps with a desktop hook in the click manifest
// of pkg found in dir or above it.
func manifestApps(dir, pkg string) []string {
	for range 6 {
		b, err := readLimited(filepath.Join(dir, ".click", "info", pkg+".manifest"), maxHelpersDataLen)
		if err == nil {
			var m struct {
				Hooks map[string]map[string]any `json:"hooks"`
			}
			if json.Unmarshal(b, &m) != nil {
				return nil
			}
			var apps []string
			for a, hooks := range m.Hooks {
				if _, ok := hooks["desktop"]; ok {
					apps = append(apps, a)
				}
			}
			slices.Sort(apps)
			return apps
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return nil
}

// LegacyApps are the "dpkg/<name>/0" entries of the legacy helpers in dirs.
func LegacyApps(dirs []string) []string {
	var apps []string
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if fi, err := os.Stat(filepath.Join(d, e.Name())); err == nil && fi.Mode().IsRegular() {
				apps = append(apps, "dpkg/"+e.Name()+"/0")
			}
		}
	}
	return apps
}

// WriteHelpersData writes data as helpers_data.json at path atomically
// (a temporary file renamed over it).
func WriteHelpersData(path string, data map[string]HelperEntry) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(data); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("cannot write helper database: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".helpers_data-*.json")
	if err != nil {
		return fmt.Errorf("cannot write helper database: %w", err)
	}
	_, werr := f.Write(buf.Bytes())
	if err := errors.Join(werr, f.Chmod(0o644), f.Close()); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("cannot write helper database: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("cannot write helper database: %w", err)
	}
	return nil
}

func readLimited(path string, max int64) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	v, err := readAndParse(path, fi, max, func(b []byte) (any, error) { return b, nil })
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}
