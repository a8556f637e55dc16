package lomiri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// hosts finds the delivery hosts from addr as upstream does: an http(s) URL
// is asked GET <addr>?h=<hex murmur3 of the device id> for {domain, hosts}
// (cached for cacheFor); anything else is a |-separated host:port list.
// Hosts are tried round-robin from the last one that worked; after
// repairedAfter since the last attempt, from the first again.
type hosts struct {
	addr          string
	deviceID      string
	client        *http.Client
	timeout       time.Duration
	cacheFor      time.Duration
	repairedAfter time.Duration
	now           func() time.Time

	// Owned by the session's Run goroutine.
	list        []string
	domain      string
	fetched     time.Time
	next        int
	lastAttempt time.Time
}

// errNoHosts is a discovery answer without hosts.
var errNoHosts = errors.New("no delivery hosts")

// get returns the host list and the TLS server name ("" when not known).
func (h *hosts) get(ctx context.Context) ([]string, string, error) {
	if !strings.HasPrefix(h.addr, "http") {
		if h.list == nil {
			for _, a := range strings.Split(h.addr, "|") {
				if a = strings.TrimSpace(a); a != "" {
					h.list = append(h.list, a)
				}
			}
			if len(h.list) == 0 {
				return nil, "", fmt.Errorf("%w in addr %q", errNoHosts, h.addr)
			}
		}
		return h.list, "", nil
	}
	if h.list != nil && h.now().Sub(h.fetched) < h.cacheFor {
		return h.list, h.domain, nil
	}
	u, err := url.Parse(h.addr)
	if err != nil {
		return nil, "", fmt.Errorf("invalid addr %q: %w", h.addr, err)
	}
	q := u.Query()
	q.Set("h", fmt.Sprintf("%x", murmur3Sum64([]byte(h.deviceID))))
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("cannot get delivery hosts: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("cannot get delivery hosts: %s answered %s", h.addr, resp.Status)
	}
	var out struct {
		Domain string   `json:"domain"`
		Hosts  []string `json:"hosts"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&out); err != nil {
		return nil, "", fmt.Errorf("cannot get delivery hosts: %s answered invalid JSON: %w", h.addr, err)
	}
	if len(out.Hosts) == 0 {
		return nil, "", fmt.Errorf("cannot get delivery hosts: %w from %s", errNoHosts, h.addr)
	}
	if h.next >= len(out.Hosts) {
		h.next = 0
	}
	h.list, h.domain, h.fetched = out.Hosts, out.Domain, h.now()
	return h.list, h.domain, nil
}

// reset forgets the host list (connbroken host-mismatch).
func (h *hosts) reset() {
	if strings.HasPrefix(h.addr, "http") {
		h.list = nil
	}
	h.next = 0
}

// order returns the hosts in the order to try them now.
func (h *hosts) order(list []string) []string {
	now := h.now()
	if !h.lastAttempt.IsZero() && now.Sub(h.lastAttempt) > h.repairedAfter {
		h.next = 0
	}
	h.lastAttempt = now
	if h.next >= len(list) {
		h.next = 0
	}
	return append(append([]string(nil), list[h.next:]...), list[:h.next]...)
}

// worked keeps host as the first to try next time.
func (h *hosts) worked(list []string, host string) {
	for i, x := range list {
		if x == host {
			h.next = i
			return
		}
	}
}
