package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const compactChid = "396be672-c520-4e36-a890-ab03d8d28d28"

// The compact frames of the hot path, byte for byte, and what they decode to.
func TestCompactFrames(t *testing.T) {
	chidHex := "396be672c5204e36a890ab03d8d28d28"
	id := "5vBHft5t06GfxQSywdZ1ZA" // a herald-server message id: 16 bytes in base64url
	idHex := "e6f0477ede6dd3a19fc504b2c1d67564"
	tests := []struct {
		name string
		m    Message
		hex  string
	}{
		{"notification, server id, ttl, plaintext body",
			&Notification{ChannelID: compactChid, Version: id, Data: EncodeBase64URL([]byte("hi")), TTL: 3600},
			"01" + "05" + chidHex + idHex + "901c" + "6869"},
		{"notification, aes128gcm",
			&Notification{ChannelID: compactChid, Version: id, Data: "AAE", Headers: map[string]string{"encoding": "aes128gcm"}, TTL: 60},
			"01" + "0d" + chidHex + idHex + "3c" + "0001"},
		{"notification, SimplePush (decimal version, no body, no ttl)",
			&Notification{ChannelID: compactChid, Version: "1732630000"},
			"01" + "02" + chidHex + "f0ab97ba06"},
		{"notification, string version, aesgcm headers",
			&Notification{ChannelID: compactChid, Version: "v1", Headers: map[string]string{"encoding": "aesgcm"}},
			"01" + "10" + chidHex + "027631" + "01" + "08" + hex.EncodeToString([]byte("encoding")) + "06" + hex.EncodeToString([]byte("aesgcm"))},
		{"ack of two messages of one channel and one of another",
			&Ack{Updates: []Update{{ChannelID: compactChid, Version: id}, {ChannelID: compactChid, Version: "v2", Code: 102},
				{ChannelID: "00000000-0000-4000-8000-000000000000", Version: "007"}}},
			"02" + "01" + chidHex + idHex + "0c" + "027632" + "66" + "00" + "00000000000040008000000000000000" + "03303037"},
		{"empty ack", &Ack{Updates: []Update{}}, "02"},
		{"app_ack", &AppAck{Updates: []Update{{ChannelID: compactChid, Version: "18446744073709551615"}}},
			"03" + "02" + chidHex + "ffffffffffffffffff01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := AppendCompact(nil, tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(b); got != tt.hex {
				t.Fatalf("AppendCompact = %s, want %s", got, tt.hex)
			}
			m, err := DecodeCompact(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.m, m); diff != "" {
				t.Fatalf("round trip (-want +got):\n%s", diff)
			}
			if !IsCompact(b) {
				t.Error("IsCompact is false")
			}
			js, _ := Encode(tt.m)
			if len(b) > len(js) {
				t.Errorf("compact frame of %d bytes is longer than the JSON one (%d)", len(b), len(js))
			}
		})
	}
	if IsCompact([]byte(`{"messageType":"ack","updates":[]}`)) || IsCompact(nil) {
		t.Error("IsCompact of JSON")
	}
}

// The hot path's frame pair is less than half of the JSON one.
func TestCompactSize(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 100)
	n := &Notification{ChannelID: compactChid, Version: "5vBHft5t06GfxQSywdZ1ZA", Data: EncodeBase64URL(body), TTL: 3600}
	js, _ := Encode(n)
	b, _ := AppendCompact(nil, n)
	if want := 1 + 1 + 16 + 16 + 2 + 100; len(b) != want {
		t.Errorf("compact notification is %d bytes, want %d", len(b), want)
	}
	ack := &Ack{Updates: []Update{{ChannelID: n.ChannelID, Version: n.Version}}}
	jsAck, _ := Encode(ack)
	bAck, _ := AppendCompact(nil, ack)
	if len(bAck) != 1+1+16+16 {
		t.Errorf("compact ack is %d bytes", len(bAck))
	}
	t.Logf("notification: JSON %d B, compact %d B; ack: JSON %d B, compact %d B", len(js), len(b), len(jsAck), len(bAck))
}

