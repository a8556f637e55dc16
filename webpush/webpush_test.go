package webpush_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/heraldpush/herald/webpush"
)

func unb64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("bad base64url %q: %v", s, err)
	}
	return b
}

// RFC 8291 §5 and Appendix A.
const (
	vecPlaintext = "When I grow up, I want to be a watermelon"
	vecAuth      = "BTBZMqHH6r4Tts7J_aSIgg"
	vecSalt      = "DGv6ra1nlYgDCS1FRnbzlw"
	vecUAPrivate = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
	vecUAPublic  = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
	vecASPrivate = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
	vecBody      = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)

func vectorKeys(t testing.TB) *webpush.Keys {
	t.Helper()
	k, err := webpush.NewKeys(unb64(t, vecUAPrivate), unb64(t, vecAuth))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRFC8291Vector(t *testing.T) {
	keys := vectorKeys(t)
	if got := base64.RawURLEncoding.EncodeToString(keys.Public()); got != vecUAPublic {
		t.Fatalf("Public() = %s, want %s", got, vecUAPublic)
	}
	as, err := ecdh.P256().NewPrivateKey(unb64(t, vecASPrivate))
	if err != nil {
		t.Fatal(err)
	}
	body, err := webpush.EncryptWith([]byte(vecPlaintext), keys.Public(), keys.Auth, as, unb64(t, vecSalt), 4096)
	if err != nil {
		t.Fatalf("EncryptWith: %v", err)
	}
	want := unb64(t, vecBody)
	if len(want) != 144 {
		t.Fatalf("vector body has %d octets, want 144", len(want))
	}
	if !bytes.Equal(body, want) {
		t.Errorf("EncryptWith body =\n%s\nwant\n%s", base64.RawURLEncoding.EncodeToString(body), vecBody)
	}
	got, err := webpush.Decrypt(want, keys)
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if string(got) != vecPlaintext {
		t.Errorf("Decrypt = %q, want %q", got, vecPlaintext)
	}
	// The Web Push body is also a plain aes128gcm body under the derived IKM.
	got, err = webpush.DecryptContent(want, unb64(t, "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg"))
	if err != nil || string(got) != vecPlaintext {
		t.Errorf("DecryptContent(vector, IKM) = %q, %v; want %q", got, err, vecPlaintext)
	}
}

func TestRFC8188Vectors(t *testing.T) {
	tests := []struct {
		name, ikm, body, keyid string
		rs                     uint32
	}{
		{"3.1 one record", "yqdlZ-tYemfogSmv7Ws5PQ", "I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg", "", 4096},
		{"3.2 two records", "BO3ZVPxUlnLORbVGMpbT1Q", "uNCkWiNYzKTnBN9ji3-qWAAAABkCYTHOG8chz_gnvgOqdGYovxyjuqRyJFjEDyoF1Fvkj6hQPdPHI51OEUKEpgz3SsLWIqS_uA", "a1", 25},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := unb64(t, tt.body)
			got, err := webpush.DecryptContent(body, unb64(t, tt.ikm))
			if err != nil {
				t.Fatalf("DecryptContent: %v", err)
			}
			if string(got) != "I am the walrus" {
				t.Errorf("DecryptContent = %q, want %q", got, "I am the walrus")
			}
			h, err := webpush.ParseHeader(body)
			if err != nil {
				t.Fatal(err)
			}
			if h.RecordSize != tt.rs || string(h.KeyID) != tt.keyid {
				t.Errorf("header rs=%d keyid=%q, want rs=%d keyid=%q", h.RecordSize, h.KeyID, tt.rs, tt.keyid)
			}
		})
	}
	// §3.1 has no padding, so our encoder reproduces it exactly.
	body, err := webpush.EncryptContent([]byte("I am the walrus"), unb64(t, "yqdlZ-tYemfogSmv7Ws5PQ"), unb64(t, "I1BsxtFttlv3u_Oo94xnmw"), nil, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if got := base64.RawURLEncoding.EncodeToString(body); got != tests[0].body {
		t.Errorf("EncryptContent = %s, want %s", got, tests[0].body)
	}
}

