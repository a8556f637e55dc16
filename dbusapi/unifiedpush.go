package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

// UnifiedPush limits and result strings (DBUS_0.3.0 and v2).
const (
	MaxUPToken       = 100
	MaxUPDescription = 100
	MaxUPMessage     = 4096
	UPVAPIDLen       = 87

	upSucceeded   = "REGISTRATION_SUCCEEDED"
	upNewEndpoint = "NEW_ENDPOINT" // pre-0.3 connectors (Register with 2 args)
	upFailed      = "REGISTRATION_FAILED"

	ReasonInternal       = "INTERNAL_ERROR"
	ReasonNetwork        = "NETWORK"
	ReasonActionRequired = "ACTION_REQUIRED"
	ReasonVAPIDRequired  = "VAPID_REQUIRED"
	ReasonUnauthorized   = "UNAUTHORIZED"
)

// More Backend errors with a UnifiedPush failure reason of their own.
var (
	ErrVAPIDRequired = errors.New("vapid key required")
)

// upReasonText is what a connector is told for each failure reason; the
// details stay in the log.
var upReasonText = map[string]string{
	ReasonInternal:      "internal error (the heraldd log has the details)",
	ReasonNetwork:       "push server not reachable, try again later",
	ReasonVAPIDRequired: "the push server requires a VAPID key",
	ReasonUnauthorized:  "registered by another app",
}

// upFailure is a failed registration with its spec reason.
type upFailure struct {
	reason string
	msg    string
}

func (f *upFailure) Error() string { return f.msg }

func failUP(reason, format string, args ...any) *upFailure {
	return &upFailure{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// ValidVAPIDKey reports whether k looks like an uncompressed P-256 public
// key in unpadded base64url: 87 characters of the base64url alphabet,
// starting with "B" (the 0x04 prefix byte).
func ValidVAPIDKey(k string) bool {
	if len(k) != UPVAPIDLen || k[0] != 'B' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// checkUPRegistration validates the connector's parameters.
func checkUPRegistration(r UPRegistration) error {
	switch {
	case !app.ValidBusName(r.Service):
		return failUP(ReasonInternal, "invalid service name %q", truncate(r.Service, 80))
	case r.Token == "" || len(r.Token) > MaxUPToken || !utf8.ValidString(r.Token):
		return failUP(ReasonInternal, "token must be 1 to %d bytes of UTF-8, got %d bytes", MaxUPToken, len(r.Token))
	case len(r.Description) > MaxUPDescription || !utf8.ValidString(r.Description):
		return failUP(ReasonInternal, "description must be at most %d bytes of UTF-8, got %d bytes", MaxUPDescription, len(r.Description))
	case r.VAPID != "" && !ValidVAPIDKey(r.VAPID):
		return failUP(ReasonInternal, "vapid key must be an uncompressed P-256 point in base64url (%d characters)", UPVAPIDLen)
	}
	return nil
}

// ownerKey is the Owner recorded for a registration made by id.
func ownerKey(id Identity) string {
	if !id.Confined {
		return ""
	}
	return string(id.Source) + ":" + id.AppID
}

// nameOwner returns the unique name owning a well-known name ("" when none).
func (s *Service) nameOwner(ctx context.Context, name string) string {
	conn, err := s.getConn()
	if err != nil {
		return ""
	}
	var owner string
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, name).Store(&owner); err != nil {
		return ""
	}
	return owner
}

// maxNamesScanned bounds the names looked at to find a caller's own names.
const maxNamesScanned = 4096

// namesOf returns the well-known names the unique name sender owns, sorted.
func (s *Service) namesOf(ctx context.Context, sender string) ([]string, error) {
	conn, err := s.getConn()
	if err != nil {
		return nil, err
	}
	var names []string
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.ListNames", 0).Store(&names); err != nil {
		return nil, fmt.Errorf("cannot list bus names: %w", err)
	}
	var own []string
	for i, n := range names {
		if i >= maxNamesScanned {
			break
		}
		if strings.HasPrefix(n, ":") || n == "org.freedesktop.DBus" {
			continue
		}
		if s.nameOwner(ctx, n) == sender {
			own = append(own, n)
		}
	}
	slices.Sort(own)
	return own, nil
}

// ownService picks the caller's own well-known name for a registration
// whose service argument is not a bus name: one matching its app id first,
// else the first of its names.
func (s *Service) ownService(ctx context.Context, sender string, id Identity) (string, error) {
	names, err := s.namesOf(ctx, sender)
	if err != nil {
		return "", err
	}
	if len(names) == 0 {
		return "", errors.New("the caller owns no well-known bus name to call back")
	}
	if id.AppID != "" {
		for _, n := range names {
			if n == id.AppID || strings.HasPrefix(n, id.AppID+".") {
				return n, nil
			}
		}
	}
	return names[0], nil
}

// mayNameService reports whether a confined caller may register service:
// a name it owns on the bus now (the bus policy of its sandbox decides
// which it may own), its own app id, or for Flatpak a name below its app
// id (Flatpak exports those).
func (s *Service) mayNameService(ctx context.Context, sender string, id Identity, service string) bool {
	switch {
	case service == id.AppID:
		return true
	case id.Source == SourceFlatpak && strings.HasPrefix(service, id.AppID+"."):
		return true
	}
	return s.nameOwner(ctx, service) == sender
}

// registrant names the connection sender for as long as the bus lives:
// "<bus id>/<unique name>" ("" when the bus id is unknown).
func (s *Service) registrant(ctx context.Context, sender string) string {
	s.mu.Lock()
	id := s.busID
	s.mu.Unlock()
	if id == "" {
		conn, err := s.getConn()
		if err != nil {
			return ""
		}
		if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetId", 0).Store(&id); err != nil || id == "" {
			return ""
		}
		s.mu.Lock()
		s.busID = id
		s.mu.Unlock()
	}
	return id + "/" + sender
}

