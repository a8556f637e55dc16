package server

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldpush/herald/protocol"
)

const testChid = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"

func TestParseAck(t *testing.T) {
	tests := []struct {
		name  string
		frame string
		fast  bool // parseAck takes it; else protocol.Decode must
	}{
		{"one", `{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":"v1","code":100}]}`, true},
		{"no code", `{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":"v1"}]}`, true},
		{"two", `{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":"a","code":0},{"channelID":"` + testChid + `","version":"b","code":102}]}`, true},
		{"spaces", `{"messageType": "ack", "updates": [{"channelID": "` + testChid + `", "version": "v1"}]}`, false},
		{"other order", `{"updates":[{"version":"v1","channelID":"` + testChid + `"}],"messageType":"ack"}`, false},
		{"escaped version", `{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":"a\u0041"}]}`, false},
		{"empty", `{"messageType":"ack","updates":[]}`, false},
		{"big code", `{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":"v","code":1234567890}]}`, false},
		{"trailing", `{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":"v"}]} `, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := protocol.Decode([]byte(tt.frame))
			if err != nil {
				t.Fatalf("protocol.Decode: %v", err)
			}
			got, ok := parseAck([]byte(tt.frame))
			if ok != tt.fast {
				t.Fatalf("parseAck ok = %v, want %v", ok, tt.fast)
			}
			if ok {
				if diff := cmp.Diff(want, protocol.Message(got)); diff != "" {
					t.Fatalf("parseAck differs from protocol.Decode (-want +got):\n%s", diff)
				}
			}
		})
	}
	// Invalid acks are never taken by the fast path.
	for _, bad := range []string{
		`{"messageType":"ack","updates":[{"channelID":"not-a-uuid","version":"v"}]}`,
		`{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":""}]}`,
		`{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":"v"}`,
	} {
		if _, ok := parseAck([]byte(bad)); ok {
			t.Errorf("parseAck took %s", bad)
		}
	}
}

// FuzzParseAck checks that whatever the fast ack parser takes, protocol.Decode
// takes too and decodes to the same ack. Seeds: testdata/fuzz/FuzzParseAck.
func FuzzParseAck(f *testing.F) {
	f.Add([]byte(`{"messageType":"ack","updates":[{"channelID":"` + testChid + `","version":"v1","code":100}]}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		got, ok := parseAck(frame)
		if !ok {
			return
		}
		want, err := protocol.Decode(frame)
		if err != nil {
			t.Fatalf("parseAck took a frame protocol.Decode rejects: %v", err)
		}
		if diff := cmp.Diff(want, protocol.Message(got)); diff != "" {
			t.Fatalf("parseAck differs from protocol.Decode (-want +got):\n%s", diff)
		}
	})
}

func TestAppendNotification(t *testing.T) {
	tests := []struct {
		name    string
		version string
		data    []byte
		headers map[string]string
		ttl     int64
	}{
		{"bare", "0123456789abcdef0123456789abcdef", nil, nil, 0},
		{"data and ttl", "v", []byte("hello\x00\xff"), map[string]string{"encoding": "aes128gcm"}, 600},
		{"two plain headers", "v", []byte("x"), map[string]string{"encoding": "aesgcm", "crypto_key": "dh=abc"}, -5},
		{"escapes", "<a&b>\"\\\n", nil, map[string]string{"crypto_key": "dh=abc;p256ecdsa=x", "encryption": "salt=\u00e9\xff", "encoding": "aesgcm"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkNotification(t, testChid, tt.version, tt.data, tt.headers, tt.ttl)
		})
	}
}

func checkNotification(t *testing.T, chid, version string, data []byte, headers map[string]string, ttl int64) {
	t.Helper()
	n := &protocol.Notification{ChannelID: chid, Version: version, Headers: headers, TTL: ttl}
	if len(data) > 0 {
		n.Data = protocol.EncodeBase64URL(data)
	}
	want, err := protocol.Encode(n)
	if err != nil {
		t.Fatal(err)
	}
	got := appendNotification(nil, chid, version, data, headers, ttl)
	if !bytes.Equal(got, want) {
		t.Fatalf("appendNotification:\n got %s\nwant %s", got, want)
	}
	if n := notificationLen(chid, version, data, headers, ttl); n != len(want) {
		t.Fatalf("notificationLen = %d, want %d (%s)", n, len(want), want)
	}
}

// FuzzAppendNotification checks that the notification frame written without
// reflection is byte for byte the one protocol.Encode writes.
// Seeds: testdata/fuzz/FuzzAppendNotification.
func FuzzAppendNotification(f *testing.F) {
	f.Add("v1", []byte("data"), "encoding", "aes128gcm", "", "", int64(60))
	f.Fuzz(func(t *testing.T, version string, data []byte, k1, v1, k2, v2 string, ttl int64) {
		var headers map[string]string
		if k1 != "" || k2 != "" {
			headers = map[string]string{k1: v1, k2: v2}
		}
		checkNotification(t, testChid, version, data, headers, ttl)
	})
}
