package config

import (
	"fmt"
	"time"
)

// UrgencyConfig is the [urgency] table: the lowest RFC 8030 urgency heraldd
// asks its push server for in each device state (extension "urgency";
// only herald-server holds the others until the device wants them). The
// defaults follow the UnifiedPush specification's advice: everything on
// power and an unmetered network, low on power or unmetered, normal on
// neither, only high on a low battery.
type UrgencyConfig struct {
	// Enabled turns the policy on (default true). Off: every message is wanted.
	Enabled bool `toml:"enabled"`
	// PowerUnmetered … BatteryMetered are the minimum on external power or
	// on battery, on an unmetered or metered connection.
	PowerUnmetered   string `toml:"power_unmetered"`
	PowerMetered     string `toml:"power_metered"`
	BatteryUnmetered string `toml:"battery_unmetered"`
	BatteryMetered   string `toml:"battery_metered"`
	// LowBattery is the minimum on battery at or below LowBatteryPercent.
	LowBattery        string  `toml:"low_battery"`
	LowBatteryPercent float64 `toml:"low_battery_percent"`
	// ResumeCheckTimeout is how long the push server may take to answer the
	// ping sent after a resume from suspend before the connection is
	// replaced (default 1s).
	ResumeCheckTimeout Duration `toml:"resume_check_timeout"`
}

func defaultUrgency() UrgencyConfig {
	return UrgencyConfig{
		Enabled:            true,
		PowerUnmetered:     "very-low",
		PowerMetered:       "low",
		BatteryUnmetered:   "low",
		BatteryMetered:     "normal",
		LowBattery:         "high",
		LowBatteryPercent:  15,
		ResumeCheckTimeout: Duration{time.Second},
	}
}

var urgencyRanks = map[string]int{"very-low": 0, "low": 1, "normal": 2, "high": 3}

func (u UrgencyConfig) validate() error {
	for key, v := range map[string]string{
		"power_unmetered": u.PowerUnmetered, "power_metered": u.PowerMetered,
		"battery_unmetered": u.BatteryUnmetered, "battery_metered": u.BatteryMetered, "low_battery": u.LowBattery,
	} {
		if _, ok := urgencyRanks[v]; !ok {
			return fmt.Errorf("invalid urgency.%s %q: want very-low, low, normal or high", key, v)
		}
	}
	if u.LowBatteryPercent < 0 || u.LowBatteryPercent > 100 {
		return fmt.Errorf("invalid urgency.low_battery_percent %v: want 0..100", u.LowBatteryPercent)
	}
	if u.ResumeCheckTimeout.Duration <= 0 {
		return fmt.Errorf("invalid urgency.resume_check_timeout %s: want > 0", u.ResumeCheckTimeout)
	}
	return nil
}

// DeviceState is what the urgency policy looks at.
type DeviceState struct {
	OnBattery  bool
	Percentage float64 // battery charge, 0..100 (meaningful on battery)
	Metered    bool    // the primary connection is metered (or guessed so)
}

// MinUrgency returns the lowest urgency wanted in state s.
func (u UrgencyConfig) MinUrgency(s DeviceState) string {
	switch {
	case !u.Enabled:
		return "very-low"
	case s.OnBattery && s.Percentage <= u.LowBatteryPercent:
		return u.LowBattery
	case s.OnBattery && s.Metered:
		return u.BatteryMetered
	case s.OnBattery:
		return u.BatteryUnmetered
	case s.Metered:
		return u.PowerMetered
	default:
		return u.PowerUnmetered
	}
}
