package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

// Bus names the Service owns; the management name last, so that its owner
// change says every name is owned.
var busNames = []string{
	"com.lomiri.PushNotifications",
	"com.lomiri.Postal",
	"com.ubuntu.PushNotifications",
	"com.ubuntu.Postal",
	DistributorName,
	DaemonName,
}

const (
	// DistributorName is the UnifiedPush distributor bus name.
	DistributorName = "org.unifiedpush.Distributor.herald"
	// DaemonName is the management bus name.
	DaemonName = "org.herald.Daemon"
	// DaemonPath is the management object.
	DaemonPath = dbus.ObjectPath("/org/herald/Daemon")
	// DaemonIface is the management interface.
	DaemonIface = "org.herald.Daemon1"
	// DistributorPath is the UnifiedPush distributor object.
	DistributorPath = dbus.ObjectPath("/org/unifiedpush/Distributor")
	// ConnectorPath is where connectors (apps) export their interface.
	ConnectorPath = dbus.ObjectPath("/org/unifiedpush/Connector")

	// DefaultCallTimeout bounds Backend calls made for one D-Bus call and
	// each call to a connector.
	DefaultCallTimeout = 10 * time.Second
)

// Config configures a Service.
type Config struct {
	// Address is the session bus address. The Service opens its own
	// connection to it in Start and closes it in Close: it must route
	// method calls itself (variadic and overloaded Lomiri/UnifiedPush
	// methods, one object per quoted package), which godbus allows only
	// for a connection created with the Service as its handler.
	Address string
	Backend Backend
	Logger  *slog.Logger
	// RequireConfinement refuses unconfined callers on the app APIs.
	RequireConfinement bool
	// ProcRoot is where caller processes are inspected ("/proc").
	ProcRoot string
	// RuntimeDir is the user's runtime directory, where flatpak writes its
	// instances (.flatpak/<instance-id>/bwrapinfo.json); "" is
	// $XDG_RUNTIME_DIR.
	RuntimeDir string
	// CallTimeout bounds each Backend call and each connector call
	// (DefaultCallTimeout when zero).
	CallTimeout time.Duration
}

// Service serves every Herald D-Bus surface on the session bus. It is safe
// for concurrent use.
type Service struct {
	cfg     Config
	log     *slog.Logger
	backend Backend
	uid     uint32
	// objects is built by New and never changed.
	objects map[string]*object

	ctx    context.Context // canceled by Close; parent of handler contexts
	cancel context.CancelFunc
	wg     sync.WaitGroup // signal loop and async connector calls

	mu sync.Mutex
	// guarded by mu:
	conn    *dbus.Conn
	owned   []string
	idCache map[string]Identity // unique name → identity
	status  Status
	closed  bool
	busID   string // the bus's GetId, once asked

	// forgotten (guarded by mu), when set (tests), is called after a name's identity was
	// dropped from the cache.
	forgotten func(name string)

	lost     chan string // receives a bus name another daemon took over
	lostOnce sync.Once
}

// replaceable reports whether name is taken as upstream takes it: with
// replacement allowed both ways, so that heraldd can take over from
// lomiri-push-service (or ubuntu-push-client) and be taken over by it.
func replaceable(name string) bool {
	return strings.HasPrefix(name, "com.lomiri.") || strings.HasPrefix(name, "com.ubuntu.")
}

// Lost is closed when another daemon took over one of the Lomiri/Ubuntu bus
// names (DESIGN §6: replacement allowed); as upstream, the daemon should then
// stop.
func (s *Service) Lost() <-chan string { return s.lost }

