package dbusapi

import (
	"bytes"
	"encoding/xml"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

type xmlNode struct {
	Interfaces []xmlIface `xml:"interface"`
	Nodes      []struct {
		Name string `xml:"name,attr"`
	} `xml:"node"`
}

type xmlIface struct {
	Name       string      `xml:"name,attr"`
	Methods    []xmlMethod `xml:"method"`
	Signals    []xmlMethod `xml:"signal"`
	Properties []struct {
		Name   string `xml:"name,attr"`
		Type   string `xml:"type,attr"`
		Access string `xml:"access,attr"`
	} `xml:"property"`
}

type xmlMethod struct {
	Name        string `xml:"name,attr"`
	Annotations []struct {
		Name  string `xml:"name,attr"`
		Value string `xml:"value,attr"`
	} `xml:"annotation"`
	Args []struct {
		Name      string `xml:"name,attr"`
		Type      string `xml:"type,attr"`
		Direction string `xml:"direction,attr"`
	} `xml:"arg"`
}

func (m xmlMethod) sigs() (in, out string) {
	for _, a := range m.Args {
		if a.Direction == "out" {
			out += a.Type
		} else {
			in += a.Type
		}
	}
	return in, out
}

func parseXML(t *testing.T, b []byte) xmlNode {
	t.Helper()
	var n xmlNode
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	if err := d.Decode(&n); err != nil {
		t.Fatalf("bad introspection XML: %v\n%s", err, b)
	}
	return n
}

// TestIntrospectionMatchesMethods checks every interface file against the
// members the Service dispatches: same names, same D-Bus signatures, every
// argument named; and the objects' interfaces all have a file.
func TestIntrospectionMatchesMethods(t *testing.T) {
	s, err := New(Config{Address: "unix:path=/nonexistent", Backend: &fakeBackend{}})
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]*iface{}
	for _, o := range s.objects {
		for name, i := range o.ifaces {
			served[name] = i
		}
	}
	files, err := fs.Glob(Interfaces, "interfaces/*.xml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no embedded interface files: %v", err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		b, _ := Interfaces.ReadFile(f)
		n := parseXML(t, b)
		if len(n.Interfaces) != 1 {
			t.Fatalf("%s: want exactly one interface, got %d", f, len(n.Interfaces))
		}
		x := n.Interfaces[0]
		if filepath.Base(f) != x.Name+".xml" {
			t.Errorf("%s holds interface %s", f, x.Name)
		}
		seen[x.Name] = true
		got, ok := served[x.Name]
		if !ok {
			t.Errorf("%s: interface %s is not served", f, x.Name)
			continue
		}
		xmlMembers := map[string]bool{}
		for _, m := range x.Methods {
			xmlMembers[m.Name] = true
			for _, a := range m.Args {
				if a.Name == "" {
					t.Errorf("%s.%s: unnamed argument", x.Name, m.Name)
				}
			}
			gm, ok := got.members[m.Name]
			if !ok {
				t.Errorf("%s.%s is in the XML but not served", x.Name, m.Name)
				continue
			}
			in, out := m.sigs()
			if in != gm.in[0] || out != gm.out {
				t.Errorf("%s.%s: XML (%s)→(%s), served (%s)→(%s)", x.Name, m.Name, in, out, gm.in[0], gm.out)
			}
			variadic := false
			for _, a := range m.Annotations {
				if a.Name == "org.herald.Variadic" && a.Value == "s" {
					variadic = true
				}
			}
			if variadic != gm.variadic {
				t.Errorf("%s.%s: XML variadic %v, served %v", x.Name, m.Name, variadic, gm.variadic)
			}
		}
		for name := range got.members {
			if !xmlMembers[name] {
				t.Errorf("%s.%s is served but missing from the XML", x.Name, name)
			}
		}
		for _, sg := range x.Signals {
			for _, a := range sg.Args {
				if a.Name == "" || a.Type == "" {
					t.Errorf("%s.%s signal: unnamed or untyped argument", x.Name, sg.Name)
				}
			}
		}
	}
	for name := range served {
		if name != propertiesIface && !seen[name] {
			t.Errorf("interface %s has no XML file", name)
		}
	}
	// The Daemon1 properties are the ones SetStatus publishes.
	b, _ := Interfaces.ReadFile("interfaces/" + DaemonIface + ".xml")
	var props []string
	for _, p := range parseXML(t, b).Interfaces[0].Properties {
		props = append(props, p.Name+":"+p.Type+":"+p.Access)
	}
	var want []string
	for k, v := range statusProps(Status{}) {
		want = append(want, k+":"+v.Signature().String()+":read")
	}
	sort.Strings(props)
	sort.Strings(want)
	if strings.Join(props, ",") != strings.Join(want, ",") {
		t.Errorf("Daemon1 properties: XML %v, served %v", props, want)
	}
}

// TestInstalledInterfacesIdentical checks that data/interfaces holds the
// same files as the embedded ones.
func TestInstalledInterfacesIdentical(t *testing.T) {
	files, _ := fs.Glob(Interfaces, "interfaces/*.xml")
	installed, err := filepath.Glob(filepath.Join("..", "data", "interfaces", "*.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(installed) != len(files) {
		t.Errorf("data/interfaces has %d files, dbusapi/interfaces %d", len(installed), len(files))
	}
	for _, f := range files {
		want, _ := Interfaces.ReadFile(f)
		got, err := os.ReadFile(filepath.Join("..", "data", "interfaces", filepath.Base(f)))
		if err != nil {
			t.Errorf("installed copy missing: %v", err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("data/interfaces/%s differs from dbusapi/%s (copy it)", filepath.Base(f), f)
		}
	}
}
