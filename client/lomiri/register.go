package lomiri

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Errors of Register and Unregister, named as upstream's D-Bus errors are.
var (
	// ErrBadServer: the server answered 5xx (after the retries) or could not
	// be reached.
	ErrBadServer = errors.New("bad server")
	// ErrBadAuth: the server answered 401.
	ErrBadAuth = errors.New("bad auth")
	// ErrBadRequest: the server answered another non-200 status.
	ErrBadRequest = errors.New("bad request")
	// ErrBadToken: a 200 without {"ok":true} and a token.
	ErrBadToken = errors.New("bad token")
)

// Registrar is the /register and /unregister client of a Lomiri push server.
type Registrar struct {
	// URL is registration_url (https://push.ubports.com); /register and
	// /unregister are resolved against it as absolute paths, as upstream does.
	URL      string
	DeviceID string
	Client   *http.Client
	// Timeout bounds one attempt (default 10 s); Attempts is how many are
	// made for network errors and 5xx answers (default 3), waiting Backoff,
	// then twice that, between them (default 500 ms).
	Timeout  time.Duration
	Attempts int
	Backoff  time.Duration
}

// Register returns the server's token for appID on this device.
func (r *Registrar) Register(ctx context.Context, appID string) (string, error) {
	var out struct {
		OK    bool   `json:"ok"`
		Token string `json:"token"`
	}
	if err := r.call(ctx, "/register", appID, &out); err != nil {
		return "", err
	}
	if !out.OK || out.Token == "" {
		return "", fmt.Errorf("%w: the server's answer has no token", ErrBadToken)
	}
	return out.Token, nil
}

// Unregister revokes appID's token on this device.
func (r *Registrar) Unregister(ctx context.Context, appID string) error {
	var out struct {
		OK bool `json:"ok"`
	}
	return r.call(ctx, "/unregister", appID, &out)
}

func (r *Registrar) call(ctx context.Context, path, appID string, out any) error {
	base, err := url.Parse(r.URL)
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return fmt.Errorf("%w: invalid registration_url %q", ErrBadRequest, r.URL)
	}
	target := base.ResolveReference(&url.URL{Path: path}).String()
	body, _ := json.Marshal(map[string]string{"deviceid": r.DeviceID, "appid": appID})
	attempts, backoff, timeout := r.Attempts, r.Backoff, r.Timeout
	if attempts <= 0 {
		attempts = 3
	}
	if backoff <= 0 {
		backoff = 500 * time.Millisecond
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	client := r.Client
	if client == nil {
		client = http.DefaultClient
	}
	var last error
	for i := range attempts {
		if i > 0 {
			t := time.NewTimer(backoff << (i - 1))
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("%w: %w (after %v)", ErrBadServer, ctx.Err(), last)
			case <-t.C:
			}
		}
		retry, err := r.once(ctx, client, target, body, timeout, out)
		if err == nil {
			return nil
		}
		last = err
		if !retry || ctx.Err() != nil {
			return err
		}
	}
	return last
}

// once makes one attempt; retry says whether another may help.
func (r *Registrar) once(ctx context.Context, client *http.Client, target string, body []byte, timeout time.Duration, out any) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return true, fmt.Errorf("%w: %w", ErrBadServer, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 500:
		return true, fmt.Errorf("%w: %s answered %s", ErrBadServer, target, resp.Status)
	case resp.StatusCode == http.StatusUnauthorized:
		return false, fmt.Errorf("%w: %s answered %s", ErrBadAuth, target, resp.Status)
	case resp.StatusCode != http.StatusOK:
		var e struct {
			Error, Message string
		}
		json.Unmarshal(b, &e)
		return false, fmt.Errorf("%w: %s answered %s %s %s", ErrBadRequest, target, resp.Status, e.Error, e.Message)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return false, fmt.Errorf("%w: %s answered invalid JSON", ErrBadToken, target)
	}
	return false, nil
}
