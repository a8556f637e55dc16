package notifications

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/heraldpush/herald/app"
)

// findDesktopEntry looks up the app's desktop entry in <dir>/applications/
// for each data dir, in order: <app_id>.desktop, <pkg_app>.desktop, then a
// versioned click id <pkg_app_*>.desktop (the highest name wins); a legacy
// app "_name" has <name>.desktop. It returns nil when there is none.
func findDesktopEntry(dataDirs []string, appID string) (*app.DesktopEntry, error) {
	aid, err := app.ParseID(appID)
	if err != nil {
		return nil, err
	}
	for _, name := range aid.DesktopIDs() {
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
			b, err := app.ReadFile(file, app.MaxKeyFile)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("cannot read desktop entry %q: %w", file, err)
			}
			e, err := app.ParseDesktopEntry(b)
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

// ExpandExec splits a desktop entry Exec value into argv and expands its
// field codes for one URL: %u %U %f %F → the URL (an argument that is only
// %U/%F/%u/%f is dropped when url is empty), %i → "--icon" Icon, %c → Name,
// %k → the entry's path, %% → %; deprecated codes (%d %D %n %N %v %m) are
// removed. Quoting follows the specification: double-quoted arguments with
// \" \` \$ \\ escapes. Field codes inside quotes are not expanded. Reserved
// characters outside quotes are taken literally: nothing goes through a shell.
func ExpandExec(e *app.DesktopEntry, url string) ([]string, error) {
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