func TestRoundTrip(t *testing.T) {
	keys, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys.Public()) != webpush.PublicKeySize || len(keys.Auth) != webpush.AuthSecretSize {
		t.Fatalf("GenerateKeys: public %d octets, auth %d octets", len(keys.Public()), len(keys.Auth))
	}
	sizes := []int{0, 1, 2, 15, 16, 17, 31, 32, 33, 100, 1000, 2048, 3992, webpush.MaxPlaintextSize}
	for range 20 {
		sizes = append(sizes, int(randUint(t)%(webpush.MaxPlaintextSize+1)))
	}
	for _, n := range sizes {
		plaintext := make([]byte, n)
		rand.Read(plaintext)
		body, err := webpush.Encrypt(plaintext, keys.Public(), keys.Auth)
		if err != nil {
			t.Fatalf("Encrypt(%d octets): %v", n, err)
		}
		if want := webpush.WebPushHeaderSize + n + 1 + webpush.TagSize; len(body) != want {
			t.Errorf("Encrypt(%d octets) body is %d octets, want %d", n, len(body), want)
		}
		if len(body) > webpush.MaxBodySize {
			t.Errorf("Encrypt(%d octets) body of %d octets exceeds %d", n, len(body), webpush.MaxBodySize)
		}
		got, err := webpush.Decrypt(body, keys)
		if err != nil {
			t.Fatalf("Decrypt(%d octets): %v", n, err)
		}
		if !bytes.Equal(got, plaintext) {
			t.Fatalf("Decrypt(Encrypt(%d octets)) differs", n)
		}
	}
	if _, err := webpush.Encrypt(make([]byte, webpush.MaxPlaintextSize+1), keys.Public(), keys.Auth); err == nil {
		t.Errorf("Encrypt of %d octets succeeded, want an error", webpush.MaxPlaintextSize+1)
	}
}

func randUint(t *testing.T) uint32 {
	var b [4]byte
	rand.Read(b[:])
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func TestEncryptTwiceDiffers(t *testing.T) {
	keys := vectorKeys(t)
	a, err := webpush.Encrypt([]byte("x"), keys.Public(), keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	b, err := webpush.Encrypt([]byte("x"), keys.Public(), keys.Auth)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a[:webpush.SaltSize], b[:webpush.SaltSize]) || bytes.Equal(a[21:86], b[21:86]) {
		t.Errorf("two encryptions reused the salt or the sender key")
	}
}

// TestDecryptTampered flips each bit of the vector body. Every change must be
// refused, except in rs, which RFC 8291 lets a receiver ignore: there the result
// is the original plaintext or an error, never another plaintext.
func TestDecryptTampered(t *testing.T) {
	keys := vectorKeys(t)
	body := unb64(t, vecBody)
	for i := range body {
		for bit := range 8 {
			b := bytes.Clone(body)
			b[i] ^= 1 << bit
			got, err := webpush.Decrypt(b, keys)
			isRS := i >= webpush.SaltSize && i < webpush.SaltSize+4
			switch {
			case isRS && err == nil && string(got) != vecPlaintext:
				t.Fatalf("flip of octet %d bit %d (rs) decrypted to %q", i, bit, got)
			case !isRS && err == nil:
				t.Fatalf("flip of octet %d bit %d decrypted to %q, want an error", i, bit, got)
			}
		}
	}
}

func TestDecryptErrors(t *testing.T) {
	keys := vectorKeys(t)
	other, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	body := unb64(t, vecBody)
	otherPoint, _ := webpush.ParseP256PublicKey(base64.RawURLEncoding.EncodeToString(other.Public()))
	withKeyID := func(keyid []byte) []byte {
		b := append([]byte(nil), body[:20]...)
		b = append(b, byte(len(keyid)))
		b = append(b, keyid...)
		return append(b, body[86:]...)
	}
	notOnCurve := bytes.Clone(body[21:86])
	notOnCurve[64] ^= 1
	rs17 := bytes.Clone(body)
	rs17[16], rs17[17], rs17[18], rs17[19] = 0, 0, 0, 17
	tests := []struct {
		name string
		body []byte
		keys *webpush.Keys
		err  string
	}{
		{"empty", nil, keys, "shorter than its"},
		{"header only", body[:86], keys, "no records"},
		{"truncated keyid", body[:50], keys, "header truncated"},
		{"truncated ciphertext", body[:len(body)-1], keys, "authentication failed"},
		{"extra octet", append(bytes.Clone(body), 0), keys, "authentication failed"},
		{"tag only", body[:86+16], keys, "too short"},
		{"rs below minimum", rs17, keys, "record size 17"},
		{"empty keyid", withKeyID(nil), keys, "65-octet"},
		{"compressed keyid", withKeyID(append([]byte{0x02}, body[22:54]...)), keys, "65-octet"},
		{"keyid not on curve", withKeyID(notOnCurve), keys, "not a point on p-256"},
		{"other sender key", withKeyID(otherPoint), keys, "authentication failed"},
		{"other receiver", body, other, "authentication failed"},
		{"no keys", body, nil, "no receiving key"},
		{"short auth", body, &webpush.Keys{Private: keys.Private, Auth: keys.Auth[:8]}, "auth secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := webpush.Decrypt(tt.body, tt.keys)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Decrypt error = %v (plaintext %q), want one containing %q", err, got, tt.err)
			}
		})
	}
}

