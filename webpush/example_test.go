package webpush_test

import (
	"fmt"
	"time"

	"github.com/heraldpush/herald/webpush"
)

func Example() {
	// The device makes a subscription key pair and gives Public() and Auth to
	// the app server (as p256dh and auth).
	keys, err := webpush.GenerateKeys()
	if err != nil {
		panic(err)
	}

	// The app server encrypts a message for it...
	body, err := webpush.Encrypt([]byte(`{"message":"hello"}`), keys.Public(), keys.Auth)
	if err != nil {
		panic(err)
	}

	// ...and the device decrypts what the push service delivered.
	plaintext, err := webpush.Decrypt(body, keys)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%d-octet body: %s\n", len(body), plaintext)
	// Output: 122-octet body: {"message":"hello"}
}

func ExampleVerifyVAPID() {
	// The app server signs a token for the push service's origin...
	key, err := webpush.GenerateVAPIDKey()
	if err != nil {
		panic(err)
	}
	now := time.Now()
	authorization, err := webpush.SignVAPID(key, "https://push.example.net", "mailto:ops@example.com", now.Add(12*time.Hour))
	if err != nil {
		panic(err)
	}

	// ...and the push service checks it and compares the key with the one the
	// subscription was restricted to.
	pub, err := webpush.VerifyVAPID(authorization, "https://push.example.net", now)
	fmt.Println(len(pub), err)

	_, err = webpush.VerifyVAPID("", "https://push.example.net", now)
	fmt.Println(err)
	// Output:
	// 65 <nil>
	// missing vapid authorization
}
