// Package webpush implements the message encryption and sender authentication of
// Web Push: the aes128gcm content coding (RFC 8188), Web Push message encryption
// (RFC 8291) and VAPID (RFC 8292).
//
// The package has no state and imports no other package of Herald. Every function
// is safe for concurrent use. Bad input yields an error, never a panic.
package webpush

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes of the aes128gcm content coding (RFC 8188).
const (
	// SaltSize is the size of the salt at the start of an aes128gcm header.
	SaltSize = 16
	// HeaderMinSize is the size of an aes128gcm header with an empty keyid.
	HeaderMinSize = SaltSize + 4 + 1
	// MinRecordSize is the smallest valid record size: a 16-octet tag,
	// one delimiter octet and at least one octet more.
	MinRecordSize = 18
	// TagSize is the size of the AES-GCM authentication tag of each record.
	TagSize = 16
)

const (
	delimiterNonFinal = 0x01
	delimiterFinal    = 0x02
	cekInfo           = "Content-Encoding: aes128gcm\x00"
	nonceInfo         = "Content-Encoding: nonce\x00"
)

// Header is the unencrypted header of an aes128gcm body. Its fields are not
// authenticated.
type Header struct {
	Salt       []byte // 16 octets
	RecordSize uint32 // rs, at least MinRecordSize
	KeyID      []byte // 0 to 255 octets; the sender's public key in Web Push
}

// Size is the encoded size of the header in octets.
func (h Header) Size() int { return HeaderMinSize + len(h.KeyID) }

// ParseHeader parses the aes128gcm header at the start of body.
func ParseHeader(body []byte) (Header, error) {
	if len(body) < HeaderMinSize {
		return Header{}, fmt.Errorf("aes128gcm body of %d octets is shorter than its %d-octet header", len(body), HeaderMinSize)
	}
	h := Header{
		Salt:       body[:SaltSize],
		RecordSize: binary.BigEndian.Uint32(body[SaltSize:]),
	}
	idlen := int(body[SaltSize+4])
	if len(body) < HeaderMinSize+idlen {
		return Header{}, fmt.Errorf("aes128gcm header truncated: keyid of %d octets, %d present", idlen, len(body)-HeaderMinSize)
	}
	h.KeyID = body[HeaderMinSize : HeaderMinSize+idlen]
	if h.RecordSize < MinRecordSize {
		return Header{}, fmt.Errorf("aes128gcm record size %d is below the minimum %d", h.RecordSize, MinRecordSize)
	}
	return h, nil
}

func (h Header) append(b []byte) []byte {
	b = append(b, h.Salt...)
	b = binary.BigEndian.AppendUint32(b, h.RecordSize)
	b = append(b, byte(len(h.KeyID)))
	return append(b, h.KeyID...)
}

// contentKeys derives the content encryption key and the base nonce from the
// input keying material and the salt (RFC 8188 §2.2, §2.3).
// hkdf fails only for an output longer than 255 hash lengths: never here.
func contentKeys(ikm, salt []byte) (cek, nonce []byte) {
	prk, _ := hkdf.Extract(sha256.New, ikm, salt)
	cek, _ = hkdf.Expand(sha256.New, prk, cekInfo, 16)
	nonce, _ = hkdf.Expand(sha256.New, prk, nonceInfo, 12)
	return cek, nonce
}

// recordNonce is the nonce of record seq: the base nonce XOR the 96-bit
// big-endian record sequence number.
func recordNonce(base []byte, seq uint64) []byte {
	n := make([]byte, len(base))
	copy(n, base)
	for i := range 8 {
		n[len(n)-1-i] ^= byte(seq >> (8 * i))
	}
	return n
}

func newGCM(cek []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, fmt.Errorf("cannot create aes cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("cannot create aes-gcm: %w", err)
	}
	return aead, nil
}

// errDecrypt is the cause of every authentication failure; it says nothing
// about which check failed.
var errDecrypt = errors.New("message authentication failed")

// DecryptContent decrypts an aes128gcm body (RFC 8188) with the input keying
// material ikm. The keyid of the header is not interpreted: the caller chose ikm.
// Every record but the last must be exactly rs octets and end in the delimiter
// 0x01; the last record may be shorter and must end in 0x02; padding must be
// zeros.
func DecryptContent(body, ikm []byte) ([]byte, error) {
	h, err := ParseHeader(body)
	if err != nil {
		return nil, err
	}
	return decryptRecords(h, body[h.Size():], ikm, false)
}

