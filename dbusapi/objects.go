package dbusapi

import (
	"embed"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"
)

// Interfaces holds the hand-written introspection XML, one file per
// interface, named <interface>.xml (installed copies: data/interfaces/).
//
//go:embed interfaces/*.xml
var Interfaces embed.FS

// interfaceXML returns the <interface> element of name's XML file.
func interfaceXML(name string) (string, error) {
	b, err := Interfaces.ReadFile("interfaces/" + name + ".xml")
	if err != nil {
		return "", fmt.Errorf("no introspection data for %s: %w", name, err)
	}
	s := string(b)
	start := strings.Index(s, "<interface ")
	end := strings.LastIndex(s, "</interface>")
	if start < 0 || end < start {
		return "", fmt.Errorf("introspection data for %s has no interface", name)
	}
	return "  " + s[start:end+len("</interface>")] + "\n", nil
}

const propertiesXML = `  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="out"/>
    </method>
    <method name="GetAll">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="properties" type="a{sv}" direction="out"/>
    </method>
    <method name="Set">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="in"/>
    </method>
    <signal name="PropertiesChanged">
      <arg name="interface_name" type="s"/>
      <arg name="changed_properties" type="a{sv}"/>
      <arg name="invalidated_properties" type="as"/>
    </signal>
  </interface>
`

// buildObjects fills s.objects: every exported path with its interfaces.
func (s *Service) buildObjects() error {
	s.objects = map[string]*object{}
	add := func(path string, extraXML string, ifaces ...*iface) error {
		o := &object{s: s, path: "", ifaces: map[string]*iface{}}
		var xml strings.Builder
		for _, i := range ifaces {
			o.ifaces[i.name] = i
			if i.name == propertiesIface {
				continue // standard interface, in extraXML
			}
			x, err := interfaceXML(i.name)
			if err != nil {
				return err
			}
			xml.WriteString(x)
			o.ifaces[i.name] = i
		}
		xml.WriteString(extraXML)
		o.xml = xml.String()
		o.path = objectPath(path)
		s.objects[path] = o
		return nil
	}
	for _, fam := range []string{"lomiri", "ubuntu"} {
		if err := add("/com/"+fam+"/PushNotifications", "", s.pushNotificationsIface("com."+fam+".PushNotifications")); err != nil {
			return err
		}
		if err := add("/com/"+fam+"/Postal", "", s.postalIface("com."+fam+".Postal"), s.heraldPostalIface()); err != nil {
			return err
		}
	}
	if err := add(string(DistributorPath), "", s.distributor1Iface(), s.distributor2Iface()); err != nil {
		return err
	}
	return add(string(DaemonPath), propertiesXML, s.daemonIface(), s.propertiesIface())
}

func isLomiriIface(name string) bool {
	switch name {
	case "com.lomiri.PushNotifications", "com.lomiri.Postal", "com.ubuntu.PushNotifications", "com.ubuntu.Postal":
		return true
	}
	return false
}

func newIface(name string, members ...*member) *iface {
	i := &iface{name: name, members: map[string]*member{}}
	for _, m := range members {
		i.members[m.name] = m
	}
	return i
}

func objectPath(p string) dbus.ObjectPath { return dbus.ObjectPath(p) }
