package dbusapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/heraldpush/herald/app"
)

// MaxPostPayload bounds the JSON accepted by Postal.Post (the push message
// body limit).
const MaxPostPayload = 4096

// lomiriApp validates the app id argument against the object path and the
// caller, and returns the parsed id.
func (s *Service) lomiriApp(ctx context.Context, c *call) (app.ID, error) {
	raw, _ := c.args[0].(string)
	aid, err := app.ParseID(raw)
	if err != nil {
		return app.ID{}, s.errorf(c.iface, "InvalidAppID", "invalid application id %q", truncate(raw, 80))
	}
	p := string(c.path)
	i := strings.LastIndexByte(p, '/')
	base, elem := p[:i], p[i+1:]
	if _, ok := s.objects[base]; !ok || elem == "" {
		return app.ID{}, s.errorf(c.iface, "PackageMismatch",
			"package must be prefix of app id: object path %s has no package element, use %s/%s", p, p, app.Quote(aid.Package))
	}
	if pkg := app.Unquote(elem); pkg != aid.Package {
		return app.ID{}, s.errorf(c.iface, "PackageMismatch",
			"package must be prefix of app id: path package %q, app id %q (path element for it: %s)", pkg, aid.String(), app.Quote(aid.Package))
	}
	if err := s.authorizeApp(ctx, c, aid); err != nil {
		return app.ID{}, err
	}
	return aid, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (s *Service) pushNotificationsIface(name string) *iface {
	return newIface(name,
		&member{name: "Register", in: []string{"s"}, out: "s", handle: func(ctx context.Context, c *call) ([]any, error) {
			aid, err := s.lomiriApp(ctx, c)
			if err != nil {
				return nil, err
			}
			token, err := s.backend.RegisterLomiri(ctx, aid.Base())
			if err != nil {
				return nil, fmt.Errorf("cannot register %q: %w", aid.Base(), err)
			}
			if token == "" {
				return nil, s.errorf(c.iface, "Failed", "bad token: registration of %q gave no token", aid.Base())
			}
			s.log.Info("app registered", "app_id", aid.Base(), "kind", string(app.KindLomiri))
			return []any{token}, nil
		}},
		&member{name: "Unregister", in: []string{"s"}, handle: func(ctx context.Context, c *call) ([]any, error) {
			aid, err := s.lomiriApp(ctx, c)
			if err != nil {
				return nil, err
			}
			if err := s.backend.UnregisterLomiri(ctx, aid.Base()); err != nil {
				return nil, fmt.Errorf("cannot unregister %q: %w", aid.Base(), err)
			}
			s.log.Info("app unregistered", "app_id", aid.Base(), "kind", string(app.KindLomiri))
			return nil, nil
		}},
	)
}

func (s *Service) postalIface(name string) *iface {
	strs := func(v []string) []any {
		if v == nil {
			v = []string{}
		}
		return []any{v}
	}
	return newIface(name,
		&member{name: "Post", in: []string{"ss"}, handle: func(ctx context.Context, c *call) ([]any, error) {
			aid, err := s.lomiriApp(ctx, c)
			if err != nil {
				return nil, err
			}
			payload, _ := c.args[1].(string)
			if len(payload) > MaxPostPayload {
				return nil, s.errorf(c.iface, "PayloadTooLarge", "payload too large: %d bytes, at most %d", len(payload), MaxPostPayload)
			}
			if !json.Valid([]byte(payload)) {
				return nil, s.errorf(c.iface, "BadJSON", "bad json data: the message is not valid JSON")
			}
			if err := s.backend.Post(ctx, aid.Base(), []byte(payload)); err != nil {
				return nil, fmt.Errorf("cannot post to %q: %w", aid.Base(), err)
			}
			return nil, nil
		}},
		&member{name: "PopAll", in: []string{"s"}, out: "as", handle: func(ctx context.Context, c *call) ([]any, error) {
			aid, err := s.lomiriApp(ctx, c)
			if err != nil {
				return nil, err
			}
			msgs, err := s.backend.PopAll(ctx, aid.Base())
			if err != nil {
				return nil, fmt.Errorf("cannot read messages of %q: %w", aid.Base(), err)
			}
			return strs(msgs), nil
		}},
		&member{name: "ListPersistent", in: []string{"s"}, out: "as", handle: func(ctx context.Context, c *call) ([]any, error) {
			aid, err := s.lomiriApp(ctx, c)
			if err != nil {
				return nil, err
			}
			tags, err := s.backend.ListPersistent(ctx, aid.Base())
			if err != nil {
				return nil, fmt.Errorf("cannot list notifications of %q: %w", aid.Base(), err)
			}
			return strs(tags), nil
		}},
		&member{name: "ClearPersistent", in: []string{"s"}, variadic: true, out: "u", handle: func(ctx context.Context, c *call) ([]any, error) {
			tags := make([]string, 0, len(c.args)-1)
			for _, a := range c.args[1:] {
				t, _ := a.(string)
				tags = append(tags, t)
			}
			return s.clearPersistent(ctx, c, tags)
		}},
		&member{name: "ClearPersistentList", in: []string{"sas"}, out: "u", handle: func(ctx context.Context, c *call) ([]any, error) {
			tags, _ := c.args[1].([]string)
			return s.clearPersistent(ctx, c, tags)
		}},
		&member{name: "SetCounter", in: []string{"sib"}, handle: func(ctx context.Context, c *call) ([]any, error) {
			aid, err := s.lomiriApp(ctx, c)
			if err != nil {
				return nil, err
			}
			count, _ := c.args[1].(int32)
			visible, _ := c.args[2].(bool)
			if err := s.backend.SetCounter(ctx, aid.Base(), count, visible); err != nil {
				return nil, fmt.Errorf("cannot set counter of %q: %w", aid.Base(), err)
			}
			return nil, nil
		}},
	)
}

// HeraldPostalIface is Herald's interface beside Postal.
const HeraldPostalIface = "org.herald.Postal1"

// WebPushKeyer is implemented by a Backend that keeps end-to-end encryption
// keys for Lomiri-API apps (org.herald.Postal1.WebPushKeys).
type WebPushKeyer interface {
	// WebPushKeys returns appID's RFC 8291 public key and auth secret,
	// base64url, making them on first use.
	WebPushKeys(ctx context.Context, appID string) (p256dh, auth string, err error)
}

func (s *Service) heraldPostalIface() *iface {
	return newIface(HeraldPostalIface,
		&member{name: "WebPushKeys", in: []string{"s"}, out: "ss", handle: func(ctx context.Context, c *call) ([]any, error) {
			aid, err := s.lomiriApp(ctx, c)
			if err != nil {
				return nil, err
			}
			k, ok := s.backend.(WebPushKeyer)
			if !ok {
				return nil, s.errorf(c.iface, "NotSupported", "end-to-end encryption keys are not available")
			}
			p256dh, auth, err := k.WebPushKeys(ctx, aid.Base())
			if err != nil {
				return nil, fmt.Errorf("cannot give the keys of %q: %w", aid.Base(), err)
			}
			return []any{p256dh, auth}, nil
		}},
	)
}

func (s *Service) clearPersistent(ctx context.Context, c *call, tags []string) ([]any, error) {
	aid, err := s.lomiriApp(ctx, c)
	if err != nil {
		return nil, err
	}
	n, err := s.backend.ClearPersistent(ctx, aid.Base(), tags)
	if err != nil {
		return nil, fmt.Errorf("cannot clear notifications of %q: %w", aid.Base(), err)
	}
	return []any{n}, nil
}

// EmitPost emits the Post(app_id) signal on /com/{lomiri,ubuntu}/Postal/<quoted
// package> for both name families. appID is sent as given.
func (s *Service) EmitPost(appID string) error {
	aid, err := app.ParseID(appID)
	if err != nil {
		return fmt.Errorf("cannot emit Post: %w", err)
	}
	conn, err := s.getConn()
	if err != nil {
		return err
	}
	for _, fam := range []string{"lomiri", "ubuntu"} {
		path := dbus.ObjectPath("/com/" + fam + "/Postal/" + app.Quote(aid.Package))
		if err := conn.Emit(path, "com."+fam+".Postal.Post", appID); err != nil {
			return fmt.Errorf("cannot emit Post for %q: %w", appID, err)
		}
	}
	return nil
}
