// Package data holds Herald's installable data files: D-Bus service files,
// the default daemon configuration, the server's defaults file and the
// example helper. Its tests check them against the code that reads them.
package data

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/heraldpush/herald/client/config"
)

// TestConfigDefaults checks that the shipped config.toml documents every key
// with its real default: uncommenting every "#key = value" line must give
// exactly config.DefaultConfig, with no unknown key.
func TestConfigDefaults(t *testing.T) {
	b, err := os.ReadFile("config.toml")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	var lines []string
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "[") {
			lines = append(lines, line) // a table: its keys follow
			continue
		}
		if k, _, ok := strings.Cut(line, " = "); ok && strings.HasPrefix(k, "#") && !strings.HasPrefix(k, "# ") {
			keys = append(keys, k[1:])
			lines = append(lines, line[1:])
		}
	}
	if len(keys) == 0 {
		t.Fatal("config.toml documents no key")
	}
	// Decode as heraldd does: over the defaults, into config.Config.
	got := config.DefaultConfig()
	md, err := toml.Decode(strings.Join(lines, ""), &got)
	if err != nil {
		t.Fatalf("uncommented config.toml does not parse: %v", err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Errorf("config.toml documents keys heraldd does not know: %v", u)
	}
	env := config.Env{StateHome: t.TempDir()}
	got.Env = env
	if err := got.Validate(); err != nil {
		t.Fatalf("uncommented config.toml is not valid: %v", err)
	}
	want := config.DefaultConfig()
	want.Env = env
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("documented defaults differ from config.DefaultConfig:\n got %+v\nwant %+v", got, want)
	}

	// Every key of config.Config is documented.
	ct := reflect.TypeFor[config.Config]()
	for i := range ct.NumField() {
		tag := ct.Field(i).Tag.Get("toml")
		if tag == "" || tag == "-" {
			continue
		}
		if ft := ct.Field(i).Type; ft.Kind() == reflect.Struct && ft.Name() != "Duration" {
			// A table: its header is in the file and each of its keys is documented.
			if !strings.Contains(string(b), "\n["+tag+"]\n") {
				t.Errorf("config table [%s] is not in config.toml", tag)
			}
			for j := range ft.NumField() {
				sub := ft.Field(j).Tag.Get("toml")
				if sub != "" && sub != "-" && !strings.Contains(strings.Join(keys, "\n")+"\n", sub+"\n") {
					t.Errorf("config key %s.%s is not documented in config.toml", tag, sub)
				}
			}
			continue
		}
		if !strings.Contains(strings.Join(keys, "\n")+"\n", tag+"\n") {
			t.Errorf("config key %q is not documented in config.toml", tag)
		}
	}
}

// TestDBusServiceFiles checks that every bus name heraldd owns is activatable
// and starts the user unit.
func TestDBusServiceFiles(t *testing.T) {
	names := []string{
		"com.lomiri.PushNotifications", "com.lomiri.Postal",
		"com.ubuntu.PushNotifications", "com.ubuntu.Postal",
		"org.unifiedpush.Distributor.herald", "org.herald.Daemon",
	}
	files, err := filepath.Glob(filepath.Join("dbus-1", "services", "*.service"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(names) {
		t.Errorf("%d service files, want %d: %v", len(files), len(names), files)
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			f, err := os.Open(filepath.Join("dbus-1", "services", name+".service"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			if err != nil {
				t.Fatal(err)
			}
			want := "[D-BUS Service]\nName=" + name + "\nExec=/usr/bin/heraldd\nSystemdService=heraldd.service\n"
			if string(b) != want {
				t.Errorf("got\n%s\nwant\n%s", b, want)
			}
			if _, err := os.Stat(filepath.Join("..", "systemd", "heraldd.service")); err != nil {
				t.Errorf("SystemdService=heraldd.service: %v", err)
			}
		})
	}
}