// New checks cfg and builds a Service; it does not touch the bus.
func New(cfg Config) (*Service, error) {
	if cfg.Backend == nil {
		return nil, errors.New("dbusapi: config has no backend")
	}
	if cfg.Address == "" {
		return nil, errors.New("dbusapi: config has no bus address")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.RuntimeDir == "" {
		cfg.RuntimeDir = os.Getenv("XDG_RUNTIME_DIR")
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		cfg:     cfg,
		log:     cfg.Logger,
		backend: cfg.Backend,
		uid:     uint32(os.Getuid()),
		lost:    make(chan string, 1),
		ctx:     ctx,
		cancel:  cancel,
		idCache: map[string]Identity{},
		status:  Status{State: "offline"},
	}
	if err := s.buildObjects(); err != nil {
		cancel()
		return nil, err
	}
	return s, nil
}

// Start connects to the bus with the Service as the message handler, starts
// tracking callers, then requests every bus name with DoNotQueue. A name
// that is already owned is an error (and every name taken is released).
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.conn != nil || s.closed {
		s.mu.Unlock()
		return errors.New("dbusapi: service already started or closed")
	}
	s.mu.Unlock()
	conn, err := dbus.Connect(s.cfg.Address, dbus.WithHandler(s))
	if err != nil {
		return fmt.Errorf("cannot connect to session bus: %w", err)
	}
	if err := conn.AddMatchSignalContext(ctx,
		dbus.WithMatchSender("org.freedesktop.DBus"),
		dbus.WithMatchInterface("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged")); err != nil {
		conn.Close()
		return fmt.Errorf("cannot watch bus name owners: %w", err)
	}
	ch := make(chan *dbus.Signal, 64)
	conn.Signal(ch)
	s.mu.Lock()
	s.conn = conn
	s.mu.Unlock()
	s.wg.Go(func() { s.signalLoop(ch) })

	if st := s.backend.Status(ctx); st.State != "" {
		s.mu.Lock()
		s.status = st
		s.mu.Unlock()
	}

	// A second heraldd stops here, before it takes the Lomiri/Ubuntu names
	// (replaceable: they would be taken from the first).
	for _, name := range []string{DaemonName, DistributorName} {
		var has bool
		if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has); err != nil {
			s.Close()
			return fmt.Errorf("cannot check bus name %s: %w", name, err)
		}
		if has {
			s.Close()
			return fmt.Errorf("bus name %s is already owned by another process (is another heraldd running?)", name)
		}
	}
	for _, name := range busNames {
		flags := dbus.NameFlagDoNotQueue
		if replaceable(name) {
			flags |= dbus.NameFlagAllowReplacement | dbus.NameFlagReplaceExisting
		}
		reply, err := conn.RequestName(name, flags)
		if err != nil {
			s.Close()
			return fmt.Errorf("cannot request bus name %s: %w", name, err)
		}
		if reply != dbus.RequestNameReplyPrimaryOwner && reply != dbus.RequestNameReplyAlreadyOwner {
			s.Close()
			return fmt.Errorf("bus name %s is already owned by another process (is another push daemon running?)", name)
		}
		s.mu.Lock()
		s.owned = append(s.owned, name)
		s.mu.Unlock()
	}
	s.log.Info("D-Bus names acquired", "names", strings.Join(busNames, ","))
	return nil
}

// Close releases the bus names, ends pending calls and closes the
// connection. It is safe to call more than once.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conn, owned := s.conn, s.owned
	s.owned = nil
	s.mu.Unlock()

	var errs []error
	if conn != nil {
		for _, name := range owned {
			if _, err := conn.ReleaseName(name); err != nil {
				errs = append(errs, fmt.Errorf("cannot release bus name %s: %w", name, err))
			}
		}
	}
	s.cancel()
	if conn != nil {
		if err := conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("cannot close bus connection: %w", err))
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

func (s *Service) getConn() (*dbus.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil || s.closed {
		return nil, errors.New("dbusapi: service not started")
	}
	return s.conn, nil
}

// signalLoop drops cached identities of names that left the bus.
func (s *Service) signalLoop(ch <-chan *dbus.Signal) {
	for sig := range ch {
		if sig.Name == "org.freedesktop.DBus.NameLost" && sig.Sender == "org.freedesktop.DBus" && len(sig.Body) == 1 {
			if name, ok := sig.Body[0].(string); ok && replaceable(name) && s.owns(name) {
				s.log.Error("bus name taken over by another push daemon; stopping", "name", name)
				s.lostOnce.Do(func() { s.lost <- name; close(s.lost) })
			}
			continue
		}
		if sig.Name != "org.freedesktop.DBus.NameOwnerChanged" || sig.Sender != "org.freedesktop.DBus" || len(sig.Body) != 3 {
			continue
		}
		name, ok1 := sig.Body[0].(string)
		newOwner, ok2 := sig.Body[2].(string)
		if !ok1 || !ok2 || newOwner != "" || !strings.HasPrefix(name, ":") {
			continue
		}
		s.mu.Lock()
		delete(s.idCache, name)
		forgotten := s.forgotten
		s.mu.Unlock()
		if forgotten != nil {
			forgotten(name)
		}
	}
}

