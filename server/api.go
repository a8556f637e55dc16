package server

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

// Topics of internal replacement rules; "~" is outside the base64url
// alphabet of RFC 8030 topics, so they never clash with an app's Topic.
const (
	simplePushTopic = "~simplepush"
	notifyTagPrefix = "~tag:"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func (s *Server) pushFail(w http.ResponseWriter, e *pushError) {
	writeJSON(w, e.Code, e)
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limited checks the rate limits of the client address and of token ("" for
// none); when one is exceeded it sets Retry-After and reports true.
func (s *Server) limited(w http.ResponseWriter, r *http.Request, token string) bool {
	now := s.now()
	if ok, retry := s.ipRL.allow(clientIP(r), now); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(retry))
		return true
	}
	if token != "" {
		if ok, retry := s.tokenRL.allow(token, now); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(retry))
			return true
		}
	}
	return false
}

// readBody reads at most MaxBodyBytes; ok is false when the body is larger.
func readBody(r *http.Request) (body []byte, ok bool, err error) {
	if r.ContentLength > protocol.MaxBodyBytes {
		return nil, false, nil
	}
	if n := r.ContentLength; n >= 0 {
		// The usual request: one allocation of the announced size, and a
		// check that nothing follows it.
		body = make([]byte, n)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, false, err
		}
		var one [1]byte
		if k, _ := r.Body.Read(one[:]); k > 0 {
			return nil, false, errors.New("body longer than its Content-Length")
		}
		return body, true, nil
	}
	body, err = io.ReadAll(io.LimitReader(r.Body, protocol.MaxBodyBytes+1))
	if err != nil {
		return nil, false, err
	}
	if len(body) > protocol.MaxBodyBytes {
		return nil, false, nil
	}
	return body, true, nil
}

// checkVAPID enforces the key of a restricted channel.
func (s *Server) checkVAPID(r *http.Request, ch Channel) *pushError {
	if ch.Key == nil {
		return nil
	}
	key, err := webpush.VerifyVAPID(r.Header.Get("Authorization"), s.audience, s.now())
	switch {
	case errors.Is(err, webpush.ErrVAPIDMissing):
		return newPushError(401, errnoVAPID, "this endpoint needs vapid authorization")
	case err != nil:
		s.log.Debug("rejected vapid authorization", "err", err)
		return newPushError(403, errnoVAPID, "invalid vapid authorization")
	case string(key) != string(ch.Key):
		return newPushError(403, errnoVAPID, "vapid key does not match the subscription")
	}
	return nil
}

// resolve looks up the token of a push; a nil Channel means an error was sent.
func (s *Server) resolve(w http.ResponseWriter, r *http.Request, token string) (Channel, bool) {
	ch, err := s.channel(r.Context(), token)
	if errors.Is(err, ErrNotFound) {
		s.pushFail(w, newPushError(404, errnoNotFound, "unknown or unregistered endpoint"))
		return Channel{}, false
	}
	if err != nil {
		s.log.Error("cannot resolve token", "err", err)
		w.Header().Set("Retry-After", "5")
		s.pushFail(w, newPushError(503, errnoUnavailable, "store unavailable, retry later"))
		return Channel{}, false
	}
	if IsLomiriUAID(ch.UAID) {
		// A Lomiri device takes JSON from /notify, not Web Push bodies.
		s.pushFail(w, newPushError(404, errnoNotFound, "a Lomiri token: post to /notify"))
		return Channel{}, false
	}
	if e := s.checkVAPID(r, ch); e != nil {
		s.pushFail(w, e)
		return Channel{}, false
	}
	return ch, true
}

// accept stores m (unless TTL 0) and hands it to the device if connected.
func (s *Server) accept(r *http.Request, m *Message, o PutOptions, api string) error {
	now := s.now()
	if IsLomiriUAID(m.UAID) {
		// Lomiri devices take stored messages only (expire_on is in the future).
		start := time.Now()
		_, _, err := s.store.Put(r.Context(), m, o, now)
		s.metrics.putSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			return err
		}
		s.metrics.acceptedBy(api).Inc()
		s.dispatchLomiri(r.Context(), m)
		return nil
	}
	if !m.Expiry.After(now) {
		// TTL 0: only a device connected now gets it.
		s.dispatch(r.Context(), m)
		s.metrics.acceptedBy(api).Inc()
		return nil
	}
	// Deliver while storing (hub.go putDelivering): a device connected here
	// gets the frame now, while the commit runs; 201 still waits for it.
	stored, dropped, early, err := s.putDelivering(r.Context(), m, o, now)
	if err != nil {
		return err
	}
	s.metrics.acceptedBy(api).Inc()
	if dropped > 0 {
		s.metrics.dropped.Add(float64(dropped))
	}
	if stored && !early {
		s.dispatch(r.Context(), m)
	}
	return nil
}