// decryptRecords decrypts the records that follow header h. With single set,
// the whole ciphertext is one record whatever rs says (RFC 8291 §4 lets a
// receiver ignore rs).
func decryptRecords(h Header, ct, ikm []byte, single bool) ([]byte, error) {
	if len(ct) == 0 {
		return nil, errors.New("aes128gcm body has no records")
	}
	cek, base := contentKeys(ikm, h.Salt)
	aead, err := newGCM(cek)
	if err != nil {
		return nil, err
	}
	rs := int(h.RecordSize)
	if single || uint64(h.RecordSize) > uint64(len(ct)) {
		rs = len(ct)
	}
	out := make([]byte, 0, len(ct))
	for seq := uint64(0); len(ct) > 0; seq++ {
		n := min(rs, len(ct))
		rec := ct[:n]
		ct = ct[n:]
		last := len(ct) == 0
		if len(rec) <= TagSize {
			return nil, fmt.Errorf("aes128gcm record %d of %d octets is too short", seq, len(rec))
		}
		start := len(out)
		out, err = aead.Open(out, recordNonce(base, seq), rec, nil)
		if err != nil {
			return nil, fmt.Errorf("cannot decrypt aes128gcm record %d: %w", seq, errDecrypt)
		}
		// The delimiter is the last non-zero octet; zeros after it are padding.
		i := len(out) - 1
		for i >= start && out[i] == 0 {
			i--
		}
		if i < start {
			return nil, fmt.Errorf("aes128gcm record %d has no padding delimiter", seq)
		}
		want := byte(delimiterNonFinal)
		if last {
			want = delimiterFinal
		}
		if out[i] != want {
			if last && out[i] == delimiterNonFinal {
				return nil, fmt.Errorf("aes128gcm body is truncated: record %d is not final", seq)
			}
			return nil, fmt.Errorf("aes128gcm record %d has delimiter 0x%02x, want 0x%02x", seq, out[i], want)
		}
		out = out[:i]
	}
	return out, nil
}

// EncryptContent encrypts plaintext with the aes128gcm content coding (RFC 8188)
// under the input keying material ikm, in as many records of rs octets as
// needed, without padding beyond the delimiters. salt must be 16 octets and
// keyID at most 255 octets.
func EncryptContent(plaintext, ikm, salt, keyID []byte, rs uint32) ([]byte, error) {
	h := Header{Salt: salt, RecordSize: rs, KeyID: keyID}
	if err := h.check(); err != nil {
		return nil, err
	}
	return encryptRecords(h, plaintext, ikm)
}

func (h Header) check() error {
	if len(h.Salt) != SaltSize {
		return fmt.Errorf("salt must be %d octets, not %d", SaltSize, len(h.Salt))
	}
	if len(h.KeyID) > 255 {
		return fmt.Errorf("keyid must be at most 255 octets, not %d", len(h.KeyID))
	}
	if h.RecordSize < MinRecordSize {
		return fmt.Errorf("record size %d is below the minimum %d", h.RecordSize, MinRecordSize)
	}
	return nil
}

func encryptRecords(h Header, plaintext, ikm []byte) ([]byte, error) {
	cek, base := contentKeys(ikm, h.Salt)
	aead, err := newGCM(cek)
	if err != nil {
		return nil, err
	}
	// Each record carries up to rs-17 octets of plaintext. rs can be far larger
	// than any plaintext, so compute in uint64.
	chunk := int(min(uint64(h.RecordSize)-TagSize-1, uint64(len(plaintext))+1))
	records := max(1, (len(plaintext)+chunk-1)/chunk)
	out := make([]byte, 0, h.Size()+len(plaintext)+records*(TagSize+1))
	out = h.append(out)
	buf := make([]byte, 0, chunk+1)
	for seq := 0; seq < records; seq++ {
		n := min(chunk, len(plaintext))
		buf = append(buf[:0], plaintext[:n]...)
		plaintext = plaintext[n:]
		if seq == records-1 {
			buf = append(buf, delimiterFinal)
		} else {
			buf = append(buf, delimiterNonFinal)
		}
		out = aead.Seal(out, recordNonce(base, uint64(seq)), buf, nil)
	}
	return out, nil
}
