package dbusapi

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/godbus/dbus/v5"
)

// The Service routes incoming method calls itself (it is the connection's
// dbus.Handler) instead of using godbus's reflection export: the Lomiri API
// has a variadic method (ClearPersistent), Distributor1.Register is called
// with 2, 3 or 4 strings, and the Lomiri objects live at any quoted package
// path. Each member declares its D-Bus signatures; the introspection XML is
// checked against these declarations by a test.

// member is one D-Bus method.
type member struct {
	name string
	// in lists the accepted input signatures; in[0] is the one in the XML.
	in []string
	// variadic allows any number of extra "s" arguments after in[0].
	variadic bool
	out      string
	// handle runs the call. It returns the reply body or an error; errors
	// that are not *dbus.Error become <iface>.Error.Failed.
	handle func(ctx context.Context, c *call) ([]any, error)
}

// call is one incoming method call.
type call struct {
	msg    *dbus.Message
	sender string
	path   dbus.ObjectPath
	iface  string
	args   []any
	// afterReply runs once the reply was written (e.g. NewEndpoint).
	afterReply func()
}

// iface is a D-Bus interface of an object.
type iface struct {
	name    string
	members map[string]*member
}

// object is the set of interfaces found at a path.
type object struct {
	s        *Service
	path     dbus.ObjectPath
	ifaces   map[string]*iface
	children []string // for introspection of intermediate nodes
	xml      string   // interface XML served by Introspect
}

// LookupObject implements dbus.Handler.
func (s *Service) LookupObject(path dbus.ObjectPath) (dbus.ServerObject, bool) {
	return s.lookup(path)
}

func (s *Service) lookup(path dbus.ObjectPath) (*object, bool) {
	p := string(path)
	if o, ok := s.objects[p]; ok {
		return o, true
	}
	// Lomiri objects: <base>/<quoted package>, one element.
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		if o, ok := s.objects[p[:i]]; ok && o.subtree() {
			elem := p[i+1:]
			if elem != "" {
				return &object{s: s, path: path, ifaces: o.ifaces, xml: o.xml}, true
			}
		}
	}
	// Intermediate nodes ("/", "/com", …) answer Introspect only.
	var children []string
	prefix := p + "/"
	if p == "/" {
		prefix = "/"
	}
	seen := map[string]bool{}
	for op := range s.objects {
		if rest, ok := strings.CutPrefix(op, prefix); ok && rest != "" {
			child, _, _ := strings.Cut(rest, "/")
			if !seen[child] {
				seen[child] = true
				children = append(children, child)
			}
		}
	}
	if len(children) == 0 {
		return nil, false
	}
	sort.Strings(children)
	return &object{s: s, path: path, ifaces: map[string]*iface{}, children: children}, true
}

func (o *object) subtree() bool {
	for name := range o.ifaces {
		if isLomiriIface(name) {
			return true
		}
	}
	return false
}

// LookupInterface implements dbus.ServerObject. An empty name (a call
// without interface) finds the member in any of the object's interfaces.
func (o *object) LookupInterface(name string) (dbus.Interface, bool) {
	if name == introspectableIface {
		return &boundIface{o: o, name: name}, true
	}
	if name == "" {
		return &boundIface{o: o}, true
	}
	if _, ok := o.ifaces[name]; !ok {
		return nil, false
	}
	return &boundIface{o: o, name: name}, true
}

const introspectableIface = "org.freedesktop.DBus.Introspectable"

type boundIface struct {
	o    *object
	name string
}

// LookupMethod implements dbus.Interface.
func (b *boundIface) LookupMethod(name string) (dbus.Method, bool) {
	if (b.name == introspectableIface || b.name == "") && name == "Introspect" {
		return &boundMethod{o: b.o, iface: introspectableIface, m: &member{
			name: "Introspect", in: []string{""}, out: "s",
			handle: func(context.Context, *call) ([]any, error) { return []any{b.o.introspect()}, nil },
		}}, true
	}
	if b.name != "" {
		m, ok := b.o.ifaces[b.name].members[name]
		if !ok {
			return nil, false
		}
		return &boundMethod{o: b.o, iface: b.name, m: m}, true
	}
	names := make([]string, 0, len(b.o.ifaces))
	for n := range b.o.ifaces {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if m, ok := b.o.ifaces[n].members[name]; ok {
			return &boundMethod{o: b.o, iface: n, m: m}, true
		}
	}
	return nil, false
}

// boundMethod is a member on a concrete object; it implements dbus.Method
// and dbus.ArgumentDecoder. It writes the reply itself (so work can follow
// the reply in order, e.g. NewEndpoint after Register) and marks the call
// as needing no further reply from godbus.
type boundMethod struct {
	o     *object
	iface string
	m     *member
}

