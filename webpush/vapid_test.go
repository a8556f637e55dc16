package webpush_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/heraldpush/herald/webpush"
)

// RFC 8292 §2.4 example.
const (
	vapidT   = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5uZXQiLCJleHAiOjE0NTM1MjM3NjgsInN1YiI6Im1haWx0bzpwdXNoQGV4YW1wbGUuY29tIn0.i3CYb7t4xfxCDquptFOepC9GAu_HLGkMlMuCGSK2rpiUfnK9ojFwDXb1JrErtmysazNjjvW2L9OkSSHzvoD1oA"
	vapidK   = "BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs"
	vapidAud = "https://push.example.net"
)

var vapidExp = time.Unix(1453523768, 0)

func TestVerifyVAPIDVector(t *testing.T) {
	header := "vapid t=" + vapidT + ", k=" + vapidK
	wantKey := unb64(t, vapidK)
	before := vapidExp.Add(-time.Hour)
	otherKey := func() string {
		k, err := webpush.GenerateKeys()
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(k.Public())
	}()
	badSig := vapidT[:len(vapidT)-10] + "A" + vapidT[len(vapidT)-9:]
	// Only the unused low bits of the last character differ: a non-canonical
	// encoding of the same signature.
	nonCanonical := vapidT[:len(vapidT)-2] + "oB"
	tests := []struct {
		name     string
		header   string
		audience string
		now      time.Time
		want     error // nil: verifies
	}{
		{"valid", header, vapidAud, before, nil},
		{"k first", "vapid k=" + vapidK + ", t=" + vapidT, vapidAud, before, nil},
		{"no space after comma", "vapid t=" + vapidT + ",k=" + vapidK, vapidAud, before, nil},
		{"unknown parameter", "vapid t=" + vapidT + ", foo=bar, k=" + vapidK, vapidAud, before, nil},
		{"quoted values", `vapid t="` + vapidT + `", k="` + vapidK + `"`, vapidAud, before, nil},
		{"scheme case", "Vapid t=" + vapidT + ", k=" + vapidK, vapidAud, before, nil},
		{"padded k", "vapid t=" + vapidT + ", k=" + vapidK + "=", vapidAud, before, nil},
		{"aud trailing slash", header, vapidAud + "/", before, nil},
		{"just before exp", header, vapidAud, vapidExp.Add(-time.Second), nil},
		{"exactly 24 h ahead", header, vapidAud, vapidExp.Add(-24 * time.Hour), nil},

		{"wrong aud", header, "https://push.example.org", before, webpush.ErrVAPIDInvalid},
		{"aud with port", header, "https://push.example.net:8443", before, webpush.ErrVAPIDInvalid},
		{"aud http", header, "http://push.example.net", before, webpush.ErrVAPIDInvalid},
		{"at exp", header, vapidAud, vapidExp, webpush.ErrVAPIDInvalid},
		{"after exp", header, vapidAud, vapidExp.Add(time.Second), webpush.ErrVAPIDInvalid},
		{"exp 25 h ahead", header, vapidAud, vapidExp.Add(-25 * time.Hour), webpush.ErrVAPIDInvalid},
		{"exp 24 h 2 min ahead", header, vapidAud, vapidExp.Add(-24*time.Hour - 2*time.Minute), webpush.ErrVAPIDInvalid},
		{"other key", "vapid t=" + vapidT + ", k=" + otherKey, vapidAud, before, webpush.ErrVAPIDInvalid},
		{"bad signature", "vapid t=" + badSig + ", k=" + vapidK, vapidAud, before, webpush.ErrVAPIDInvalid},
		{"non-canonical signature", "vapid t=" + nonCanonical + ", k=" + vapidK, vapidAud, before, webpush.ErrVAPIDInvalid},
		{"alg none", "vapid t=eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0" + vapidT[strings.Index(vapidT, "."):strings.LastIndex(vapidT, ".")+1] + ", k=" + vapidK, vapidAud, before, webpush.ErrVAPIDInvalid},
		{"k not on curve", "vapid t=" + vapidT + ", k=" + vapidK[:len(vapidK)-1] + "A", vapidAud, before, webpush.ErrVAPIDInvalid},
		{"k not base64", "vapid t=" + vapidT + ", k=***", vapidAud, before, webpush.ErrVAPIDInvalid},
		{"no k", "vapid t=" + vapidT, vapidAud, before, webpush.ErrVAPIDInvalid},
		{"empty k", "vapid t=" + vapidT + ", k=", vapidAud, before, webpush.ErrVAPIDInvalid},
		{"no t", "vapid k=" + vapidK, vapidAud, before, webpush.ErrVAPIDInvalid},
		{"t twice", header + ", t=" + vapidT, vapidAud, before, webpush.ErrVAPIDInvalid},
		{"no parameters", "vapid", vapidAud, before, webpush.ErrVAPIDInvalid},
		{"parameter without value", "vapid t", vapidAud, before, webpush.ErrVAPIDInvalid},
		{"t not a jwt", "vapid t=abc, k=" + vapidK, vapidAud, before, webpush.ErrVAPIDInvalid},
		{"empty header", "", vapidAud, before, webpush.ErrVAPIDMissing},
		{"blank header", "   ", vapidAud, before, webpush.ErrVAPIDMissing},
		{"bearer scheme", "Bearer " + vapidT, vapidAud, before, webpush.ErrVAPIDMissing},
		{"legacy webpush scheme", "WebPush " + vapidT, vapidAud, before, webpush.ErrVAPIDMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := webpush.VerifyVAPID(tt.header, tt.audience, tt.now)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("VerifyVAPID: %v", err)
				}
				if !bytes.Equal(key, wantKey) {
					t.Fatalf("VerifyVAPID key = %x, want %x", key, wantKey)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("VerifyVAPID error = %v, want %v", err, tt.want)
			}
			if key != nil {
				t.Fatalf("VerifyVAPID returned a key with an error")
			}
		})
	}
}