// ownsUP reports whether the caller may unregister or replace ex.
func (s *Service) ownsUP(ctx context.Context, sender string, id Identity, ex UPRegistration) bool {
	if ex.Owner != "" || id.Confined {
		return id.Confined && ownerKey(id) == ex.Owner
	}
	if ex.Registrant != "" && ex.Registrant == s.registrant(ctx, sender) {
		return true
	}
	return s.nameOwner(ctx, ex.Service) == sender
}

// authorizeUP identifies the caller of a distributor method and applies
// the rules that hold for every method.
func (s *Service) authorizeUP(ctx context.Context, c *call) (Identity, error) {
	id, err := s.callerIdentity(ctx, c.sender)
	if err != nil {
		return Identity{}, failUP(ReasonInternal, "cannot identify caller: %v", err)
	}
	if err := s.sameUser(c.iface, id); err != nil {
		return Identity{}, err
	}
	switch {
	case id.Confined && id.AppID == "":
		return Identity{}, failUP(ReasonUnauthorized, "%s may not use push notifications", id)
	case !id.Confined && s.cfg.RequireConfinement:
		return Identity{}, failUP(ReasonUnauthorized, "%s refused, only confined apps are accepted (require_confinement)", id)
	}
	return id, nil
}

// registerUP runs one Register call (either interface version) and returns
// the endpoint; errors are *upFailure or AccessDenied.
func (s *Service) registerUP(ctx context.Context, c *call, r UPRegistration) (string, error) {
	id, err := s.authorizeUP(ctx, c)
	if err != nil {
		return "", err
	}
	if !app.ValidBusName(r.Service) {
		// Flutter's connector sends its instance name ("default"): call
		// back the caller's own well-known name, and keep both.
		if r.Service == "" || len(r.Service) > 255 || !utf8.ValidString(r.Service) {
			return "", failUP(ReasonInternal, "invalid service name %q", truncate(r.Service, 80))
		}
		own, err := s.ownService(ctx, c.sender, id)
		if err != nil {
			return "", failUP(ReasonInternal, "service %q is not a bus name and %v", truncate(r.Service, 80), err)
		}
		r.Instance, r.Service = r.Service, own
	}
	if err := checkUPRegistration(r); err != nil {
		return "", err
	}
	if id.Confined && !s.mayNameService(ctx, c.sender, id, r.Service) {
		return "", failUP(ReasonUnauthorized, "%s may not register service %q", id, r.Service)
	}
	ex, err := s.backend.UnifiedPushRegistration(ctx, r.Token)
	switch {
	case err == nil:
		if !s.ownsUP(ctx, c.sender, id, ex) {
			s.log.Warn("unifiedpush token of another app refused", "service", r.Service, "owner_service", ex.Service, "caller", id.String())
			return "", failUP(ReasonUnauthorized, "the token is registered by another app")
		}
	case errors.Is(err, ErrNotRegistered):
	default:
		return "", failUP(ReasonInternal, "cannot read registration: %v", err)
	}
	r.Owner = ownerKey(id)
	r.Registrant = s.registrant(ctx, c.sender)
	r.AppID = id.AppID
	if r.AppID == "" {
		r.AppID = r.Service
	}
	if _, err := app.ParseID(r.AppID); err != nil {
		return "", failUP(ReasonInternal, "service name %q is not usable as an application id", truncate(r.Service, 80))
	}
	endpoint, err := s.backend.RegisterUnifiedPush(ctx, r)
	if err != nil {
		reason := ReasonInternal
		switch {
		case errors.Is(err, ErrOffline):
			reason = ReasonNetwork
		case errors.Is(err, ErrVAPIDRequired):
			reason = ReasonVAPIDRequired
		case errors.Is(err, ErrNotOwner):
			reason = ReasonUnauthorized
		}
		s.log.Warn("unifiedpush registration failed", "app_id", r.AppID, "service", r.Service, "reason", reason, "err", err)
		return "", failUP(reason, "registration failed: %s", upReasonText[reason])
	}
	s.log.Info("app registered", "app_id", r.AppID, "kind", string(app.KindUnifiedPush), "service", r.Service, "instance", r.Instance, "version", r.Version)
	// NewEndpoint goes out once the Register reply was written.
	c.afterReply = func() { s.goNewEndpoint(r.Service, r.Token, endpoint, r.Version) }
	return endpoint, nil
}

