package lomiri

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The exchange of REFERENCE §1.10 as the dev server and client write it.
func TestExampleExchange(t *testing.T) {
	tests := []struct {
		frame string
		want  Message
	}{
		{`{"T":"connect","ClientVer":"","DeviceId":"DEV1","Authorization":"","Cookie":"","Info":{"device":"mako"},"Levels":{}}`,
			&Connect{DeviceId: "DEV1", Info: map[string]any{"device": "mako"}, Levels: map[string]int64{}}},
		{`{"T":"connack","Params":{"PingInterval":"10s"}}`, &ConnAck{Params: ConnAckParams{PingInterval: "10s"}}},
		{`{"T":"notifications","Notifications":[{"A":"com.example.app_app","M":"ZBkgIedpEfGd/yZ6E2kKDg==","P":{"n":2}}]}`,
			&Notifications{Notifications: []Notification{{AppID: "com.example.app_app", MsgID: "ZBkgIedpEfGd/yZ6E2kKDg==", Payload: json.RawMessage(`{"n":2}`)}}}},
		{`{"T":"ack"}`, &Ack{}},
		{`{"T":"nak"}`, &Ack{Nak: true}},
		{`{"T":"ping"}`, &Ping{}},
		{`{"T":"pong"}`, &Pong{}},
		{`{"T":"broadcast","ChanId":"0","TopLevel":2,"Payloads":[{"a/b":[3,""]}]}`,
			&Broadcast{ChanId: "0", TopLevel: 2, Payloads: []json.RawMessage{json.RawMessage(`{"a/b":[3,""]}`)}}},
		{`{"T":"connbroken","Reason":"host-mismatch"}`, &ConnBroken{Reason: BrokenHostMismatch}},
		{`{"T":"connwarn","Reason":"unauthorized"}`, &ConnWarn{Reason: WarnUnauthorized}},
		{`{"T":"warn","Reason":"unauthorized"}`, &ConnWarn{Reason: WarnUnauthorized, Warn: true}},
		{`{"T":"setparams","SetCookie":"c"}`, &SetParams{SetCookie: "c"}},
		{`{"T":"query-levels"}`, &Unknown{T: "query-levels"}},
	}
	for _, tt := range tests {
		t.Run(tt.want.Type(), func(t *testing.T) {
			m, err := Decode([]byte(tt.frame))
			if err != nil {
				t.Fatalf("Decode(%s): %v", tt.frame, err)
			}
			if !reflect.DeepEqual(m, tt.want) {
				t.Fatalf("Decode(%s) = %#v, want %#v", tt.frame, m, tt.want)
			}
			if _, ok := m.(*Unknown); ok {
				if _, err := Encode(m); err == nil {
					t.Fatal("Encode of an unknown type succeeded")
				}
				return
			}
			b, err := Encode(m)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if tt.want.Type() == TypeConnect {
				// Field order is Go's; compare as JSON values.
				var a, b2 any
				json.Unmarshal([]byte(tt.frame), &a)
				json.Unmarshal(b, &b2)
				if !reflect.DeepEqual(a, b2) {
					t.Fatalf("Encode = %s, want %s", b, tt.frame)
				}
				return
			}
			if string(b) != tt.frame {
				t.Fatalf("Encode = %s, want %s", b, tt.frame)
			}
		})
	}
}

