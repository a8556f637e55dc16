package notifications

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

// FuzzSignalBody decodes wire bytes as a D-Bus message and checks that the
// signal body parsers accept exactly the specified signatures, never panic,
// and return the body's values.
func FuzzSignalBody(f *testing.F) {
	for _, body := range [][]any{{uint32(3), "default"}, {uint32(3), uint32(2)}, {"a", "b", "c"}, {"1", "default"}, {uint32(1)}} {
		m := &dbus.Message{Type: dbus.TypeSignal, Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldPath:      dbus.MakeVariant(notifyPath),
			dbus.FieldInterface: dbus.MakeVariant(notifyIface),
			dbus.FieldMember:    dbus.MakeVariant("ActionInvoked"),
			dbus.FieldSignature: dbus.MakeVariant(dbus.SignatureOf(body...)),
		}, Body: body}
		var buf bytes.Buffer
		if err := m.EncodeTo(&buf, binary.LittleEndian); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := dbus.DecodeMessage(bytes.NewReader(data))
		if err != nil {
			return
		}
		sig := dbus.SignatureOf(m.Body...).String()
		id, key, err := parseActionInvoked(m.Body)
		if (err == nil) != (sig == "us") {
			t.Fatalf("ActionInvoked body %q accepted=%v", sig, err == nil)
		}
		if err == nil && (id != m.Body[0] || key != m.Body[1]) {
			t.Fatalf("ActionInvoked parsed (%d, %q) from %v", id, key, m.Body)
		}
		id, reason, err := parseNotificationClosed(m.Body)
		if (err == nil) != (sig == "uu") {
			t.Fatalf("NotificationClosed body %q accepted=%v", sig, err == nil)
		}
		if err == nil && (id != m.Body[0] || reason != m.Body[1]) {
			t.Fatalf("NotificationClosed parsed (%d, %d) from %v", id, reason, m.Body)
		}
		_, _, _, err = parseNameOwnerChanged(m.Body)
		if (err == nil) != (sig == "sss") {
			t.Fatalf("NameOwnerChanged body %q accepted=%v", sig, err == nil)
		}
	})
}

// FuzzExpandExec checks that Exec expansion never panics, always yields a
// program, keeps the URL in one argument, and is independent of the URL when
// the Exec line has no field codes.
func FuzzExpandExec(f *testing.F) {
	for _, s := range []string{"chat %u", `"/opt/a b/c" --x=%u %i %c %k %%`, `a "b \" c" %U`, "%f %d", `x "%u"`, "a\tb\nc"} {
		f.Add(s, "chat://room/1?a b")
	}
	f.Fuzz(func(t *testing.T, execLine, url string) {
		e := &app.DesktopEntry{Exec: execLine, Name: "N", Icon: "i", Path: "/p"}
		argv, err := ExpandExec(e, url)
		if err != nil {
			return
		}
		if len(argv) == 0 || argv[0] == "" {
			t.Fatalf("ExpandExec(%q) = %q: no program", execLine, argv)
		}
		if !strings.Contains(execLine, "%") {
			plain, err := ExpandExec(e, "")
			if err != nil || strings.Join(plain, "\x00") != strings.Join(argv, "\x00") {
				t.Fatalf("ExpandExec(%q) depends on the URL: %q vs %q (%v)", execLine, argv, plain, err)
			}
		}
		standalone := false
		if words, err := splitExec(execLine); err == nil {
			for _, w := range words {
				if !w.quoted && (w.s == "%u" || w.s == "%U") {
					standalone = true
				}
			}
		}
		if standalone && url != "" {
			found := false
			for _, a := range argv {
				found = found || a == url
			}
			if !found {
				t.Fatalf("ExpandExec(%q, %q) = %q: URL not passed as one argument", execLine, url, argv)
			}
		}
	})
}

// FuzzCheckActionURL checks that an accepted URL has no control characters
// and a scheme that belongs to the app.
func FuzzCheckActionURL(f *testing.F) {
	f.Add("com.ex.chat_chat_1", "appid://com.ex.chat/chat/current-user-version")
	f.Add("org.ex.App", "chat://x")
	f.Add("org.ex.App", "application:///org.ex.App.desktop")
	f.Fuzz(func(t *testing.T, appID, raw string) {
		e := &app.DesktopEntry{ID: "org.ex.App", Schemes: []string{"chat"}}
		if CheckActionURL(appID, e, raw) != nil {
			return
		}
		for _, c := range raw {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("accepted %q with a control character", raw)
			}
		}
		scheme, _, _ := strings.Cut(strings.ToLower(raw), ":")
		if scheme != "appid" && scheme != "application" && scheme != "chat" {
			t.Fatalf("accepted scheme %q of %q", scheme, raw)
		}
	})
}

func TestParseSignalBodies(t *testing.T) {
	tests := []struct {
		body          []any
		action, close bool
	}{
		{[]any{uint32(1), "default"}, true, false},
		{[]any{uint32(1), uint32(2)}, false, true},
		{[]any{"1", "default"}, false, false},
		{[]any{uint32(1)}, false, false},
		{[]any{uint32(1), "default", "x"}, false, false},
		{[]any{int32(1), uint32(2)}, false, false},
		{nil, false, false},
	}
	for _, tt := range tests {
		_, _, errA := parseActionInvoked(tt.body)
		_, _, errC := parseNotificationClosed(tt.body)
		if (errA == nil) != tt.action || (errC == nil) != tt.close {
			t.Errorf("%#v: ActionInvoked err %v, NotificationClosed err %v", tt.body, errA, errC)
		}
	}
}
