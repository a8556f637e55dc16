package protocol

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzDecode checks that any frame Decode accepts survives Encode and decodes
// to an equal message. Seeds (testdata/fuzz/FuzzDecode) are the frames of
// Firefox and autopush.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, err := Decode(frame)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("encode %#v: %v", m, err)
		}
		m2, err := Decode(b)
		if err != nil {
			t.Fatalf("decode of encoded %s: %v", b, err)
		}
		if diff := cmp.Diff(m, m2); diff != "" {
			t.Fatalf("round trip of %s changed (-first +second):\n%s", frame, diff)
		}
	})
}

func TestDecode(t *testing.T) {
	chid := "396be672-c520-4e36-a890-ab03d8d28d28"
	tests := []struct {
		frame string
		want  Message
	}{
		{`{}`, &Ping{}},
		{`{"messageType":"ping"}`, &Ping{}},
		{`{"messageType":"hello","broadcasts":{},"use_webpush":true,"uaid":"4b6ec961654a6f2bfc3815ecf9f4208c"}`,
			&Hello{UAID: "4b6ec961654a6f2bfc3815ecf9f4208c", UseWebPush: true, Broadcasts: map[string]string{}}},
		{`{"channelID":"` + chid + `","messageType":"register","key":"BFox="}`, &Register{ChannelID: chid, Key: "BFox="}},
		{`{"messageType":"ack","updates":[{"channelID":"` + chid + `","version":"v1","code":100}]}`,
			&Ack{Updates: []Update{{ChannelID: chid, Version: "v1", Code: 100}}}},
		{`{"messageType":"nack","version":"v1","code":302}`, &Nack{Version: "v1", Code: 302}},
		{`{"messageType":"notification","channelID":"` + chid + `","version":"v","data":"aGk","headers":{"encoding":"aes128gcm"}}`,
			&Notification{ChannelID: chid, Version: "v", Data: "aGk", Headers: map[string]string{"encoding": "aes128gcm"}}},
		{`{"messageType":"hello","uaid":"4b6ec961654a6f2bfc3815ecf9f4208c","use_webpush":true,"urgency":"low"}`,
			&Hello{UAID: "4b6ec961654a6f2bfc3815ecf9f4208c", UseWebPush: true, Broadcasts: map[string]string{}, Urgency: "low"}},
		{`{"messageType":"hello","uaid":"4b6ec961654a6f2bfc3815ecf9f4208c","status":200,"use_webpush":true,"herald_extensions":["urgency","app_ack"]}`,
			&Hello{UAID: "4b6ec961654a6f2bfc3815ecf9f4208c", Status: 200, UseWebPush: true, Broadcasts: map[string]string{},
				Extensions: []string{ExtUrgency, ExtAppAck}}},
		{`{"messageType":"urgency","min":"very-low"}`, &Urgency{Min: "very-low"}},
		{`{"messageType":"urgency","status":200}`, &Urgency{Status: 200}},
		{`{"messageType":"app_ack","updates":[{"channelID":"` + chid + `","version":"v1"}]}`,
			&AppAck{Updates: []Update{{ChannelID: chid, Version: "v1"}}}},
		{`{"messageType":"batch","size":100}`, &Batch{Size: 100}},
		{`{"messageType":"batch","size":50,"status":200}`, &Batch{Size: 50, Status: 200}},
	}
	for _, tt := range tests {
		got, err := Decode([]byte(tt.frame))
		if err != nil {
			t.Errorf("Decode(%s): %v", tt.frame, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Decode(%s) (-want +got):\n%s", tt.frame, diff)
		}
	}
	bad := []string{
		``, `[]`, `{"a":1}`, `{"messageType":""}`, `{"messageType":"register","channelID":"NOT"}`,
		`{"messageType":"register","channelID":"396BE672-C520-4E36-A890-AB03D8D28D28"}`,
		`{"messageType":"ack","updates":[{"channelID":"` + chid + `","version":""}]}`,
		`{"messageType":"notification","channelID":"` + chid + `","version":"v","data":"***"}`,
		`{"messageType":"notification","channelID":"` + chid + `","version":"v","data":"` + strings.Repeat("A", 5500) + `"}`,
		`{"messageType":"hello","uaid":"` + strings.Repeat("a", 129) + `"}`,
		`{"messageType":"hello","urgency":"urgent"}`,
		`{"messageType":"urgency","min":"HIGH"}`,
		`{"messageType":"batch","size":101}`, `{"messageType":"batch","size":-1}`,
		`{"messageType":"app_ack","updates":[{"channelID":"nope","version":"v"}]}`,
		`{"messageType":"ack","updates":[]}` + strings.Repeat(" ", MaxFrameBytes),
	}
	for _, frame := range bad {
		if m, err := Decode([]byte(frame)); err == nil {
			t.Errorf("Decode(%.60q) = %#v, want an error", frame, m)
		}
	}
	if m, err := Decode([]byte(`{"messageType":"broadcast_subscribe","broadcasts":{}}`)); err != nil || m.Type() != "broadcast_subscribe" {
		t.Errorf("unknown type: %#v, %v", m, err)
	}
}

func TestUrgencyRank(t *testing.T) {
	for i, u := range []string{"very-low", "low", "normal", "high"} {
		if r, ok := UrgencyRank(u); !ok || r != i || UrgencyName(r) != u {
			t.Errorf("UrgencyRank(%q) = %d, %v", u, r, ok)
		}
	}
	if _, ok := UrgencyRank("urgent"); ok {
		t.Error("UrgencyRank accepts urgent")
	}
	if !(&Hello{Extensions: []string{ExtAppAck}}).Supports(ExtAppAck) || (&Hello{}).Supports(ExtUrgency) {
		t.Error("Hello.Supports")
	}
}

func TestIDs(t *testing.T) {
	if u := NewUAID(); !ValidUAID(u) || u == NewUAID() {
		t.Errorf("NewUAID %q", u)
	}
	if c := NewChannelID(); !ValidChannelID(c) || c[14] != '4' {
		t.Errorf("NewChannelID %q", c)
	}
	for _, s := range []string{"aGk", "aGk=", "aGk=="} {
		if b, err := DecodeBase64URL(s); err != nil || string(b) != "hi" {
			t.Errorf("DecodeBase64URL(%q) = %q, %v", s, b, err)
		}
	}
	if EncodeBase64URL([]byte{0xfb, 0xff}) != "-_8" {
		t.Error("EncodeBase64URL is not unpadded base64url")
	}
}