func (b *boundMethod) NumArguments() int     { return 1 }
func (b *boundMethod) NumReturns() int       { return 0 }
func (b *boundMethod) ArgumentValue(int) any { return (*call)(nil) }
func (b *boundMethod) ReturnValue(int) any   { return nil }
func (b *boundMethod) DecodeArguments(_ *dbus.Conn, sender string, msg *dbus.Message, body []any) ([]any, error) {
	return []any{&call{msg: msg, sender: sender, path: b.o.path, iface: b.iface, args: body}}, nil
}

// Call implements dbus.Method.
func (b *boundMethod) Call(args ...any) ([]any, error) {
	c, _ := args[0].(*call)
	if c == nil {
		return nil, dbus.MakeFailedError(fmt.Errorf("internal error: bad call"))
	}
	s := b.o.s
	wantReply := c.msg.Flags&dbus.FlagNoReplyExpected == 0
	// From here on godbus sends nothing: the Service replies.
	c.msg.Flags |= dbus.FlagNoReplyExpected

	var body []any
	var err error
	if sig := signatureOfBody(c.msg); !b.m.accepts(sig) {
		what := "bad argument type"
		if !b.m.acceptsCount(len(c.args)) {
			what = "wrong number of arguments"
		}
		err = s.errorf(b.iface, "InvalidArgs", "%s: %s takes (%s), got (%s)", what, b.m.name, b.m.wantText(), sig)
	} else {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.CallTimeout)
		body, err = b.safeHandle(ctx, c)
		cancel()
	}
	if wantReply {
		s.reply(c, b.iface, body, err)
	}
	if c.afterReply != nil && err == nil {
		c.afterReply()
	}
	return nil, nil
}

func (b *boundMethod) safeHandle(ctx context.Context, c *call) (body []any, err error) {
	defer func() {
		if r := recover(); r != nil {
			b.o.s.log.Error("panic in D-Bus method", "iface", b.iface, "member", b.m.name, "panic", fmt.Sprint(r))
			body, err = nil, b.o.s.errorf(b.iface, "Failed", "internal error in %s", b.m.name)
		}
	}()
	return b.m.handle(ctx, c)
}

func signatureOfBody(msg *dbus.Message) string {
	if v, ok := msg.Headers[dbus.FieldSignature]; ok {
		if sig, ok := v.Value().(dbus.Signature); ok {
			return sig.String()
		}
	}
	return ""
}

func (m *member) accepts(sig string) bool {
	for _, in := range m.in {
		if sig == in {
			return true
		}
	}
	if m.variadic {
		rest, ok := strings.CutPrefix(sig, m.in[0])
		return ok && strings.Trim(rest, "s") == ""
	}
	return false
}

func (m *member) acceptsCount(n int) bool {
	for _, in := range m.in {
		if k := countArgs(in); k == n || m.variadic && n >= k {
			return true
		}
	}
	return false
}

// countArgs counts the complete types in a valid signature.
func countArgs(sig string) int {
	n := 0
	for sig != "" {
		sig = nextType(sig)
		n++
	}
	return n
}

// nextType returns sig without its first complete type.
func nextType(sig string) string {
	depth := 0
	for i := 0; i < len(sig); i++ {
		switch sig[i] {
		case 'a':
			continue
		case '(', '{':
			depth++
		case ')', '}':
			depth--
		}
		if depth == 0 {
			return sig[i+1:]
		}
	}
	return ""
}

func (m *member) wantText() string {
	w := strings.Join(m.in, ") or (")
	if m.variadic {
		w += "s…"
	}
	return w
}

// reply writes the method reply or error for c.
func (s *Service) reply(c *call, ifaceName string, body []any, err error) {
	msg := &dbus.Message{Headers: map[dbus.HeaderField]dbus.Variant{}}
	if c.sender != "" {
		msg.Headers[dbus.FieldDestination] = dbus.MakeVariant(c.sender)
	}
	msg.Headers[dbus.FieldReplySerial] = dbus.MakeVariant(c.msg.Serial())
	if err != nil {
		de := s.toDBusError(ifaceName, err)
		msg.Type = dbus.TypeError
		msg.Headers[dbus.FieldErrorName] = dbus.MakeVariant(de.Name)
		msg.Body = de.Body
	} else {
		msg.Type = dbus.TypeMethodReply
		msg.Body = body
	}
	if len(msg.Body) > 0 {
		msg.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(msg.Body...))
	}
	if call := s.conn.Send(msg, nil); call.Err != nil {
		s.log.Warn("cannot send D-Bus reply", "iface", ifaceName, "err", call.Err)
	}
}

// introspect returns the XML for o.
func (o *object) introspect() string {
	var b strings.Builder
	b.WriteString(`<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg name="machine_uuid" type="s" direction="out"/></method>
  </interface>
`)
	b.WriteString(o.xml)
	for _, c := range o.children {
		fmt.Fprintf(&b, "  <node name=%q/>\n", c)
	}
	b.WriteString("</node>\n")
	return b.String()
}