func (s *Service) goNewEndpoint(service, token, endpoint string, version int) {
	s.wg.Go(func() {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.CallTimeout)
		defer cancel()
		if err := s.NewEndpoint(ctx, service, token, endpoint, version); err != nil {
			s.log.Warn("cannot send NewEndpoint to connector", "service", service, "err", err)
		}
	})
}

func (s *Service) distributor1Iface() *iface {
	return newIface("org.unifiedpush.Distributor1",
		&member{name: "Register", in: []string{"sss", "ss", "ssss"}, out: "ss", handle: func(ctx context.Context, c *call) ([]any, error) {
			r := UPRegistration{Version: UPVersion1}
			r.Service, _ = c.args[0].(string)
			r.Token, _ = c.args[1].(string)
			if len(c.args) == 2 {
				// DBUS_0.1/0.2: NEW_ENDPOINT, and messages as strings.
				r.Version = UPVersion0
			}
			if len(c.args) > 2 {
				r.Description, _ = c.args[2].(string)
			}
			if len(c.args) > 3 {
				r.VAPID, _ = c.args[3].(string)
			}
			_, err := s.registerUP(ctx, c, r)
			var f *upFailure
			switch {
			case errors.As(err, &f):
				return []any{upFailed, f.reason}, nil
			case err != nil:
				return nil, err
			case len(c.args) == 2:
				return []any{upNewEndpoint, ""}, nil
			}
			return []any{upSucceeded, ""}, nil
		}},
		&member{name: "Unregister", in: []string{"s"}, handle: func(ctx context.Context, c *call) ([]any, error) {
			token, _ := c.args[0].(string)
			return nil, s.unregisterUP(ctx, c, token)
		}},
	)
}

// unregisterUP drops the caller's registration of token. An unknown token
// is success with nothing to do (the spec and KUnifiedPush answer {}); a
// token of another caller is refused.
func (s *Service) unregisterUP(ctx context.Context, c *call, token string) error {
	id, err := s.authorizeUP(ctx, c)
	var f *upFailure
	if errors.As(err, &f) {
		return s.errorf(c.iface, "AccessDenied", "access denied: %s", f.msg)
	}
	if err != nil {
		return err
	}
	if token == "" || len(token) > MaxUPToken {
		return s.errorf(c.iface, "InvalidArgs", "token must be 1 to %d bytes", MaxUPToken)
	}
	ex, err := s.backend.UnifiedPushRegistration(ctx, token)
	switch {
	case errors.Is(err, ErrNotRegistered):
		return nil
	case err != nil:
		return fmt.Errorf("cannot unregister: %w", err)
	}
	if !s.ownsUP(ctx, c.sender, id, ex) {
		s.log.Warn("unregister of another app's unifiedpush token refused", "owner_service", ex.Service, "caller", id.String())
		return s.errorf(c.iface, "AccessDenied", "access denied: the token is registered by another app")
	}
	if err := s.backend.UnregisterUnifiedPush(ctx, token); err != nil && !errors.Is(err, ErrNotRegistered) {
		return fmt.Errorf("cannot unregister: %w", err)
	}
	return nil
}

