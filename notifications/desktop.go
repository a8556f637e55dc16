package notifications

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// maxDesktopFile bounds how much of a desktop entry is read.
const maxDesktopFile = 256 << 10

// DesktopEntry is the part of an application's desktop entry (freedesktop
// Desktop Entry Specification, group [Desktop Entry]) that presentation uses.
type DesktopEntry struct {
	// ID is the desktop file id without the ".desktop" suffix, e.g.
	// "org.example.App" or "com.example.app_app".
	ID string
	// Path is the file the entry was read from.
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

// ParseDesktopEntry parses the [Desktop Entry] group of a desktop file.
// Localized keys (Name[de]) are ignored; values are unescaped per the
// specification (\s \n \t \r \\).
func ParseDesktopEntry(b []byte) (*DesktopEntry, error) {
	if len(b) > maxDesktopFile {
		return nil, fmt.Errorf("desktop entry is larger than %d bytes", maxDesktopFile)
	}
	e := &DesktopEntry{}
	in, seen := false, false
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxDesktopFile+1)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("malformed group header %q", line)
			}
			in = line == "[Desktop Entry]"
			seen = seen || in
			continue
		}
		if !in {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		key = strings.TrimSpace(key)
		value = unescapeDesktopValue(strings.TrimSpace(value))
		switch key {
		case "Name":
			e.Name = value
		case "Icon":
			e.Icon = value
		case "X-Ubuntu-SymbolicIcon":
			e.SymbolicIcon = value
		case "Exec":
			e.Exec = value
		case "DBusActivatable":
			e.DBusActivatable = value == "true"
		case "MimeType":
			e.Schemes = nil
			for _, m := range strings.Split(value, ";") {
				s, ok := strings.CutPrefix(strings.TrimSpace(m), "x-scheme-handler/")
				if ok && s != "" {
					e.Schemes = append(e.Schemes, strings.ToLower(s))
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read desktop entry: %w", err)
	}
	if !seen {
		return nil, errors.New("no [Desktop Entry] group")
	}
	return e, nil
}

func unescapeDesktopValue(v string) string {
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
			// Not a value escape (e.g. \" inside Exec quoting): keep it for
			// the Exec parser.
			sb.WriteByte('\\')
			sb.WriteByte(v[i])
		}
	}
	return sb.String()
}

// appParts splits an app id. Click ids are "pkg_app" or "pkg_app_version";
// any other valid id (e.g. "org.example.App") is its own package.
type appParts struct {
	pkg, app, version string
	click             bool
}

func splitAppID(appID string) appParts {
	parts := strings.Split(appID, "_")
	switch len(parts) {
	case 2:
		return appParts{pkg: parts[0], app: parts[1], click: true}
	case 3:
		return appParts{pkg: parts[0], app: parts[1], version: parts[2], click: true}
	}
	return appParts{pkg: appID}
}

// validAppID accepts the characters of click and desktop-style ids, and
// nothing that could walk a file system path.
func validAppID(appID string) error {
	if appID == "" || len(appID) > 255 {
		return fmt.Errorf("invalid app id %q: empty or too long", appID)
	}
	if appID[0] == '.' || appID[0] == '-' {
		return fmt.Errorf("invalid app id %q: starts with %q", appID, appID[0])
	}
	for _, c := range appID {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.ContainsRune("._+-:~", c)
		if !ok {
			return fmt.Errorf("invalid app id %q: character %q", appID, c)
		}
	}
	if strings.Count(appID, "_") > 2 {
		return fmt.Errorf("invalid app id %q: too many '_'", appID)
	}
	p := splitAppID(appID)
	if p.click && (p.pkg == "" || p.app == "") {
		return fmt.Errorf("invalid app id %q: empty package or app", appID)
	}
	return nil
}

