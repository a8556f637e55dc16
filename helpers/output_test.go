package helpers

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldpush/herald/app"
)

func TestParseOutput(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Output
	}{
		{"message only", `{"message": {"a": [1, 2]}}`, &Output{Message: json.RawMessage(`{"a":[1,2]}`)}},
		{"message null is kept", `{"message": null}`, &Output{Message: json.RawMessage(`null`)}},
		{"message html not escaped", `{"message":"<b>&"}`, &Output{Message: json.RawMessage(`"<b>&"`)}},
		{"full reference example", `{ "message": "m",
			"notification": {
				"tag": "foo",
				"card": { "summary": "Hi", "body": "", "actions": ["appid://com.example.app/app/current-user-version"],
					"icon": "path-or-icon-name", "timestamp": 1407160197, "persist": true, "popup": true },
				"sound": true,
				"vibrate": {"pattern": [200, 100], "repeat": 2},
				"emblem-counter": {"count": 12, "visible": true} } }`,
			&Output{Message: json.RawMessage(`"m"`), Notification: &app.Notification{
				Tag: "foo",
				Card: &app.Card{Summary: "Hi", Actions: []string{"appid://com.example.app/app/current-user-version"},
					Icon: "path-or-icon-name", Timestamp: 1407160197, Persist: true, Popup: true},
				Sound:         &app.Sound{Default: true},
				Vibrate:       &app.Vibration{Pattern: []uint32{200, 100}, Repeat: 2},
				EmblemCounter: &app.EmblemCounter{Count: 12, Visible: true},
			}}},
		{"card without summary dropped", `{"notification": {"card": {"body": "x", "popup": true}}}`,
			&Output{Notification: &app.Notification{}}},
		{"sound path, vibrate true, repeat default", `{"notification": {"sound": "a.ogg", "vibrate": true}}`,
			&Output{Notification: &app.Notification{Sound: &app.Sound{Path: "a.ogg"}, Vibrate: &app.Vibration{Default: true}}}},
		{"false sound and vibrate are none", `{"notification": {"sound": false, "vibrate": false}}`,
			&Output{Notification: &app.Notification{}}},
		{"empty pattern is none, repeat 0 is 1", `{"notification": {"vibrate": {"pattern": []}, "tag": "a"}, "message": 1}`,
			&Output{Message: json.RawMessage(`1`), Notification: &app.Notification{Tag: "a"}}},
		{"repeat 0 means 1", `{"notification": {"vibrate": {"pattern": [5]}}}`,
			&Output{Notification: &app.Notification{Vibrate: &app.Vibration{Pattern: []uint32{5}, Repeat: 1}}}},
		{"unknown fields and nulls ignored", `{"x": 1, "notification": {"y": [], "card": {"summary": "s", "body": null, "z": {}}, "emblem-counter": null}}`,
			&Output{Notification: &app.Notification{Card: &app.Card{Summary: "s"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOutput([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseOutput: %v", err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("ParseOutput (-want +got):\n%s", d)
			}
		})
	}
}

// TestParseOutputLenient checks what upstream accepts although Herald once
// refused it: {} and null, unknown fields only, and a wrongly typed "sound"
// or "vibrate", which only means no sound or no vibration.
func TestParseOutputLenient(t *testing.T) {
	card := &app.Card{Summary: "s"}
	for _, tt := range []struct {
		in   string
		want *Output
	}{
		{`{}`, &Output{}},
		{`null`, &Output{}},
		{`{"other": 1}`, &Output{}},
		{`{"notification": null}`, &Output{}},
		{`{"message": null}`, &Output{Message: json.RawMessage(`null`)}},
		{`{"notification": {"card": {"summary": "s"}, "sound": 1}}`, &Output{Notification: &app.Notification{Card: card}}},
		{`{"notification": {"card": {"summary": "s"}, "sound": {}}}`, &Output{Notification: &app.Notification{Card: card}}},
		{`{"notification": {"card": {"summary": "s"}, "vibrate": "yes"}}`, &Output{Notification: &app.Notification{Card: card}}},
		{`{"notification": {"card": {"summary": "s"}, "vibrate": {"pattern": [-1]}}}`, &Output{Notification: &app.Notification{Card: card}}},
		{`{"notification": {"card": {"summary": "s"}, "vibrate": {"pattern": [4294967296]}}}`, &Output{Notification: &app.Notification{Card: card}}},
		{`{"notification": {"card": {"summary": "s"}, "vibrate": {"pattern": [1], "repeat": -1}}, "message": 2}`,
			&Output{Message: json.RawMessage(`2`), Notification: &app.Notification{Card: card}}},
		{`{"notification": {"card": {"summary": "s"}, "sound": "a.ogg", "vibrate": {"pattern": [5, 6]}}}`,
			&Output{Notification: &app.Notification{Card: card, Sound: &app.Sound{Path: "a.ogg"}, Vibrate: &app.Vibration{Pattern: []uint32{5, 6}, Repeat: 1}}}},
	} {
		got, err := ParseOutput([]byte(tt.in))
		if err != nil {
			t.Errorf("ParseOutput(%s) = %v, want accepted as upstream", tt.in, err)
			continue
		}
		if d := cmp.Diff(tt.want, got); d != "" {
			t.Errorf("ParseOutput(%s) (-want +got):\n%s", tt.in, d)
		}
	}
}

func TestParseOutputInvalid(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `"message"`, `{`,
		`{"notification": 1}`, `{"notification": {"tag": 1}}`, `{"notification": {"card": []}}`,
		`{"notification": {"card": {"summary": 5}}}`, `{"notification": {"card": {"summary": "s", "actions": "u"}}}`,
		`{"notification": {"card": {"summary": "s", "actions": [1]}}}`,
		`{"notification": {"card": {"summary": "s", "timestamp": 1.5}}}`,
		`{"notification": {"card": {"summary": "s", "timestamp": "1"}}}`,
		`{"notification": {"card": {"summary": "s", "popup": "yes"}}}`,
		`{"notification": {"emblem-counter": {"count": 2147483648}}}`, `{"notification": {"emblem-counter": {"visible": 1}}}`,
		`{"message": 1} trailing`,
	} {
		if o, err := ParseOutput([]byte(in)); !errors.Is(err, ErrBadOutput) {
			t.Errorf("ParseOutput(%s) = %+v, %v; want an ErrBadOutput error", in, o, err)
		}
	}
}

func TestPayloadMessage(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"json object as is", `{"a": 1}`, `{"a": 1}`},
		{"json string as is", `"x"`, `"x"`},
		{"text becomes a string", `hello <world>`, `"hello <world>"`},
		{"empty becomes an empty string", ``, `""`},
		{"invalid utf-8 becomes base64", "\xff\xfe", `"` + base64.StdEncoding.EncodeToString([]byte("\xff\xfe")) + `"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(PayloadMessage([]byte(tt.in))); got != tt.want {
				t.Errorf("PayloadMessage(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestPayloadOutput(t *testing.T) {
	got := PayloadOutput([]byte(`{"message": "m", "notification": {"card": {"summary": "s", "popup": true}}}`))
	want := &Output{Message: json.RawMessage(`"m"`), Notification: &app.Notification{Card: &app.Card{Summary: "s", Popup: true}}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("valid output payload (-want +got):\n%s", d)
	}
	got = PayloadOutput([]byte(`{"data": 1}`))
	if d := cmp.Diff(&Output{Message: json.RawMessage(`{"data": 1}`)}, got); d != "" {
		t.Errorf("other JSON payload (-want +got):\n%s", d)
	}
}

// FuzzParseOutput checks that valid output survives a round trip through
// MarshalJSON unchanged.
func FuzzParseOutput(f *testing.F) {
	f.Add([]byte(`{"message": {"a": 1}, "notification": {"card": {"summary": "s"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseOutput(b)
		if err != nil {
			if !errors.Is(err, ErrBadOutput) {
				t.Fatalf("error %v does not wrap ErrBadOutput", err)
			}
			return
		}
		if o.Notification != nil && o.Notification.Card != nil && o.Notification.Card.Summary == "" {
			t.Fatal("card without summary kept")
		}
		b2, err := o.MarshalJSON()
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", o, err)
		}
		o2, err := ParseOutput(b2)
		if err != nil {
			t.Fatalf("ParseOutput(%s) after round trip: %v", b2, err)
		}
		if d := cmp.Diff(o, o2); d != "" {
			t.Fatalf("round trip of %q via %s changed it (-first +second):\n%s", b, b2, d)
		}
	})
}

// FuzzPayloadMessage checks that any payload is queued as valid JSON that
// gives back the payload.
func FuzzPayloadMessage(f *testing.F) {
	for _, s := range []string{`{"a":1}`, "text", "", "\xff", `"s"`, " 1 "} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := PayloadMessage(b)
		if !json.Valid(m) {
			t.Fatalf("PayloadMessage(%q) = %q, not JSON", b, m)
		}
		if json.Valid(b) {
			if string(m) != string(b) {
				t.Fatalf("valid JSON %q changed to %q", b, m)
			}
			return
		}
		var s string
		if err := json.Unmarshal(m, &s); err != nil {
			t.Fatalf("PayloadMessage(%q) = %s, not a string: %v", b, m, err)
		}
		if utf8.Valid(b) {
			if s != string(b) {
				t.Fatalf("text %q came back as %q", b, s)
			}
			return
		}
		if dec, err := base64.StdEncoding.DecodeString(s); err != nil || string(dec) != string(b) {
			t.Fatalf("binary %q came back as %q (%v)", b, dec, err)
		}
	})
}
