package webpush_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/heraldpush/herald/webpush"
)

// Seeds live in testdata/fuzz/<FuzzName>; `go test` runs them as regression tests.

// FuzzDecrypt checks that Decrypt never panics on arbitrary bodies and never
// returns more than the body can hold, that a valid encryption of the fuzzed
// plaintext decrypts back to it, and that changing any octet of its ciphertext
// makes it fail.
func FuzzDecrypt(f *testing.F) {
	keys := vectorKeys(f)
	f.Fuzz(func(t *testing.T, body, plaintext []byte) {
		if got, err := webpush.Decrypt(body, keys); err == nil {
			if max := len(body) - webpush.WebPushHeaderSize - webpush.TagSize - 1; len(got) > max {
				t.Fatalf("Decrypt of %d octets returned %d octets of plaintext", len(body), len(got))
			}
		}

		plaintext = plaintext[:min(len(plaintext), webpush.MaxPlaintextSize)]
		enc, err := webpush.Encrypt(plaintext, keys.Public(), keys.Auth)
		if err != nil {
			t.Fatalf("Encrypt(%d octets): %v", len(plaintext), err)
		}
		got, err := webpush.Decrypt(enc, keys)
		if err != nil {
			t.Fatalf("Decrypt(Encrypt(%d octets)): %v", len(plaintext), err)
		}
		if !bytes.Equal(got, plaintext) {
			t.Fatalf("Decrypt(Encrypt(%q)) = %q", plaintext, got)
		}
		i := webpush.WebPushHeaderSize + len(body)%(len(enc)-webpush.WebPushHeaderSize)
		enc[i] ^= 0x80
		if got, err := webpush.Decrypt(enc, keys); err == nil {
			t.Fatalf("Decrypt accepted a body with octet %d changed: %q", i, got)
		}
	})
}

// FuzzDecryptContent checks that DecryptContent never panics on arbitrary
// bodies and that multi-record encryption with any record size round-trips.
func FuzzDecryptContent(f *testing.F) {
	ikm := []byte("0123456789abcdef")
	salt := []byte("fedcba9876543210")
	f.Fuzz(func(t *testing.T, body, plaintext []byte, rs uint32) {
		if got, err := webpush.DecryptContent(body, ikm); err == nil && len(got) > len(body) {
			t.Fatalf("DecryptContent of %d octets returned %d octets", len(body), len(got))
		}
		rs = webpush.MinRecordSize + rs%512
		enc, err := webpush.EncryptContent(plaintext, ikm, salt, []byte("id"), rs)
		if err != nil {
			t.Fatalf("EncryptContent(%d octets, rs %d): %v", len(plaintext), rs, err)
		}
		got, err := webpush.DecryptContent(enc, ikm)
		if err != nil {
			t.Fatalf("DecryptContent(EncryptContent(%d octets, rs %d)): %v", len(plaintext), rs, err)
		}
		if !bytes.Equal(got, plaintext) {
			t.Fatalf("round trip with rs %d: got %q, want %q", rs, got, plaintext)
		}
		if got, err := webpush.DecryptContent(enc[:len(enc)-1], ikm); err == nil {
			t.Fatalf("DecryptContent accepted a body missing its last octet: %q", got)
		}
	})
}

// FuzzVerifyVAPID checks that an arbitrary Authorization header never panics,
// never verifies for an origin no token was signed for, that every error is
// classified as missing or invalid, and that the only key that can verify for
// the RFC 8292 vector's origin is the vector's key.
func FuzzVerifyVAPID(f *testing.F) {
	vectorKey := unb64(f, vapidK)
	now := vapidExp.Add(-time.Hour)
	f.Fuzz(func(t *testing.T, header string) {
		key, err := webpush.VerifyVAPID(header, "https://herald.invalid", now)
		if err == nil {
			t.Fatalf("VerifyVAPID(%q) verified with key %x", header, key)
		}
		if !errors.Is(err, webpush.ErrVAPIDMissing) && !errors.Is(err, webpush.ErrVAPIDInvalid) {
			t.Fatalf("VerifyVAPID(%q) error %v is neither missing nor invalid", header, err)
		}
		key, err = webpush.VerifyVAPID(header, vapidAud, now)
		if err == nil && !bytes.Equal(key, vectorKey) {
			t.Fatalf("VerifyVAPID(%q) verified with key %x", header, key)
		}
	})
}

// FuzzParseP256PublicKey checks that every accepted key is a 65-octet
// uncompressed point that parses again from its canonical encoding.
func FuzzParseP256PublicKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		key, err := webpush.ParseP256PublicKey(s)
		if err != nil {
			return
		}
		if len(key) != webpush.PublicKeySize || key[0] != 4 {
			t.Fatalf("ParseP256PublicKey(%q) = %x, not an uncompressed point", s, key)
		}
		again, err := webpush.ParseP256PublicKey(base64.RawURLEncoding.EncodeToString(key))
		if err != nil || !bytes.Equal(again, key) {
			t.Fatalf("canonical encoding of %x does not parse back: %x, %v", key, again, err)
		}
	})
}
