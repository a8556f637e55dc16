package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/heraldpush/herald/protocol"
)

// The HTTP API of UBports' push server beside /notify: /register and
// /unregister (called by devices for their apps), /broadcast (system-update
// notices) and /delivery-hosts (where devices connect). Errors are
// {"error": label, "message": text} with upstream's labels and texts.

// Limits of the Lomiri API.
const (
	// MaxLomiriIDBytes bounds a device id or app id of /register.
	MaxLomiriIDBytes = 256
	// MaxBroadcastData is the largest raw JSON "data" of a /broadcast.
	MaxBroadcastData = 4096
)

// lomiriBody checks what upstream checks of every POST of its API, in its
// order, and returns the body; on failure the error is sent.
func lomiriBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		notifyFail(w, newNotifyError(405, "invalid-request", "Wrong request method, should be POST"))
		return nil, false
	}
	if r.ContentLength < 0 {
		notifyFail(w, newNotifyError(411, "invalid-request", "A Content-Length must be provided"))
		return nil, false
	}
	if r.ContentLength == 0 {
		notifyFail(w, newNotifyError(400, "invalid-request", "Request body empty"))
		return nil, false
	}
	if r.ContentLength > protocol.MaxBodyBytes {
		notifyFail(w, newNotifyError(413, "invalid-request", "Request body too large"))
		return nil, false
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		notifyFail(w, newNotifyError(415, "invalid-request", "Wrong content type, should be application/json"))
		return nil, false
	}
	body, ok, err := readBody(r)
	if err != nil {
		notifyFail(w, newNotifyError(400, "io-error", "Could not read request body"))
		return nil, false
	}
	if !ok {
		notifyFail(w, newNotifyError(413, "invalid-request", "Request body too large"))
		return nil, false
	}
	return body, true
}

// decodeStrict decodes one JSON object; anything else is Malformed JSON Object.
func decodeStrict(body []byte, v any) *notifyError {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil || dec.More() {
		return newNotifyError(400, "invalid-request", "Malformed JSON Object")
	}
	return nil
}

// sameLomiriApp reports whether the app id of a /notify names the app a
// token was registered for: the same id, or the same click package and app
// with or without a version (pkg_app vs pkg_app_version).
func sameLomiriApp(registered, posted string) bool {
	if registered == posted {
		return true
	}
	base := func(id string) (string, bool) {
		parts := strings.Split(id, "_")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return "", false
		}
		return parts[0] + "_" + parts[1], true
	}
	a, ok1 := base(registered)
	b, ok2 := base(posted)
	return ok1 && ok2 && a == b
}

type lomiriIDs struct {
	DeviceID string `json:"deviceid"`
	AppID    string `json:"appid"`
}

func (s *Server) lomiriIDs(w http.ResponseWriter, r *http.Request) (lomiriIDs, bool) {
	var ids lomiriIDs
	if s.limited(w, r, "") {
		notifyFail(w, newNotifyError(429, "unavailable", "Too many requests, retry later"))
		return ids, false
	}
	body, ok := lomiriBody(w, r)
	if !ok {
		return ids, false
	}
	if e := decodeStrict(body, &ids); e != nil {
		notifyFail(w, e)
		return ids, false
	}
	if ids.DeviceID == "" || ids.AppID == "" {
		notifyFail(w, newNotifyError(400, "invalid-request", "Missing id field"))
		return ids, false
	}
	if len(ids.DeviceID) > MaxLomiriIDBytes || len(ids.AppID) > MaxLomiriIDBytes {
		notifyFail(w, newNotifyError(400, "invalid-request", "Id field too long"))
		return ids, false
	}
	return ids, true
}

// handleLomiriRegister is POST /register: {"deviceid","appid"} →
// {"ok":true,"token"}. The token is random and the same for the same
// device and app until /unregister revokes it.
func (s *Server) handleLomiriRegister(w http.ResponseWriter, r *http.Request) {
	ids, ok := s.lomiriIDs(w, r)
	if !ok {
		return
	}
	// The device row makes a Lomiri device idle-collected like a
	// websocket one (DeviceIdle): /register and each connect mark it seen.
	if err := s.store.AddDevice(r.Context(), LomiriUAIDPrefix+ids.DeviceID, s.now()); err != nil {
		s.log.Error("cannot add lomiri device", "err", err)
		notifyFail(w, newNotifyError(503, "unavailable", "Could not make token"))
		return
	}
	ch, err := s.store.Register(r.Context(), Channel{Token: newToken(), UAID: LomiriUAIDPrefix + ids.DeviceID, ChannelID: ids.AppID}, s.cfg.MaxChannels)
	if errors.Is(err, ErrTooManyChannels) {
		s.metrics.refused.WithLabelValues("channels_per_device").Inc()
		notifyFail(w, newNotifyError(413, "invalid-request", "Too many apps registered for this device"))
		return
	}
	if errors.Is(err, ErrTooManyChannels) {
		notifyFail(w, newNotifyError(400, "invalid-request", "Too many applications registered for this device"))
		return
	}
	if err != nil {
		s.log.Error("cannot register lomiri app", "err", err)
		notifyFail(w, newNotifyError(503, "unavailable", "Could not make token"))
		return
	}
	s.tokens.put(ch)
	s.log.Debug("lomiri app registered", "app_id", ids.AppID, "device", redact(ids.DeviceID))
	writeJSON(w, http.StatusOK, struct {
		OK    bool   `json:"ok"`
		Token string `json:"token"`
	}{true, ch.Token})
}

