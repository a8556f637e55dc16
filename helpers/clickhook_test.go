package helpers

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestBuildClickHook builds the helper database and the settings
// applications list from a click tree as click lays it out: hook links in
// ~/.local/share/lomiri-push-service/helpers pointing into the packages.
func TestBuildClickHook(t *testing.T) {
	root := t.TempDir()
	click := filepath.Join(root, ".click", "users", "u")
	// com.example.mail: hook without app_id; its manifest has two apps with
	// a desktop hook and one without.
	mail := filepath.Join(click, "com.example.mail")
	writeFile(t, filepath.Join(mail, ".click", "info", "com.example.mail.manifest"),
		`{"name":"com.example.mail","hooks":{"mail":{"desktop":"mail.desktop"},"compose":{"desktop":"c.desktop"},"helper":{"push-helper":"push/h.json"}}}`, 0o644)
	writeFile(t, filepath.Join(mail, "push", "h.json"), `{"exec": "h.sh"}`, 0o644)
	// com.example.chat: hook with an app_id (versioned: loses the version).
	chat := filepath.Join(click, "com.example.chat")
	writeFile(t, filepath.Join(chat, "push.json"), `{"exec": "/opt/chat/helper", "app_id": "com.example.chat_chat_2.1"}`, 0o644)
	writeFile(t, filepath.Join(chat, "bad.json"), `{"app_id": "x"}`, 0o644)

	hooks := filepath.Join(root, "share", "lomiri-push-service", "helpers")
	for link, target := range map[string]string{
		"com.example.mail_helper_1.0.json": filepath.Join(mail, "push", "h.json"),
		"com.example.chat_push_2.1.json":   filepath.Join(chat, "push.json"),
		"com.example.bad_push_1.json":      filepath.Join(chat, "bad.json"),
		"not-a-hook-id.json":               filepath.Join(chat, "push.json"),
	} {
		if err := os.MkdirAll(hooks, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(hooks, link)); err != nil {
			t.Fatal(err)
		}
	}
	h, err := BuildClickHook(hooks)
	if err == nil {
		t.Error("BuildClickHook reported no error for a hook without exec")
	}
	want := ClickHook{
		Data: map[string]HelperEntry{
			"com.example.mail":      {Exec: filepath.Join(mail, "push", "h.sh"), HelperID: "com.example.mail_helper_1.0"},
			"com.example.chat_chat": {Exec: "/opt/chat/helper", HelperID: "com.example.chat_push_2.1"},
		},
		Apps: []string{"com.example.chat/chat/2.1", "com.example.mail/compose/1.0", "com.example.mail/mail/1.0"},
	}
	if d := cmp.Diff(want, h); d != "" {
		t.Errorf("BuildClickHook (-want +got):\n%s", d)
	}

	// Written atomically, it is what the Finder reads, with the profile.
	db := filepath.Join(root, "share", "lomiri-push-service", "helpers_data.json")
	if err := WriteHelpersData(db, h.Data); err != nil {
		t.Fatal(err)
	}
	var back map[string]HelperEntry
	b, _ := os.ReadFile(db)
	if err := json.Unmarshal(b, &back); err != nil || !cmp.Equal(back, h.Data) {
		t.Errorf("helpers_data.json = %s (%v)", b, err)
	}
	f := NewFinder(Dirs{LomiriDataHome: filepath.Join(root, "share")}, nil)
	got, ok := f.Lookup("com.example.mail_compose_1.0")
	if !ok || got.Exec != filepath.Join(mail, "push", "h.sh") || got.Profile != "com.example.mail_helper_1.0" {
		t.Errorf("Lookup after the hook = %+v, %v", got, ok)
	}
}
