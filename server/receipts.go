package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// Push receipts (RFC 8030 §5.1) and their plain-HTTP form.
//
// An app server makes a receipt subscription with POST /receipts (201,
// Location: <base>/r/<id>) and names it on a push with
// Link: <…/r/<id>>; rel="urn:ietf:params:push:receipt" (or the earlier drafts'
// Push-Receipt header) and Prefer: respond-async, which is answered 202.
// Receipts are stored as the messages of a pseudo device "R:<id>" in the
// store, so they have the store's durability, expiry, export and the
// per-channel bound (MaxReceipts) for free. GET /r/<id> is a long poll that
// returns them as JSON; its since= parameter acknowledges (deletes) those
// the app server has seen.

const (
	// ReceiptUAIDPrefix starts the store UAID of a receipt subscription.
	ReceiptUAIDPrefix = "R:"
	// receiptChannel is the one channel of a receipt subscription.
	receiptChannel = "receipts"
	// MaxReceipts is how many unread receipts one receipt subscription (one
	// app server) keeps by default (Config.MaxReceipts); older ones are
	// dropped.
	MaxReceipts = 1000
	// ReceiptTTL is how long an unread receipt is kept.
	ReceiptTTL = 7 * 24 * time.Hour
	// AppReceiptWindow is how long after the device's ack a message waits
	// for its app to take it (the "read" receipt).
	AppReceiptWindow = 7 * 24 * time.Hour
	// maxReceiptWait bounds a long poll.
	maxReceiptWait = 60 * time.Second
	// receiptRelation is RFC 8030's link relation of a receipt subscription.
	receiptRelation = "urn:ietf:params:push:receipt"
)

// Receipt statuses.
const (
	// ReceiptDelivered: the device acknowledged the message (RFC 8030: 204).
	ReceiptDelivered = "delivered"
	// ReceiptRead: an app on the device took the message (Herald extension
	// "app_ack": Lomiri PopAll, an acknowledged UnifiedPush Connector2.Message).
	ReceiptRead = "read"
	// ReceiptExpired: the message expired before the device took it (RFC
	// 8030: 410).
	ReceiptExpired = "expired"
)

// Receipt is one receipt as GET /r/<id> returns it.
type Receipt struct {
	Seq     int64     `json:"seq"`
	Message string    `json:"message"` // the push message resource
	ID      string    `json:"id"`      // its message id
	Status  string    `json:"status"`
	Code    int       `json:"code,omitempty"` // the device's ack code (100, 101, 102)
	Time    time.Time `json:"time"`
}

// receiptWaiters wakes the long polls of a receipt subscription.
type receiptWaiters struct {
	mu sync.Mutex
	m  map[string]chan struct{} // guarded by mu; closed when a receipt arrives
}

func (w *receiptWaiters) wait(sub string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string]chan struct{}{}
	}
	ch := w.m[sub]
	if ch == nil {
		ch = make(chan struct{})
		w.m[sub] = ch
	}
	return ch
}

func (w *receiptWaiters) wake(sub string) {
	w.mu.Lock()
	ch := w.m[sub]
	delete(w.m, sub)
	w.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// handleReceiptSubscribe is POST /receipts: a new receipt subscription.
func (s *Server) handleReceiptSubscribe(w http.ResponseWriter, r *http.Request) {
	if s.limited(w, r, "") {
		s.pushFail(w, newPushError(429, errnoTooMany, "too many requests, retry later"))
		return
	}
	id := newToken()
	if err := s.store.AddDevice(r.Context(), ReceiptUAIDPrefix+id, s.now()); err != nil {
		s.log.Error("cannot add receipt subscription", "err", err)
		w.Header().Set("Retry-After", "5")
		s.pushFail(w, newPushError(503, errnoUnavailable, "store unavailable, retry later"))
		return
	}
	w.Header().Set("Location", s.base+"/r/"+id)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// receiptRequest returns the receipt subscription a push names in Link (rel
// urn:ietf:params:push:receipt) or Push-Receipt, "" for none; a malformed or
// unknown one is a 400.
func (s *Server) receiptRequest(ctx context.Context, h http.Header) (string, *pushError) {
	target := strings.TrimSpace(h.Get("Push-Receipt"))
	for _, v := range h.Values("Link") {
		for _, l := range strings.Split(v, ",") {
			if u, ok := receiptLink(l); ok {
				target = u
			}
		}
	}
	if target == "" {
		return "", nil
	}
	i := strings.LastIndex(target, "/r/")
	if i < 0 {
		return "", newPushError(400, errnoBadHeader, "invalid receipt subscription: want <server>/r/<id>")
	}
	id := target[i+3:]
	if b, err := protocol.DecodeBase64URL(id); err != nil || len(b) != 16 {
		return "", newPushError(400, errnoBadHeader, "invalid receipt subscription: want <server>/r/<id>")
	}
	ok, err := s.store.HasDevice(ctx, ReceiptUAIDPrefix+id)
	if err != nil {
		return "", newPushError(503, errnoUnavailable, "store unavailable, retry later")
	}
	if !ok {
		return "", newPushError(400, errnoBadHeader, "unknown receipt subscription")
	}
	return id, nil
}

// receiptLink parses one link-value `<uri>; rel="urn:ietf:params:push:receipt"`.
func receiptLink(l string) (string, bool) {
	l = strings.TrimSpace(l)
	if !strings.HasPrefix(l, "<") {
		return "", false
	}
	end := strings.IndexByte(l, '>')
	if end < 0 {
		return "", false
	}
	uri := l[1:end]
	for _, p := range strings.Split(l[end+1:], ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "rel") {
			continue
		}
		for _, rel := range strings.Fields(strings.Trim(strings.TrimSpace(v), `"`)) {
			if rel == receiptRelation {
				return uri, true
			}
		}
	}
	return "", false
}

// respondAsync reports whether a Prefer header asks for respond-async.
func respondAsync(h http.Header) bool {
	for _, v := range h.Values("Prefer") {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), "respond-async") {
				return true
			}
		}
	}
	return false
}

