package client

import (
	"context"
	"errors"

	"github.com/heraldpush/herald/client/store"
	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

// End-to-end encryption for Lomiri-API apps: heraldd keeps an RFC 8291 key
// pair and auth secret per app, gives the public half to the app (D-Bus
// org.herald.Postal1.WebPushKeys), and decrypts an aes128gcm body sent to
// the app's Web Push endpoint before its helper runs. A body that is not an
// RFC 8291 message for the app's key (plaintext from /notify or curl) goes
// to the helper unchanged.

// WebPushKeys returns appID's receiving public key (65-octet P-256 point)
// and auth secret, both base64url, making them on first use.
func (d *Daemon) WebPushKeys(ctx context.Context, appID string) (p256dh, auth string, err error) {
	k, err := d.appKeys(ctx, appID, true)
	if err != nil {
		return "", "", err
	}
	return protocol.EncodeBase64URL(k.Public()), protocol.EncodeBase64URL(k.Auth), nil
}

// appKeys returns appID's keys; with create, made and kept on first use.
func (d *Daemon) appKeys(ctx context.Context, appID string, create bool) (*webpush.Keys, error) {
	priv, auth, err := d.st.AppKeys(ctx, appID)
	if errors.Is(err, store.ErrNotFound) && create {
		k, gerr := webpush.GenerateKeys()
		if gerr != nil {
			return nil, gerr
		}
		// The first caller's keys win: a concurrent call gets them too.
		priv, auth, err = d.st.AddAppKeys(ctx, appID, k.Private.Bytes(), k.Auth)
		if err == nil {
			d.log.Info("made end-to-end encryption keys", "app_id", appID)
		}
	}
	if err != nil {
		return nil, err
	}
	return webpush.NewKeys(priv, auth)
}

// rfc8291Header reports whether body has the shape of an RFC 8291 message:
// the aes128gcm header with a 65-octet uncompressed P-256 key id.
func rfc8291Header(body []byte) bool {
	const header = 16 + 4 + 1 + 65
	return len(body) >= header+17 && body[20] == 65 && body[21] == 0x04
}

// decryptForApp returns the plaintext of an RFC 8291 message sent for
// appID's keys, else body unchanged.
func (d *Daemon) decryptForApp(ctx context.Context, appID, msgID string, body []byte) []byte {
	if !rfc8291Header(body) {
		return body
	}
	k, err := d.appKeys(ctx, appID, false)
	if errors.Is(err, store.ErrNotFound) {
		return body // the app never asked for keys: not for us to open
	}
	if err != nil {
		d.log.Warn("cannot read the app's keys; the helper gets the encrypted body", "app_id", appID, "msg_id", msgID, "err", err)
		return body
	}
	plain, err := webpush.Decrypt(body, k)
	if err != nil {
		d.log.Warn("cannot decrypt the message; the helper gets it as received", "app_id", appID, "msg_id", msgID, "err", err)
		return body
	}
	return plain
}
