package server

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"sync/atomic"
	"time"
)

// metaNodeSecret is the key of the node secret in a store's meta table.
const metaNodeSecret = "node_secret"

// newNodeSecret returns 256 random bits, base64url.
func newNodeSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Errors a Store returns that the server branches on.
var (
	// ErrNotFound is returned for an unknown token, device or message.
	ErrNotFound = errors.New("not found")
	// ErrConflict is returned when a channel is registered again with another key.
	ErrConflict = errors.New("channel already registered with another key")
	// ErrTooManyPending is returned by Put when PutOptions.RejectAt is
	// reached, possibly wrapped in a *PendingLimitError.
	ErrTooManyPending = errors.New("too many pending messages")
	// ErrClosed is returned after the store has been closed.
	ErrClosed = errors.New("store closed")
	// ErrTooManyChannels is returned by Register when the device already has
	// the most channels allowed.
	ErrTooManyChannels = errors.New("too many channels on this device")
)

// PendingLimitError is the ErrTooManyPending of a Put that can say which
// message is the channel's newest pending one (Lomiri /notify shows its
// data as "extra").
type PendingLimitError struct {
	Last []byte // data of the newest unexpired pending message of the channel
}

func (e *PendingLimitError) Error() string { return ErrTooManyPending.Error() }
func (e *PendingLimitError) Unwrap() error { return ErrTooManyPending }

// LomiriUAIDPrefix starts the UAID under which a Lomiri device's channels and
// messages are stored: "L:" + its device id. Autopush uaids are 32 hex
// digits, so the two never meet. A Lomiri channel's ChannelID is the app id
// the device registered, its Token the random token /register returned.
const LomiriUAIDPrefix = "L:"

// Broadcast is one payload of a Lomiri broadcast channel.
type Broadcast struct {
	Level  int64 // 1, 2, …: the channel's level once this payload is seen
	Data   []byte
	Expiry time.Time
}

// Channel is one registration: an endpoint token mapped to a device channel.
type Channel struct {
	Token     string
	UAID      string
	ChannelID string
	// Key is the VAPID public key (65-byte point) of a restricted channel, else nil.
	Key []byte
}

// Message is one stored push message.
type Message struct {
	// Seq orders the messages of the store; it grows with every Put and is 0 for
	// messages that were never stored (TTL 0).
	Seq       int64
	ID        string // message id, used in Location: /m/<id>
	UAID      string
	ChannelID string
	// Version is what the device sees as "version": the ID, or N for SimplePush.
	Version string
	Topic   string
	Data    []byte
	Headers map[string]string
	Expiry  time.Time
	// Attempts is how often the message was sent to the device in a batch of
	// stored messages (see Store.Attempted); Pending fills it in.
	Attempts int
	// Urgency is the RFC 8030 urgency ("" means normal). A device that asked
	// for a higher minimum (extension "urgency") is not sent the message
	// until it lowers its minimum; it stays stored meanwhile.
	Urgency string
	// Receipt is the id of the receipt subscription the app server asked
	// receipts on (RFC 8030 §5.1), "" for none.
	Receipt string
}

// Ref names a message acknowledged by a device.
type Ref struct {
	ChannelID string
	Version   string
}

// PutOptions says how Put treats the messages already pending on the channel.
type PutOptions struct {
	// ClearPending removes every pending message of the channel first.
	ClearPending bool
	// Replace removes pending messages of the channel with the same Topic.
	Replace bool
	// KeepNewerVersion keeps a pending message with the same Topic whose
	// numeric Version is not older, and then drops the new message (SimplePush).
	KeepNewerVersion bool
	// RejectAt > 0 fails with ErrTooManyPending when the channel already has this
	// many unexpired pending messages (after Clear and Replace).
	RejectAt int
	// DropOver > 0 drops the oldest messages of the channel beyond this many.
	DropOver int
	// Acked, when not nil, tells whether the device has acknowledged the
	// message already: it was written to the device while being stored. A
	// store that finds it true just before it would write the message does
	// not write it (the device's inbox holds it durably, so there is nothing
	// left to deliver) and Put returns stored false.
	Acked *atomic.Bool
}

// Route says which server node holds a device's websocket.
type Route struct {
	// Node is the base URL other nodes reach the node at (its --node-url).
	Node string
	// Conn identifies the connection on that node; a newer connection of the
	// same device has another Conn.
	Conn int64
}

// ReceiptWatch is a pushed message whose app server asked for receipts
// (RFC 8030 §5.1). It is kept from the push until the app has taken the
// message (extension "app_ack") or it expires; an undelivered one that
// expires gets a "not delivered" receipt.
type ReceiptWatch struct {
	UAID      string
	ChannelID string
	Version   string
	Sub       string // the receipt subscription
	MsgID     string // the push message resource is /m/<MsgID>
	Expiry    time.Time
	Delivered bool // the device has acknowledged it
}

// MaxWatchesPerDevice bounds the receipt watches kept for one device; a
// Watch beyond it drops the watches that expire first.
const MaxWatchesPerDevice = 1000

// Record is one exported item of a store: exactly one field is set.
type Record struct {
	Device  string // a uaid
	Channel *Channel
	Message *Message
}

