// The admin page in a real browser: Debian's Chromium, headless, driven by
// playwright-core (which downloads nothing; it uses the system browser).
// Two protoo peers (npm protoo-client) make a room; the page must show it,
// follow a user leaving, and its kick / send text / close room buttons must
// reach the peers after the confirmation.
// Usage: node admin_page.js WS_URL ADMIN_URL SCREENSHOT.png [ADMIN_TOKEN]
'use strict';
const assert = require('assert');
const peer = require('./peer');
const { chromium } = require('playwright-core');

const [wsUrl, adminUrl, screenshot, token] = process.argv.slice(2);
const WAIT = 20000; // ms, for each condition on the page

const connect = (name) => peer.connect(wsUrl, name);

async function main() {
  const sfuA = await connect('sfu-a');
  const sfuB = await connect('sfu-b');
  await sfuA.request('join', { roomId: 'lobby', userId: 'alice', userName: 'Alice' });
  await sfuB.request('join', { roomId: 'lobby', userId: 'bob', userName: 'Bob' });
  await sfuB.request('join', { roomId: 'lobby', userId: 'carol', userName: 'Carol' });
  sfuB.notify('push', { roomId: 'lobby', userId: 'bob', publishers: [{ pusherId: 'bob-cam', rtpParam: { ssrc: 1 } }] });
  // Barrier: the push is applied before an echo sent after it is answered.
  await sfuB.request('echo', {});

  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    if (token) {
      // The page asks for the token when the API says 401; keep it for this tab.
      await page.addInitScript((t) => sessionStorage.setItem('pilotToken', t), token);
    }
    await page.goto(adminUrl, { waitUntil: 'domcontentloaded' });

    const room = page.locator('[data-room="lobby"]');
    await room.locator('[data-user="alice"]').waitFor({ timeout: WAIT });
    await room.locator('[data-user="bob"]').waitFor({ timeout: WAIT });
    assert.match(await room.locator('[data-user="bob"]').innerText(), /bob-cam/);
    // With auth on, a peer's identity is its token's subject, not ?peer=.
    const peerA = token ? '[data-session]' : '[data-peer="sfu-a"]';
    const peerB = token ? '[data-session] + [data-session]' : '[data-peer="sfu-b"]';
    await page.locator(peerA).first().waitFor({ timeout: WAIT });
    await page.locator(peerB).first().waitFor({ timeout: WAIT });
    await page.locator('#status.live').waitFor({ timeout: WAIT });
    console.log('the page shows the room, its users, pusher and both sessions');

    // A user leaves on the SFU's word: the page follows, live.
    sfuB.notify('userLeave', { roomId: 'lobby', userId: 'carol' });
    await room.locator('[data-user="carol"]').waitFor({ state: 'detached', timeout: WAIT });
    await page.locator('#feed [data-kind="user_left"]', { hasText: 'carol' }).waitFor({ timeout: WAIT });
    console.log('carol left: gone from the room, user_left in the feed');

    // Every action asks first. Dismissed: nothing happens.
    let answer = false;
    const asked = [];
    page.on('dialog', async (d) => {
      asked.push(d.message());
      if (d.type() === 'prompt') await d.accept('hello from the admin page');
      else if (answer) await d.accept();
      else await d.dismiss();
    });
    await room.locator('[data-user="alice"] [data-action="kick"]').click();
    assert.ok(asked.some((m) => m.includes('Remove alice from lobby')), `asked: ${asked}`);
    answer = true;
    await room.locator('[data-user="alice"] [data-action="kick"]').click();
    const left = await sfuA.next('userLeave', (d) => d.userId === 'alice');
    assert.strictEqual(left.roomId, 'lobby');
    await room.locator('[data-user="alice"]').waitFor({ state: 'detached', timeout: WAIT });
    console.log('kick after the confirmation: sfu-a got userLeave for alice');

    await room.locator('[data-action="say"]').click();
    const text = await sfuB.next('textMessage');
    assert.strictEqual(text.message, 'hello from the admin page');
    console.log('send text reached sfu-b');

    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(`screenshot: ${screenshot}`);

    await room.locator('[data-action="close"]').click();
    const bobLeft = await sfuB.next('userLeave', (d) => d.userId === 'bob');
    assert.strictEqual(bobLeft.roomId, 'lobby');
    await room.waitFor({ state: 'detached', timeout: WAIT });
    console.log('close room: bob left, the room is gone from the page');

    assert.deepStrictEqual(problems, []);
  } finally {
    await browser.close();
    sfuA.close();
    sfuB.close();
  }
  console.log('admin page: all checks passed');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