// aes128gcmHeaders are the headers of every aes128gcm message, shared:
// Message.Headers is never modified.
var aes128gcmHeaders = map[string]string{"encoding": "aes128gcm"}

// contentLengthZero is the header value of an empty answer (net/http only
// reads header values).
var contentLengthZero = []string{"0"}

// fitsFrame reports whether the notification frame of m, with the longest
// TTL, stays within protocol.MaxFrameBytes: a message the device cannot read
// is refused at the door instead of stored.
func (s *Server) fitsFrame(m *Message) bool {
	return notificationLen(m.ChannelID, m.Version, m.Data, m.Headers, int64(protocol.MaxTTL/time.Second)) <= protocol.MaxFrameBytes
}

// handleWebPush is POST /wpush/v1/<token> (RFC 8030).
func (s *Server) handleWebPush(w http.ResponseWriter, r *http.Request) {
	token := r.PathValue("token")
	if s.limited(w, r, token) {
		s.pushFail(w, newPushError(429, errnoTooMany, "too many requests, retry later"))
		return
	}
	h, perr := parsePushHeaders(r.Header)
	if perr != nil {
		s.pushFail(w, perr)
		return
	}
	body, ok, err := readBody(r)
	if err != nil {
		s.pushFail(w, newPushError(400, errnoBadHeader, "cannot read body"))
		return
	}
	if !ok {
		s.pushFail(w, newPushError(413, errnoTooLarge, "body larger than 4096 bytes"))
		return
	}
	ch, ok := s.resolve(w, r, token)
	if !ok {
		return
	}
	var headers map[string]string
	if len(body) > 0 {
		switch enc := r.Header.Get("Content-Encoding"); enc {
		case "", "identity":
			// A plaintext body: Lomiri app servers and simple senders (curl)
			// push JSON that the app's helper reads as is.
		case "aes128gcm":
			headers = aes128gcmHeaders
		case "aesgcm":
			enc2, ck := r.Header.Get("Encryption"), r.Header.Get("Crypto-Key")
			if enc2 == "" || ck == "" {
				s.pushFail(w, newPushError(400, errnoBadEncoding, "aesgcm needs Encryption and Crypto-Key headers"))
				return
			}
			if len(r.Header.Values("Encryption")) > 1 || len(r.Header.Values("Crypto-Key")) > 1 ||
				!validCryptoParams(enc2) || !validCryptoParams(ck) {
				s.pushFail(w, newPushError(400, errnoBadEncoding,
					"invalid Encryption or Crypto-Key header: want name=value parameters, at most 512 bytes each"))
				return
			}
			headers = map[string]string{"encoding": enc, "encryption": enc2, "crypto_key": ck}
		default:
			s.pushFail(w, newPushError(400, errnoBadEncoding, "unsupported Content-Encoding: want aes128gcm, aesgcm or none"))
			return
		}
	}
	receipt, perr := s.receiptRequest(r.Context(), r.Header)
	if perr != nil {
		s.pushFail(w, perr)
		return
	}
	id := newMessageID()
	m := &Message{
		ID: id, UAID: ch.UAID, ChannelID: ch.ChannelID, Version: id, Topic: h.Topic,
		Data: body, Headers: headers, Expiry: s.now().Add(time.Duration(h.TTL) * time.Second),
		Urgency: h.Urgency, Receipt: receipt,
	}
	if receipt != "" {
		// The watch is written before the message can reach the device, so
		// its ack always finds it.
		if err := s.watchReceipt(r.Context(), m); err != nil {
			s.log.Error("cannot store receipt watch", "err", err)
			w.Header().Set("Retry-After", "5")
			s.pushFail(w, newPushError(503, errnoUnavailable, "cannot store message, retry later"))
			return
		}
	}
	if !s.fitsFrame(m) {
		s.metrics.refused.WithLabelValues("frame_too_big").Inc()
		s.pushFail(w, newPushError(413, errnoTooLarge, "message too large for a notification frame"))
		return
	}
	if err := s.accept(r, m, PutOptions{Replace: h.Topic != "", DropOver: s.cfg.MaxPending}, "webpush"); err != nil {
		s.log.Error("cannot store message", "err", err)
		w.Header().Set("Retry-After", "5")
		s.pushFail(w, newPushError(503, errnoUnavailable, "cannot store message, retry later"))
		return
	}
	if s.log.Enabled(r.Context(), slog.LevelDebug) {
		s.log.Debug("accepted push", "msg_id", id, "bytes", len(body), "ttl", h.TTL, "urgency", h.Urgency)
	}
	// Canonical keys set directly: Header.Set would canonicalize "TTL" anew
	// for every push.
	hdr := w.Header()
	hdr["Location"] = []string{s.base + "/m/" + id}
	hdr["Ttl"] = []string{strconv.FormatInt(h.TTL, 10)}
	hdr["Content-Length"] = contentLengthZero
	if receipt != "" && respondAsync(r.Header) {
		// RFC 8030 §5.1: the receipt is asked for, the answer is 202.
		w.Header().Set("Link", "<"+s.base+"/r/"+receipt+`>; rel="`+receiptRelation+`"`)
		w.WriteHeader(http.StatusAccepted)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

// handleSimplePush is PUT /wpush/v1/<token> with version=N: a data-less
// notification; only the newest version per channel stays pending.
func (s *Server) handleSimplePush(w http.ResponseWriter, r *http.Request) {
	token := r.PathValue("token")
	if s.limited(w, r, token) {
		s.pushFail(w, newPushError(429, errnoTooMany, "too many requests, retry later"))
		return
	}
	body, ok, err := readBody(r)
	if err != nil || !ok {
		s.pushFail(w, newPushError(413, errnoTooLarge, "body larger than 4096 bytes"))
		return
	}
	q, err := url.ParseQuery(string(body))
	if err != nil {
		s.pushFail(w, newPushError(400, errnoBadHeader, "body is not version=N"))
		return
	}
	version := uint64(s.now().Unix())
	if v := q.Get("version"); v != "" {
		if version, err = strconv.ParseUint(v, 10, 64); err != nil {
			s.pushFail(w, newPushError(400, errnoBadHeader, "version is not a non-negative integer"))
			return
		}
	}
	ch, ok := s.resolve(w, r, token)
	if !ok {
		return
	}
	m := &Message{
		ID: newMessageID(), UAID: ch.UAID, ChannelID: ch.ChannelID, Version: strconv.FormatUint(version, 10),
		Topic: simplePushTopic, Expiry: s.now().Add(protocol.MaxTTL),
	}
	if err := s.accept(r, m, PutOptions{KeepNewerVersion: true}, "simplepush"); err != nil {
		s.log.Error("cannot store message", "err", err)
		w.Header().Set("Retry-After", "5")
		s.pushFail(w, newPushError(503, errnoUnavailable, "cannot store message, retry later"))
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// handleCancel is DELETE /m/<id>.
func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	if s.limited(w, r, "") {
		s.pushFail(w, newPushError(429, errnoTooMany, "too many requests, retry later"))
		return
	}
	id := r.PathValue("id")
	if !validMessageID(id) {
		s.pushFail(w, newPushError(404, errnoNotFound, "unknown message"))
		return
	}
	switch err := s.store.Cancel(r.Context(), id); {
	case errors.Is(err, ErrNotFound):
		s.pushFail(w, newPushError(404, errnoNotFound, "unknown or already delivered message"))
	case err != nil:
		s.log.Error("cannot cancel message", "err", err)
		s.pushFail(w, newPushError(503, errnoUnavailable, "store unavailable, retry later"))
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func notifyFail(w http.ResponseWriter, e *notifyError) { writeJSON(w, e.Status, e) }

// handleNotify is the Lomiri/Ubuntu Push POST /notify.
func (s *Server) handleNotify(w http.ResponseWriter, r *http.Request) {
	body, ok := lomiriBody(w, r)
	if !ok {
		return
	}
	now := s.now()
	req, nerr := parseNotify(body, now)
	if nerr != nil {
		notifyFail(w, nerr)
		return
	}
	if s.limited(w, r, req.Token) {
		notifyFail(w, newNotifyError(429, "unavailable", "Too many requests, retry later"))
		return
	}
	ch, err := s.channel(r.Context(), req.Token)
	if errors.Is(err, ErrNotFound) {
		notifyFail(w, newNotifyError(400, "unknown-token", "Unknown token"))
		return
	}
	if err != nil {
		s.log.Error("cannot resolve token", "err", err)
		notifyFail(w, newNotifyError(503, "unavailable", "Could not resolve token"))
		return
	}
	if ch.Key != nil || (IsLomiriUAID(ch.UAID) && !sameLomiriApp(ch.ChannelID, req.AppID)) {
		// A VAPID-restricted channel takes only signed Web Push; a Lomiri
		// token belongs to the app it was registered for.
		notifyFail(w, newNotifyError(401, "unauthorized", "Unauthorized"))
		return
	}
	exp := req.ExpireOn
	if limit := now.Add(protocol.MaxTTL); exp.After(limit) {
		exp = limit
	}
	id := newMessageID()
	m := &Message{ID: id, UAID: ch.UAID, ChannelID: ch.ChannelID, Version: id, Data: req.Data, Expiry: exp}
	if !s.fitsFrame(m) {
		s.metrics.refused.WithLabelValues("frame_too_big").Inc()
		notifyFail(w, newNotifyError(413, "invalid-request", "Notification too large for a frame"))
		return
	}
	o := PutOptions{ClearPending: req.ClearPending, RejectAt: s.cfg.NotifyMaxPending}
	if req.ReplaceTag != "" {
		m.Topic = notifyTagPrefix + req.ReplaceTag
		o.Replace = true
	}
	if req.ClearPending {
		o.RejectAt = 0
	}
	var limitErr *PendingLimitError
	switch err := s.accept(r, m, o, "notify"); {
	case errors.Is(err, ErrTooManyPending):
		e := newNotifyError(413, "too-many-pending", "Too many pending notifications for this application")
		if errors.As(err, &limitErr) && json.Valid(limitErr.Last) {
			e.Extra = json.RawMessage(limitErr.Last)
		}
		notifyFail(w, e)
	case err != nil:
		s.log.Error("cannot store message", "err", err)
		notifyFail(w, newNotifyError(503, "unavailable", "Could not store notification"))
	default:
		s.log.Debug("accepted notify", "msg_id", id, "app_id", req.AppID)
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	}
}

// limiter is a set of token buckets (golang.org/x/time/rate) keyed by
// token or client address.
type limiter struct {
	rate  rate.Limit // rate.Inf: unlimited
	burst int

	mu      sync.Mutex
	buckets map[string]*rate.Limiter // guarded by mu
}

func newLimiter(l Limit) *limiter {
	burst := l.Burst
	if burst < 1 {
		burst = max(1, int(math.Ceil(l.Rate)))
	}
	r := rate.Limit(l.Rate)
	if l.Rate < 0 {
		r = rate.Inf
	}
	return &limiter{rate: r, burst: burst, buckets: map[string]*rate.Limiter{}}
}

// allow takes one token for key; when none is left it returns the whole
// seconds to wait (60 when the rate is 0: only the burst is ever allowed).
func (l *limiter) allow(key string, now time.Time) (bool, int) {
	if l.rate == rate.Inf {
		return true, 0
	}
	l.mu.Lock()
	b := l.buckets[key]
	if b == nil {
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[key] = b
	}
	l.mu.Unlock()
	if b.AllowN(now, 1) {
		return true, 0
	}
	if l.rate == 0 {
		return false, 60
	}
	r := b.ReserveN(now, 1)
	wait := r.DelayFrom(now)
	r.CancelAt(now)
	return false, max(1, int(math.Ceil(wait.Seconds())))
}

// prune forgets buckets that have refilled.
func (l *limiter) prune(now time.Time) {
	if l.rate == rate.Inf || l.rate == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, k)
		}
	}
}

// validMessageID reports whether id has the shape of a message id: 22
// base64url characters (128 bits), or 32 hex digits as older servers made.
func validMessageID(id string) bool {
	if protocol.ValidUAID(id) {
		return true
	}
	if len(id) != 22 {
		return false
	}
	b, err := protocol.DecodeBase64URL(id)
	return err == nil && len(b) == 16
}
