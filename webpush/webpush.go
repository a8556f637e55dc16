package webpush

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Limits of Web Push message encryption (RFC 8291).
const (
	// PublicKeySize is the size of an uncompressed P-256 point.
	PublicKeySize = 65
	// AuthSecretSize is the size of a subscription's authentication secret.
	AuthSecretSize = 16
	// RecordSize is the record size that Encrypt writes in the header.
	RecordSize = 4096
	// MaxBodySize is the largest body that every push service must accept.
	MaxBodySize = 4096
	// WebPushHeaderSize is the size of the header of a Web Push body: salt, rs,
	// idlen and the sender's 65-octet public key.
	WebPushHeaderSize = HeaderMinSize + PublicKeySize
	// MaxPlaintextSize is the largest plaintext whose body fits MaxBodySize:
	// 4096 - 86 header - 1 delimiter - 16 tag.
	MaxPlaintextSize = MaxBodySize - WebPushHeaderSize - 1 - TagSize
)

// Keys is a subscription's receiving key pair (P-256) and auth secret.
type Keys struct {
	Private *ecdh.PrivateKey
	Auth    []byte
}

// GenerateKeys makes a new P-256 key pair and a random 16-octet auth secret.
func GenerateKeys() (*Keys, error) {
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cannot generate p-256 key: %w", err)
	}
	auth := make([]byte, AuthSecretSize)
	rand.Read(auth)
	return &Keys{Private: priv, Auth: auth}, nil
}

// NewKeys rebuilds Keys from a stored 32-octet P-256 private key and auth secret,
// as saved from Keys.Private.Bytes() and Keys.Auth.
func NewKeys(private, auth []byte) (*Keys, error) {
	priv, err := ecdh.P256().NewPrivateKey(private)
	if err != nil {
		return nil, fmt.Errorf("invalid p-256 private key: %w", err)
	}
	if len(auth) != AuthSecretSize {
		return nil, fmt.Errorf("auth secret must be %d octets, not %d", AuthSecretSize, len(auth))
	}
	return &Keys{Private: priv, Auth: bytes.Clone(auth)}, nil
}

// Public returns the 65-octet uncompressed public key (the p256dh of a
// subscription). It returns nil for Keys without a private key.
func (k *Keys) Public() []byte {
	if k == nil || k.Private == nil {
		return nil
	}
	return k.Private.PublicKey().Bytes()
}

func (k *Keys) check() error {
	if k == nil || k.Private == nil {
		return errors.New("no receiving key")
	}
	if k.Private.Curve() != ecdh.P256() {
		return errors.New("receiving key is not a p-256 key")
	}
	if len(k.Auth) != AuthSecretSize {
		return fmt.Errorf("auth secret must be %d octets, not %d", AuthSecretSize, len(k.Auth))
	}
	return nil
}

// decodeBase64URL decodes base64url with or without '=' padding.
func decodeBase64URL(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// ParseP256PublicKey decodes a base64url public key (padded or not) and checks
// that it is an uncompressed point on P-256. It returns the 65-octet point.
func ParseP256PublicKey(s string) ([]byte, error) {
	b, err := decodeBase64URL(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("public key is not base64url: %w", err)
	}
	if _, err := p256Public(b); err != nil {
		return nil, err
	}
	return b, nil
}

func p256Public(b []byte) (*ecdh.PublicKey, error) {
	if len(b) != PublicKeySize || b[0] != 0x04 {
		return nil, fmt.Errorf("public key must be a %d-octet uncompressed p-256 point, got %d octets", PublicKeySize, len(b))
	}
	pub, err := ecdh.P256().NewPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("public key is not a point on p-256: %w", err)
	}
	return pub, nil
}

// webPushIKM derives the input keying material of RFC 8291 §3.3.
// (HKDF with the auth secret as salt; it fails only for an output longer
// than 255 hash lengths: never here.)
func webPushIKM(ecdhSecret, auth, uaPublic, asPublic []byte) []byte {
	ikm, _ := hkdf.Key(sha256.New, ecdhSecret, auth, "WebPush: info\x00"+string(uaPublic)+string(asPublic), 32)
	return ikm
}

// Encrypt encrypts plaintext for the subscription with public key uaPublic
// (65 octets) and auth secret authSecret (RFC 8291): one aes128gcm record with
// rs 4096, a fresh sender key pair and a random salt. plaintext may hold at most
// MaxPlaintextSize octets.
func Encrypt(plaintext, uaPublic, authSecret []byte) ([]byte, error) {
	as, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cannot generate p-256 key: %w", err)
	}
	salt := make([]byte, SaltSize)
	rand.Read(salt)
	return EncryptWith(plaintext, uaPublic, authSecret, as, salt, RecordSize)
}

// EncryptWith is Encrypt with a given sender key pair as, salt and record size.
// It exists for test vectors; use Encrypt otherwise, because as and salt must
// never be reused. rs must leave room for the plaintext, its delimiter and the
// tag in one record.
func EncryptWith(plaintext, uaPublic, authSecret []byte, as *ecdh.PrivateKey, salt []byte, rs uint32) ([]byte, error) {
	if len(plaintext) > MaxPlaintextSize {
		return nil, fmt.Errorf("plaintext of %d octets exceeds the limit of %d", len(plaintext), MaxPlaintextSize)
	}
	if uint64(rs) < uint64(len(plaintext))+1+TagSize {
		return nil, fmt.Errorf("record size %d cannot hold %d octets of plaintext in one record", rs, len(plaintext))
	}
	ua, err := p256Public(uaPublic)
	if err != nil {
		return nil, fmt.Errorf("invalid subscription key: %w", err)
	}
	if len(authSecret) != AuthSecretSize {
		return nil, fmt.Errorf("auth secret must be %d octets, not %d", AuthSecretSize, len(authSecret))
	}
	if as == nil || as.Curve() != ecdh.P256() {
		return nil, errors.New("sender key must be a p-256 key")
	}
	asPublic := as.PublicKey().Bytes()
	h := Header{Salt: salt, RecordSize: rs, KeyID: asPublic}
	if err := h.check(); err != nil {
		return nil, err
	}
	secret, err := as.ECDH(ua)
	if err != nil {
		return nil, fmt.Errorf("ecdh failed: %w", err)
	}
	return encryptRecords(h, plaintext, webPushIKM(secret, authSecret, uaPublic, asPublic))
}

// Decrypt decrypts a Web Push body (RFC 8291) with the subscription's keys. The
// header's keyid must be the sender's 65-octet public key on P-256. The body is
// decrypted as a single record whatever its rs, which must still be valid; the
// record must end in the final delimiter 0x02.
func Decrypt(body []byte, k *Keys) ([]byte, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	h, err := ParseHeader(body)
	if err != nil {
		return nil, err
	}
	as, err := p256Public(h.KeyID)
	if err != nil {
		return nil, fmt.Errorf("invalid keyid: sender %w", err)
	}
	secret, err := k.Private.ECDH(as)
	if err != nil {
		return nil, fmt.Errorf("ecdh failed: %w", err)
	}
	ikm := webPushIKM(secret, k.Auth, k.Public(), h.KeyID)
	return decryptRecords(h, body[h.Size():], ikm, true)
}
