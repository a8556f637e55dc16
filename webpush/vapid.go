package webpush

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// VAPID limits (RFC 8292).
const (
	// MaxVAPIDExpiry is how far in the future a token's exp may lie.
	MaxVAPIDExpiry = 24 * time.Hour
	// VAPIDClockSkew is the tolerance added to MaxVAPIDExpiry for app servers
	// whose clock runs a little ahead.
	VAPIDClockSkew = time.Minute
	// maxVAPIDHeader bounds the work done on an Authorization header.
	maxVAPIDHeader = 8192
)

var (
	// ErrVAPIDMissing means the request carries no VAPID credentials: no or an
	// empty Authorization header, or another scheme than vapid. A push service
	// answers 401.
	ErrVAPIDMissing = errors.New("missing vapid authorization")
	// ErrVAPIDInvalid means the VAPID credentials are present but not valid: a
	// missing or malformed t or k, a bad signature, an expired token, an exp
	// more than 24 h ahead, or an aud that is not the push service's origin. A
	// push service answers 403.
	ErrVAPIDInvalid = errors.New("invalid vapid authorization")
)

// GenerateVAPIDKey makes a new P-256 key pair for signing VAPID tokens.
func GenerateVAPIDKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cannot generate vapid key: %w", err)
	}
	return key, nil
}

// VAPIDPublicKey returns the base64url (unpadded) uncompressed public key of a
// VAPID key: the applicationServerKey of a restricted subscription and the k
// parameter of the Authorization header.
func VAPIDPublicKey(key *ecdsa.PrivateKey) (string, error) {
	if key == nil || key.Curve != elliptic.P256() {
		return "", errors.New("vapid key must be a p-256 key")
	}
	pub, err := key.PublicKey.Bytes()
	if err != nil {
		return "", fmt.Errorf("invalid vapid key: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(pub), nil
}

// SignVAPID makes the Authorization header value "vapid t=<jwt>, k=<key>" for a
// push to a push resource whose origin is audience (scheme://host[:port]).
// subject is a mailto: or https: contact and may be empty. exp should be at most
// 24 hours ahead of the push.
func SignVAPID(key *ecdsa.PrivateKey, audience, subject string, exp time.Time) (authorization string, err error) {
	k, err := VAPIDPublicKey(key)
	if err != nil {
		return "", err
	}
	if audience == "" {
		return "", errors.New("vapid audience is empty")
	}
	claims := jwt.MapClaims{"aud": audience, "exp": exp.Unix()}
	if subject != "" {
		claims["sub"] = subject
	}
	t, err := jwt.NewWithClaims(jwt.SigningMethodES256, claims).SignedString(key)
	if err != nil {
		return "", fmt.Errorf("cannot sign vapid token: %w", err)
	}
	return "vapid t=" + t + ", k=" + k, nil
}

// VerifyVAPID checks the value of an Authorization header against the origin of
// the push service (audience) at time now, and returns the sender's 65-octet
// public key, which the caller compares with the subscription's key. Errors wrap
// ErrVAPIDMissing or ErrVAPIDInvalid. The parameters t and k may come in either
// order; unknown parameters are ignored.
func VerifyVAPID(authorization, audience string, now time.Time) (publicKey []byte, err error) {
	token, key, err := parseVAPIDHeader(authorization)
	if err != nil {
		return nil, err
	}
	pubBytes, err := ParseP256PublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: k: %w", ErrVAPIDInvalid, err)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pubBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: k: %w", ErrVAPIDInvalid, err)
	}
	var claims jwt.RegisteredClaims
	_, err = jwt.ParseWithClaims(token, &claims,
		func(*jwt.Token) (any, error) { return pub, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodES256.Alg()}),
		jwt.WithStrictDecoding(),
		jwt.WithoutClaimsValidation())
	if err != nil {
		return nil, fmt.Errorf("%w: t: %w", ErrVAPIDInvalid, err)
	}
	if claims.ExpiresAt == nil {
		return nil, fmt.Errorf("%w: token has no exp", ErrVAPIDInvalid)
	}
	exp := claims.ExpiresAt.Time
	if !now.Before(exp) {
		return nil, fmt.Errorf("%w: token expired at %s", ErrVAPIDInvalid, exp.UTC().Format(time.RFC3339))
	}
	if exp.Sub(now) > MaxVAPIDExpiry+VAPIDClockSkew {
		return nil, fmt.Errorf("%w: token exp %s is more than 24 h ahead", ErrVAPIDInvalid, exp.UTC().Format(time.RFC3339))
	}
	if !audienceMatches(claims.Audience, audience) {
		return nil, fmt.Errorf("%w: token aud %q is not %q", ErrVAPIDInvalid, []string(claims.Audience), audience)
	}
	return pubBytes, nil
}

// audienceMatches reports whether one of the token's audiences is the origin
// want. A trailing slash is tolerated; scheme and host compare case-insensitively.
func audienceMatches(aud []string, want string) bool {
	want = strings.TrimSuffix(want, "/")
	for _, a := range aud {
		if want != "" && strings.EqualFold(strings.TrimSuffix(a, "/"), want) {
			return true
		}
	}
	return false
}

// parseVAPIDHeader splits "vapid t=<jwt>, k=<key>" into its token and key.
func parseVAPIDHeader(h string) (token, key string, err error) {
	h = strings.TrimSpace(h)
	if h == "" {
		return "", "", ErrVAPIDMissing
	}
	scheme, params := h, ""
	if i := strings.IndexAny(h, " \t"); i >= 0 {
		scheme, params = h[:i], h[i+1:]
	}
	if !strings.EqualFold(scheme, "vapid") {
		return "", "", fmt.Errorf("%w: authorization scheme is not vapid", ErrVAPIDMissing)
	}
	if len(h) > maxVAPIDHeader {
		return "", "", fmt.Errorf("%w: header of %d octets is too long", ErrVAPIDInvalid, len(h))
	}
	var haveT, haveK bool
	for p := range strings.SplitSeq(params, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		name, value, ok := strings.Cut(p, "=")
		if !ok {
			return "", "", fmt.Errorf("%w: malformed parameter", ErrVAPIDInvalid)
		}
		name = strings.ToLower(strings.TrimSpace(name))
		value = strings.TrimSpace(value)
		if strings.HasPrefix(value, `"`) {
			if value, err = strconv.Unquote(value); err != nil {
				return "", "", fmt.Errorf("%w: malformed quoted value of %s", ErrVAPIDInvalid, name)
			}
		}
		switch name {
		case "t":
			if haveT {
				return "", "", fmt.Errorf("%w: t given twice", ErrVAPIDInvalid)
			}
			token, haveT = value, true
		case "k":
			if haveK {
				return "", "", fmt.Errorf("%w: k given twice", ErrVAPIDInvalid)
			}
			key, haveK = value, true
		}
	}
	switch {
	case token == "":
		return "", "", fmt.Errorf("%w: no token (t)", ErrVAPIDInvalid)
	case key == "":
		return "", "", fmt.Errorf("%w: no key (k)", ErrVAPIDInvalid)
	}
	return token, key, nil
}