// preferWait returns the wait=N of a Prefer header, or -1.
func preferWait(h http.Header) int {
	for _, v := range h.Values("Prefer") {
		for _, p := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(k, "wait") {
				if n, err := strconv.Atoi(strings.TrimSpace(val)); err == nil && n >= 0 {
					return n
				}
			}
		}
	}
	return -1
}

// putReceipt stores one receipt for the app server and wakes its long polls.
func (s *Server) putReceipt(ctx context.Context, sub, msgID, status string, code int) {
	now := s.now()
	data, _ := json.Marshal(Receipt{Message: s.base + "/m/" + msgID, ID: msgID, Status: status, Code: code, Time: now.UTC()})
	id := newMessageID()
	m := &Message{ID: id, UAID: ReceiptUAIDPrefix + sub, ChannelID: receiptChannel, Version: id, Data: data,
		Expiry: now.Add(ReceiptTTL)}
	if _, dropped, err := s.store.Put(ctx, m, PutOptions{DropOver: s.cfg.MaxReceipts}, now); err != nil {
		s.log.Warn("cannot store receipt", "msg_id", msgID, "err", err)
		return
	} else if dropped > 0 {
		s.metrics.receiptsDropped.Add(float64(dropped))
	}
	s.metrics.receipts.WithLabelValues(status).Inc()
	s.receiptWaiters.wake(sub)
}

// watchReceipt records a pushed message whose app server asked for receipts.
func (s *Server) watchReceipt(ctx context.Context, m *Message) error {
	return s.store.Watch(ctx, ReceiptWatch{UAID: m.UAID, ChannelID: m.ChannelID, Version: m.Version,
		Sub: m.Receipt, MsgID: m.ID, Expiry: m.Expiry})
}

// receiptRef is what a connection remembers of a sent message with a receipt.
type receiptRef struct {
	sub, msgID string
}

// ackedReceipt is an acknowledged message whose app server asked for receipts.
type ackedReceipt struct {
	ref     Ref
	receipt receiptRef
	code    int // the ack's code, 0 for the default (100)
}

// delivered emits the receipts of acknowledged messages, in ack order, and
// keeps their watches for the app's own receipt.
func (s *Server) delivered(ctx context.Context, uaid string, acked []ackedReceipt) {
	keep := s.now().Add(AppReceiptWindow)
	for _, a := range acked {
		code := a.code
		if code == 0 {
			code = protocol.AckDelivered
		}
		s.putReceipt(ctx, a.receipt.sub, a.receipt.msgID, ReceiptDelivered, code)
		if err := s.store.Watch(ctx, ReceiptWatch{UAID: uaid, ChannelID: a.ref.ChannelID, Version: a.ref.Version,
			Sub: a.receipt.sub, MsgID: a.receipt.msgID, Expiry: keep, Delivered: true}); err != nil {
			s.log.Warn("cannot keep receipt watch", "err", err)
		}
	}
}

// appAcked emits "read" receipts for the messages the device's apps took.
func (s *Server) appAcked(ctx context.Context, uaid string, m *protocol.AppAck) {
	refs := make([]Ref, len(m.Updates))
	for i, u := range m.Updates {
		refs[i] = Ref{ChannelID: u.ChannelID, Version: u.Version}
	}
	ws, err := s.store.TakeWatches(ctx, uaid, refs)
	if err != nil {
		s.log.Warn("cannot read receipt watches", "err", err)
		return
	}
	for _, w := range ws {
		s.putReceipt(ctx, w.Sub, w.MsgID, ReceiptRead, 0)
	}
}

