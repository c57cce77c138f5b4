// Interop: the npm protoo-client (4.x, a client nobody here wrote) against
// the center over wss with a self-signed certificate.
// Usage: node protoo_client.js wss://127.0.0.1:PORT/pilot/center
'use strict';
const assert = require('assert');
const peer = require('./peer');

const url = process.argv[2];
let checks = 0;
const check = (cond, what) => { assert.ok(cond, what); checks++; };

const connect = () => peer.connect(url);

async function main() {
  const a = await connect();
  const ja = await a.request('join', { roomId: 'interop', userId: 'node-a', userName: 'Node A' });
  check(ja.code === 0 && ja.message === 'join success' && ja.users.length === 0, 'first join');

  const b = await connect();
  const jb = await b.request('join', { roomId: 'interop', userId: 'node-b', userName: 'Node B' });
  check(jb.users.length === 1 && jb.users[0].userId === 'node-a', 'snapshot lists node-a');

  const nu = await a.next('newUser');
  check(nu.userId === 'node-b' && nu.userName === 'Node B' && nu.roomId === 'interop', 'newUser reaches a');

  const rtpParam = { av_type: 'video', codec: 'VP8', ssrc: 1234, payload_type: 96, x_extra: { deep: [1, 'two'] } };
  b.notify('push', { roomId: 'interop', userId: 'node-b', publishers: [{ pusherId: 'b-video', rtpParam }] });
  const np = await a.next('newPusher');
  assert.deepStrictEqual(np.pushers, [{ pusherId: 'b-video', rtpParam }]);
  checks++;

  a.notify('textMessage', { roomId: 'interop', userId: 'node-a', userName: 'Node A', message: 'hello from node' });
  const tm = await b.next('textMessage');
  check(tm.message === 'hello from node', 'textMessage reaches b');

  const echo = await a.request('echo', { ts: 1, index: 2 });
  assert.deepStrictEqual(echo, { echo: { ts: 1, index: 2 } });
  checks++;

  for (const [method, data, code] of [['nope', {}, 404], ['join', { roomId: 7 }, 400]]) {
    try {
      await a.request(method, data);
      assert.fail(`${method} should fail`);
    } catch (err) {
      check(err.code === code, `${method}: errorCode ${err.code}, expected ${code}`);
    }
  }

  b.close();
  const ud = await a.next('userDisconnect');
  check(ud.userId === 'node-b', 'userDisconnect after b closes');
  a.close();
  console.log(`protoo-client interop: ${checks} passed, 0 failed`);
}

const timer = setTimeout(() => { console.error('interop timed out'); process.exit(1); }, 20000);
main().then(() => { clearTimeout(timer); process.exit(0); }, (err) => { console.error(err); process.exit(1); });