// owns reports whether the Service holds name.
func (s *Service) owns(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.owned {
		if n == name {
			return true
		}
	}
	return false
}

// cachedIdentity returns the cached identity of a unique name.
func (s *Service) cachedIdentity(name string) (Identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.idCache[name]
	return id, ok
}

// callerIdentity identifies the sender of a call: credentials from the bus,
// the process's confinement, then a recheck that the name still exists (so
// a recycled pid cannot be mistaken for the caller).
func (s *Service) callerIdentity(ctx context.Context, sender string) (Identity, error) {
	if id, ok := s.cachedIdentity(sender); ok {
		return id, nil
	}
	conn, err := s.getConn()
	if err != nil {
		return Identity{}, err
	}
	bus := conn.BusObject()
	var creds map[string]dbus.Variant
	if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionCredentials", 0, sender).Store(&creds); err != nil {
		return Identity{}, fmt.Errorf("cannot get credentials of %s: %w", sender, err)
	}
	uid, ok := creds["UnixUserID"].Value().(uint32)
	if !ok {
		return Identity{}, fmt.Errorf("bus gave no user id for %s", sender)
	}
	pid, _ := creds["ProcessID"].Value().(uint32)
	label := ""
	if b, ok := creds["LinuxSecurityLabel"].Value().([]byte); ok {
		label = string(b)
	}
	samePID := func() bool {
		var again map[string]dbus.Variant
		if bus.CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionCredentials", 0, sender).Store(&again) != nil {
			return false
		}
		p, _ := again["ProcessID"].Value().(uint32)
		return p == pid
	}
	id := identify(s.cfg.ProcRoot, s.cfg.RuntimeDir, uid, pid, label, samePID)
	var has bool
	if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, sender).Store(&has); err != nil {
		return Identity{}, fmt.Errorf("cannot check caller %s: %w", sender, err)
	}
	if !has {
		return Identity{}, fmt.Errorf("caller %s left the bus", sender)
	}
	s.mu.Lock()
	s.idCache[sender] = id
	s.mu.Unlock()
	s.log.Debug("identified caller", "sender", sender, "uid", uid, "pid", pid, "app_id", id.AppID, "source", string(id.Source), "confined", id.Confined)
	return id, nil
}

// sameUser refuses callers of another uid.
func (s *Service) sameUser(ifaceName string, id Identity) error {
	if id.UID != s.uid {
		return s.errorf(ifaceName, "AccessDenied", "access denied: caller runs as uid %d, this push daemon serves uid %d only", id.UID, s.uid)
	}
	return nil
}

// authorizeApp checks that the caller may act for app.
func (s *Service) authorizeApp(ctx context.Context, c *call, aid app.ID) error {
	id, err := s.callerIdentity(ctx, c.sender)
	if err != nil {
		return err
	}
	if err := s.sameUser(c.iface, id); err != nil {
		return err
	}
	switch {
	case id.Confined && id.AppID == "":
		return s.errorf(c.iface, "AccessDenied", "access denied: %s may not use push notifications", id)
	case id.Confined && id.AppID != aid.Base():
		return s.errorf(c.iface, "AccessDenied", "access denied: %s may not act for app %q", id, aid.String())
	case !id.Confined && s.cfg.RequireConfinement:
		return s.errorf(c.iface, "AccessDenied", "access denied: %s refused, only confined apps are accepted (require_confinement)", id)
	}
	return nil
}

// authorizeAdmin lets only unconfined callers of the same user use the
// management interface.
func (s *Service) authorizeAdmin(ctx context.Context, c *call) error {
	id, err := s.callerIdentity(ctx, c.sender)
	if err != nil {
		return err
	}
	if err := s.sameUser(c.iface, id); err != nil {
		return err
	}
	if id.Confined {
		return s.errorf(c.iface, "AccessDenied", "access denied: %s may not use the management interface", id)
	}
	return nil
}