func (s *Service) distributor2Iface() *iface {
	str := func(m map[string]dbus.Variant, k string) (string, bool) {
		v, ok := m[k]
		if !ok {
			return "", true
		}
		x, ok := v.Value().(string)
		return x, ok
	}
	return newIface("org.unifiedpush.Distributor2",
		&member{name: "Register", in: []string{"a{sv}"}, out: "a{sv}", handle: func(ctx context.Context, c *call) ([]any, error) {
			args, _ := c.args[0].(map[string]dbus.Variant)
			r := UPRegistration{Version: 2}
			var ok [4]bool
			r.Service, ok[0] = str(args, "service")
			r.Token, ok[1] = str(args, "token")
			r.Description, ok[2] = str(args, "description")
			r.VAPID, ok[3] = str(args, "vapid")
			var err error
			if slices.Contains(ok[:], false) {
				err = failUP(ReasonInternal, "service, token, description and vapid must be strings")
			} else {
				_, err = s.registerUP(ctx, c, r)
			}
			var f *upFailure
			switch {
			case errors.As(err, &f):
				return []any{map[string]dbus.Variant{"success": dbus.MakeVariant(upFailed), "reason": dbus.MakeVariant(f.reason)}}, nil
			case err != nil:
				return nil, err
			}
			return []any{map[string]dbus.Variant{"success": dbus.MakeVariant(upSucceeded)}}, nil
		}},
		&member{name: "Unregister", in: []string{"a{sv}"}, out: "a{sv}", handle: func(ctx context.Context, c *call) ([]any, error) {
			args, _ := c.args[0].(map[string]dbus.Variant)
			token, ok := str(args, "token")
			if !ok {
				return nil, s.errorf(c.iface, "InvalidArgs", "token must be a string")
			}
			if err := s.unregisterUP(ctx, c, token); err != nil {
				return nil, err
			}
			return []any{map[string]dbus.Variant{}}, nil
		}},
	)
}

// ensureStarted starts service by D-Bus activation unless it is running.
func (s *Service) ensureStarted(ctx context.Context, conn *dbus.Conn, service string) error {
	var r uint32
	err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.StartServiceByName", 0, service, uint32(0)).Store(&r)
	if err == nil {
		return nil
	}
	var has bool
	if herr := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, service).Store(&has); herr == nil && has {
		return nil
	}
	return fmt.Errorf("cannot start connector %s: %w", service, err)
}

func (s *Service) connector(ctx context.Context, service string) (dbus.BusObject, error) {
	if !app.ValidBusName(service) {
		return nil, fmt.Errorf("invalid connector service name %q", service)
	}
	conn, err := s.getConn()
	if err != nil {
		return nil, err
	}
	if err := s.ensureStarted(ctx, conn, service); err != nil {
		return nil, err
	}
	return conn.Object(service, ConnectorPath), nil
}

