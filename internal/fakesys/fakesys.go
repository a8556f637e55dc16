// Package fakesys exports test doubles of the system services heraldd
// follows — UPower, NetworkManager and logind — on a private bus, with the
// names, paths, interfaces, properties and signals of the real ones (the
// parts heraldd uses).
//
// They are fakes because the real ones cannot run in a test: Debian ships
// upower, network-manager and systemd-logind, but each must own its name on
// the one system bus, runs as root, and reads the machine's batteries,
// network devices and sleep state; none of them can be started on a
// private bus with a battery at 10 % or a suspend on demand.
package fakesys

import (
	"fmt"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"
)

// Services are the fakes, each on its own connection (as separate
// processes would be).
type Services struct {
	upower, nm, logind *dbus.Conn
	upProps, devProps  *prop.Properties
	nmProps            *prop.Properties
}

// NetworkManager's Metered values.
const (
	MeteredUnknown = 0
	MeteredYes     = 1
	MeteredNo      = 2
)

// Start connects to the bus at addr three times and exports UPower (on
// power, 100 %), NetworkManager (connected globally, not metered) and
// logind there.
func Start(addr string) (*Services, error) {
	s := &Services{}
	var err error
	fail := func(err error) (*Services, error) { s.Close(); return nil, err }
	for _, c := range []**dbus.Conn{&s.upower, &s.nm, &s.logind} {
		if *c, err = dbus.Connect(addr); err != nil {
			return fail(err)
		}
	}
	if s.upProps, err = prop.Export(s.upower, "/org/freedesktop/UPower", prop.Map{
		"org.freedesktop.UPower": {"OnBattery": {Value: false, Emit: prop.EmitTrue}},
	}); err != nil {
		return fail(err)
	}
	if s.devProps, err = prop.Export(s.upower, "/org/freedesktop/UPower/devices/DisplayDevice", prop.Map{
		"org.freedesktop.UPower.Device": {"Percentage": {Value: 100.0, Emit: prop.EmitTrue}},
	}); err != nil {
		return fail(err)
	}
	if s.nmProps, err = prop.Export(s.nm, "/org/freedesktop/NetworkManager", prop.Map{
		"org.freedesktop.NetworkManager": {
			"State":   {Value: uint32(70), Emit: prop.EmitTrue}, // NM_STATE_CONNECTED_GLOBAL
			"Metered": {Value: uint32(MeteredNo), Emit: prop.EmitTrue},
		},
	}); err != nil {
		return fail(err)
	}
	for name, c := range map[string]*dbus.Conn{
		"org.freedesktop.UPower": s.upower, "org.freedesktop.NetworkManager": s.nm, "org.freedesktop.login1": s.logind,
	} {
		reply, err := c.RequestName(name, dbus.NameFlagDoNotQueue)
		if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
			return fail(fmt.Errorf("cannot own %s: %v", name, err))
		}
	}
	return s, nil
}

// SetBattery sets UPower's OnBattery and the display device's Percentage,
// with PropertiesChanged signals.
func (s *Services) SetBattery(onBattery bool, percentage float64) {
	s.devProps.SetMust("org.freedesktop.UPower.Device", "Percentage", percentage)
	s.upProps.SetMust("org.freedesktop.UPower", "OnBattery", onBattery)
}

// SetMetered sets NetworkManager's Metered (MeteredYes, MeteredNo, …).
func (s *Services) SetMetered(m uint32) {
	s.nmProps.SetMust("org.freedesktop.NetworkManager", "Metered", m)
}

// Sleep emits logind's PrepareForSleep(true), Resume PrepareForSleep(false).
func (s *Services) Sleep() error {
	return s.logind.Emit("/org/freedesktop/login1", "org.freedesktop.login1.Manager.PrepareForSleep", true)
}

// Resume emits PrepareForSleep(false): the system has resumed.
func (s *Services) Resume() error {
	return s.logind.Emit("/org/freedesktop/login1", "org.freedesktop.login1.Manager.PrepareForSleep", false)
}

// Close disconnects the fakes (their names go away).
func (s *Services) Close() {
	for _, c := range []*dbus.Conn{s.upower, s.nm, s.logind} {
		if c != nil {
			c.Close()
		}
	}
}
