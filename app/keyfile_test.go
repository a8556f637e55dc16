package app

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseDesktopEntry(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "entry.desktop"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseDesktopEntry(b)
	if err != nil {
		t.Fatal(err)
	}
	want := &DesktopEntry{Name: "Chat App", Icon: "chat", SymbolicIcon: "chat-sym", Exec: `chat "--title=a \"b\"" %U`,
		DBusActivatable: true, Schemes: []string{"chat", "https"}}
	if !reflect.DeepEqual(want, got) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	for _, bad := range []string{"", "Name=x\n", "[Desktop Entry]\nnoequals\n", "[Desktop Entry\nName=x\n"} {
		if _, err := ParseDesktopEntry([]byte(bad)); err == nil {
			t.Errorf("ParseDesktopEntry(%q) succeeded", bad)
		}
	}
}

func TestParseKeyFileFlatpakInfo(t *testing.T) {
	kf, err := ParseKeyFile([]byte("; comment\n[Application]\nname = org.example.App\nruntime=x\n[Instance]\nname=other\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := kf.Get("Application", "name"); !ok || v != "org.example.App" {
		t.Errorf("Application name = %q, %v", v, ok)
	}
	if _, ok := kf.Get("Application", "missing"); ok {
		t.Error("missing key found")
	}
	if _, err := ParseKeyFile(make([]byte, MaxKeyFile+1)); err == nil {
		t.Error("oversized key file accepted")
	}
}

// FuzzParseDesktopEntry checks that parsing never panics and that an entry
// that parses keeps only scheme handlers that are lowercase and non-empty.
func FuzzParseDesktopEntry(f *testing.F) {
	f.Add([]byte("[Desktop Entry]\nName=A\nExec=a %u\nMimeType=x-scheme-handler/A;x-scheme-handler/;\n"))
	f.Add([]byte("# c\n[Other]\nName=x\n[Desktop Entry]\nIcon=a\\sb\\\\\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseDesktopEntry(data)
		if err != nil {
			return
		}
		for _, s := range e.Schemes {
			if s == "" || s != strings.ToLower(s) {
				t.Fatalf("scheme %q", s)
			}
		}
	})
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "f")
	if err := os.WriteFile(name, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(name, 10); err != nil || string(b) != "0123456789" {
		t.Errorf("ReadFile at the limit = %q, %v", b, err)
	}
	if _, err := ReadFile(name, 9); err == nil {
		t.Error("ReadFile over the limit succeeded")
	}
	if _, err := ReadFile(dir, 100); err == nil {
		t.Error("ReadFile of a directory succeeded")
	}
	// /proc files report size 0 but have content: read to EOF.
	if b, err := ReadFile("/proc/self/status", 1<<20); err != nil || !strings.Contains(string(b), "Pid:") {
		t.Errorf("ReadFile(/proc/self/status) = %d bytes, %v", len(b), err)
	}
}
