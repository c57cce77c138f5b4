// A protoo peer for the interop scripts: npm protoo-client over ws or wss
// (any certificate: the center's development one), with the notifications
// it received kept until a test asks for them.
'use strict';
const protooClient = require('protoo-client');

// Connects to `url`, as `name` when given (`?peer=NAME`, the identity).
function connect(url, name) {
  const sep = url.includes('?') ? '&' : '?';
  const transport = new protooClient.WebSocketTransport(name ? `${url}${sep}peer=${name}` : url, {
    retry: { retries: 0 },
    clientConfig: { tlsOptions: { rejectUnauthorized: false } },
  });
  const peer = new protooClient.Peer(transport);
  const notifications = [];
  const waiters = [];
  peer.on('notification', (n) => {
    notifications.push(n);
    for (const w of waiters.splice(0)) w();
  });
  // The data of the first notification of `method` that `pred` accepts.
  peer.next = async (method, pred = () => true) => {
    for (;;) {
      const i = notifications.findIndex((n) => n.method === method && pred(n.data));
      if (i >= 0) return notifications.splice(i, 1)[0].data;
      await new Promise((resolve) => waiters.push(resolve));
    }
  };
  return new Promise((resolve, reject) => {
    peer.on('open', () => resolve(peer));
    peer.on('failed', () => reject(new Error(`${name || url}: connection failed`)));
  });
}

module.exports = { connect };