// sweepReceipts turns expired undelivered watches into "expired" receipts.
func (s *Server) sweepReceipts(ctx context.Context, now time.Time) {
	ws, err := s.store.SweepWatches(ctx, now)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("cannot sweep receipt watches", "err", err)
		}
		return
	}
	for _, w := range ws {
		s.putReceipt(ctx, w.Sub, w.MsgID, ReceiptExpired, 0)
	}
}

// handleReceipts is GET /r/<id>: the receipts after since, waiting up to
// wait seconds (?wait=N or Prefer: wait=N, at most 60) for one to arrive.
// since=N also deletes the receipts up to N: the app server has them.
// 200 with {"receipts":[…],"next":N}; 204 when none arrived in time.
func (s *Server) handleReceipts(w http.ResponseWriter, r *http.Request) {
	if s.limited(w, r, "") {
		s.pushFail(w, newPushError(429, errnoTooMany, "too many requests, retry later"))
		return
	}
	id := r.PathValue("id")
	ctx := r.Context()
	uaid := ReceiptUAIDPrefix + id
	if b, err := protocol.DecodeBase64URL(id); err != nil || len(b) != 16 {
		s.pushFail(w, newPushError(404, errnoNotFound, "unknown receipt subscription"))
		return
	}
	ok, err := s.store.HasDevice(ctx, uaid)
	if err != nil {
		s.pushFail(w, newPushError(503, errnoUnavailable, "store unavailable, retry later"))
		return
	}
	if !ok {
		s.pushFail(w, newPushError(404, errnoNotFound, "unknown receipt subscription"))
		return
	}
	// A receipt subscription is a device to the store: reading it counts as
	// being seen, so that one in use is never deleted as idle.
	if err := s.store.AddDevice(ctx, uaid, s.now()); err != nil {
		s.log.Warn("cannot mark receipt subscription as seen", "err", err)
	}
	q := r.URL.Query()
	var since int64
	if v := q.Get("since"); v != "" {
		if since, err = strconv.ParseInt(v, 10, 64); err != nil || since < 0 {
			s.pushFail(w, newPushError(400, errnoBadHeader, "since is not a non-negative integer"))
			return
		}
	}
	wait := preferWait(r.Header)
	if v := q.Get("wait"); v != "" {
		if wait, err = strconv.Atoi(v); err != nil || wait < 0 {
			s.pushFail(w, newPushError(400, errnoBadHeader, "wait is not a non-negative integer"))
			return
		}
	}
	timeout := min(time.Duration(max(wait, 0))*time.Second, maxReceiptWait)
	if since > 0 {
		if err := s.forgetReceipts(ctx, uaid, since); err != nil {
			s.log.Warn("cannot delete read receipts", "err", err)
		}
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		woken := s.receiptWaiters.wait(id)
		msgs, err := s.store.Pending(ctx, uaid, since, 100, s.now())
		if err != nil {
			s.pushFail(w, newPushError(503, errnoUnavailable, "store unavailable, retry later"))
			return
		}
		if len(msgs) > 0 {
			out := struct {
				Receipts []Receipt `json:"receipts"`
				Next     int64     `json:"next"`
			}{}
			for _, m := range msgs {
				var rc Receipt
				if json.Unmarshal(m.Data, &rc) != nil {
					continue
				}
				rc.Seq = m.Seq
				out.Receipts = append(out.Receipts, rc)
				out.Next = m.Seq
			}
			writeJSON(w, http.StatusOK, out)
			return
		}
		// With several nodes a receipt may be stored by another node: look
		// again every second while waiting.
		var poll <-chan time.Time
		if s.node != nil {
			t := time.NewTimer(time.Second)
			defer t.Stop()
			poll = t.C
		}
		select {
		case <-woken:
		case <-poll:
		case <-deadline.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-ctx.Done():
			return
		}
	}
}

// forgetReceipts deletes the receipts of uaid up to seq.
func (s *Server) forgetReceipts(ctx context.Context, uaid string, seq int64) error {
	for {
		msgs, err := s.store.Pending(ctx, uaid, 0, MaxReceipts, s.now())
		if err != nil {
			return err
		}
		var refs []Ref
		for _, m := range msgs {
			if m.Seq <= seq {
				refs = append(refs, Ref{ChannelID: m.ChannelID, Version: m.Version})
			}
		}
		if len(refs) == 0 {
			return nil
		}
		if err := s.store.Delete(ctx, uaid, refs); err != nil {
			return err
		}
		if len(refs) < len(msgs) || len(msgs) < MaxReceipts {
			return nil
		}
	}
}
