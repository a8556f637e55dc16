package session

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldpush/herald/protocol"
)

// clientFrames is a TCP proxy that parses what the device sends after its
// upgrade request: one entry per frame, whether it was compressed (RSV1)
// and its opcode.
type clientFrames struct {
	ln net.Listener
	fs chan frameHeader
}

type frameHeader struct {
	compressed bool
	opcode     byte
	size       int
}

func newClientFrames(t *testing.T, target string) *clientFrames {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &clientFrames{ln: ln, fs: make(chan frameHeader, 100)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			go func() { _, _ = io.Copy(c, s); c.Close() }()
			go func() { p.parse(io.TeeReader(c, s)); s.Close() }()
		}
	}()
	return p
}

func (p *clientFrames) parse(r io.Reader) {
	br := bufio.NewReader(r)
	if _, err := http.ReadRequest(br); err != nil { // the upgrade request
		return
	}
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return
			}
			n = int(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return
			}
			n = int(binary.BigEndian.Uint64(b[:]))
		}
		if h[1]&0x80 != 0 { // mask key
			n += 4
		}
		if _, err := br.Discard(n); err != nil {
			return
		}
		p.fs <- frameHeader{compressed: h[0]&0x40 != 0, opcode: h[0] & 0x0f, size: n}
	}
}

// next returns the next frame the device sent.
func (p *clientFrames) next(t *testing.T) frameHeader {
	t.Helper()
	select {
	case f := <-p.fs:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no frame from the device")
		return frameHeader{}
	}
}

// With permessage-deflate negotiated, the handshake and small frames go
// uncompressed (no 1.2 MB deflate writer for them), large ones compressed.
func TestWriteCompressionOnlyForLargeFrames(t *testing.T) {
	conns := make(chan *websocket.Conn, 1)
	up := websocket.Upgrader{EnableCompression: true}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := up.Upgrade(w, r, nil); err == nil {
			conns <- c
		}
	}))
	t.Cleanup(srv.Close)
	proxy := newClientFrames(t, strings.TrimPrefix(srv.URL, "http://"))
	h := newHandler()
	h.uaid, h.channels = uaid, []string{chA}
	s, _ := start(t, Config{URL: "ws://" + proxy.ln.Addr().String() + "/", Handler: h, Compression: true, AckDelay: time.Hour})
	s.SetWanted(true)
	var c *websocket.Conn
	select {
	case c = <-conns:
		t.Cleanup(func() { c.Close() })
	case <-time.After(10 * time.Second):
		t.Fatal("no connection")
	}
	readMsg(t, c) // hello
	writeMsg(t, c, &protocol.Hello{UAID: uaid, Status: 200, UseWebPush: true})
	h.waitState(t, StateConnected)
	go func() { _, _ = s.Register(context.Background(), chB, "") }()
	if _, ok := readMsg(t, c).(*protocol.Register); !ok {
		t.Fatal("expected a register")
	}
	// A full batch of acks is one JSON frame of ~500 bytes.
	for i := range protocol.BatchSize {
		writeMsg(t, c, &protocol.Notification{ChannelID: chA, Version: fmt.Sprintf("version-%02d", i), Data: "aGk"})
	}
	if _, ok := readMsg(t, c).(*protocol.Ack); !ok {
		t.Fatal("expected an ack")
	}
	for i, want := range []bool{false, false, true} { // hello, register, ack
		if f := proxy.next(t); f.opcode != websocket.TextMessage || f.compressed != want {
			t.Errorf("frame %d (%d bytes, opcode %d): compressed %v, want %v", i, f.size, f.opcode, f.compressed, want)
		}
	}
}
