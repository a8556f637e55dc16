// Command upconnector is a UnifiedPush connector for tests: it owns --name on
// the session bus, exports org.unifiedpush.Connector1 (--version 1) or
// Connector2 (--version 2) at /org/unifiedpush/Connector, and records every
// call as one JSON line appended to --out. After recording it emits the
// signal org.herald.TestConnector.Recorded(s line) so a test can wait for
// it.
//
// --reply says how a v2 Message is answered, as real connectors do: "id"
// (the id echoed, KUnifiedPush), "empty" (a reply with no values, Flutter's
// unifiedpush_linux), "dict" ({}), "other-id" (a wrong id) or "error" (a
// D-Bus error: not delivered). A message whose body starts with
// --fail-prefix is answered with an error whatever --reply says (it is
// recorded with "failed": true). --version 0 is a pre-0.3 connector: it
// exports Connector1 with Message(s, s, s).
//
// --register tok1,tok2 makes the connector register those tokens itself
// once it owns its name, as an app does at start, with --service as the
// service argument (default: --name; Flutter sends "default"). The results
// are recorded as "RegisterResult" records (id = result, endpoint = reason).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"
)

// Record is one call as written to --out.
type Record struct {
	Method   string `json:"method"`
	Version  int    `json:"version"`
	Token    string `json:"token"`
	Endpoint string `json:"endpoint,omitempty"`
	Message  []byte `json:"message,omitempty"`
	ID       string `json:"id,omitempty"`
	Failed   bool   `json:"failed,omitempty"`
}

const (
	path        = dbus.ObjectPath("/org/unifiedpush/Connector")
	recordedSig = "org.herald.TestConnector.Recorded"
)

type recorder struct {
	conn *dbus.Conn
	mu   sync.Mutex // guards out
	out  *os.File
}

func (r *recorder) record(rec Record) {
	b, err := json.Marshal(rec)
	if err != nil {
		fmt.Fprintln(os.Stderr, "upconnector:", err)
		return
	}
	r.mu.Lock()
	_, err = r.out.Write(append(b, '\n'))
	if err == nil {
		err = r.out.Sync()
	}
	r.mu.Unlock()
	if err != nil {
		fmt.Fprintln(os.Stderr, "upconnector: cannot write record:", err)
		return
	}
	_ = r.conn.Emit(path, recordedSig, string(b))
}

type connector1 struct{ r *recorder }

func (c connector1) Message(token string, message []byte, id string) *dbus.Error {
	c.r.record(Record{Method: "Message", Version: 1, Token: token, Message: message, ID: id})
	return nil
}

func (c connector1) NewEndpoint(token, endpoint string) *dbus.Error {
	c.r.record(Record{Method: "NewEndpoint", Version: 1, Token: token, Endpoint: endpoint})
	return nil
}

func (c connector1) Unregistered(token string) *dbus.Error {
	c.r.record(Record{Method: "Unregistered", Version: 1, Token: token})
	return nil
}

// connector0 is a DBUS_0.1/0.2 connector: the message is a string.
type connector0 struct{ connector1 }

func (c connector0) Message(token, message, id string) *dbus.Error {
	c.r.record(Record{Method: "Message", Version: 0, Token: token, Message: []byte(message), ID: id})
	return nil
}

type connector2 struct {
	r          *recorder
	reply      string
	failPrefix string
}

// message records a v2 Message and says whether it is to fail.
func (c connector2) message(args map[string]dbus.Variant) (id string, fail bool) {
	msg, _ := args["message"].Value().([]byte)
	id = str(args, "id")
	fail = c.reply == "error" || (c.failPrefix != "" && strings.HasPrefix(string(msg), c.failPrefix))
	c.r.record(Record{Method: "Message", Version: 2, Token: str(args, "token"), Message: msg, ID: id, Failed: fail})
	return id, fail
}

var errFailed = dbus.NewError("org.example.Connector.Error.Failed", []any{"cannot handle this message now"})

func str(m map[string]dbus.Variant, k string) string {
	s, _ := m[k].Value().(string)
	return s
}

func (c connector2) Message(args map[string]dbus.Variant) (map[string]dbus.Variant, *dbus.Error) {
	id, fail := c.message(args)
	switch {
	case fail:
		return nil, errFailed
	case c.reply == "dict":
		return map[string]dbus.Variant{}, nil
	case c.reply == "other-id":
		return map[string]dbus.Variant{"id": dbus.MakeVariant(id + "-other")}, nil
	}
	return map[string]dbus.Variant{"id": dbus.MakeVariant(id)}, nil
}

// connector2Empty answers Message with no values at all (signature ""),
// as Flutter's unifiedpush_linux does.
type connector2Empty struct{ connector2 }

func (c connector2Empty) Message(args map[string]dbus.Variant) *dbus.Error {
	if _, fail := c.message(args); fail {
		return errFailed
	}
	return nil
}

