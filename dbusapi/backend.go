package dbusapi

import (
	"context"
	"time"

	"github.com/heraldpush/herald/app"
)

// UnifiedPush connector interface versions a registration is served with.
const (
	// UPVersion0 is a connector of DBUS_0.1/0.2 (Register with two
	// arguments): it expects NEW_ENDPOINT and Connector1.Message(s, s, s),
	// the message as a string.
	UPVersion0 = 0
	// UPVersion1 is Connector1 of DBUS_0.3 (Message(s, ay, s)).
	UPVersion1 = 1
	// UPVersion2 is Connector2 (a{sv} methods).
	UPVersion2 = 2
)

// UPRegistration is a UnifiedPush Register call, after the caller was identified.
type UPRegistration struct {
	AppID       string // app id of the caller (from its identity), or Service when unconfined
	Service     string // connector bus name
	Token       string // connector's token, 1..100 bytes
	Description string
	VAPID       string // optional base64url P-256 public key (87 chars)
	Version     int    // UPVersion0, UPVersion1 or UPVersion2
	// Owner is who may unregister or replace the registration:
	// "<source>:<app id>" for a confined caller; "" for an unconfined one
	// (then the connection that registered it, Registrant, or the current
	// owner of Service on the bus, owns it).
	Owner string
	// Registrant is the connection that made the registration
	// ("<bus id>/<unique name>"; unique names are never reused on one bus).
	Registrant string
	// Instance is the service argument as the connector sent it when it
	// was not a bus name (Flutter's instance name, "default"); Service is
	// then the caller's own well-known name.
	Instance string
}

// Registration is one registration as the management interface shows it.
type Registration struct {
	AppID      string
	Kind       app.Kind
	Backend    app.Backend // the push service it lives on
	Endpoint   string      // full push endpoint URL
	Service    string      // UnifiedPush connector bus name
	Version    int         // UnifiedPush interface version
	Queued     int         // messages queued for the app, not yet taken
	Registered time.Time
}

// InboxEntry is one inbox message as the management interface shows it.
type InboxEntry struct {
	MsgID    string
	AppID    string
	Step     app.Step
	Received time.Time
	Size     int
}

// Status is the daemon's connection state.
type Status struct {
	State          string // offline, idle, connecting, connected, backoff
	Server         string
	LastError      string
	ConnectedSince time.Time // zero when not connected
	// Connections is every push service backend's connection.
	Connections []Connection
}

// Connection is one push service backend's connection.
type Connection struct {
	Backend        string // autopush, lomiri, ntfy
	State          string // offline, idle, connecting, connected, backoff
	Server         string
	LastError      string
	ConnectedSince time.Time // zero when not connected
}

// Backend is what the D-Bus surfaces need from the daemon. App ids passed in
// are already validated and authorized. Implementations are safe for
// concurrent use. Errors wrapping ErrNotRegistered, ErrOffline, ErrInvalid
// map to specific D-Bus errors; others to a generic failure.
type Backend interface {
	// Lomiri PushNotifications: returns the endpoint token (the last path
	// element of the endpoint URL). Idempotent per app id.
	RegisterLomiri(ctx context.Context, appID string) (token string, err error)
	UnregisterLomiri(ctx context.Context, appID string) error

	// Lomiri Postal.
	Post(ctx context.Context, appID string, payload []byte) error
	PopAll(ctx context.Context, appID string) ([]string, error)
	ListPersistent(ctx context.Context, appID string) ([]string, error)
	ClearPersistent(ctx context.Context, appID string, tags []string) (uint32, error)
	SetCounter(ctx context.Context, appID string, count int32, visible bool) error

	// UnifiedPush distributor. RegisterUnifiedPush returns the endpoint URL;
	// the Service then calls NewEndpoint on the connector.
	// RegisterUnifiedPush refuses (ErrNotOwner) to replace a registration
	// of the token whose Owner differs.
	RegisterUnifiedPush(ctx context.Context, r UPRegistration) (endpoint string, err error)
	// UnregisterUnifiedPush drops the token's registration at the app's
	// request (ErrNotRegistered when there is none).
	UnregisterUnifiedPush(ctx context.Context, token string) error
	// UnifiedPushRegistration returns the registration of a connector
	// token (ErrNotRegistered when there is none).
	UnifiedPushRegistration(ctx context.Context, token string) (UPRegistration, error)

	// Management.
	Status(ctx context.Context) Status
	Registrations(ctx context.Context) ([]Registration, error)
	Inbox(ctx context.Context, appID string) ([]InboxEntry, error)
	Counters(ctx context.Context) (map[string]uint64, error)
	Reconnect(ctx context.Context) error
}

// UPMessage is one message for a UnifiedPush connector.
type UPMessage struct {
	Service string // connector bus name (activated when not running)
	Token   string
	Version int    // 0: Connector1.Message(s, s, s); 1: Connector1.Message(s, ay, s); 2: Connector2.Message(a{sv})
	ID      string // message id passed to the app; v2 acks by echoing it
	Body    []byte // raw push body, 1..4096 bytes
}

// The daemon drives the Service (see service.go) through these methods:
//
//	New(cfg Config) (*Service, error)                 // Config{Address, Backend, Logger, RequireConfinement, ProcRoot, CallTimeout}
//	                                                  // the Service dials Address itself (it must be the connection's
//	                                                  // method handler); Config.Conn alone is rejected.
//	(*Service).Start(ctx) error                       // export objects + introspection, then request names (DoNotQueue)
//	(*Service).Close() error                          // release names, unexport
//	(*Service).EmitPost(appID string) error           // Post(s) on com.lomiri.Postal and com.ubuntu.Postal
//	(*Service).DeliverUnifiedPush(ctx, UPMessage) (acked bool, err error)
//	(*Service).NewEndpoint(ctx, service, token, endpoint string, version int) error
//	(*Service).Unregistered(ctx, service, token string, version int) error
//	(*Service).Activatable(ctx, service string) (bool, error)
//	(*Service).SetStatus(Status)                      // org.herald.Daemon1 properties + PropertiesChanged