// handleLomiriUnregister is POST /unregister: the token of that device and
// app is revoked and its pending messages dropped. Unknown is fine.
func (s *Server) handleLomiriUnregister(w http.ResponseWriter, r *http.Request) {
	ids, ok := s.lomiriIDs(w, r)
	if !ok {
		return
	}
	uaid := LomiriUAIDPrefix + ids.DeviceID
	if err := s.store.Unregister(r.Context(), uaid, ids.AppID); err != nil {
		s.log.Error("cannot unregister lomiri app", "err", err)
		notifyFail(w, newNotifyError(503, "unavailable", "Could not remove token"))
		return
	}
	s.tokens.drop(uaid, ids.AppID)
	s.log.Debug("lomiri app unregistered", "app_id", ids.AppID, "device", redact(ids.DeviceID))
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// handleBroadcast is POST /broadcast {"channel":"system","expire_on","data"}.
func (s *Server) handleBroadcast(w http.ResponseWriter, r *http.Request) {
	if s.limited(w, r, "") {
		notifyFail(w, newNotifyError(429, "unavailable", "Too many requests, retry later"))
		return
	}
	body, ok := lomiriBody(w, r)
	if !ok {
		return
	}
	var req struct {
		Channel  string          `json:"channel"`
		ExpireOn *string         `json:"expire_on"`
		Data     json.RawMessage `json:"data"`
	}
	if e := decodeStrict(body, &req); e != nil {
		notifyFail(w, e)
		return
	}
	if req.Channel != systemBroadcastChannel {
		notifyFail(w, newNotifyError(400, "unknown-channel", "Unknown channel"))
		return
	}
	if len(req.Data) == 0 || string(req.Data) == "null" {
		notifyFail(w, newNotifyError(400, "invalid-request", "Missing data field"))
		return
	}
	if len(req.Data) > MaxBroadcastData {
		notifyFail(w, newNotifyError(400, "invalid-request", "Data too large"))
		return
	}
	now := s.now()
	if req.ExpireOn == nil {
		notifyFail(w, newNotifyError(400, "invalid-request", "Invalid expiration date"))
		return
	}
	exp, err := time.Parse(time.RFC3339, *req.ExpireOn)
	if err != nil {
		notifyFail(w, newNotifyError(400, "invalid-request", "Invalid expiration date"))
		return
	}
	if !exp.After(now) {
		notifyFail(w, newNotifyError(400, "invalid-request", "Past expiration date"))
		return
	}
	var data bytes.Buffer
	if err := json.Compact(&data, req.Data); err != nil {
		notifyFail(w, newNotifyError(400, "invalid-request", "Malformed JSON Object"))
		return
	}
	level, err := s.store.PutBroadcast(r.Context(), "0", data.Bytes(), exp, lomiriKeepBroadcasts)
	if err != nil {
		s.log.Error("cannot store broadcast", "err", err)
		notifyFail(w, newNotifyError(503, "unavailable", "Could not store notification"))
		return
	}
	s.metrics.accepted.WithLabelValues("broadcast").Inc()
	s.log.Info("broadcast accepted", "channel", req.Channel, "level", level)
	for _, c := range s.lomiri.all() {
		c.poke(c.bkick)
	}
	if s.node != nil {
		s.broadcastNodes(r.Context())
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// handleDeliveryHosts is GET /delivery-hosts: where Lomiri devices connect.
func (s *Server) handleDeliveryHosts(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		notifyFail(w, newNotifyError(405, "invalid-request", "Wrong request method, should be GET"))
		return
	}
	if len(s.cfg.LomiriHosts) == 0 {
		notifyFail(w, newNotifyError(404, "invalid-request", "No Lomiri listener on this server"))
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Domain string   `json:"domain"`
		Hosts  []string `json:"hosts"`
	}{s.cfg.LomiriDomain, s.cfg.LomiriHosts})
}
