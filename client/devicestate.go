package client

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/protocol"
)

// System bus services the device watcher follows.
const (
	upowerName    = "org.freedesktop.UPower"
	upowerPath    = dbus.ObjectPath("/org/freedesktop/UPower")
	upowerIface   = "org.freedesktop.UPower"
	displayDevice = dbus.ObjectPath("/org/freedesktop/UPower/devices/DisplayDevice")
	upDeviceIface = "org.freedesktop.UPower.Device"
	logindName    = "org.freedesktop.login1"
	logindPath    = dbus.ObjectPath("/org/freedesktop/login1")
	logindIface   = "org.freedesktop.login1.Manager"
	propsIface    = "org.freedesktop.DBus.Properties"
)

// NMMetered values (NetworkManager's Metered property) that mean metered.
const (
	nmMeteredYes      = 1
	nmMeteredGuessYes = 3
)

// DeviceHooks are called by WatchDevice.
type DeviceHooks struct {
	// State gets the device state at start and after every change.
	State func(config.DeviceState)
	// Resumed is called when the system resumes from suspend (logind
	// PrepareForSleep(false)).
	Resumed func()
}

// WatchDevice follows UPower (OnBattery, the display device's Percentage),
// NetworkManager (Metered) and logind (PrepareForSleep) on the system bus
// conn until ctx ends. Each service may be missing or restart: a missing
// one counts as "on power", "not metered", "no suspend". It wakes only for
// their signals: no timer.
func WatchDevice(ctx context.Context, conn *dbus.Conn, h DeviceHooks, logger *slog.Logger) error {
	rules := [][]dbus.MatchOption{
		{dbus.WithMatchSender(upowerName), dbus.WithMatchInterface(propsIface), dbus.WithMatchMember("PropertiesChanged")},
		{dbus.WithMatchSender(nmName), dbus.WithMatchObjectPath(nmPath), dbus.WithMatchInterface(propsIface), dbus.WithMatchMember("PropertiesChanged")},
		{dbus.WithMatchSender(logindName), dbus.WithMatchObjectPath(logindPath), dbus.WithMatchInterface(logindIface), dbus.WithMatchMember("PrepareForSleep")},
	}
	for _, name := range []string{upowerName, nmName, logindName} {
		rules = append(rules, []dbus.MatchOption{dbus.WithMatchSender("org.freedesktop.DBus"),
			dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, name)})
	}
	for _, r := range rules {
		if err := conn.AddMatchSignalContext(ctx, r...); err != nil {
			return fmt.Errorf("cannot watch the device state: %w", err)
		}
	}
	ch := make(chan *dbus.Signal, 32)
	conn.Signal(ch)
	defer conn.RemoveSignal(ch)

	owners := deviceOwners(ctx, conn)
	var last config.DeviceState
	report := func(force bool) {
		st := readDeviceState(ctx, conn, owners)
		if force || st != last {
			last = st
			logger.Debug("device state", "on_battery", st.OnBattery, "percentage", st.Percentage, "metered", st.Metered)
			if h.State != nil {
				h.State(st)
			}
		}
	}
	report(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig, ok := <-ch:
			if !ok {
				return nil
			}
			switch {
			case sig.Name == "org.freedesktop.DBus.NameOwnerChanged":
				if len(sig.Body) != 3 {
					continue
				}
				name, _ := sig.Body[0].(string)
				owner, _ := sig.Body[2].(string)
				if _, watched := map[string]bool{upowerName: true, nmName: true, logindName: true}[name]; !watched {
					continue
				}
				if owner == "" {
					delete(owners, name)
				} else {
					owners[name] = owner
				}
				report(false)
			case sig.Name == propsIface+".PropertiesChanged":
				if sig.Sender != owners[upowerName] && sig.Sender != owners[nmName] {
					continue
				}
				report(false)
			case sig.Name == logindIface+".PrepareForSleep":
				if sig.Sender != owners[logindName] || sig.Path != logindPath || len(sig.Body) != 1 {
					continue
				}
				if sleeping, ok := sig.Body[0].(bool); ok && !sleeping {
					logger.Info("resumed from suspend: checking connections")
					if h.Resumed != nil {
						h.Resumed()
					}
				}
			}
		}
	}
}

