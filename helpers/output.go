package helpers

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/heraldpush/herald/app"
)

// Output is what a helper produced for one message: Message is queued for the
// app (PopAll), Notification is presented. Both may be nil.
type Output struct {
	Message      json.RawMessage
	Notification *app.Notification
}

// Errors wrapped by ParseOutput and Runner.Process. Callers branch on them
// with errors.Is.
var (
	ErrBadOutput = errors.New("invalid helper output")
	ErrNoOutput  = errors.New("helper wrote no output")
	ErrExit      = errors.New("helper failed")
	ErrTimeout   = errors.New("helper timed out")
	ErrStart     = errors.New("cannot start helper")
)

var jsonNull = []byte("null")

// ParseOutput parses helper output JSON (the Lomiri schema) as leniently as
// upstream's helper_output.go: the output must be a JSON object (or null);
// "message" is any JSON value (kept compacted); "notification", its "tag",
// "card" and "emblem-counter" are type-checked, and a wrong type there makes
// the whole output invalid (the error wraps ErrBadOutput). "sound" and
// "vibrate" are read as upstream reads them later: a value of another type
// only means no sound or no vibration, never an invalid card. Unknown fields
// are ignored, a null field is the same as a missing one, and {} is a valid
// output with nothing to queue or show.
func ParseOutput(b []byte) (*Output, error) {
	if bytes.Equal(bytes.TrimSpace(b), jsonNull) {
		return &Output{}, nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOutput, err)
	}
	out := &Output{}
	if m, ok := top["message"]; ok {
		var buf bytes.Buffer
		if err := json.Compact(&buf, m); err != nil {
			return nil, fmt.Errorf("%w: message: %w", ErrBadOutput, err)
		}
		out.Message = buf.Bytes()
	}
	if n, ok := top["notification"]; ok {
		nt, err := parseNotification(n)
		if err != nil {
			return nil, fmt.Errorf("%w: notification: %w", ErrBadOutput, err)
		}
		out.Notification = nt
	}
	return out, nil
}

func parseNotification(raw json.RawMessage) (*app.Notification, error) {
	obj, err := object(raw)
	if err != nil || obj == nil {
		return nil, err
	}
	n := &app.Notification{}
	if n.Tag, err = str(obj["tag"]); err != nil {
		return nil, fmt.Errorf("tag: %w", err)
	}
	if n.Card, err = parseCard(obj["card"]); err != nil {
		return nil, fmt.Errorf("card: %w", err)
	}
	n.Sound = parseSound(obj["sound"])
	n.Vibrate = parseVibration(obj["vibrate"])
	if n.EmblemCounter, err = parseCounter(obj["emblem-counter"]); err != nil {
		return nil, fmt.Errorf("emblem-counter: %w", err)
	}
	return n, nil
}

func parseCard(raw json.RawMessage) (*app.Card, error) {
	obj, err := object(raw)
	if err != nil || obj == nil {
		return nil, err
	}
	c := &app.Card{}
	fields := []struct {
		name string
		dst  *string
	}{{"summary", &c.Summary}, {"body", &c.Body}, {"icon", &c.Icon}}
	for _, f := range fields {
		if *f.dst, err = str(obj[f.name]); err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
	}
	if err := decode(obj["actions"], &c.Actions); err != nil {
		return nil, fmt.Errorf("actions: %w", err)
	}
	if len(c.Actions) == 0 {
		c.Actions = nil
	}
	if err := decode(obj["timestamp"], &c.Timestamp); err != nil {
		return nil, fmt.Errorf("timestamp: %w", err)
	}
	if err := decode(obj["persist"], &c.Persist); err != nil {
		return nil, fmt.Errorf("persist: %w", err)
	}
	if err := decode(obj["popup"], &c.Popup); err != nil {
		return nil, fmt.Errorf("popup: %w", err)
	}
	if c.Summary == "" {
		return nil, nil // a card without a summary is not shown
	}
	return c, nil
}

// parseSound reads "sound" as upstream: true is the default sound, a
// non-empty string a sound path, anything else (false, a number, an
// object…) no sound.
func parseSound(raw json.RawMessage) *app.Sound {
	var v any
	if raw == nil || json.Unmarshal(raw, &v) != nil {
		return nil
	}
	switch v := v.(type) {
	case bool:
		if v {
			return &app.Sound{Default: true}
		}
	case string:
		if v != "" {
			return &app.Sound{Path: v}
		}
	}
	return nil
}

