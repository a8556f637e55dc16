package dbusapi

import (
	"context"
	"fmt"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

const propertiesIface = "org.freedesktop.DBus.Properties"

func (s *Service) daemonIface() *iface {
	return newIface(DaemonIface,
		&member{name: "ListRegistrations", in: []string{""}, out: "aa{sv}", handle: func(ctx context.Context, c *call) ([]any, error) {
			if err := s.authorizeAdmin(ctx, c); err != nil {
				return nil, err
			}
			regs, err := s.backend.Registrations(ctx)
			if err != nil {
				return nil, fmt.Errorf("cannot list registrations: %w", err)
			}
			out := make([]map[string]dbus.Variant, 0, len(regs))
			for _, r := range regs {
				out = append(out, map[string]dbus.Variant{
					"app_id":     dbus.MakeVariant(r.AppID),
					"kind":       dbus.MakeVariant(string(r.Kind)),
					"backend":    dbus.MakeVariant(string(r.Backend)),
					"endpoint":   dbus.MakeVariant(r.Endpoint),
					"service":    dbus.MakeVariant(r.Service),
					"version":    dbus.MakeVariant(int32(r.Version)),
					"queued":     dbus.MakeVariant(int32(r.Queued)),
					"registered": dbus.MakeVariant(unixOrZero(r.Registered)),
				})
			}
			return []any{out}, nil
		}},
		&member{name: "Inbox", in: []string{"s"}, out: "aa{sv}", handle: func(ctx context.Context, c *call) ([]any, error) {
			if err := s.authorizeAdmin(ctx, c); err != nil {
				return nil, err
			}
			appID, _ := c.args[0].(string)
			if appID != "" {
				norm, err := app.NormalizeID(appID)
				if err != nil {
					return nil, s.errorf(c.iface, "InvalidAppID", "invalid application id %q", truncate(appID, 80))
				}
				appID = norm
			}
			entries, err := s.backend.Inbox(ctx, appID)
			if err != nil {
				return nil, fmt.Errorf("cannot read inbox: %w", err)
			}
			out := make([]map[string]dbus.Variant, 0, len(entries))
			for _, e := range entries {
				out = append(out, map[string]dbus.Variant{
					"msg_id":   dbus.MakeVariant(e.MsgID),
					"app_id":   dbus.MakeVariant(e.AppID),
					"step":     dbus.MakeVariant(string(e.Step)),
					"received": dbus.MakeVariant(unixOrZero(e.Received)),
					"size":     dbus.MakeVariant(int32(e.Size)),
				})
			}
			return []any{out}, nil
		}},
		&member{name: "Counters", in: []string{""}, out: "a{st}", handle: func(ctx context.Context, c *call) ([]any, error) {
			if err := s.authorizeAdmin(ctx, c); err != nil {
				return nil, err
			}
			counters, err := s.backend.Counters(ctx)
			if err != nil {
				return nil, fmt.Errorf("cannot read counters: %w", err)
			}
			if counters == nil {
				counters = map[string]uint64{}
			}
			return []any{counters}, nil
		}},
		&member{name: "ListConnections", in: []string{""}, out: "aa{sv}", handle: func(ctx context.Context, c *call) ([]any, error) {
			if err := s.authorizeAdmin(ctx, c); err != nil {
				return nil, err
			}
			st := s.backend.Status(ctx)
			out := make([]map[string]dbus.Variant, 0, len(st.Connections))
			for _, cn := range st.Connections {
				out = append(out, map[string]dbus.Variant{
					"backend":         dbus.MakeVariant(cn.Backend),
					"state":           dbus.MakeVariant(cn.State),
					"server":          dbus.MakeVariant(cn.Server),
					"last_error":      dbus.MakeVariant(cn.LastError),
					"connected_since": dbus.MakeVariant(unixOrZero(cn.ConnectedSince)),
				})
			}
			return []any{out}, nil
		}},
		&member{name: "Reconnect", in: []string{""}, handle: func(ctx context.Context, c *call) ([]any, error) {
			if err := s.authorizeAdmin(ctx, c); err != nil {
				return nil, err
			}
			if err := s.backend.Reconnect(ctx); err != nil {
				return nil, fmt.Errorf("cannot reconnect: %w", err)
			}
			return nil, nil
		}},
	)
}

func unixOrZero(t interface {
	IsZero() bool
	Unix() int64
}) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func statusProps(st Status) map[string]dbus.Variant {
	return map[string]dbus.Variant{
		"State":          dbus.MakeVariant(st.State),
		"Server":         dbus.MakeVariant(st.Server),
		"LastError":      dbus.MakeVariant(st.LastError),
		"ConnectedSince": dbus.MakeVariant(unixOrZero(st.ConnectedSince)),
	}
}

func (s *Service) currentProps() map[string]dbus.Variant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return statusProps(s.status)
}

func (s *Service) propertiesIface() *iface {
	checkIface := func(name string) error {
		if name != DaemonIface {
			return dbus.NewError("org.freedesktop.DBus.Error.UnknownInterface", []any{fmt.Sprintf("no properties on interface %q", name)})
		}
		return nil
	}
	return newIface(propertiesIface,
		&member{name: "Get", in: []string{"ss"}, out: "v", handle: func(ctx context.Context, c *call) ([]any, error) {
			if err := s.authorizeAdmin(ctx, c); err != nil {
				return nil, err
			}
			name, _ := c.args[0].(string)
			prop, _ := c.args[1].(string)
			if err := checkIface(name); err != nil {
				return nil, err
			}
			v, ok := s.currentProps()[prop]
			if !ok {
				return nil, dbus.NewError("org.freedesktop.DBus.Error.UnknownProperty", []any{fmt.Sprintf("no property %q on %s", prop, name)})
			}
			return []any{v}, nil
		}},
		&member{name: "GetAll", in: []string{"s"}, out: "a{sv}", handle: func(ctx context.Context, c *call) ([]any, error) {
			if err := s.authorizeAdmin(ctx, c); err != nil {
				return nil, err
			}
			name, _ := c.args[0].(string)
			if err := checkIface(name); err != nil {
				return nil, err
			}
			return []any{s.currentProps()}, nil
		}},
		&member{name: "Set", in: []string{"ssv"}, handle: func(ctx context.Context, c *call) ([]any, error) {
			name, _ := c.args[0].(string)
			prop, _ := c.args[1].(string)
			return nil, dbus.NewError("org.freedesktop.DBus.Error.PropertyReadOnly", []any{fmt.Sprintf("property %q of %s is read-only", prop, name)})
		}},
	)
}

// SetStatus updates the org.herald.Daemon1 properties and emits
// PropertiesChanged with the properties that changed.
func (s *Service) SetStatus(st Status) {
	s.mu.Lock()
	old := statusProps(s.status)
	s.status = st
	conn := s.conn
	if s.closed {
		conn = nil
	}
	s.mu.Unlock()
	changed := map[string]dbus.Variant{}
	for k, v := range statusProps(st) {
		if old[k].Value() != v.Value() {
			changed[k] = v
		}
	}
	if len(changed) == 0 || conn == nil {
		return
	}
	if err := conn.Emit(DaemonPath, propertiesIface+".PropertiesChanged", DaemonIface, changed, []string{}); err != nil {
		s.log.Warn("cannot emit PropertiesChanged", "err", err)
	}
}
