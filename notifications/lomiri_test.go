package notifications

import (
	"testing"

	"github.com/heraldpush/herald/app"
)

func TestSettingsPath(t *testing.T) {
	for id, want := range map[string]string{
		"com.example.app_app":       "/com/lomiri/NotificationSettings/com.example.app/app/",
		"com.example.app_app_1.2.3": "/com/lomiri/NotificationSettings/com.example.app/app/",
		"_ubuntu-system-settings":   "/com/lomiri/NotificationSettings/dpkg/ubuntu-system-settings/",
		"org.example.App":           "/com/lomiri/NotificationSettings/dpkg/org.example.App/",
	} {
		if got := settingsPath(lomiriAppPath, id); got != want {
			t.Errorf("settingsPath(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestSameApp(t *testing.T) {
	for _, tt := range []struct {
		appID, got string
		want       bool
	}{
		{"com.example.app_app", "com.example.app_app_1.0", true},
		{"com.example.app_app_1.0", "com.example.app_app_1.0", true},
		{"com.example.app_app_1.0", "com.example.app_app", true},
		{"com.example.app_app_1.0", "com.example.app_app_2.0", false},
		{"com.example.app_app", "com.example.app_other_1.0", false},
		{"com.example.app_app", "com.example.evil_app_1.0", false},
		{"org.example.App", "org.example.App", true},
		{"org.example.App", "org.example.Other", false},
	} {
		if got := sameApp(tt.appID, nil, tt.got); got != tt.want {
			t.Errorf("sameApp(%q, %q) = %v, want %v", tt.appID, tt.got, got, tt.want)
		}
	}
}

func TestMenuObjectPath(t *testing.T) {
	// The example of reference/lomiri-platform.md §5.
	if got := menuObjectPath("com.example.app_app_1.0.desktop"); got != "/org/ayatana/indicator/messages/com_example_app_app_1_0_desktop" {
		t.Errorf("menuObjectPath = %q", got)
	}
	if !menuObjectPath("weird id-ü.desktop").IsValid() {
		t.Error("menuObjectPath gives an invalid path for an odd id")
	}
}

func TestMenuRecordID(t *testing.T) {
	a, b := menuRecordID("a_b", "m1"), menuRecordID("a_b", "m2")
	if a&menuIDBit == 0 || b&menuIDBit == 0 || a == b || a != menuRecordID("a_b", "m1") {
		t.Errorf("menuRecordID: %#x %#x", a, b)
	}
}

// TestMenuObjectOnlyForIndicator: the exported client object hands the
// app's persistent cards and their taps only to the messaging indicator.
func TestMenuObjectOnlyForIndicator(t *testing.T) {
	st := newMemStore(Record{ID: menuRecordID("a.b_c", "m1"), AppID: "a.b_c", MsgID: "m1", Tag: "t",
		Card: app.Card{Summary: "secret", Persist: true}})
	p := New(Options{Store: st})
	m := &menuApp{p: p, appID: "a.b_c", desktopID: "a.b_c.desktop"}
	if _, err := m.ListMessages(":1.7"); err == nil {
		t.Error("ListMessages answered a caller while no indicator runs")
	}
	p.indicatorOwner = ":1.9"
	if _, err := m.ListMessages(":1.7"); err == nil {
		t.Error("ListMessages answered a caller that is not the indicator")
	}
	if err := m.Dismiss(":1.7", nil, []string{"m1"}); err == nil {
		t.Error("Dismiss accepted from a caller that is not the indicator")
	}
	msgs, err := m.ListMessages(":1.9")
	if err != nil || len(msgs) != 1 || msgs[0].Title != "secret" || msgs[0].ID != "m1" {
		t.Fatalf("ListMessages from the indicator = %+v, %v", msgs, err)
	}
	if err := m.Dismiss(":1.9", nil, []string{"m1"}); err != nil {
		t.Fatal(err)
	}
	if recs, _ := st.Notifications(t.Context(), "a.b_c"); len(recs) != 0 {
		t.Errorf("after Dismiss the store holds %+v", recs)
	}
}