func (c connector2) NewEndpoint(args map[string]dbus.Variant) (map[string]dbus.Variant, *dbus.Error) {
	c.r.record(Record{Method: "NewEndpoint", Version: 2, Token: str(args, "token"), Endpoint: str(args, "endpoint")})
	return map[string]dbus.Variant{}, nil
}

func (c connector2) Unregistered(args map[string]dbus.Variant) (map[string]dbus.Variant, *dbus.Error) {
	c.r.record(Record{Method: "Unregistered", Version: 2, Token: str(args, "token")})
	return map[string]dbus.Variant{}, nil
}

type options struct {
	name, outPath, reply, failPrefix string
	version                          int
	register                         []string
	service                          string
}

func run(ctx context.Context, o options) error {
	name, version, outPath := o.name, o.version, o.outPath
	if name == "" || outPath == "" {
		return errors.New("--name and --out are required")
	}
	out, err := os.OpenFile(outPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("cannot open output: %w", err)
	}
	defer out.Close()
	// An activated service finds its bus in DBUS_STARTER_ADDRESS.
	var conn *dbus.Conn
	if addr := os.Getenv("DBUS_STARTER_ADDRESS"); addr != "" {
		conn, err = dbus.Connect(addr)
	} else {
		conn, err = dbus.ConnectSessionBus()
	}
	if err != nil {
		return fmt.Errorf("cannot connect to session bus: %w", err)
	}
	defer conn.Close()
	r := &recorder{conn: conn, out: out}
	c2 := connector2{r: r, reply: o.reply, failPrefix: o.failPrefix}
	switch {
	case version == 0:
		err = conn.Export(connector0{connector1{r}}, path, "org.unifiedpush.Connector1")
	case version == 1:
		err = conn.Export(connector1{r}, path, "org.unifiedpush.Connector1")
	case version == 2 && o.reply == "empty":
		err = conn.Export(connector2Empty{c2}, path, "org.unifiedpush.Connector2")
	case version == 2:
		switch o.reply {
		case "id", "dict", "other-id", "error":
		default:
			return fmt.Errorf("--reply must be id, empty, dict, other-id or error, got %q", o.reply)
		}
		err = conn.Export(c2, path, "org.unifiedpush.Connector2")
	default:
		return fmt.Errorf("--version must be 0, 1 or 2, got %d", version)
	}
	if err != nil {
		return fmt.Errorf("cannot export connector: %w", err)
	}
	reply, err := conn.RequestName(name, dbus.NameFlagDoNotQueue)
	if err != nil {
		return fmt.Errorf("cannot request %s: %w", name, err)
	}
	if reply != dbus.RequestNameReplyPrimaryOwner {
		return fmt.Errorf("bus name %s is already owned", name)
	}
	service := o.service
	if service == "" {
		service = name
	}
	for _, tok := range o.register {
		result, reason, err := register(ctx, conn, version, service, tok)
		if err != nil {
			return fmt.Errorf("cannot register %s: %w", tok, err)
		}
		r.record(Record{Method: "RegisterResult", Version: version, Token: tok, ID: result, Endpoint: reason})
	}
	select {
	case <-ctx.Done():
	case <-conn.Context().Done():
	}
	return nil
}

// register calls the distributor's Register as a connector of version does.
func register(ctx context.Context, conn *dbus.Conn, version int, service, token string) (result, reason string, err error) {
	const dest, obj = "org.unifiedpush.Distributor.herald", dbus.ObjectPath("/org/unifiedpush/Distributor")
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	d := conn.Object(dest, obj)
	switch version {
	case 0:
		err = d.CallWithContext(ctx, "org.unifiedpush.Distributor1.Register", 0, service, token).Store(&result, &reason)
	case 1:
		err = d.CallWithContext(ctx, "org.unifiedpush.Distributor1.Register", 0, service, token, "test connector").Store(&result, &reason)
	default:
		var res map[string]dbus.Variant
		err = d.CallWithContext(ctx, "org.unifiedpush.Distributor2.Register", 0, map[string]dbus.Variant{
			"service": dbus.MakeVariant(service), "token": dbus.MakeVariant(token), "description": dbus.MakeVariant("test connector"),
		}).Store(&res)
		result, reason = str(res, "success"), str(res, "reason")
	}
	return result, reason, err
}

func main() {
	var o options
	flag.StringVar(&o.name, "name", "", "bus name to own (the app id)")
	flag.IntVar(&o.version, "version", 1, "connector interface version: 0 (pre-0.3), 1 or 2")
	flag.StringVar(&o.reply, "reply", "id", "how a v2 Message is answered: id, empty, dict, other-id or error")
	flag.StringVar(&o.failPrefix, "fail-prefix", "", "answer messages starting with this with an error")
	flag.StringVar(&o.outPath, "out", "", "file to append JSON records to")
	reg := flag.String("register", "", "comma-separated tokens to register at start")
	flag.StringVar(&o.service, "service", "", "service argument of --register (default --name)")
	flag.Parse()
	if *reg != "" {
		o.register = strings.Split(*reg, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "upconnector:", err)
		os.Exit(1)
	}
}