func TestSignVAPIDRoundTrip(t *testing.T) {
	key, err := webpush.GenerateVAPIDKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	exp := now.Add(12 * time.Hour)
	auth, err := webpush.SignVAPID(key, "https://push.herald.test:8443", "mailto:ops@example.com", exp)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := webpush.VAPIDPublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(auth, "vapid t=") || !strings.HasSuffix(auth, ", k="+pub) {
		t.Fatalf("SignVAPID = %q, want \"vapid t=<jwt>, k=%s\"", auth, pub)
	}
	got, err := webpush.VerifyVAPID(auth, "https://push.herald.test:8443", now)
	if err != nil {
		t.Fatalf("VerifyVAPID: %v", err)
	}
	if want := unb64(t, pub); !bytes.Equal(got, want) {
		t.Errorf("VerifyVAPID key = %x, want %x", got, want)
	}
	if _, err := webpush.VerifyVAPID(auth, "https://push.herald.test", now); !errors.Is(err, webpush.ErrVAPIDInvalid) {
		t.Errorf("VerifyVAPID with another origin: %v, want ErrVAPIDInvalid", err)
	}
	if _, err := webpush.VerifyVAPID(auth, "https://push.herald.test:8443", exp.Add(time.Second)); !errors.Is(err, webpush.ErrVAPIDInvalid) {
		t.Errorf("VerifyVAPID after exp: %v, want ErrVAPIDInvalid", err)
	}

	// The token is the JWS that RFC 8292 describes.
	jwt := strings.TrimSuffix(strings.TrimPrefix(auth, "vapid t="), ", k="+pub)
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts, want 3", len(parts))
	}
	var header map[string]any
	if err := json.Unmarshal(unb64(t, parts[0]), &header); err != nil {
		t.Fatal(err)
	}
	if len(header) != 2 || header["typ"] != "JWT" || header["alg"] != "ES256" {
		t.Errorf("token header = %v, want {typ: JWT, alg: ES256}", header)
	}
	var claims map[string]any
	if err := json.Unmarshal(unb64(t, parts[1]), &claims); err != nil {
		t.Fatal(err)
	}
	if len(claims) != 3 || claims["aud"] != "https://push.herald.test:8443" || claims["exp"] != float64(exp.Unix()) || claims["sub"] != "mailto:ops@example.com" {
		t.Errorf("token claims = %v", claims)
	}
	if sig := unb64(t, parts[2]); len(sig) != 64 {
		t.Errorf("signature is %d octets, want 64 (r||s)", len(sig))
	}

	// Without a subject the claim is left out.
	auth, err = webpush.SignVAPID(key, "https://push.herald.test", "", exp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := webpush.VerifyVAPID(auth, "https://push.herald.test", now); err != nil {
		t.Errorf("VerifyVAPID without sub: %v", err)
	}
}

func TestSignVAPIDErrors(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := webpush.GenerateVAPIDKey()
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	for _, c := range []struct {
		name string
		key  *ecdsa.PrivateKey
		aud  string
	}{
		{"nil key", nil, "https://a.example"},
		{"p-384 key", p384, "https://a.example"},
		{"empty audience", key, ""},
	} {
		if got, err := webpush.SignVAPID(c.key, c.aud, "", exp); err == nil {
			t.Errorf("%s: SignVAPID = %q, want an error", c.name, got)
		}
	}
}
