// Package push is the seam between heraldd's core (package client) and the
// push services it talks to: a Backend is "a push service the device holds
// one connection to" — Herald's own server or any autopush server
// (client/session), a Lomiri push service (client/lomiri), an ntfy server
// (client/ntfy). The core keeps one Backend per kind of service that has
// registrations, and a Backend hands what it receives to the core's Sink.
//
// The order of things for one message:
//
//	backend reads a message ──▶ Sink.Receive (durably in the inbox, dedup by
//	channel id + server id) ──▶ nil result ──▶ backend acks it to its server
//
// A backend never acks a message whose Receive result is not nil: the
// server sends it again (at-least-once; the core drops the duplicate).
//
// It imports no project package but app, so that every backend package and
// the core can import it.
package push

import (
	"context"
	"errors"
	"time"

	"github.com/heraldpush/herald/app"
)

// State is a backend connection's state as users see it.
type State string

// The states. A backend with no registration is idle and holds no
// connection; offline means the network is down (no dialing).
const (
	StateOffline    State = "offline"
	StateIdle       State = "idle"
	StateConnecting State = "connecting"
	StateConnected  State = "connected"
	StateBackoff    State = "backoff" // waiting before the next dial
)

// Status is one backend connection as `herald status` and org.herald.Daemon1
// show it.
type Status struct {
	Backend   app.Backend
	State     State
	Server    string    // the service's URL or address, without credentials
	Since     time.Time // when State began (connected since, for StateConnected)
	LastError string    // why the last attempt failed; "" after a success
}

// Channel is one registration as a backend sees it: a channel of one app,
// identified by the core's channel id (a lowercase dashed UUID).
type Channel struct {
	ID    string
	AppID string
	Kind  app.Kind
	VAPID string // the VAPID public key the channel is restricted to ("" none)
}

// Endpoint is what registering a channel gave: the URL app servers push to,
// and the token a Lomiri app gets from Register (for an URL endpoint, its
// last path element).
type Endpoint struct {
	URL   string
	Token string
}

// Message is one push message a backend received.
type Message struct {
	// ChannelID is the registration the message is for (for a service that
	// addresses apps instead of channels, the backend maps it).
	ChannelID string
	// ServerID is the service's id of the message (autopush version, ntfy
	// message id, Lomiri message id): with ChannelID the dedup key.
	ServerID string
	Body     []byte
	// Expires is when the message must no longer be shown (zero: never).
	Expires time.Time
}

// Batch is what a backend hands to the Sink at once.
type Batch struct {
	Backend  app.Backend
	Messages []Message
	// Draining says the server is flushing stored messages and more follow
	// at once: the core takes them in first and processes them when the
	// burst ends.
	Draining bool
	// Reconnect says the batch is part of what the server flushes right
	// after a (re)connect, a reconnect drain that may be long: the core
	// waits longer for its end before processing it.
	Reconnect bool
}

// Errors of Sink.Receive results.
var (
	// ErrUnknownChannel: no registration has the message's channel. The
	// backend acks the message (nothing would ever take it) and may tell
	// its server to drop the channel.
	ErrUnknownChannel = errors.New("no registration for the channel")
	// ErrNotStored: the message could not be stored; do not ack it.
	ErrNotStored = errors.New("message not stored")
)

// Errors of Backend.Register and Unregister.
var (
	// ErrNotConnected: the backend has no connection now (the app gets an
	// "offline" error and may retry).
	ErrNotConnected = errors.New("not connected to the push service")
	// ErrRejected: the service refused the request.
	ErrRejected = errors.New("push service refused the request")
)

// Sink is the core as a backend sees it. Its methods are safe for
// concurrent use and return quickly (Receive waits for the store's commit).
type Sink interface {
	// Receive durably stores a batch and returns one result per message:
	// nil when it is stored or a duplicate (ack it), an error wrapping
	// ErrUnknownChannel (ack it, it has no taker) or ErrNotStored (do not
	// ack it).
	Receive(ctx context.Context, b Batch) []error
	// StateChanged reports a backend's new status. It must not block.
	StateChanged(st Status)
	// LoadState and SaveState keep a backend's own durable values (a
	// catch-up id, a device id), namespaced by the backend's name.
	LoadState(ctx context.Context, b app.Backend, key string) (string, error)
	SaveState(ctx context.Context, b app.Backend, key, value string) error
}

// Backend is a push service the device holds one connection to. The core
// calls Run once; the other methods are safe for concurrent use while Run
// runs, and SetWanted/SetOnline/Reconnect never block.
type Backend interface {
	// Name is the backend's kind; the core keeps one Backend per name.
	Name() app.Backend
	// Run connects while wanted and online, keeps the connection alive
	// (keepalive, read deadline) and redials with backoff, handing received
	// messages to the Sink, until ctx ends.
	Run(ctx context.Context) error
	// SetWanted says whether any registration uses the backend: with none
	// it holds no connection.
	SetWanted(wanted bool)
	// SetOnline says whether the network is up: no dialing while offline;
	// going online (or resuming from suspend) redials at once.
	SetOnline(online bool)
	// Reconnect drops the connection and dials again at once.
	Reconnect()
	// Register asks the service for a channel and returns its endpoint. It
	// may wait for a connection up to ctx's deadline, then fails with
	// ErrNotConnected.
	Register(ctx context.Context, ch Channel) (Endpoint, error)
	// Unregister tells the service to drop a channel.
	Unregister(ctx context.Context, ch Channel) error
	// Status is the connection's current status.
	Status() Status
}
