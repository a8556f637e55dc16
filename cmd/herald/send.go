package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/heraldpush/herald/protocol"
	"github.com/heraldpush/herald/webpush"
)

func sendCmd() *command {
	var ttl *int
	var urgency, topic, p256dh, auth, encoding *string
	return &command{
		name: "send", args: "[--ttl N] [--urgency U] [--topic T] [--p256dh KEY --auth SECRET] ENDPOINT MESSAGE",
		help: "Posts MESSAGE to the Web Push ENDPOINT (RFC 8030), as an app server would, and prints the\nHTTP status and the message's Location. Without --p256dh and --auth the message is sent\nas it is; with them it is encrypted for the subscription (RFC 8291, aes128gcm).",
		flags: func(fs *flag.FlagSet) {
			ttl = fs.Int("ttl", 3600, "time to live in `SECONDS`")
			urgency = fs.String("urgency", "", "`URGENCY`: very-low, low, normal or high")
			topic = fs.String("topic", "", "`TOPIC` replacing a pending message with the same topic")
			p256dh = fs.String("p256dh", "", "the subscription's public `KEY` (base64url)")
			auth = fs.String("auth", "", "the subscription's auth `SECRET` (base64url)")
			encoding = fs.String("encoding", "", "Content-Encoding `NAME` of a message that is not encrypted here (default none: a plaintext message, which herald-server accepts)")
		},
		run: func(ctx context.Context, e *cli, fs *flag.FlagSet, args []string) error {
			if len(args) != 2 {
				return fmt.Errorf("%w: want ENDPOINT and MESSAGE", errUsage)
			}
			endpoint, msg := args[0], []byte(args[1])
			u, err := url.Parse(endpoint)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("%w: invalid endpoint %q: want an http(s) URL", errUsage, endpoint)
			}
			if *ttl < 0 {
				return fmt.Errorf("%w: negative --ttl", errUsage)
			}
			switch *urgency {
			case "", "very-low", "low", "normal", "high":
			default:
				return fmt.Errorf("%w: invalid --urgency %q", errUsage, *urgency)
			}
			if (*p256dh == "") != (*auth == "") {
				return fmt.Errorf("%w: --p256dh and --auth go together", errUsage)
			}
			body := msg
			if *p256dh != "" {
				pub, err := webpush.ParseP256PublicKey(*p256dh)
				if err != nil {
					return fmt.Errorf("invalid --p256dh: %w", err)
				}
				secret, err := protocol.DecodeBase64URL(*auth)
				if err != nil || len(secret) != 16 {
					return fmt.Errorf("invalid --auth: want 16 bytes in base64url")
				}
				body, err = webpush.Encrypt(msg, pub, secret)
				if err != nil {
					return fmt.Errorf("cannot encrypt: %w", err)
				}
				*encoding = "aes128gcm"
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("TTL", strconv.Itoa(*ttl))
			if *encoding != "" {
				req.Header.Set("Content-Encoding", *encoding)
			}
			req.Header.Set("Content-Type", "application/octet-stream")
			if *urgency != "" {
				req.Header.Set("Urgency", *urgency)
			}
			if *topic != "" {
				req.Header.Set("Topic", *topic)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("cannot post to %s: %w", u.Host, err)
			}
			defer resp.Body.Close()
			rb, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			fmt.Fprintln(e.stdout, resp.Status)
			if loc := resp.Header.Get("Location"); loc != "" {
				fmt.Fprintln(e.stdout, "Location:", loc)
			}
			if resp.StatusCode/100 != 2 {
				fmt.Fprintln(e.stderr, "herald send: push server refused the message:", strings.TrimSpace(string(rb)))
				return errFailed
			}
			return nil
		},
	}
}
