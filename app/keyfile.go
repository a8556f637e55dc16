package app

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// MaxKeyFile bounds a key file: ParseKeyFile refuses anything larger.
const MaxKeyFile = 256 << 10

// KeyFile is a parsed freedesktop key file (the format of desktop entries
// and of Flatpak's .flatpak-info): groups of key=value entries. Localized
// keys ("Name[de]") are kept under their full name.
type KeyFile struct {
	groups map[string]map[string]string
}

// ParseKeyFile parses a key file. Blank lines and comments ('#', and ';'
// as GLib accepts) are skipped; a malformed group header or a line without
// '=' inside a group is an error; lines before the first group are ignored.
// Keys and values are trimmed; a repeated key keeps its last value. Values
// are unescaped (\s \n \t \r \\); other backslash sequences are kept as they
// are (Exec has its own quoting).
func ParseKeyFile(b []byte) (*KeyFile, error) {
	if len(b) > MaxKeyFile {
		return nil, fmt.Errorf("key file is larger than %d bytes", MaxKeyFile)
	}
	kf := &KeyFile{groups: map[string]map[string]string{}}
	var cur map[string]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), MaxKeyFile+1)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			if !strings.HasSuffix(line, "]") || len(line) < 3 {
				return nil, fmt.Errorf("malformed group header %q", line)
			}
			name := line[1 : len(line)-1]
			if cur = kf.groups[name]; cur == nil {
				cur = map[string]string{}
				kf.groups[name] = cur
			}
			continue
		}
		if cur == nil {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		cur[strings.TrimSpace(key)] = unescapeValue(strings.TrimSpace(value))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read key file: %w", err)
	}
	return kf, nil
}

// Has reports whether the file has the group.
func (k *KeyFile) Has(group string) bool {
	_, ok := k.groups[group]
	return ok
}

// Get returns the value of key in group and whether it is set.
func (k *KeyFile) Get(group, key string) (string, bool) {
	v, ok := k.groups[group][key]
	return v, ok
}

func unescapeValue(v string) string {
	if !strings.Contains(v, `\`) {
		return v
	}
	var sb strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c != '\\' || i+1 == len(v) {
			sb.WriteByte(c)
			continue
		}
		i++
		switch v[i] {
		case 's':
			sb.WriteByte(' ')
		case 'n':
			sb.WriteByte('\n')
		case 't':
			sb.WriteByte('\t')
		case 'r':
			sb.WriteByte('\r')
		case '\\':
			sb.WriteByte('\\')
		default:
			// Not a value escape (e.g. \" inside Exec quoting): kept.
			sb.WriteByte('\\')
			sb.WriteByte(v[i])
		}
	}
	return sb.String()
}

// DesktopEntry is the part of an application's desktop entry (freedesktop
// Desktop Entry Specification, group [Desktop Entry]) that Herald uses.
type DesktopEntry struct {
	// ID is the desktop file id without the ".desktop" suffix, e.g.
	// "org.example.App" or "com.example.app_app"; set by the caller that
	// found the file.
	ID string
	// Path is the file the entry was read from; set by the caller.
	Path            string
	Name            string
	Icon            string
	SymbolicIcon    string // X-Ubuntu-SymbolicIcon
	Exec            string
	DBusActivatable bool
	// Schemes are the URL schemes of the MimeType entries
	// x-scheme-handler/<scheme>, lowercased.
	Schemes []string
}

const desktopGroup = "Desktop Entry"

// ParseDesktopEntry parses the [Desktop Entry] group of a desktop file with
// ParseKeyFile. Localized keys (Name[de]) are ignored.
func ParseDesktopEntry(b []byte) (*DesktopEntry, error) {
	kf, err := ParseKeyFile(b)
	if err != nil {
		return nil, err
	}
	if !kf.Has(desktopGroup) {
		return nil, errors.New("no [Desktop Entry] group")
	}
	get := func(k string) string { v, _ := kf.Get(desktopGroup, k); return v }
	e := &DesktopEntry{
		Name:            get("Name"),
		Icon:            get("Icon"),
		SymbolicIcon:    get("X-Ubuntu-SymbolicIcon"),
		Exec:            get("Exec"),
		DBusActivatable: get("DBusActivatable") == "true",
	}
	for m := range strings.SplitSeq(get("MimeType"), ";") {
		s, ok := strings.CutPrefix(strings.TrimSpace(m), "x-scheme-handler/")
		if ok && s != "" {
			e.Schemes = append(e.Schemes, strings.ToLower(s))
		}
	}
	return e, nil
}

// ErrTooLarge is wrapped by ReadFile for a file larger than its limit.
var ErrTooLarge = errors.New("file is too large")

// ReadFile reads the regular file name, at most limit bytes: a longer file
// is an error wrapping ErrTooLarge. It reads to EOF like io.ReadAll (no
// short reads), so it also works for /proc files whose size is not known
// in advance.
func ReadFile(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%q is not a regular file", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %q is larger than %d bytes", ErrTooLarge, name, limit)
	}
	return b, nil
}