func TestConnectOmitsEmptyInfoKeepsLevels(t *testing.T) {
	b, err := Encode(&Connect{DeviceId: "D"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"T":"connect","ClientVer":"","DeviceId":"D","Authorization":"","Cookie":"","Levels":{}}`
	if string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, frame := range []string{
		``, `[]`, `{}`, `{"T":5}`, `nul`,
		`{"T":"connect","DeviceId":""}`,
		`{"T":"connect","DeviceId":"` + strings.Repeat("x", MaxDeviceIDBytes+1) + `"}`,
		`{"T":"connect","DeviceId":"d","Levels":{"":1}}`,
		`{"T":"connect","DeviceId":"d","Levels":{"0":"x"}}`,
		`{"T":"connack","Params":{"PingInterval":"soon"}}`,
		`{"T":"connack","Params":{"PingInterval":"-1s"}}`,
		`{"T":"connack"}`,
		`{"T":"notifications","Notifications":[{"A":"a","M":"","P":1}]}`,
		`{"T":"notifications","Notifications":[{"A":"a","M":"m"}]}`,
		`{"T":"notifications","Notifications":{}}`,
		`{"T":"broadcast","ChanId":"","TopLevel":1,"Payloads":[]}`,
		`{"T":"broadcast","ChanId":"0","TopLevel":-3,"Payloads":[]}`,
		`{"T":"connbroken","Reason":7}`,
	} {
		if m, err := Decode([]byte(frame)); err == nil {
			t.Errorf("Decode(%q) = %#v, want an error", frame, m)
		} else if !errors.Is(err, ErrInvalid) {
			t.Errorf("Decode(%q) error %v does not wrap ErrInvalid", frame, err)
		}
	}
}

func TestPingDuration(t *testing.T) {
	m, err := Decode([]byte(`{"T":"connack","Params":{"PingInterval":"1m30s"}}`))
	if err != nil {
		t.Fatal(err)
	}
	d, err := m.(*ConnAck).PingDuration()
	if err != nil || d != 90*time.Second {
		t.Fatalf("PingDuration = %v, %v", d, err)
	}
}

func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	for _, f := range []string{`{"T":"ping"}`, `{"T":"ack"}`} {
		if err := WriteFrame(&buf, []byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	if got := buf.Bytes()[:2]; got[0] != 0 || got[1] != 12 {
		t.Fatalf("length prefix % x, want 00 0c (big-endian)", got)
	}
	for _, want := range []string{`{"T":"ping"}`, `{"T":"ack"}`} {
		f, err := ReadFrame(&buf, 0)
		if err != nil || string(f) != want {
			t.Fatalf("ReadFrame = %q, %v; want %q", f, err, want)
		}
	}
	if _, err := ReadFrame(&buf, 0); err != io.EOF {
		t.Fatalf("ReadFrame at the end: %v, want EOF", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 5, '{'}), 0); err != io.ErrUnexpectedEOF {
		t.Fatalf("short frame: %v, want ErrUnexpectedEOF", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0}), 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty frame: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0x10, 0}), 100); !errors.Is(err, ErrInvalid) {
		t.Fatalf("frame over max: %v", err)
	}
	if err := WriteFrame(io.Discard, make([]byte, MaxFrameBytes+1)); err == nil {
		t.Fatal("WriteFrame over 65535 bytes succeeded")
	}
}

func TestEncodeTooLarge(t *testing.T) {
	big := json.RawMessage(`"` + strings.Repeat("x", MaxFrameBytes) + `"`)
	if _, err := Encode(&Notifications{Notifications: []Notification{{AppID: "a", MsgID: "m", Payload: big}}}); err == nil {
		t.Fatal("Encode of a frame over 65535 bytes succeeded")
	}
}

func payload(n int) json.RawMessage {
	return json.RawMessage(`"` + strings.Repeat("p", n-2) + `"`)
}

func TestSplitNotifications(t *testing.T) {
	var ns []Notification
	for i := range 70 {
		ns = append(ns, Notification{AppID: "a", MsgID: string(rune('A' + i)), Payload: payload(2048)})
	}
	parts := SplitNotifications(ns)
	if len(parts) != 3 {
		t.Fatalf("%d parts, want 3 (31+31+8 payloads of 2 KiB)", len(parts))
	}
	total := 0
	for _, p := range parts {
		size := 0
		for _, n := range p {
			size += len(n.Payload)
		}
		if size > MaxPayloadBytes {
			t.Fatalf("part of %d payload bytes", size)
		}
		b, err := Encode(&Notifications{Notifications: p})
		if err != nil {
			t.Fatalf("part does not encode: %v", err)
		}
		if len(b) > MaxFrameBytes {
			t.Fatalf("part of %d bytes", len(b))
		}
		total += len(p)
	}
	if total != len(ns) {
		t.Fatalf("parts hold %d notifications, want %d", total, len(ns))
	}
	if got := SplitNotifications(nil); len(got) != 0 {
		t.Fatalf("split of none = %v", got)
	}
}

func TestSplitBroadcast(t *testing.T) {
	b := &Broadcast{ChanId: "0", TopLevel: 100}
	for range 40 {
		b.Payloads = append(b.Payloads, payload(4000))
	}
	parts := SplitBroadcast(b)
	if len(parts) != 3 {
		t.Fatalf("%d parts, want 3", len(parts))
	}
	level := int64(60)
	for _, p := range parts {
		level += int64(len(p.Payloads))
		if p.TopLevel != level {
			t.Fatalf("part TopLevel %d, want %d", p.TopLevel, level)
		}
	}
	if level != 100 {
		t.Fatalf("last part ends at %d, want 100", level)
	}
	one := SplitBroadcast(&Broadcast{ChanId: "0", TopLevel: 5})
	if len(one) != 1 || one[0].TopLevel != 5 {
		t.Fatalf("empty broadcast split = %#v", one)
	}
}

// FuzzDecode checks that every accepted frame encodes again (unless it
// grows past the frame limit) and decodes to the same message.
// Seeds: testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"T":"ping"}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, err := Decode(frame)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if _, ok := m.(*Unknown); ok {
			return
		}
		b, err := Encode(m)
		if err != nil {
			if len(frame) > MaxFrameBytes/2 || bytes.ContainsAny(frame, "<>&\\") {
				return // re-encoding may escape and grow past the limit
			}
			t.Fatalf("Encode(%#v) of an accepted frame: %v", m, err)
		}
		m2, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Encode(m)) = %v for %s", err, b)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the message:\n%#v\n%#v", m, m2)
		}
	})
}

// FuzzReadFrame checks that frames read back are within the limit and that
// writing them again gives the bytes they were read from.
// Seeds: testdata/fuzz/FuzzReadFrame.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		var out bytes.Buffer
		for {
			fr, err := ReadFrame(r, 0)
			if err != nil {
				break
			}
			if len(fr) == 0 || len(fr) > MaxFrameBytes {
				t.Fatalf("frame of %d bytes", len(fr))
			}
			if err := WriteFrame(&out, fr); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.HasPrefix(in, out.Bytes()) {
			t.Fatal("frames written again differ from the input")
		}
	})
}
