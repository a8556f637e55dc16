package server

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// Several server nodes share one Store (PostgreSQL). Each device websocket
// is held by one node; the store's routes table says which (uaid → node URL
// and connection id). A node that accepts a post stores the message, reads
// the route and, when another node holds the device, hands the message to
// it with one authenticated HTTP call; storage is the fallback when the call
// fails (the device gets the message when it next connects).

// Paths of the node-to-node API.
const (
	nodeDeliverPath   = "/_herald/node/deliver"
	nodeReplacePath   = "/_herald/node/replace"
	nodeBroadcastPath = "/_herald/node/broadcast"
	nodeAuthScheme    = "HeraldNode "
	// maxNodeBody bounds a node call's body: a message of MaxBodyBytes in
	// base64 plus its fields and headers.
	maxNodeBody = 3*protocol.MaxBodyBytes + 8<<10
)

// node is the server's part of a cluster; nil when the server runs alone.
type node struct {
	url    string
	secret string // set by Serve
	client *http.Client
	connID atomic.Int64 // last connection id handed out
}

func newNode(url, secret string) *node {
	n := &node{url: strings.TrimRight(url, "/"), secret: secret}
	n.client = &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	// Connection ids start at the start time so that they differ from the
	// ids of an earlier run of this node.
	n.connID.Store(time.Now().UnixNano())
	return n
}