// findDesktopEntry looks up the app's desktop entry in <dir>/applications/
// for each data dir, in order: <app_id>.desktop, <pkg_app>.desktop, then a
// versioned click id <pkg_app_*>.desktop (the highest name wins). It returns
// nil when there is none or it cannot be parsed.
func findDesktopEntry(dataDirs []string, appID string) (*DesktopEntry, error) {
	p := splitAppID(appID)
	names := []string{appID}
	if p.click {
		if p.version != "" {
			names = append(names, p.pkg+"_"+p.app)
		}
		names = append(names, p.pkg+"_"+p.app+"_*")
	}
	for _, name := range names {
		for _, d := range dataDirs {
			if d == "" {
				continue
			}
			file := filepath.Join(d, "applications", name+".desktop")
			if strings.Contains(name, "*") {
				matches, _ := filepath.Glob(file)
				if len(matches) == 0 {
					continue
				}
				sort.Strings(matches)
				file = matches[len(matches)-1]
			}
			b, err := readLimited(file, maxDesktopFile)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("cannot read desktop entry %q: %w", file, err)
			}
			e, err := ParseDesktopEntry(b)
			if err != nil {
				return nil, fmt.Errorf("cannot parse desktop entry %q: %w", file, err)
			}
			e.ID = strings.TrimSuffix(filepath.Base(file), ".desktop")
			e.Path = file
			return e, nil
		}
	}
	return nil, nil
}

func readLimited(name string, limit int64) ([]byte, error) {
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
	if st.Size() > limit {
		return nil, fmt.Errorf("%q is larger than %d bytes", name, limit)
	}
	buf := make([]byte, st.Size())
	n, err := f.Read(buf)
	if err != nil && st.Size() > 0 {
		return nil, err
	}
	return buf[:n], nil
}

// ExpandExec splits a desktop entry Exec value into argv and expands its
// field codes for one URL: %u %U %f %F → the URL (an argument that is only
// %U/%F/%u/%f is dropped when url is empty), %i → "--icon" Icon, %c → Name,
// %k → the entry's path, %% → %; deprecated codes (%d %D %n %N %v %m) are
// removed. Quoting follows the specification: double-quoted arguments with
// \" \` \$ \\ escapes. Field codes inside quotes are not expanded. Reserved
// characters outside quotes are taken literally: nothing goes through a shell.
func ExpandExec(e *DesktopEntry, url string) ([]string, error) {
	words, err := splitExec(e.Exec)
	if err != nil {
		return nil, err
	}
	var argv []string
	for _, w := range words {
		if w.quoted {
			argv = append(argv, w.s)
			continue
		}
		switch w.s {
		case "%u", "%U", "%f", "%F":
			if url != "" {
				argv = append(argv, url)
			}
			continue
		case "%i":
			if e.Icon != "" {
				argv = append(argv, "--icon", e.Icon)
			}
			continue
		}
		var sb strings.Builder
		for i := 0; i < len(w.s); i++ {
			if w.s[i] != '%' {
				sb.WriteByte(w.s[i])
				continue
			}
			if i+1 == len(w.s) {
				return nil, fmt.Errorf("exec %q: trailing %%", e.Exec)
			}
			i++
			switch w.s[i] {
			case '%':
				sb.WriteByte('%')
			case 'u', 'f':
				sb.WriteString(url)
			case 'c':
				sb.WriteString(e.Name)
			case 'k':
				sb.WriteString(e.Path)
			case 'd', 'D', 'n', 'N', 'v', 'm':
			default:
				return nil, fmt.Errorf("exec %q: invalid field code %%%c", e.Exec, w.s[i])
			}
		}
		if sb.Len() == 0 {
			continue // only removed field codes
		}
		argv = append(argv, sb.String())
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("exec %q: no program", e.Exec)
	}
	return argv, nil
}

type execWord struct {
	s      string
	quoted bool // the word contained a quoted part: no field codes
}

func splitExec(s string) ([]execWord, error) {
	var words []execWord
	var cur strings.Builder
	inWord, quoted, inQuote := false, false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote && c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("exec %q: trailing backslash", s)
			}
			i++
			n := s[i]
			if n != '"' && n != '`' && n != '$' && n != '\\' {
				return nil, fmt.Errorf("exec %q: invalid escape \\%c", s, n)
			}
			cur.WriteByte(n)
		case c == '"':
			inQuote = !inQuote
			inWord, quoted = true, true
		case inQuote:
			cur.WriteByte(c)
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, execWord{cur.String(), quoted})
				cur.Reset()
				inWord, quoted = false, false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("exec %q: unterminated quote", s)
	}
	if inWord {
		words = append(words, execWord{cur.String(), quoted})
	}
	return words, nil
}
