package dbusapi

import (
	"context"
	"errors"
	"fmt"

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

// toDBusError maps err to "<iface>.Error.<Name>" with a human message.
func (s *Service) toDBusError(ifaceName string, err error) *dbus.Error {
	var de *dbus.Error
	if errors.As(err, &de) {
		return de
	}
	name, msg := "Failed", err.Error()
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		name = ae.name
	case errors.Is(err, app.ErrInvalidID):
		name = "InvalidAppID"
	case errors.Is(err, ErrNotRegistered):
		name = "NotRegistered"
	case errors.Is(err, ErrOffline):
		name = "Offline"
	case errors.Is(err, ErrInvalid):
		name = "InvalidArgs"
	case errors.Is(err, ErrNotOwner):
		name = "AccessDenied"
	case errors.Is(err, context.DeadlineExceeded):
		name = "Timeout"
	default:
		s.log.Error("D-Bus method failed", "iface", ifaceName, "err", err)
	}
	if ifaceName == "" || ifaceName == introspectableIface {
		ifaceName = "org.herald.Daemon1"
	}
	return dbus.NewError(ifaceName+".Error."+name, []any{msg})
}