// nodeMessage is a message in a node call.
type nodeMessage struct {
	UAID    string            `json:"uaid"`
	Seq     int64             `json:"seq"`
	ID      string            `json:"id"`
	Channel string            `json:"chid"`
	Version string            `json:"version"`
	Topic   string            `json:"topic,omitempty"`
	Data    []byte            `json:"data,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Expiry  int64             `json:"expiry"` // unix ms
	Urgency string            `json:"urgency,omitempty"`
	Receipt string            `json:"receipt,omitempty"`
}

type nodeReplace struct {
	UAID string `json:"uaid"`
	Conn int64  `json:"conn"`
}

// dispatch hands an accepted message to the device's connection: on this
// node, or through the node holding it.
func (s *Server) dispatch(ctx context.Context, m *Message) {
	if s.node == nil {
		if c := s.hub.get(m.UAID); c != nil {
			c.deliver(m)
		}
		return
	}
	r, err := s.store.Route(ctx, m.UAID)
	if errors.Is(err, ErrNotFound) {
		return // not connected: stored for the next connection
	}
	if err != nil {
		s.log.Warn("cannot look up route", "err", err)
		return
	}
	if r.Node == s.node.url {
		if c := s.hub.get(m.UAID); c != nil {
			c.deliver(m)
		}
		return
	}
	s.forward(ctx, r, m)
}

// forward sends m to the node of route r. A node that cannot be reached, or
// that no longer holds the device, loses the route.
func (s *Server) forward(ctx context.Context, r Route, m *Message) {
	body, _ := json.Marshal(nodeMessage{UAID: m.UAID, Seq: m.Seq, ID: m.ID, Channel: m.ChannelID, Version: m.Version,
		Topic: m.Topic, Data: m.Data, Headers: m.Headers, Expiry: m.Expiry.UnixMilli(), Urgency: m.Urgency, Receipt: m.Receipt})
	status, err := s.nodeCall(ctx, r.Node+nodeDeliverPath, body)
	if err != nil && ctx.Err() == nil {
		// Once more on a fresh connection, as autopush tries twice: a
		// node that is up but was slow to answer keeps its device's route.
		status, err = s.nodeCall(ctx, r.Node+nodeDeliverPath, body)
	}
	switch {
	case err == nil && status == http.StatusNoContent:
		s.metrics.forwarded.WithLabelValues("delivered").Inc()
		return
	case err == nil && status == http.StatusNotFound:
		s.metrics.forwarded.WithLabelValues("not_connected").Inc()
	case err != nil:
		s.metrics.forwarded.WithLabelValues("unreachable").Inc()
		s.log.Warn("cannot reach node, dropping its route", "node", r.Node, "err", err)
	default:
		s.metrics.forwarded.WithLabelValues("failed").Inc()
		s.log.Warn("node refused a message", "node", r.Node, "status", status)
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.store.ClearRoute(cctx, m.UAID, r); err != nil {
		s.log.Warn("cannot clear stale route", "err", err)
	}
}

// broadcastNodes tells every other node holding devices that a Lomiri
// broadcast was posted (each pokes its Lomiri devices). A node that cannot be
// reached misses it; its devices see it when they next connect.
func (s *Server) broadcastNodes(ctx context.Context) {
	nodes, err := s.store.Nodes(ctx)
	if err != nil {
		s.log.Warn("cannot list nodes for a broadcast", "err", err)
		return
	}
	for _, n := range nodes {
		if n == s.node.url {
			continue
		}
		if _, err := s.nodeCall(ctx, n+nodeBroadcastPath, []byte("{}")); err != nil {
			s.log.Warn("cannot tell a node of a broadcast", "node", n, "err", err)
		}
	}
}

// handleNodeBroadcast pokes this node's Lomiri devices after a broadcast was
// posted to another node.
func (s *Server) handleNodeBroadcast(w http.ResponseWriter, r *http.Request) {
	if !s.nodeAuthorized(w, r) {
		return
	}
	for _, c := range s.lomiri.all() {
		c.poke(c.bkick)
	}
	w.WriteHeader(http.StatusNoContent)
}

// replaceRemote tells the node of prev that its connection of uaid is
// replaced by a newer one.
func (s *Server) replaceRemote(uaid string, prev Route) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, _ := json.Marshal(nodeReplace{UAID: uaid, Conn: prev.Conn})
	if _, err := s.nodeCall(ctx, prev.Node+nodeReplacePath, body); err != nil {
		s.log.Debug("cannot tell the previous node of a device", "node", prev.Node, "err", err)
	}
}

// nodeCall POSTs body to url with the node secret and returns the status.
func (s *Server) nodeCall(ctx context.Context, url string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", nodeAuthScheme+s.node.secret)
	resp, err := s.node.client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// nodeAuthorized checks the secret of a node call; it answers 401 if wrong.
func (s *Server) nodeAuthorized(w http.ResponseWriter, r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), nodeAuthScheme)
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.node.secret)) != 1 {
		http.Error(w, "node secret required", http.StatusUnauthorized)
		return false
	}
	return true
}

func readNodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxNodeBody+1))
	if err != nil || len(b) > maxNodeBody {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return false
	}
	if err := json.Unmarshal(b, v); err != nil {
		http.Error(w, "bad body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

// handleNodeDeliver is a message from another node for a device here:
// 204 when handed to its connection, 404 when the device is not connected.
func (s *Server) handleNodeDeliver(w http.ResponseWriter, r *http.Request) {
	if !s.nodeAuthorized(w, r) {
		return
	}
	var nm nodeMessage
	if !readNodeBody(w, r, &nm) {
		return
	}
	if nm.UAID == "" || nm.Channel == "" || nm.Version == "" || len(nm.Data) > protocol.MaxBodyBytes {
		http.Error(w, "incomplete message", http.StatusBadRequest)
		return
	}
	if IsLomiriUAID(nm.UAID) {
		// Lomiri messages are always stored first: a kick sends them.
		lc := s.lomiri.get(nm.UAID)
		if lc == nil {
			http.Error(w, "device not connected here", http.StatusNotFound)
			return
		}
		lc.poke(lc.kick)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	c := s.hub.get(nm.UAID)
	if c == nil {
		http.Error(w, "device not connected here", http.StatusNotFound)
		return
	}
	c.deliver(&Message{Seq: nm.Seq, ID: nm.ID, UAID: nm.UAID, ChannelID: nm.Channel, Version: nm.Version,
		Topic: nm.Topic, Data: nm.Data, Headers: nm.Headers, Expiry: time.UnixMilli(nm.Expiry), Urgency: nm.Urgency, Receipt: nm.Receipt})
	w.WriteHeader(http.StatusNoContent)
}

// handleNodeReplace closes the connection of a device that connected again
// to another node: 204 when closed, 404 when that connection is not here.
func (s *Server) handleNodeReplace(w http.ResponseWriter, r *http.Request) {
	if !s.nodeAuthorized(w, r) {
		return
	}
	var nr nodeReplace
	if !readNodeBody(w, r, &nr) {
		return
	}
	if IsLomiriUAID(nr.UAID) {
		lc := s.lomiri.get(nr.UAID)
		if lc == nil || lc.route.Conn != nr.Conn {
			http.Error(w, "connection not here", http.StatusNotFound)
			return
		}
		lc.shut()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	c := s.hub.get(nr.UAID)
	if c == nil || c.route.Conn != nr.Conn {
		http.Error(w, "connection not here", http.StatusNotFound)
		return
	}
	// As for a replacement on one node (hub.go): a normal close.
	c.shut(protocol.CloseNormal, "replaced by a newer connection")
	w.WriteHeader(http.StatusNoContent)
}

// startNode prepares the node before it serves: the secret, and no routes
// left from an earlier run of this node (it holds no connection yet).
func (s *Server) startNode(ctx context.Context) error {
	if s.node.secret == "" {
		secret, err := s.store.NodeSecret(ctx)
		if err != nil {
			return err
		}
		s.node.secret = secret
	}
	n, err := s.store.ClearNode(ctx, s.node.url)
	if err != nil {
		return fmt.Errorf("cannot clear the routes of an earlier run: %w", err)
	}
	if n > 0 {
		s.log.Info("cleared routes of an earlier run of this node", "routes", n)
	}
	return nil
}
