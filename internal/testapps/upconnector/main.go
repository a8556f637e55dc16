// Command upconnector is a UnifiedPush connector for tests: it owns --name on
// the session bus, exports org.unifiedpush.Connector1 (--version 1) or
// Connector2 (--version 2) at /org/unifiedpush/Connector, and records every
// call as one JSON line appended to --out. After recording it emits the
// signal org.herald.TestConnector.Recorded(s line) so a test can wait for
// it. A v2 Message is answered with its id unless --no-ack.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

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

type connector2 struct {
	r     *recorder
	noAck bool
}

func str(m map[string]dbus.Variant, k string) string {
	s, _ := m[k].Value().(string)
	return s
}

func (c connector2) Message(args map[string]dbus.Variant) (map[string]dbus.Variant, *dbus.Error) {
	msg, _ := args["message"].Value().([]byte)
	id := str(args, "id")
	c.r.record(Record{Method: "Message", Version: 2, Token: str(args, "token"), Message: msg, ID: id})
	if c.noAck {
		return map[string]dbus.Variant{}, nil
	}
	return map[string]dbus.Variant{"id": dbus.MakeVariant(id)}, nil
}

func (c connector2) NewEndpoint(args map[string]dbus.Variant) (map[string]dbus.Variant, *dbus.Error) {
	c.r.record(Record{Method: "NewEndpoint", Version: 2, Token: str(args, "token"), Endpoint: str(args, "endpoint")})
	return map[string]dbus.Variant{}, nil
}

func (c connector2) Unregistered(args map[string]dbus.Variant) (map[string]dbus.Variant, *dbus.Error) {
	c.r.record(Record{Method: "Unregistered", Version: 2, Token: str(args, "token")})
	return map[string]dbus.Variant{}, nil
}

func run(ctx context.Context, name string, version int, noAck bool, outPath string) error {
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
	switch version {
	case 1:
		err = conn.Export(connector1{r}, path, "org.unifiedpush.Connector1")
	case 2:
		err = conn.Export(connector2{r, noAck}, path, "org.unifiedpush.Connector2")
	default:
		return fmt.Errorf("--version must be 1 or 2, got %d", version)
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
	select {
	case <-ctx.Done():
	case <-conn.Context().Done():
	}
	return nil
}

func main() {
	name := flag.String("name", "", "bus name to own (the app id)")
	version := flag.Int("version", 1, "connector interface version: 1 or 2")
	noAck := flag.Bool("no-ack", false, "answer v2 Message without the id")
	out := flag.String("out", "", "file to append JSON records to")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *name, *version, *noAck, *out); err != nil {
		fmt.Fprintln(os.Stderr, "upconnector:", err)
		os.Exit(1)
	}
}
