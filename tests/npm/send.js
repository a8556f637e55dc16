// send.js: act as an app server with the web-push npm package. Reads a JSON
// request on stdin:
//   {"endpoint","p256dh","auth","vapidPublic","vapidPrivate","subject","payload","ttl","topic","urgency"}
// encrypts the payload (aes128gcm) and signs VAPID with
// webpush.generateRequestDetails(), sends the request with node's own http or
// https module (sendNotification() forces HTTPS), and prints
//   {"status","headers","body"}
// on stdout.
'use strict';
const http = require('http');
const https = require('https');
const webpush = require('web-push');

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', (c) => chunks.push(c));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

async function main() {
  const req = JSON.parse(await readStdin());
  const options = {
    TTL: req.ttl,
    contentEncoding: 'aes128gcm',
    vapidDetails: { subject: req.subject, publicKey: req.vapidPublic, privateKey: req.vapidPrivate },
  };
  if (req.topic) options.topic = req.topic;
  if (req.urgency) options.urgency = req.urgency;
  const subscription = { endpoint: req.endpoint, keys: { p256dh: req.p256dh, auth: req.auth } };
  const details = webpush.generateRequestDetails(subscription, req.payload, options);
  const url = new URL(details.endpoint);
  const mod = url.protocol === 'https:' ? https : http;
  const res = await new Promise((resolve, reject) => {
    const r = mod.request(url, { method: details.method, headers: details.headers }, (resp) => {
      const chunks = [];
      resp.on('data', (c) => chunks.push(c));
      resp.on('end', () => resolve({
        status: resp.statusCode,
        headers: resp.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      }));
    });
    r.on('error', reject);
    if (details.body) r.write(details.body);
    r.end();
  });
  process.stdout.write(JSON.stringify(res) + '\n');
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(1);
});