// DeliverUnifiedPush gives one message to the app's connector, starting it
// by D-Bus activation. Versions 0 and 1 call Connector1.Message without
// waiting (acked means the call was sent; version 0 passes the message as a
// string, so a body that is not UTF-8 cannot be given to it: ErrInvalid).
// Version 2 calls Connector2.Message and acked is true for any successful
// reply that does not name another message: the echoed id, a reply with no
// values (Flutter's unifiedpush_linux) or {}. An error or a timeout is
// "not delivered".
func (s *Service) DeliverUnifiedPush(ctx context.Context, m UPMessage) (acked bool, err error) {
	if len(m.Body) < 1 || len(m.Body) > MaxUPMessage {
		return false, fmt.Errorf("%w: unifiedpush message must be 1 to %d bytes, got %d", ErrInvalid, MaxUPMessage, len(m.Body))
	}
	if m.Token == "" {
		return false, fmt.Errorf("%w: empty token", ErrInvalid)
	}
	if m.Version == UPVersion0 && (!utf8.Valid(m.Body) || slices.Contains(m.Body, 0)) {
		return false, fmt.Errorf("%w: a pre-0.3 connector takes messages as strings and this one is binary", ErrInvalid)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	obj, err := s.connector(ctx, m.Service)
	if err != nil {
		return false, err
	}
	switch m.Version {
	case UPVersion0, UPVersion1:
		var body any = m.Body
		if m.Version == UPVersion0 {
			body = string(m.Body)
		}
		call := obj.CallWithContext(ctx, "org.unifiedpush.Connector1.Message", dbus.FlagNoReplyExpected, m.Token, body, m.ID)
		if call.Err != nil {
			return false, fmt.Errorf("cannot send message to %s: %w", m.Service, call.Err)
		}
		return true, nil
	case UPVersion2:
		args := map[string]dbus.Variant{
			"token":   dbus.MakeVariant(m.Token),
			"message": dbus.MakeVariant(m.Body),
			"id":      dbus.MakeVariant(m.ID),
		}
		call := obj.CallWithContext(ctx, "org.unifiedpush.Connector2.Message", 0, args)
		if call.Err != nil {
			return false, fmt.Errorf("cannot deliver message to %s: %w", m.Service, call.Err)
		}
		if len(call.Body) == 0 {
			return true, nil // Flutter: a reply with no values
		}
		res, ok := call.Body[0].(map[string]dbus.Variant)
		if !ok {
			return true, nil // a successful reply of another shape still says "received"
		}
		if v, ok := res["id"]; ok {
			if id, _ := v.Value().(string); id != m.ID {
				return false, fmt.Errorf("connector %s answered with the id of another message", m.Service)
			}
		}
		return true, nil
	}
	return false, fmt.Errorf("%w: unknown unifiedpush version %d", ErrInvalid, m.Version)
}

// NewEndpoint tells the connector its (new) endpoint. It does not wait for
// a reply (the spec forbids it).
func (s *Service) NewEndpoint(ctx context.Context, service, token, endpoint string, version int) error {
	return s.notifyConnector(ctx, service, version, "NewEndpoint",
		[]any{token, endpoint},
		map[string]dbus.Variant{"token": dbus.MakeVariant(token), "endpoint": dbus.MakeVariant(endpoint)})
}

// Unregistered tells the connector that its registration was dropped.
func (s *Service) Unregistered(ctx context.Context, service, token string, version int) error {
	return s.notifyConnector(ctx, service, version, "Unregistered",
		[]any{token},
		map[string]dbus.Variant{"token": dbus.MakeVariant(token)})
}

func (s *Service) notifyConnector(ctx context.Context, service string, version int, member string, v1 []any, v2 map[string]dbus.Variant) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	obj, err := s.connector(ctx, service)
	if err != nil {
		return err
	}
	var call *dbus.Call
	switch version {
	case UPVersion0, UPVersion1:
		call = obj.CallWithContext(ctx, "org.unifiedpush.Connector1."+member, dbus.FlagNoReplyExpected, v1...)
	case UPVersion2:
		call = obj.CallWithContext(ctx, "org.unifiedpush.Connector2."+member, dbus.FlagNoReplyExpected, v2)
	default:
		return fmt.Errorf("unknown unifiedpush version %d", version)
	}
	if call.Err != nil {
		return fmt.Errorf("cannot call %s on %s: %w", member, service, call.Err)
	}
	return nil
}

// Activatable reports whether service can be reached: it is activatable or
// currently running.
func (s *Service) Activatable(ctx context.Context, service string) (bool, error) {
	conn, err := s.getConn()
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	var names []string
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.ListActivatableNames", 0).Store(&names); err != nil {
		return false, fmt.Errorf("cannot list activatable names: %w", err)
	}
	if slices.Contains(names, service) {
		return true, nil
	}
	var has bool
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, service).Store(&has); err != nil {
		return false, fmt.Errorf("cannot check name %s: %w", service, err)
	}
	return has, nil
}