// Store keeps devices, channels, pending messages and the routes of
// connected devices. SQLiteStore (one process) and PostgresStore (any number
// of server nodes) implement all of it.
type Store interface {
	// Run does the background work (writes) until ctx ends, then flushes.
	Run(ctx context.Context) error
	// HasDevice reports whether the uaid is known.
	HasDevice(ctx context.Context, uaid string) (bool, error)
	// AddDevice records a new uaid, or marks a known one as seen at now
	// (idle devices are removed by SweepDevices).
	AddDevice(ctx context.Context, uaid string, now time.Time) error
	// Register stores ch. When the (UAID, ChannelID) pair exists with the same
	// key it returns the stored channel; with another key, ErrConflict. A new
	// channel of a device that already has maxChannels channels (when > 0)
	// fails with ErrTooManyChannels.
	Register(ctx context.Context, ch Channel, maxChannels int) (Channel, error)
	// Unregister drops a channel and its pending messages; unknown is fine.
	Unregister(ctx context.Context, uaid, channelID string) error
	// Channel looks up a token; ErrNotFound when unknown.
	Channel(ctx context.Context, token string) (Channel, error)
	// Put stores m durably and sets m.Seq; it returns once committed.
	// stored is false when KeepNewerVersion dropped m.
	Put(ctx context.Context, m *Message, o PutOptions, now time.Time) (stored bool, dropped int, err error)
	// Pending returns up to limit unexpired messages of uaid with Seq > after,
	// in Seq order. Messages handed to Delete are never returned.
	Pending(ctx context.Context, uaid string, after int64, limit int, now time.Time) ([]*Message, error)
	// PendingBeyondAcks is Pending for a caller that knows that every message
	// it handed to Delete has a Seq at or below after: a store whose Delete
	// returns before its commit need not wait for it. Otherwise as Pending.
	PendingBeyondAcks(ctx context.Context, uaid string, after int64, limit int, now time.Time) ([]*Message, error)
	// Delete removes acknowledged messages. An implementation may return
	// before the deletion is durable: a crash can then redeliver them
	// (at-least-once delivery; devices dedup by version).
	Delete(ctx context.Context, uaid string, refs []Ref) error
	// Attempted counts one more delivery attempt of each message (Message.Attempts).
	// Like Delete, it may return before the change is durable.
	Attempted(ctx context.Context, uaid string, refs []Ref) error
	// Cancel deletes a pending message by id; ErrNotFound when absent.
	Cancel(ctx context.Context, id string) error
	// Sweep deletes expired messages and returns how many. With several
	// nodes on one store, one node sweeps at a time: the others return 0.
	Sweep(ctx context.Context, now time.Time) (int, error)

	// ClaimRoute makes r the route of uaid (a device connected to r.Node)
	// and returns the route it replaced, the zero Route if there was none.
	ClaimRoute(ctx context.Context, uaid string, r Route) (prev Route, err error)
	// Route returns the route of uaid; ErrNotFound when it has none.
	Route(ctx context.Context, uaid string) (Route, error)
	// ClearRoute removes the route of uaid if it is still r.
	ClearRoute(ctx context.Context, uaid string, r Route) error
	// ClearNode removes every route to node and returns how many.
	ClearNode(ctx context.Context, node string) (int, error)
	// Nodes returns the nodes that routes name (those holding a device).
	Nodes(ctx context.Context) ([]string, error)
	// NodeSecret returns the secret that nodes authenticate their calls to
	// each other with, made on first use and then the same for every node.
	NodeSecret(ctx context.Context) (string, error)

	// Export calls fn with every device, then every channel, then every
	// message unexpired at now in Seq order.
	Export(ctx context.Context, now time.Time, fn func(Record) error) error
	// Import adds records as Export gives them (devices and channels before
	// the messages that use them); existing devices and channels are kept.
	// Messages get new Seqs in the order given.
	Import(ctx context.Context, recs []Record) error

	// Watch records w, replacing a watch of the same (UAID, ChannelID,
	// Version), and keeps at most MaxWatchesPerDevice of the device.
	Watch(ctx context.Context, w ReceiptWatch) error
	// TakeWatches deletes and returns the watches of refs of uaid.
	TakeWatches(ctx context.Context, uaid string, refs []Ref) ([]ReceiptWatch, error)
	// SweepWatches deletes the watches that expire at or before now and
	// returns those not delivered.
	SweepWatches(ctx context.Context, now time.Time) ([]ReceiptWatch, error)

	// PutBroadcast stores data as the next level of a Lomiri broadcast
	// channel, keeps the newest keep payloads of it, and returns the level.
	PutBroadcast(ctx context.Context, channel string, data []byte, expiry time.Time, keep int) (int64, error)
	// Broadcasts returns the channel's top level (0 when it never had a
	// payload) and its unexpired payloads, oldest first.
	Broadcasts(ctx context.Context, channel string, now time.Time) (top int64, payloads []Broadcast, err error)

	// IdleDevices returns up to limit uaids last seen (AddDevice) before idleSince.
	IdleDevices(ctx context.Context, idleSince time.Time, limit int) ([]string, error)
	// DeleteDevices deletes those of uaids still last seen before idleSince,
	// with their channels and messages, and returns how many.
	DeleteDevices(ctx context.Context, uaids []string, idleSince time.Time) (int, error)
	// Close releases the store; call it after Run has returned.
	Close() error
}