func TestDecodeCompactRejects(t *testing.T) {
	chid := "396be672c5204e36a890ab03d8d28d28"
	bad := map[string]string{
		"empty":                         "",
		"unknown kind":                  "04",
		"JSON":                          hex.EncodeToString([]byte(`{"messageType":"ack","updates":[]}`)),
		"notification without flags":    "01",
		"short channel":                 "0100" + chid[:30],
		"unknown notification flag":     "0120" + chid + "0176",
		"two header sets":               "0118" + chid + "017600",
		"empty string version":          "0100" + chid + "00",
		"version over 256 bytes":        "0100" + chid + "8102" + strings.Repeat("76", 257),
		"version not UTF-8":             "0100" + chid + "01ff",
		"short version id":              "0101" + chid + "00112233",
		"version form 3":                "0103" + chid + "00",
		"ttl varint cut":                "0104" + chid + "0176" + "ff",
		"ttl over int64":                "0104" + chid + "0176" + "ffffffffffffffff8001",
		"too many headers":              "0110" + chid + "0176" + "11",
		"header twice":                  "0110" + chid + "0176" + "02" + "016101620161016263",
		"header cut":                    "0110" + chid + "0176" + "01" + "0561",
		"body over 4096":                "0100" + chid + "0176" + strings.Repeat("00", MaxBodyBytes+1),
		"ack: first names previous":     "02" + "04" + "0176",
		"ack: unknown flag":             "02" + "10" + chid + "0176",
		"ack: cut":                      "02" + "00" + chid[:20],
		"ack: code over int32":          "02" + "08" + chid + "0176" + "8080808010",
		"ack: code missing":             "02" + "08" + chid + "0176",
		"app_ack: empty version string": "03" + "00" + chid + "00",
	}
	for name, h := range bad {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if m, err := DecodeCompact(b); err == nil {
			t.Errorf("%s: DecodeCompact = %#v, want an error", name, m)
		} else if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: error %v does not wrap ErrInvalid", name, err)
		}
	}
	// An ack of more than MaxCompactUpdates updates, in a frame well under
	// the size limit.
	many := []byte{compactAck, versionString}
	many = append(many, make([]byte, 16)...)
	many = append(many, 1, 'v')
	for range MaxCompactUpdates {
		many = append(many, versionString|uflagSameChannel, 1, 'v')
	}
	if _, err := DecodeCompact(many); err == nil {
		t.Errorf("an ack of %d updates decodes", MaxCompactUpdates+1)
	}
	if _, err := DecodeCompact(many[:len(many)-3]); err != nil {
		t.Errorf("an ack of %d updates: %v", MaxCompactUpdates, err)
	}
	if _, err := AppendCompact(nil, &Ack{Updates: make([]Update, MaxCompactUpdates+1)}); err == nil {
		t.Error("AppendCompact writes more than MaxCompactUpdates updates")
	}
	for _, m := range []Message{&Hello{}, &Ping{}, nil,
		&Notification{ChannelID: "nope", Version: "v"},
		&Notification{ChannelID: compactChid, Version: "v", Data: "***"},
		&Notification{ChannelID: compactChid, Version: "v", TTL: -1},
		&Ack{Updates: []Update{{ChannelID: "NOPE", Version: "v"}}},
		&Ack{Updates: []Update{{ChannelID: compactChid, Version: "v", Code: -1}}},
	} {
		if b, err := AppendCompact([]byte("x"), m); err == nil || string(b) != "x" {
			t.Errorf("AppendCompact(%#v) = %q, %v; want an error and nothing appended", m, b, err)
		}
	}
}

// A notification whose body is too long still names its channel and
// version, for its ack as not delivered.
func TestCompactUndeliverable(t *testing.T) {
	b, _ := AppendCompactNotification(nil, compactChid, "v9", make([]byte, MaxBodyBytes+1), nil, 0)
	if _, err := DecodeCompact(b); err == nil {
		t.Fatal("a body over the limit decodes")
	}
	chid, v, ok := CompactUndeliverable(b)
	if !ok || chid != compactChid || v != "v9" {
		t.Fatalf("CompactUndeliverable = %q, %q, %v", chid, v, ok)
	}
	for _, f := range [][]byte{nil, {compactAck, 0}, b[:10], {compactNotification, 0x03}} {
		if _, _, ok := CompactUndeliverable(f); ok {
			t.Errorf("CompactUndeliverable(%x) is ok", f)
		}
	}
}

func TestCompactCompressible(t *testing.T) {
	plain, _ := AppendCompactNotification(nil, compactChid, "v", bytes.Repeat([]byte("a"), 300), nil, 60)
	enc, _ := AppendCompactNotification(nil, compactChid, "v", bytes.Repeat([]byte("a"), 300), map[string]string{"encoding": "aes128gcm"}, 60)
	small, _ := AppendCompactNotification(nil, compactChid, "v", bytes.Repeat([]byte("a"), 100), nil, 60)
	if !CompactCompressible(plain) || CompactCompressible(enc) || CompactCompressible(small) {
		t.Errorf("CompactCompressible: plain 300 B %v, aes128gcm %v, plain 100 B %v",
			CompactCompressible(plain), CompactCompressible(enc), CompactCompressible(small))
	}
}

