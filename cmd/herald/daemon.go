package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
	"github.com/heraldpush/herald/client/config"
	"github.com/heraldpush/herald/dbusapi"
)

// sessionBus connects to the session bus named by the environment.
func (e *cli) sessionBus() (*dbus.Conn, error) {
	env := config.ReadEnv(e.getenv)
	if env.SessionBus == "" {
		return nil, fmt.Errorf("no session bus: DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are unset")
	}
	conn, err := dbus.Connect(env.SessionBus)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the session bus: %w", err)
	}
	return conn, nil
}

func daemonObj(conn *dbus.Conn) dbus.BusObject {
	return conn.Object(dbusapi.DaemonName, dbusapi.DaemonPath)
}

// explain turns "name has no owner" into advice.
func explain(err error) error {
	var de dbus.Error
	if e, ok := err.(dbus.Error); ok {
		de = e
	} else if e, ok := err.(*dbus.Error); ok {
		de = *e
	}
	switch de.Name {
	case "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner":
		return fmt.Errorf("heraldd is not running (start it with: systemctl --user start heraldd)")
	}
	if de.Name != "" && len(de.Body) > 0 {
		if msg, ok := de.Body[0].(string); ok {
			return fmt.Errorf("%s", msg)
		}
	}
	return err
}

// daemonStatus is what `herald status --json` prints.
type daemonStatus struct {
	State          string            `json:"state"`
	Server         string            `json:"server"`
	LastError      string            `json:"last_error,omitempty"`
	ConnectedSince int64             `json:"connected_since,omitempty"`
	Uptime         string            `json:"connection_uptime,omitempty"`
	Connections    []connection      `json:"connections"`
	Registrations  []registration    `json:"registrations"`
	Counters       map[string]uint64 `json:"counters"`
}

// connection is one push service backend's connection.
type connection struct {
	Backend        string `json:"backend"`
	State          string `json:"state"`
	Server         string `json:"server"`
	LastError      string `json:"last_error,omitempty"`
	ConnectedSince int64  `json:"connected_since,omitempty"`
}

type registration struct {
	AppID      string `json:"app_id"`
	Kind       string `json:"kind"`
	Backend    string `json:"backend"`
	Endpoint   string `json:"endpoint"`
	Service    string `json:"service,omitempty"`
	Version    int32  `json:"version,omitempty"`
	Queued     int32  `json:"queued"`
	Registered int64  `json:"registered"`
}

func getStatus(ctx context.Context, conn *dbus.Conn) (*daemonStatus, error) {
	obj := daemonObj(conn)
	var props map[string]dbus.Variant
	if err := obj.CallWithContext(ctx, "org.freedesktop.DBus.Properties.GetAll", 0, dbusapi.DaemonIface).Store(&props); err != nil {
		return nil, explain(err)
	}
	st := &daemonStatus{}
	st.State, _ = props["State"].Value().(string)
	st.Server, _ = props["Server"].Value().(string)
	st.LastError, _ = props["LastError"].Value().(string)
	st.ConnectedSince, _ = props["ConnectedSince"].Value().(int64)
	if st.ConnectedSince > 0 {
		st.Uptime = time.Since(time.Unix(st.ConnectedSince, 0)).Round(time.Second).String()
	}
	var regs []map[string]dbus.Variant
	if err := obj.CallWithContext(ctx, dbusapi.DaemonIface+".ListRegistrations", 0).Store(&regs); err != nil {
		return nil, explain(err)
	}
	st.Registrations = []registration{}
	for _, r := range regs {
		var x registration
		x.AppID, _ = r["app_id"].Value().(string)
		x.Kind, _ = r["kind"].Value().(string)
		x.Backend, _ = r["backend"].Value().(string)
		x.Endpoint, _ = r["endpoint"].Value().(string)
		x.Service, _ = r["service"].Value().(string)
		x.Version, _ = r["version"].Value().(int32)
		x.Queued, _ = r["queued"].Value().(int32)
		x.Registered, _ = r["registered"].Value().(int64)
		st.Registrations = append(st.Registrations, x)
	}
	var conns []map[string]dbus.Variant
	if err := obj.CallWithContext(ctx, dbusapi.DaemonIface+".ListConnections", 0).Store(&conns); err != nil {
		return nil, explain(err)
	}
	st.Connections = []connection{}
	for _, c := range conns {
		var x connection
		x.Backend, _ = c["backend"].Value().(string)
		x.State, _ = c["state"].Value().(string)
		x.Server, _ = c["server"].Value().(string)
		x.LastError, _ = c["last_error"].Value().(string)
		x.ConnectedSince, _ = c["connected_since"].Value().(int64)
		st.Connections = append(st.Connections, x)
	}
	if err := obj.CallWithContext(ctx, dbusapi.DaemonIface+".Counters", 0).Store(&st.Counters); err != nil {
		return nil, explain(err)
	}
	return st, nil
}