// deviceOwners returns the unique names of the watched services running.
func deviceOwners(ctx context.Context, conn *dbus.Conn) map[string]string {
	owners := map[string]string{}
	for _, name := range []string{upowerName, nmName, logindName} {
		var owner string
		if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, name).Store(&owner); err == nil {
			owners[name] = owner
		}
	}
	return owners
}

// ReadDeviceState reads the device state once (heraldd does at start, so
// that its first connection already states the wanted urgency).
func ReadDeviceState(ctx context.Context, conn *dbus.Conn) config.DeviceState {
	return readDeviceState(ctx, conn, deviceOwners(ctx, conn))
}

// readDeviceState reads the properties of the services that are running.
func readDeviceState(ctx context.Context, conn *dbus.Conn, owners map[string]string) config.DeviceState {
	var st config.DeviceState
	get := func(name string, path dbus.ObjectPath, prop string) (dbus.Variant, bool) {
		if owners[name] == "" {
			return dbus.Variant{}, false
		}
		var v dbus.Variant
		err := conn.Object(name, path).CallWithContext(ctx, propsIface+".Get", 0, prop[:lastDot(prop)], prop[lastDot(prop)+1:]).Store(&v)
		return v, err == nil
	}
	if v, ok := get(upowerName, upowerPath, upowerIface+".OnBattery"); ok {
		st.OnBattery, _ = v.Value().(bool)
	}
	if v, ok := get(upowerName, displayDevice, upDeviceIface+".Percentage"); ok {
		st.Percentage, _ = v.Value().(float64)
	}
	if !st.OnBattery {
		st.Percentage = 0 // not looked at on power; keeps the state stable while charging
	}
	if v, ok := get(nmName, nmPath, nmIface+".Metered"); ok {
		m, _ := v.Value().(uint32)
		st.Metered = m == nmMeteredYes || m == nmMeteredGuessYes
	}
	return st
}

func lastDot(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' {
			return i
		}
	}
	return 0
}

// Optional abilities of a push.Backend (the autopush backend has all three).
type (
	// urgencySetter tells its server the lowest urgency the device wants.
	urgencySetter interface{ SetUrgency(u string) }
	// checker checks its connection at once (a ping with a short deadline,
	// then a new connection if it is dead).
	checker interface{ Check() }
	// appAcker reports messages their apps have taken.
	appAcker interface {
		AppAck(updates []protocol.Update)
	}
)

// SetUrgency says the lowest urgency the device wants now; servers that
// support the extension hold the lower ones.
func (d *Daemon) SetUrgency(u string) {
	for _, b := range d.backends {
		if us, ok := b.(urgencySetter); ok {
			us.SetUrgency(u)
		}
	}
}

// Resumed checks every connection at once after a resume from suspend: a
// backend that cannot check its connection reconnects.
func (d *Daemon) Resumed() {
	for _, b := range d.backends {
		if c, ok := b.(checker); ok {
			c.Check()
		} else {
			b.Reconnect()
		}
	}
}

// appTook reports messages their apps have taken (a Lomiri PopAll, an
// acknowledged Connector2 Message) to the push service of each, for the app
// server's "read" receipt. Only backends that can (autopush, and only to a
// server that supports the extension) get it.
func (d *Daemon) appTook(refs []store.Ref) {
	by := map[app.Backend][]protocol.Update{}
	for _, r := range refs {
		reg, ok := d.regByChannel(r.ChannelID)
		if !ok || r.Version == "" {
			continue
		}
		by[reg.Backend] = append(by[reg.Backend], protocol.Update{ChannelID: r.ChannelID, Version: r.Version})
	}
	for name, us := range by {
		if a, ok := d.backends[name].(appAcker); ok {
			a.AppAck(us)
		}
	}
}

func (a *autopush) SetUrgency(u string)              { a.sess.SetUrgency(u) }
func (a *autopush) Check()                           { a.sess.Check() }
func (a *autopush) AppAck(updates []protocol.Update) { a.sess.AppAck(updates) }
