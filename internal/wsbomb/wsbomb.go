// Package wsbomb makes the hostile websocket input of Herald's security
// tests: a permessage-deflate message that inflates far beyond the frame
// limit while its wire size stays under it, sent by a raw client that speaks
// just enough of RFC 6455 and RFC 7692 to deliver it. Tests only.
package wsbomb

import (
	"bufio"
	"bytes"
	"compress/flate"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Deflate returns the permessage-deflate payload of n bytes of 'a' (RFC 7692
// §7.2.1: compressed with the sync flush tail removed). 60 MiB take 61 KB.
func Deflate(n int) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	chunk := bytes.Repeat([]byte{'a'}, 1<<20)
	for n > 0 {
		k := min(n, len(chunk))
		w.Write(chunk[:k])
		n -= k
	}
	w.Flush()
	return bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})
}

// Frame returns one final text frame carrying payload; compressed sets RSV1
// (permessage-deflate), masked masks it as a client must.
func Frame(payload []byte, compressed, masked bool) []byte {
	b0 := byte(0x80 | 0x1)
	if compressed {
		b0 |= 0x40
	}
	var f []byte
	f = append(f, b0)
	var mask byte
	if masked {
		mask = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		f = append(f, mask|byte(n))
	case n < 1<<16:
		f = append(f, mask|126)
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f = append(f, mask|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	if !masked {
		return append(f, payload...)
	}
	var key [4]byte
	rand.Read(key[:])
	f = append(f, key[:]...)
	for i, c := range payload {
		f = append(f, c^key[i%4])
	}
	return f
}

// Conn is a raw client websocket connection.
type Conn struct {
	net.Conn
	r *bufio.Reader
	// Response is the server's answer to the upgrade.
	Response *http.Response
}

// Dial opens a websocket to ws://addr/ asking for permessage-deflate. A
// refused upgrade returns the response and an error.
func Dial(addr string) (*Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	var k [16]byte
	rand.Read(k[:])
	fmt.Fprintf(nc, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: push-notification\r\n"+
		"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n\r\n",
		addr, base64.StdEncoding.EncodeToString(k[:]))
	c := &Conn{Conn: nc, r: bufio.NewReader(nc)}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.Response = resp
	if resp.StatusCode != http.StatusSwitchingProtocols {
		io.Copy(io.Discard, resp.Body)
		nc.Close()
		return c, fmt.Errorf("upgrade refused: %s", resp.Status)
	}
	if !strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		nc.Close()
		return c, fmt.Errorf("server did not accept permessage-deflate")
	}
	nc.SetReadDeadline(time.Time{})
	return c, nil
}

// ReadClose reads frames until a close frame and returns its code; 0 when the
// connection ends without one.
func (c *Conn) ReadClose(timeout time.Duration) (int, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			return 0, err
		}
		n := int64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(c.r, b[:]); err != nil {
				return 0, err
			}
			n = int64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(c.r, b[:]); err != nil {
				return 0, err
			}
			n = int64(binary.BigEndian.Uint64(b[:]))
		}
		if n > 1<<20 {
			return 0, fmt.Errorf("frame of %d bytes", n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(c.r, p); err != nil {
			return 0, err
		}
		if h[0]&0x0f == 0x8 {
			if len(p) < 2 {
				return 1005, nil
			}
			return int(binary.BigEndian.Uint16(p)), nil
		}
	}
}