func TestEncryptWithErrors(t *testing.T) {
	keys := vectorKeys(t)
	as, err := ecdh.P256().NewPrivateKey(unb64(t, vecASPrivate))
	if err != nil {
		t.Fatal(err)
	}
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	salt := unb64(t, vecSalt)
	bad := bytes.Clone(keys.Public())
	bad[64] ^= 1
	tests := []struct {
		name      string
		plaintext []byte
		ua, auth  []byte
		as        *ecdh.PrivateKey
		salt      []byte
		rs        uint32
		err       string
	}{
		{"too long", make([]byte, webpush.MaxPlaintextSize+1), keys.Public(), keys.Auth, as, salt, 4096, "exceeds the limit"},
		{"rs too small", []byte("hello"), keys.Public(), keys.Auth, as, salt, 21, "cannot hold"},
		{"ua not on curve", []byte("x"), bad, keys.Auth, as, salt, 4096, "not a point"},
		{"ua short", []byte("x"), keys.Public()[:33], keys.Auth, as, salt, 4096, "65-octet"},
		{"auth short", []byte("x"), keys.Public(), keys.Auth[:15], as, salt, 4096, "auth secret"},
		{"no sender key", []byte("x"), keys.Public(), keys.Auth, nil, salt, 4096, "sender key"},
		{"x25519 sender key", []byte("x"), keys.Public(), keys.Auth, x25519, salt, 4096, "sender key"},
		{"short salt", []byte("x"), keys.Public(), keys.Auth, as, salt[:8], 4096, "salt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := webpush.EncryptWith(tt.plaintext, tt.ua, tt.auth, tt.as, tt.salt, tt.rs)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("EncryptWith error = %v, want one containing %q", err, tt.err)
			}
		})
	}
	// The smallest record size that holds the plaintext works.
	body, err := webpush.EncryptWith([]byte("hello"), keys.Public(), keys.Auth, as, salt, 5+1+16)
	if err != nil {
		t.Fatalf("EncryptWith rs=22: %v", err)
	}
	if got, err := webpush.Decrypt(body, keys); err != nil || string(got) != "hello" {
		t.Errorf("Decrypt = %q, %v; want hello", got, err)
	}
}