// parseVibration reads "vibrate" as upstream: true is the default
// vibration, an object with a non-empty "pattern" of uint32 milliseconds
// (and an optional uint32 "repeat", 0 meaning 1) a pattern; anything else,
// including a wrongly typed pattern, no vibration.
func parseVibration(raw json.RawMessage) *app.Vibration {
	if raw == nil || bytes.Equal(raw, jsonNull) {
		return nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err == nil {
		if b {
			return &app.Vibration{Default: true}
		}
		return nil
	}
	var w struct {
		Pattern []uint32 `json:"pattern"`
		Repeat  uint32   `json:"repeat"`
	}
	if err := json.Unmarshal(raw, &w); err != nil || len(w.Pattern) == 0 {
		return nil
	}
	if w.Repeat == 0 {
		w.Repeat = 1
	}
	return &app.Vibration{Pattern: w.Pattern, Repeat: w.Repeat}
}

func parseCounter(raw json.RawMessage) (*app.EmblemCounter, error) {
	obj, err := object(raw)
	if err != nil || obj == nil {
		return nil, err
	}
	c := &app.EmblemCounter{}
	if err := decode(obj["count"], &c.Count); err != nil {
		return nil, fmt.Errorf("count: %w", err)
	}
	if err := decode(obj["visible"], &c.Visible); err != nil {
		return nil, fmt.Errorf("visible: %w", err)
	}
	return c, nil
}

// object decodes a JSON object; null or missing gives a nil map.
func object(raw json.RawMessage) (map[string]json.RawMessage, error) {
	if raw == nil || bytes.Equal(raw, jsonNull) {
		return nil, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, errors.New("want an object")
	}
	return obj, nil
}

func str(raw json.RawMessage) (string, error) {
	var s string
	err := decode(raw, &s)
	return s, err
}

// decode decodes raw into dst with encoding/json's type checks (an integer
// field rejects fractions, strings and out-of-range values); missing leaves
// dst unchanged.
func decode(raw json.RawMessage, dst any) error {
	if raw == nil {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("want %s, got %s", te.Type, te.Value)
		}
		return err
	}
	return nil
}

// RawOutput is the output used when there is no usable helper output: the
// payload queued for the app as is, and nothing shown. See PayloadMessage.
func RawOutput(payload []byte) *Output {
	return &Output{Message: PayloadMessage(payload)}
}

// PayloadMessage turns a raw payload into the JSON value queued for the app:
// valid JSON as is, other UTF-8 text as a JSON string, and anything else
// (invalid UTF-8) as a JSON string holding the standard base64 of the bytes.
func PayloadMessage(payload []byte) json.RawMessage {
	if json.Valid(payload) {
		return bytes.Clone(payload)
	}
	s := string(payload)
	if !utf8.Valid(payload) {
		s = base64.StdEncoding.EncodeToString(payload)
	}
	b, err := marshalNoEscape(s)
	if err != nil { // cannot happen for a string
		return json.RawMessage(`""`)
	}
	return b
}

// PayloadOutput is the output for an app without a helper: the payload
// itself when it is valid helper output, else RawOutput(payload).
//
// Lenient as ParseOutput is, a payload counts as helper output only when it
// has a "message" or a "notification": {"data": 1} is queued as it is.
func PayloadOutput(payload []byte) *Output {
	if o, err := ParseOutput(payload); err == nil && (o.Message != nil || o.Notification != nil) {
		return o
	}
	return RawOutput(payload)
}

type wireOutput struct {
	Message      json.RawMessage   `json:"message,omitempty"`
	Notification *app.Notification `json:"notification,omitempty"`
}

// MarshalJSON writes o in the helper output schema (the JSON form of
// app.Notification); ParseOutput reads it back to an equal Output.
func (o Output) MarshalJSON() ([]byte, error) {
	return marshalNoEscape(wireOutput{Message: o.Message, Notification: o.Notification})
}

// marshalNoEscape marshals v without HTML escaping, so that a message is
// written back byte for byte.
func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
