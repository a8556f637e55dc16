package client

import (
	"context"
	"fmt"
	"log/slog"

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

// WatchNetwork follows NetworkManager's State on the system bus conn and
// calls setOnline on every change (at once with the current state). It
// returns nil at once, leaving the daemon online, when NetworkManager is not
// running; else it returns when ctx ends.
func WatchNetwork(ctx context.Context, conn *dbus.Conn, setOnline func(bool), logger *slog.Logger) error {
	if err := conn.AddMatchSignalContext(ctx,
		dbus.WithMatchSender(nmName), dbus.WithMatchObjectPath(nmPath),
		dbus.WithMatchInterface(nmIface), dbus.WithMatchMember("StateChanged")); err != nil {
		return fmt.Errorf("cannot watch NetworkManager: %w", err)
	}
	ch := make(chan *dbus.Signal, 16)
	conn.Signal(ch)
	defer conn.RemoveSignal(ch)

	var owner string
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, nmName).Store(&owner); err != nil {
		logger.Info("NetworkManager not running; assuming the network is up")
		return nil
	}
	v, err := conn.Object(nmName, nmPath).GetProperty(nmIface + ".State")
	if err != nil {
		logger.Warn("cannot read NetworkManager state; assuming the network is up", "err", err)
		return nil
	}
	state, _ := v.Value().(uint32)
	setOnline(nmOnline(state))
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig, ok := <-ch:
			if !ok {
				return nil
			}
			if sig.Name != nmIface+".StateChanged" || sig.Path != nmPath || sig.Sender != owner || len(sig.Body) != 1 {
				continue
			}
			st, ok := sig.Body[0].(uint32)
			if !ok {
				continue
			}
			logger.Info("network state changed", "state", st, "online", nmOnline(st))
			setOnline(nmOnline(st))
		}
	}
}
