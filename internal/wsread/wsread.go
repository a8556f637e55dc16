// Package wsread reads websocket messages with a limit on their
// decompressed size.
//
// gorilla/websocket checks SetReadLimit against the bytes on the wire: with
// permessage-deflate a 60 KiB frame can inflate to 60 MiB, and ReadMessage
// inflates all of it before the caller sees its length. Read stops inflating
// one byte past the limit instead, so a peer can make us hold at most limit
// bytes of one message.
package wsread

import (
	"errors"
	"io"
	"time"

	"github.com/gorilla/websocket"
)

// ErrTooBig is returned by Read for a message larger than the limit after
// decompression; the caller should close with websocket.CloseMessageTooBig.
var ErrTooBig = errors.New("message larger than the limit after decompression")

// Read returns the next data message of at most limit bytes (after
// decompression). The wire limit (SetReadLimit) still applies.
func Read(ws *websocket.Conn, limit int) (typ int, b []byte, err error) {
	typ, r, err := ws.NextReader()
	if err != nil {
		return typ, nil, err
	}
	b, err = io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return typ, nil, err
	}
	if len(b) > limit {
		return typ, nil, ErrTooBig
	}
	return typ, b, nil
}

// CloseTooBig sends close 1009 ("message too big") and closes ws.
func CloseTooBig(ws *websocket.Conn) {
	_ = ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseMessageTooBig, "message too big after decompression"),
		time.Now().Add(time.Second))
	ws.Close()
}
