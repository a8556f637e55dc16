package notifications

import "testing"

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