// FuzzDecodeCompact checks that any frame DecodeCompact accepts is valid,
// survives AppendCompact and decodes to an equal message.
// Seeds: testdata/fuzz/FuzzDecodeCompact.
func FuzzDecodeCompact(f *testing.F) {
	f.Add([]byte{compactAck})
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, err := DecodeCompact(frame)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if chid, v, ok := CompactUndeliverable(frame); ok && (!ValidChannelID(chid) || v == "" || len(v) > maxVersionBytes) {
				t.Fatalf("CompactUndeliverable = %q, %q", chid, v)
			}
			return
		}
		if err := Validate(m); err != nil {
			t.Fatalf("decoded message is not valid: %v", err)
		}
		b, err := AppendCompact(nil, m)
		if err != nil {
			t.Fatalf("encode %#v: %v", m, err)
		}
		if len(b) > len(frame) {
			t.Fatalf("re-encoded frame of %d bytes is longer than the %d decoded", len(b), len(frame))
		}
		m2, err := DecodeCompact(b)
		if err != nil {
			t.Fatalf("decode of encoded %x: %v", b, err)
		}
		if diff := cmp.Diff(m, m2); diff != "" {
			t.Fatalf("round trip of %x changed (-first +second):\n%s", frame, diff)
		}
		// The same message in JSON: what a device without the extension gets.
		js, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		m3, err := Decode(js)
		if err != nil {
			t.Fatalf("JSON of a compact frame: %v", err)
		}
		if diff := cmp.Diff(m, m3); diff != "" {
			t.Fatalf("JSON round trip of %x changed (-compact +JSON):\n%s", frame, diff)
		}
	})
}

// FuzzCompactNotification checks that any valid notification has a compact
// frame that decodes to it and is no longer than its JSON frame (so the
// server's frame-size check of the JSON form covers both).
func FuzzCompactNotification(f *testing.F) {
	f.Add("5vBHft5t06GfxQSywdZ1ZA", []byte("data"), "encoding", "aes128gcm", "", "", int64(60))
	f.Add("1732630000", []byte{}, "", "", "", "", int64(0))
	f.Add("v1", []byte{0xff}, "encoding", "aesgcm", "crypto_key", "dh=x", int64(1<<40))
	f.Fuzz(func(t *testing.T, version string, data []byte, k1, v1, k2, v2 string, ttl int64) {
		n := &Notification{ChannelID: compactChid, Version: version, TTL: ttl}
		if len(data) > 0 {
			n.Data = EncodeBase64URL(data)
		}
		if k1 != "" || k2 != "" {
			n.Headers = map[string]string{k1: v1, k2: v2}
		}
		js, err := Encode(n)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Decode(js)
		if err != nil {
			return // not a valid notification (or one JSON rewrites): nothing to compare
		}
		b, err := AppendCompact(nil, want)
		if err != nil {
			t.Fatalf("AppendCompact(%#v): %v", want, err)
		}
		if len(b) > len(js) {
			t.Fatalf("compact frame of %d bytes is longer than the JSON one (%d)", len(b), len(js))
		}
		got, err := DecodeCompact(b)
		if err != nil {
			t.Fatalf("DecodeCompact(%x): %v", b, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("round trip (-want +got):\n%s", diff)
		}
	})
}

// BenchmarkDecodeNotification compares what a device does per notification:
// Decode of the JSON frame against DecodeCompact of the compact one.
func BenchmarkDecodeNotification(b *testing.B) {
	n := &Notification{ChannelID: compactChid, Version: "5vBHft5t06GfxQSywdZ1ZA",
		Data: EncodeBase64URL(bytes.Repeat([]byte("x"), 100)), Headers: map[string]string{"encoding": "aes128gcm"}, TTL: 600}
	js, _ := Encode(n)
	cf, _ := AppendCompact(nil, n)
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Decode(js); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("compact", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeCompact(cf); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkAppendCompactNotification is the server's encoding of an
// encrypted message's compact frame (BenchmarkAppendNotification in server
// is the JSON one).
func BenchmarkAppendCompactNotification(b *testing.B) {
	data := bytes.Repeat([]byte("x"), 100)
	headers := map[string]string{"encoding": "aes128gcm"}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = AppendCompactNotification(buf[:0], compactChid, "wlEukmjadJ4_-f3dwhjaDQ", data, headers, 600)
	}
}

// BenchmarkDecodeCompactAck is the server's decoding of a compact ack of one
// message (server's BenchmarkParseAck-like JSON fast path: parseAck).
func BenchmarkDecodeCompactAck(b *testing.B) {
	f, _ := AppendCompact(nil, &Ack{Updates: []Update{{ChannelID: compactChid, Version: "wlEukmjadJ4_-f3dwhjaDQ"}}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeCompact(f); err != nil {
			b.Fatal(err)
		}
	}
}

func TestChannelIDBytes(t *testing.T) {
	for _, s := range []string{compactChid, NewChannelID(), "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
		"", "396BE672-C520-4E36-A890-AB03D8D28D28", "396be672-c520-4e36-a890-ab03d8d28d2", "396be672-c520-4e36-a890-ab03d8d28d28a",
		"396be672c-520-4e36-a890-ab03d8d28d28", "396be672-c520-4e36-a890-ab03d8d28d2g", "396be672-c520-4e36-a890+ab03d8d28d28"} {
		raw, ok := channelIDBytes(s)
		if ok != ValidChannelID(s) {
			t.Errorf("channelIDBytes(%q) ok = %v, ValidChannelID = %v", s, ok, !ok)
			continue
		}
		if ok {
			d := compactReader{p: raw[:]}
			if back, _ := d.channelID(); back != s {
				t.Errorf("channelIDBytes(%q) = %x, back %q", s, raw, back)
			}
		}
	}
}
