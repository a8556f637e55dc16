package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

// Errors a Backend wraps to get a specific D-Bus error.
var (
	// ErrNotRegistered: the app (or token) has no registration.
	ErrNotRegistered = errors.New("not registered")
	// ErrOffline: the daemon cannot reach the push server now.
	ErrOffline = errors.New("push server not reachable")
	// ErrInvalid: the request is invalid (bad payload, limit exceeded…).
	ErrInvalid = errors.New("invalid request")
	// ErrNotOwner: the registration belongs to another caller.
	ErrNotOwner = errors.New("registered by another app")
)

// apiError is an error with its D-Bus error name suffix, produced by the
// Service itself (validation, authorization).
type apiError struct {
	name string // suffix after "<iface>.Error."
	msg  string
}

func (e *apiError) Error() string { return e.msg }

// errorf builds an apiError; iface is ignored (the name is completed when
// the reply is written) but kept for call-site readability.
func (s *Service) errorf(_ string, name, format string, args ...any) error {
	return &apiError{name: name, msg: fmt.Sprintf(format, args...)}
}

// toDBusError maps err to "<iface>.Error.<Name>" with a short human
// message for the caller. Internal details (store errors, wrapped chains)
// stay in the log, never in the reply; only messages the Service wrote for
// the caller (validation, authorization) and what ErrInvalid says about the
// caller's own input reach it.
func (s *Service) toDBusError(ifaceName string, err error) *dbus.Error {
	var de *dbus.Error
	if errors.As(err, &de) {
		return de
	}
	var name, msg string
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		name, msg = ae.name, ae.msg
	case errors.Is(err, app.ErrInvalidID):
		name, msg = "InvalidAppID", "invalid application id"
	case errors.Is(err, ErrNotRegistered):
		name, msg = "NotRegistered", "not registered"
	case errors.Is(err, ErrOffline):
		name, msg = "Offline", "push server not reachable, try again later"
	case errors.Is(err, ErrInvalid):
		name, msg = "InvalidArgs", invalidMessage(err)
	case errors.Is(err, ErrNotOwner):
		name, msg = "AccessDenied", "registered by another app"
	case errors.Is(err, context.DeadlineExceeded):
		name, msg = "Timeout", "timed out"
	default:
		name, msg = "Failed", "internal error (the heraldd log has the details)"
		s.log.Error("D-Bus method failed", "iface", ifaceName, "err", err)
	}
	if ae == nil {
		// The handler's own "cannot <do what> <for whom>" first, then the
		// short reason.
		if what, _, ok := strings.Cut(err.Error(), ": "); ok && what != msg && !strings.HasPrefix(msg, what) {
			msg = what + ": " + msg
		}
		s.log.Debug("D-Bus method error", "iface", ifaceName, "name", name, "err", err)
	}
	if ifaceName == "" || ifaceName == introspectableIface {
		ifaceName = "org.herald.Daemon1"
	}
	return dbus.NewError(ifaceName+".Error."+name, []any{msg})
}

// invalidMessage is what an ErrInvalid error says after its sentinel: the
// reason the caller's input was refused (a limit, a field), once.
func invalidMessage(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ErrInvalid.Error()); i >= 0 {
		msg = msg[i:]
	}
	return msg
}