func TestEncryptContentMultiRecord(t *testing.T) {
	ikm := make([]byte, 16)
	salt := make([]byte, 16)
	rand.Read(ikm)
	rand.Read(salt)
	for _, rs := range []uint32{18, 19, 25, 100, 4096} {
		for _, n := range []int{0, 1, 2, 7, 8, 9, 83, 200, 1000} {
			plaintext := make([]byte, n)
			rand.Read(plaintext)
			body, err := webpush.EncryptContent(plaintext, ikm, salt, []byte("id"), rs)
			if err != nil {
				t.Fatalf("EncryptContent(rs=%d, %d octets): %v", rs, n, err)
			}
			got, err := webpush.DecryptContent(body, ikm)
			if err != nil {
				t.Fatalf("DecryptContent(rs=%d, %d octets): %v", rs, n, err)
			}
			if !bytes.Equal(got, plaintext) {
				t.Fatalf("round trip rs=%d, %d octets differs", rs, n)
			}
			// Dropping the last record, or a record's worth of octets, is
			// detected as truncation, never accepted as a shorter message.
			hdr := webpush.HeaderMinSize + 2
			if records := (len(body) - hdr + int(rs) - 1) / int(rs); records > 1 {
				cut := body[:hdr+(records-1)*int(rs)]
				if got, err := webpush.DecryptContent(cut, ikm); err == nil {
					t.Fatalf("rs=%d, %d octets: truncated body decrypted to %d octets", rs, n, len(got))
				}
			}
		}
	}
	if _, err := webpush.EncryptContent(nil, ikm, salt, nil, 17); err == nil {
		t.Errorf("EncryptContent with rs 17 succeeded")
	}
	if _, err := webpush.EncryptContent(nil, ikm, salt, make([]byte, 256), 4096); err == nil {
		t.Errorf("EncryptContent with a 256-octet keyid succeeded")
	}
}

func TestParseP256PublicKey(t *testing.T) {
	good := unb64(t, vecUAPublic)
	std := base64.URLEncoding.EncodeToString(good)
	offCurve := bytes.Clone(good)
	offCurve[64] ^= 1
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"unpadded", vecUAPublic, true},
		{"padded", std, true},
		{"surrounding space", " " + vecUAPublic + "\n", true},
		{"empty", "", false},
		{"not base64url", "BCVxsr7N/eNgVRqv+HtD0z", false},
		{"std alphabet", base64.StdEncoding.EncodeToString(good), false}, // the vector key has '+' and '/' in std
		{"too short", base64.RawURLEncoding.EncodeToString(good[:64]), false},
		{"compressed", base64.RawURLEncoding.EncodeToString(append([]byte{0x03}, good[1:33]...)), false},
		{"not on curve", base64.RawURLEncoding.EncodeToString(offCurve), false},
		{"infinity", base64.RawURLEncoding.EncodeToString(append([]byte{4}, make([]byte, 64)...)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := webpush.ParseP256PublicKey(tt.in)
			if tt.ok {
				if err != nil || !bytes.Equal(got, good) {
					t.Fatalf("ParseP256PublicKey = %x, %v; want the key", got, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseP256PublicKey(%q) = %x, want an error", tt.in, got)
			}
		})
	}
}

func TestNewKeys(t *testing.T) {
	k, err := webpush.GenerateKeys()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := webpush.NewKeys(k.Private.Bytes(), k.Auth)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Public(), k2.Public()) || !bytes.Equal(k.Auth, k2.Auth) {
		t.Errorf("NewKeys did not restore the keys")
	}
	if _, err := webpush.NewKeys(make([]byte, 32), k.Auth); err == nil {
		t.Errorf("NewKeys accepted a zero private key")
	}
	if _, err := webpush.NewKeys(k.Private.Bytes(), k.Auth[:4]); err == nil {
		t.Errorf("NewKeys accepted a 4-octet auth secret")
	}
	if (*webpush.Keys)(nil).Public() != nil {
		t.Errorf("Public of nil Keys is not nil")
	}
}
