package webpush

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

// hmacSHA256 is HKDF-Extract written out (HMAC-SHA-256 keyed with the salt),
// independent of crypto/hkdf that the package uses.
func hmacSHA256(t testing.TB, key, msg []byte) []byte {
	t.Helper()
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func b64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("bad base64url %q: %v", s, err)
	}
	return b
}

// TestRFC8291Intermediates checks every intermediate value of RFC 8291
// Appendix A.
func TestRFC8291Intermediates(t *testing.T) {
	uaPriv, err := ecdh.P256().NewPrivateKey(b64(t, "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"))
	if err != nil {
		t.Fatal(err)
	}
	asPriv, err := ecdh.P256().NewPrivateKey(b64(t, "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
	if err != nil {
		t.Fatal(err)
	}
	uaPub, asPub := uaPriv.PublicKey().Bytes(), asPriv.PublicKey().Bytes()
	auth := b64(t, "BTBZMqHH6r4Tts7J_aSIgg")
	salt := b64(t, "DGv6ra1nlYgDCS1FRnbzlw")

	secret, err := asPriv.ECDH(uaPriv.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	ikm := webPushIKM(secret, auth, uaPub, asPub)
	prk := hmacSHA256(t, salt, ikm)
	cek, nonce := contentKeys(ikm, salt)
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"ua_public", uaPub, "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"},
		{"as_public", asPub, "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"},
		{"ecdh_secret", secret, "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs"},
		{"PRK_key", hmacSHA256(t, auth, secret), "Snr3JMxaHVDXHWJn5wdC52WjpCtd2EIEGBykDcZW32k"},
		{"IKM", ikm, "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg"},
		{"PRK", prk, "09_eUZGrsvxChDCGRCdkLiDXrReGOEVeSCdCcPBSJSc"},
		{"cek_info", []byte(cekInfo), "Q29udGVudC1FbmNvZGluZzogYWVzMTI4Z2NtAA"},
		{"CEK", cek, "oIhVW04MRdy2XN9CiKLxTg"},
		{"nonce_info", []byte(nonceInfo), "Q29udGVudC1FbmNvZGluZzogbm9uY2UA"},
		{"NONCE", nonce, "4h_95klXJ5E_qnoN"},
	} {
		if got := base64.RawURLEncoding.EncodeToString(c.got); got != c.want {
			t.Errorf("%s = %s, want %s", c.name, got, c.want)
		}
	}
}

// TestRFC8188Intermediates checks the key schedule of RFC 8188 §3.1.
func TestRFC8188Intermediates(t *testing.T) {
	ikm, salt := b64(t, "yqdlZ-tYemfogSmv7Ws5PQ"), b64(t, "I1BsxtFttlv3u_Oo94xnmw")
	cek, nonce := contentKeys(ikm, salt)
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"PRK", hmacSHA256(t, salt, ikm), "zyeH5phsIsgUyd4oiSEIy35x-gIi4aM7y0hCF8mwn9g"},
		{"CEK", cek, "_wniytB-ofscZDh4tbSjHw"},
		{"NONCE", nonce, "Bcs8gkIRKLI8GeI8"},
	} {
		if got := base64.RawURLEncoding.EncodeToString(c.got); got != c.want {
			t.Errorf("%s = %s, want %s", c.name, got, c.want)
		}
	}
}

func TestRecordNonce(t *testing.T) {
	base := bytes.Repeat([]byte{0xff}, 12)
	got := recordNonce(base, 0x0102)
	want := append(bytes.Repeat([]byte{0xff}, 10), 0xfe, 0xfd)
	if !bytes.Equal(got, want) {
		t.Errorf("recordNonce = %x, want %x", got, want)
	}
	if !bytes.Equal(base, bytes.Repeat([]byte{0xff}, 12)) {
		t.Errorf("recordNonce modified its base nonce: %x", base)
	}
}

// sealRecords builds an aes128gcm body whose records hold exactly the given
// padded plaintexts (data, delimiter and padding), so that tests can build
// bodies that a correct encoder never writes.
func sealRecords(t *testing.T, ikm []byte, rs uint32, records ...string) []byte {
	t.Helper()
	h := Header{Salt: bytes.Repeat([]byte{7}, SaltSize), RecordSize: rs, KeyID: []byte("k1")}
	cek, base := contentKeys(ikm, h.Salt)
	aead, err := newGCM(cek)
	if err != nil {
		t.Fatal(err)
	}
	out := h.append(nil)
	for seq, r := range records {
		out = aead.Seal(out, recordNonce(base, uint64(seq)), []byte(r), nil)
	}
	return out
}

func TestDecryptContentRecords(t *testing.T) {
	ikm := bytes.Repeat([]byte{1}, 16)
	tests := []struct {
		name    string
		rs      uint32
		records []string
		want    string
		err     string // substring of the error; "" means success
	}{
		{"one record", 4096, []string{"hello\x02"}, "hello", ""},
		{"zero padding", 4096, []string{"hello\x02\x00\x00\x00"}, "hello", ""},
		{"plaintext with zeros", 4096, []string{"a\x00b\x00\x02\x00"}, "a\x00b\x00", ""},
		{"empty plaintext", 4096, []string{"\x02"}, "", ""},
		{"two records", 16 + 6, []string{"abcd\x01\x00", "ef\x02"}, "abcdef", ""},
		{"full final record", 16 + 3, []string{"ab\x01", "cd\x02"}, "abcd", ""},
		{"padding only records", 16 + 4, []string{"\x01\x00\x00\x00", "\x01\x00\x00\x00", "z\x02"}, "z", ""},
		{"final delimiter 0x01", 4096, []string{"hello\x01"}, "", "truncated"},
		{"truncated after record", 16 + 6, []string{"abcd\x01\x00"}, "", "truncated"},
		{"final delimiter in first record", 16 + 6, []string{"abcd\x02\x00", "ef\x02"}, "", "delimiter 0x02, want 0x01"},
		{"unknown delimiter", 4096, []string{"hello\x03"}, "", "delimiter 0x03"},
		{"non-zero padding", 4096, []string{"hello\x02\x00\x05"}, "", "delimiter 0x05"},
		{"no delimiter", 4096, []string{"\x00\x00\x00"}, "", "no padding delimiter"},
		{"empty record", 4096, []string{""}, "", "too short"},
		{"short non-final record", 30, []string{"ab\x01", "cd\x02"}, "", "authentication failed"},
		{"no records", 4096, nil, "", "no records"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := sealRecords(t, ikm, tt.rs, tt.records...)
			got, err := DecryptContent(body, ikm)
			if tt.err == "" {
				if err != nil {
					t.Fatalf("DecryptContent: %v", err)
				}
				if string(got) != tt.want {
					t.Fatalf("DecryptContent = %q, want %q", got, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("DecryptContent error = %v, want one containing %q (plaintext %q)", err, tt.err, got)
			}
		})
	}
}
