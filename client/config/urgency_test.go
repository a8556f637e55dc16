package config

import (
	"strings"
	"testing"
)

func TestMinUrgency(t *testing.T) {
	u := defaultUrgency()
	for _, tt := range []struct {
		s    DeviceState
		want string
	}{
		{DeviceState{}, "very-low"},
		{DeviceState{Metered: true}, "low"},
		{DeviceState{OnBattery: true, Percentage: 80}, "low"},
		{DeviceState{OnBattery: true, Percentage: 80, Metered: true}, "normal"},
		{DeviceState{OnBattery: true, Percentage: 10}, "high"},
		{DeviceState{OnBattery: true, Percentage: 15, Metered: true}, "high"},
		{DeviceState{OnBattery: false, Percentage: 5}, "very-low"}, // charging
	} {
		if got := u.MinUrgency(tt.s); got != tt.want {
			t.Errorf("MinUrgency(%+v) = %s, want %s", tt.s, got, tt.want)
		}
	}
	u.Enabled = false
	if got := u.MinUrgency(DeviceState{OnBattery: true, Percentage: 1}); got != "very-low" {
		t.Errorf("disabled policy wants %s", got)
	}
}

func TestUrgencyValidate(t *testing.T) {
	for _, edit := range []func(*UrgencyConfig){
		func(u *UrgencyConfig) { u.LowBattery = "urgent" },
		func(u *UrgencyConfig) { u.PowerMetered = "" },
		func(u *UrgencyConfig) { u.LowBatteryPercent = 101 },
		func(u *UrgencyConfig) { u.ResumeCheckTimeout.Duration = 0 },
	} {
		u := defaultUrgency()
		edit(&u)
		if err := u.validate(); err == nil || !strings.Contains(err.Error(), "urgency.") {
			t.Errorf("validate(%+v) = %v, want an error naming the key", u, err)
		}
	}
	if err := defaultUrgency().validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}
