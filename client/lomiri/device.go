// Package lomiri is heraldd's Lomiri backend: one TLS connection to a Lomiri
// push server (UBports' push.ubports.com, or herald-server's Lomiri
// listener) speaking the wire protocol of package protocol/lomiri, and the
// /register + /unregister HTTP client that gives apps their tokens. It is
// what lomiri-push-service does, with the daemon's durable store behind it:
// messages are acked only after they are stored, and deduplicated by id.
package lomiri

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"os"
)

// MachineIDFiles are read, in order, for the device id: lomiri-push-service
// reads /etc/machine-id, ubuntu-push-client /var/lib/dbus/machine-id; both
// normally hold the same id.
var MachineIDFiles = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}

// DeviceIDFromMachineID is upstream's device id: the standard base64 of the
// SHA-224 of the hex-decoded machine id (40 characters). A user switching
// from lomiri-push-service keeps the device id, so the server's tokens stay.
func DeviceIDFromMachineID(machineID []byte) (string, error) {
	raw, err := hex.DecodeString(string(bytes.TrimSpace(machineID)))
	if err != nil || len(raw) == 0 {
		return "", fmt.Errorf("invalid machine id: want hex digits")
	}
	sum := sha256.Sum224(raw)
	return base64.StdEncoding.EncodeToString(sum[:]), nil
}

// ReadDeviceID reads the first machine id file of paths that exists.
func ReadDeviceID(paths []string) (string, error) {
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("cannot read machine id: %w", err)
		}
		id, err := DeviceIDFromMachineID(b)
		if err != nil {
			return "", fmt.Errorf("cannot use %s: %w", p, err)
		}
		return id, nil
	}
	return "", fmt.Errorf("no machine id in %v", paths)
}

// murmur3Sum64 is the first 64 bits of MurmurHash3 x64 128 with seed 0,
// which upstream's host discovery sends as ?h= (a hint for picking hosts).
func murmur3Sum64(data []byte) uint64 {
	const c1, c2 = 0x87c37b91114253d5, 0x4cf5ad432745937f
	var h1, h2 uint64
	n := len(data)
	for len(data) >= 16 {
		k1 := binary.LittleEndian.Uint64(data)
		k2 := binary.LittleEndian.Uint64(data[8:])
		data = data[16:]
		k1 *= c1
		k1 = bits.RotateLeft64(k1, 31)
		k1 *= c2
		h1 ^= k1
		h1 = bits.RotateLeft64(h1, 27)
		h1 += h2
		h1 = h1*5 + 0x52dce729
		k2 *= c2
		k2 = bits.RotateLeft64(k2, 33)
		k2 *= c1
		h2 ^= k2
		h2 = bits.RotateLeft64(h2, 31)
		h2 += h1
		h2 = h2*5 + 0x38495ab5
	}
	var k1, k2 uint64
	tail := data
	for i := len(tail) - 1; i >= 8; i-- {
		k2 ^= uint64(tail[i]) << (8 * uint(i-8))
	}
	if len(tail) > 8 {
		k2 *= c2
		k2 = bits.RotateLeft64(k2, 33)
		k2 *= c1
		h2 ^= k2
	}
	for i := min(len(tail), 8) - 1; i >= 0; i-- {
		k1 ^= uint64(tail[i]) << (8 * uint(i))
	}
	if len(tail) > 0 {
		k1 *= c1
		k1 = bits.RotateLeft64(k1, 31)
		k1 *= c2
		h1 ^= k1
	}
	h1 ^= uint64(n)
	h2 ^= uint64(n)
	h1 += h2
	h2 += h1
	h1 = fmix64(h1)
	h2 = fmix64(h2)
	h1 += h2
	return h1
}

func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}
