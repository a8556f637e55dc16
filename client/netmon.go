package client

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/godbus/dbus/v5"
)

// NetworkManager names.
const (
	nmName  = "org.freedesktop.NetworkManager"
	nmPath  = dbus.ObjectPath("/org/freedesktop/NetworkManager")
	nmIface = "org.freedesktop.NetworkManager"
)

// nmOnline reports whether a NetworkManager state (NMState) means that a
// server may be reachable: connected locally, to a site, or globally, or
// unknown (0: NetworkManager cannot tell, so do not block dialing).
func nmOnline(state uint32) bool {
	return state == 0 || state >= 50
}

// nmGoneGrace is how long the last network state is kept after
// NetworkManager left the bus (a restart is brief); then the network is
// assumed up, as when NetworkManager is not installed.
const nmGoneGrace = 30 * time.Second

// nmCallTimeout bounds the State read after NetworkManager appears.
const nmCallTimeout = 5 * time.Second

// WatchNetwork follows NetworkManager's State on the system bus conn and
// calls setOnline on every change, until ctx ends. It follows
// NetworkManager across restarts: the owner of its bus name is tracked with
// NameOwnerChanged, StateChanged is accepted only from the current owner,
// and a new owner's State is read at once. While NetworkManager is not
// running the daemon stays online (no call), except that after it stopped
// the last state is kept for nmGoneGrace.
func WatchNetwork(ctx context.Context, conn *dbus.Conn, setOnline func(bool), logger *slog.Logger) error {
	if err := conn.AddMatchSignalContext(ctx,
		dbus.WithMatchSender(nmName), dbus.WithMatchObjectPath(nmPath),
		dbus.WithMatchInterface(nmIface), dbus.WithMatchMember("StateChanged")); err != nil {
		return fmt.Errorf("cannot watch NetworkManager: %w", err)
	}
	if err := conn.AddMatchSignalContext(ctx,
		dbus.WithMatchSender("org.freedesktop.DBus"), dbus.WithMatchInterface("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, nmName)); err != nil {
		return fmt.Errorf("cannot watch NetworkManager: %w", err)
	}
	ch := make(chan *dbus.Signal, 16)
	conn.Signal(ch)
	defer conn.RemoveSignal(ch)

	// readState reads the State of the current owner and reports it.
	readState := func() {
		cctx, cancel := context.WithTimeout(ctx, nmCallTimeout)
		defer cancel()
		var v dbus.Variant
		err := conn.Object(nmName, nmPath).CallWithContext(cctx, "org.freedesktop.DBus.Properties.Get", 0, nmIface, "State").Store(&v)
		if err != nil {
			logger.Warn("cannot read NetworkManager state; waiting for its StateChanged", "err", err)
			return
		}
		if st, ok := v.Value().(uint32); ok {
			logger.Info("network state", "state", st, "online", nmOnline(st))
			setOnline(nmOnline(st))
		}
	}

	var owner string
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, nmName).Store(&owner); err != nil {
		logger.Info("NetworkManager not running; assuming the network is up until it starts")
		owner = ""
	} else {
		readState()
	}
	grace := time.NewTimer(nmGoneGrace)
	grace.Stop()
	defer grace.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-grace.C:
			logger.Info("NetworkManager did not come back; assuming the network is up")
			setOnline(true)
		case sig, ok := <-ch:
			if !ok {
				return nil
			}
			switch {
			case sig.Name == "org.freedesktop.DBus.NameOwnerChanged" && sig.Sender == "org.freedesktop.DBus" && len(sig.Body) == 3:
				name, _ := sig.Body[0].(string)
				newOwner, ok := sig.Body[2].(string)
				if name != nmName || !ok {
					continue
				}
				owner = newOwner
				if owner == "" {
					logger.Info("NetworkManager left the bus; keeping the last network state", "grace", nmGoneGrace)
					grace.Reset(nmGoneGrace)
					continue
				}
				grace.Stop()
				logger.Info("NetworkManager started")
				readState()
			case sig.Name == nmIface+".StateChanged" && sig.Path == nmPath && sig.Sender == owner && owner != "" && len(sig.Body) == 1:
				st, ok := sig.Body[0].(uint32)
				if !ok {
					continue
				}
				logger.Info("network state changed", "state", st, "online", nmOnline(st))
				setOnline(nmOnline(st))
			}
		}
	}
}
