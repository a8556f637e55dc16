package app

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestStoredNotificationRoundTrip(t *testing.T) {
	n := &Notification{Tag: "t",
		Card:          &Card{Summary: "S", Body: "B", Actions: []string{"chat://1"}, Icon: "i", Timestamp: 7, Persist: true, Popup: true},
		Sound:         &Sound{Path: "snd/ping.ogg"},
		Vibrate:       &Vibration{Pattern: []uint32{100, 50}, Repeat: 2},
		EmblemCounter: &EmblemCounter{Count: 4, Visible: true}}
	b, err := EncodeNotification(n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeNotification(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, n) {
		t.Errorf("round trip: got %+v, want %+v", got, n)
	}
	// The JSON form is the helper output schema.
	if !strings.Contains(string(b), `"emblem-counter":{"count":4,"visible":true}`) || !strings.Contains(string(b), `"sound":"snd/ping.ogg"`) {
		t.Errorf("stored form %s is not the helper schema", b)
	}
}

func TestStoredFormats(t *testing.T) {
	// Format 0 notification: helper output JSON as Herald kept it before.
	n, err := DecodeNotification([]byte(`{"notification":{"tag":"x","card":{"summary":"old","persist":true},"sound":true,"vibrate":true}}`))
	if err != nil || n.Tag != "x" || n.Card == nil || n.Card.Summary != "old" || !n.Sound.Default || !n.Vibrate.Default {
		t.Errorf("format 0 notification = %+v, %v", n, err)
	}
	// Format 0 card: a struct without JSON tags.
	old, _ := json.Marshal(struct {
		Summary, Body, Icon string
		Actions             []string
		Timestamp           int64
		Persist, Popup      bool
	}{Summary: "old", Body: "b", Actions: []string{"x://"}, Persist: true})
	c, err := DecodeCard(old)
	if err != nil || c.Summary != "old" || c.Body != "b" || !c.Persist || len(c.Actions) != 1 {
		t.Errorf("format 0 card %s = %+v, %v", old, c, err)
	}
	b, _ := EncodeCard(Card{Summary: "new", Persist: true})
	if c, err := DecodeCard(b); err != nil || c.Summary != "new" || !c.Persist {
		t.Errorf("card round trip = %+v, %v", c, err)
	}
	for _, bad := range []string{``, `{"format":2,"card":{"summary":"future"}}`, `{"format":1}`, `[1]`} {
		if c, err := DecodeCard([]byte(bad)); err == nil {
			t.Errorf("DecodeCard(%s) = %+v, want an error", bad, c)
		}
	}
	if n, err := DecodeNotification([]byte(`{"format":9,"notification":{"tag":"x"}}`)); err == nil {
		t.Errorf("newer format accepted: %+v", n)
	}
}
