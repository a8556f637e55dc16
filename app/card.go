package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Notification is what a push message asks to show: the "notification"
// object of the helper output (Lomiri's schema). Its JSON form is that
// schema; helpers.ParseOutput is the lenient parser of untrusted helper
// output, EncodeNotification/DecodeNotification the stored form.
type Notification struct {
	Tag           string         `json:"tag,omitempty"`
	Card          *Card          `json:"card,omitempty"`           // nil: no bubble, no persistent entry
	Sound         *Sound         `json:"sound,omitempty"`          // nil: silent
	Vibrate       *Vibration     `json:"vibrate,omitempty"`        // nil: no vibration
	EmblemCounter *EmblemCounter `json:"emblem-counter,omitempty"` // nil: counter unchanged
}

// Card is the visible part of a notification. helpers.ParseOutput drops a
// card without a summary, so a card that reaches presentation has one.
type Card struct {
	Summary   string   `json:"summary"`
	Body      string   `json:"body,omitempty"`
	Actions   []string `json:"actions,omitempty"` // URLs; the first is the default action
	Icon      string   `json:"icon,omitempty"`
	Timestamp int64    `json:"timestamp,omitempty"` // seconds since the epoch; 0 means now
	Persist   bool     `json:"persist,omitempty"`
	Popup     bool     `json:"popup,omitempty"`
}

// Sound is "sound": true (Default) or "sound": "path" (Path, relative to the
// app's sound directories).
type Sound struct {
	Default bool
	Path    string
}

// MarshalJSON writes true or the path.
func (s Sound) MarshalJSON() ([]byte, error) {
	if s.Path != "" && !s.Default {
		return json.Marshal(s.Path)
	}
	return []byte("true"), nil
}

// UnmarshalJSON reads true or a path; false and "" are errors here (the
// helper parser turns them into no sound before).
func (s *Sound) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case bool:
		if v {
			*s = Sound{Default: true}
			return nil
		}
	case string:
		if v != "" {
			*s = Sound{Path: v}
			return nil
		}
	}
	return errors.New("sound: want true or a path")
}

// Vibration is "vibrate": true (Default) or {"pattern": [ms…], "repeat": n}.
type Vibration struct {
	Default bool
	Pattern []uint32
	Repeat  uint32
}

type vibrationObject struct {
	Pattern []uint32 `json:"pattern"`
	Repeat  uint32   `json:"repeat,omitempty"`
}

// MarshalJSON writes true or the pattern object.
func (v Vibration) MarshalJSON() ([]byte, error) {
	if v.Default || len(v.Pattern) == 0 {
		return []byte("true"), nil
	}
	return json.Marshal(vibrationObject{Pattern: v.Pattern, Repeat: v.Repeat})
}

// UnmarshalJSON reads true or a pattern object.
func (v *Vibration) UnmarshalJSON(b []byte) error {
	var d bool
	if err := json.Unmarshal(b, &d); err == nil {
		if !d {
			return errors.New("vibrate: want true or a pattern")
		}
		*v = Vibration{Default: true}
		return nil
	}
	var o vibrationObject
	if err := json.Unmarshal(b, &o); err != nil {
		return fmt.Errorf("vibrate: %w", err)
	}
	*v = Vibration{Pattern: o.Pattern, Repeat: o.Repeat}
	return nil
}

// EmblemCounter is the launcher badge of the app.
type EmblemCounter struct {
	Count   int32 `json:"count"`
	Visible bool  `json:"visible"`
}

// StoredFormat is the version of the stored form written by
// EncodeNotification and EncodeCard. Version 0 is what Herald stored before
// it had one: helper output JSON {"notification": …} for notifications and
// a card object with Go field names ("Summary", …) for cards; both are still
// read.
const StoredFormat = 1

type storedNotification struct {
	Format       int           `json:"format"`
	Notification *Notification `json:"notification"`
}

type storedCard struct {
	Format int   `json:"format"`
	Card   *Card `json:"card"`
}

// EncodeNotification is the stored form of n.
func EncodeNotification(n *Notification) ([]byte, error) {
	if n == nil {
		return nil, errors.New("cannot store an empty notification")
	}
	return json.Marshal(storedNotification{Format: StoredFormat, Notification: n})
}

// DecodeNotification reads what EncodeNotification wrote (any format up to
// StoredFormat). A newer format is an error, not a blank notification.
func DecodeNotification(b []byte) (*Notification, error) {
	var s storedNotification
	if err := decodeStored(b, &s, &s.Format); err != nil {
		return nil, fmt.Errorf("cannot read stored notification: %w", err)
	}
	if s.Notification == nil {
		return nil, errors.New("cannot read stored notification: none")
	}
	return s.Notification, nil
}

// EncodeCard is the stored form of a shown card.
func EncodeCard(c Card) ([]byte, error) {
	return json.Marshal(storedCard{Format: StoredFormat, Card: &c})
}

// DecodeCard reads what EncodeCard wrote, and the untagged cards of format
// 0 (encoding/json matches their field names case-insensitively).
func DecodeCard(b []byte) (Card, error) {
	var s storedCard
	if err := decodeStored(b, &s, &s.Format); err != nil {
		return Card{}, fmt.Errorf("cannot read stored card: %w", err)
	}
	if s.Format == 0 {
		var c Card
		if err := json.Unmarshal(b, &c); err != nil {
			return Card{}, fmt.Errorf("cannot read stored card: %w", err)
		}
		return c, nil
	}
	if s.Card == nil {
		return Card{}, errors.New("cannot read stored card: none")
	}
	return *s.Card, nil
}

func decodeStored(b []byte, dst any, format *int) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return errors.New("empty")
	}
	if err := json.Unmarshal(b, dst); err != nil {
		return err
	}
	if *format < 0 || *format > StoredFormat {
		return fmt.Errorf("format %d is newer than this program (%d)", *format, StoredFormat)
	}
	return nil
}