func statusCmd() *command {
	var asJSON *bool
	return &command{
		name: "status", args: "[--json]",
		help:  "Shows the daemon's connection state, its push server, how long the connection has been up,\nthe last error, every registered app with its queued messages, and the counters\n(messages, duplicates, redeliveries, helper cost per app).",
		flags: func(fs *flag.FlagSet) { asJSON = fs.Bool("json", false, "print JSON") },
		run: func(ctx context.Context, e *cli, fs *flag.FlagSet, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("%w: unexpected argument %q", errUsage, args[0])
			}
			conn, err := e.sessionBus()
			if err != nil {
				return err
			}
			defer conn.Close()
			st, err := getStatus(ctx, conn)
			if err != nil {
				return err
			}
			if *asJSON {
				enc := json.NewEncoder(e.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			w := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintf(w, "state:\t%s\n", st.State)
			server := st.Server
			if server == "" {
				server = "(none configured)"
			}
			fmt.Fprintf(w, "server:\t%s\n", server)
			if st.Uptime != "" {
				fmt.Fprintf(w, "connected for:\t%s\n", st.Uptime)
			}
			if st.LastError != "" {
				fmt.Fprintf(w, "last error:\t%s\n", st.LastError)
			}
			w.Flush()
			fmt.Fprintf(e.stdout, "\nconnections: %d\n", len(st.Connections))
			if len(st.Connections) > 0 {
				w = tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
				fmt.Fprintln(w, "  BACKEND\tSTATE\tSERVER\tSINCE\tLAST ERROR")
				for _, c := range st.Connections {
					since := "-"
					if c.ConnectedSince > 0 {
						since = time.Unix(c.ConnectedSince, 0).Format(time.DateTime)
					}
					fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", c.Backend, c.State, c.Server, since, c.LastError)
				}
				w.Flush()
			}
			fmt.Fprintf(e.stdout, "\nregistrations: %d\n", len(st.Registrations))
			if len(st.Registrations) > 0 {
				w = tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
				fmt.Fprintln(w, "  APP\tKIND\tBACKEND\tQUEUED\tREGISTERED")
				for _, r := range st.Registrations {
					fmt.Fprintf(w, "  %s\t%s\t%s\t%d\t%s\n", r.AppID, r.Kind, r.Backend, r.Queued, time.Unix(r.Registered, 0).Format(time.DateTime))
				}
				w.Flush()
			}
			names := make([]string, 0, len(st.Counters))
			for k := range st.Counters {
				names = append(names, k)
			}
			sort.Strings(names)
			fmt.Fprintln(e.stdout, "\ncounters:")
			w = tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
			for _, k := range names {
				fmt.Fprintf(w, "  %s\t%d\n", k, st.Counters[k])
			}
			return w.Flush()
		},
	}
}

func inboxCmd() *command {
	return &command{
		name: "inbox", args: "APP_ID",
		help: "Lists the messages heraldd holds for APP_ID, oldest first, with the pipeline step each\nreached (received, processed, presented, queued). Nothing is consumed.",
		run: func(ctx context.Context, e *cli, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: want one APP_ID", errUsage)
			}
			conn, err := e.sessionBus()
			if err != nil {
				return err
			}
			defer conn.Close()
			var entries []map[string]dbus.Variant
			if err := daemonObj(conn).CallWithContext(ctx, dbusapi.DaemonIface+".Inbox", 0, args[0]).Store(&entries); err != nil {
				return explain(err)
			}
			if len(entries) == 0 {
				fmt.Fprintf(e.stdout, "no messages for %s\n", args[0])
				return nil
			}
			w := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "MSG_ID\tSTEP\tRECEIVED\tSIZE")
			for _, m := range entries {
				id, _ := m["msg_id"].Value().(string)
				step, _ := m["step"].Value().(string)
				rec, _ := m["received"].Value().(int64)
				size, _ := m["size"].Value().(int32)
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", id, step, time.Unix(rec, 0).Format(time.DateTime), size)
			}
			return w.Flush()
		},
	}
}

func registerCmd() *command {
	return &command{
		name: "register", args: "APP_ID",
		help: "Registers APP_ID with com.lomiri.PushNotifications, as the app itself would, and prints\nthe token. The push server's /notify API and endpoint use this token.",
		run: func(ctx context.Context, e *cli, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: want one APP_ID", errUsage)
			}
			aid, err := app.ParseID(args[0])
			if err != nil {
				return err
			}
			conn, err := e.sessionBus()
			if err != nil {
				return err
			}
			defer conn.Close()
			path := dbus.ObjectPath("/com/lomiri/PushNotifications/" + app.Quote(aid.Package))
			var tok string
			err = conn.Object("com.lomiri.PushNotifications", path).CallWithContext(ctx, "com.lomiri.PushNotifications.Register", 0, args[0]).Store(&tok)
			if err != nil {
				return explain(err)
			}
			fmt.Fprintln(e.stdout, tok)
			return nil
		},
	}
}
