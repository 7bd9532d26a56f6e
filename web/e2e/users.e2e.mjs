// End to end with the app's login (GATEWAY_AUTH=jwt): Debian's Chromium
// against the real stack behind Nginx, started by scripts/test-web.sh with
// `up.sh --auth jwt`. Tokens are HS256, signed here with the stack's
// development key (CHAT_JWT_SECRET_FILE, run/credentials/jwt-hmac.key), as
// `chatctl token` would.
//
// Two browsers (separate profiles: two devices) log in as alice, a third as
// carol. Nginx keeps a session on one gateway, so the phone's socket is
// bridged (Playwright's WebSocket route, Node's WebSocket) straight to
// another gateway than the laptop's: the two devices stream, stop and list
// through different gateways. Needs `node --experimental-websocket` on Node 20.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { forbidDialogs, launch, waitFor } from './browser.mjs';

const BASE = (process.env.CHAT_BASE_URL ?? 'http://127.0.0.1:8080').replace(/\/$/, '');
const SECRET_FILE = process.env.CHAT_JWT_SECRET_FILE ?? 'run/credentials/jwt-hmac.key';
const ANSWER_MS = Number(process.env.CHAT_E2E_ANSWER_TIMEOUT_MS ?? 60_000);
// The gateways of the stack: gw-<i> listens on GATEWAY_BASE_PORT + i - 1 (scripts/up.sh).
const GATEWAY_BASE_PORT = Number(process.env.GATEWAY_BASE_PORT ?? 3001);
const GATEWAYS = Number(process.env.GATEWAYS ?? 3);

const b64url = (data) => Buffer.from(data).toString('base64url');

/** An HS256 JWT of `sub`, valid for `ttlSecs`. */
function token(sub, ttlSecs = 3600) {
  const secret = readFileSync(SECRET_FILE, 'utf8').trim();
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, iat: now, exp: now + ttlSecs }));
  const signature = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

const browsers = [];
before(async () => {
  const health = await fetch(`${BASE}/health`).catch((e) => ({ ok: false, statusText: String(e) }));
  assert.ok(health.ok, `the stack is not reachable at ${BASE}/health; start it with \`just up --auth jwt\``);
});
after(async () => {
  for (const b of browsers) await b.close();
});

/**
 * A device: its own browser profile, logged in as `sub` through the URL
 * fragment. With `gatewayPort` its sockets go straight to that gateway.
 */
async function device(sub, gatewayPort = null) {
  const browser = await launch();
  browsers.push(browser);
  const page = await browser.context.newPage();
  if (gatewayPort) await bridgeSockets(page, gatewayPort);
  const dialogs = forbidDialogs(page);
  await page.goto(`${BASE}/#token=${token(sub)}`);
  await connected(page);
  return { page, dialogs };
}

/** The page's `/ws/chat` sockets, carried to the gateway on `port` instead of through Nginx. */
async function bridgeSockets(page, port) {
  await page.routeWebSocket(/\/ws\/chat/, (route) => {
    const url = new URL(route.url());
    const upstream = new WebSocket(`ws://127.0.0.1:${port}${url.pathname}${url.search}`);
    const early = [];
    upstream.onopen = () => early.splice(0).forEach((m) => upstream.send(m));
    upstream.onmessage = (ev) => route.send(String(ev.data));
    upstream.onclose = (ev) => route.close({ code: ev.code >= 1000 && ev.code !== 1005 && ev.code !== 1006 ? ev.code : 1000, reason: ev.reason });
    route.onMessage((m) => (upstream.readyState === 1 ? upstream.send(m) : early.push(m)));
    route.onClose(() => upstream.close());
  });
}

async function connected(page) {
  await page.locator('[data-testid=connection][data-state=connected]').waitFor({ timeout: 20_000 });
}

const nodeOf = (page) => page.locator('[data-testid=connection]').getAttribute('data-node');

const current = (page) => page.evaluate(() => localStorage.getItem('chat.current.v1'));
const titles = (page) => page.locator('.session-list li .session-item').allInnerTexts();
const turn = (page, id) => page.locator(`[data-testid=turn][data-message-id="${id}"]`);
const status = (page, id) => turn(page, id).getAttribute('data-status');

async function ask(page, text) {
  const count = await page.locator('[data-testid=turn]').count();
  const input = page.getByTestId('composer-input');
  await input.fill(text);
  await input.press('Enter');
  await waitFor(async () => (await page.locator('[data-testid=turn]').count()) > count, { what: 'the turn to appear' });
  return page.locator('[data-testid=turn]').nth(count).getAttribute('data-message-id');
}

describe('one user on two devices, and another user', () => {
  it('share one live list and one answer that either can stop; the other user sees none of it; revoking signs both out', async () => {
    const laptop = await device('alice');
    // The token left the address bar at once.
    assert.equal(new URL(laptop.page.url()).hash, '');
    // The phone on another gateway than the one Nginx gave the laptop.
    const laptopNode = await nodeOf(laptop.page);
    const other = laptopNode === 'gw-1' ? 2 : 1;
    assert.ok(other <= GATEWAYS);
    const phone = await device('alice', GATEWAY_BASE_PORT + other - 1);
    assert.equal(await nodeOf(phone.page), `gw-${other}`);
    assert.notEqual(await nodeOf(phone.page), laptopNode);
    const session = await current(laptop.page);
    assert.ok(session);
    assert.equal(await current(phone.page), session, 'the phone opens the newest conversation of the list');

    // A question on the laptop streams on the phone, titles the
    // conversation in both lists (live, no reload), and the phone stops it.
    const question = 'Tell me a long story about rivers and their deltas.';
    const id = await ask(laptop.page, question);
    await waitFor(
      async () => (await status(phone.page, id)) === 'streaming' && Number(await turn(phone.page, id).getAttribute('data-answer-chars')) > 10,
      { ms: ANSWER_MS, every: 20, what: 'the answer to stream on the phone' },
    );
    for (const page of [laptop.page, phone.page]) {
      await waitFor(async () => (await titles(page)).some((t) => t.startsWith('Tell me a long story')), { what: 'the title in the list' });
    }
    await phone.page.getByTestId('stop').click();
    for (const page of [laptop.page, phone.page]) {
      await waitFor(async () => (await status(page, id)) === 'cancelled', { what: 'the answer stopped on both' });
    }

    // A new conversation on the phone appears in the laptop's list.
    const before = (await titles(laptop.page)).length;
    await phone.page.getByTestId('new-conversation').click();
    await waitFor(async () => (await current(phone.page)) !== session, { what: 'the phone to open a new conversation' });
    await waitFor(async () => (await titles(laptop.page)).length === before + 1, { what: 'the laptop to list it' });

    // Carol: her own list only, and alice's session answers as unknown.
    const carol = await device('carol');
    assert.equal((await titles(carol.page)).length, 1);
    assert.ok(!(await titles(carol.page)).some((t) => t.startsWith('Tell me a long story')));
    const foreign = await carol.page.evaluate(
      async ([s, t]) => (await fetch(`/api/history?session=${s}`, { headers: { authorization: `Bearer ${t}` } })).status,
      [session, token('carol')],
    );
    assert.equal(foreign, 404);

    // A stolen device: revoking alice's sockets signs out both of hers (the
    // pages ask for a new login), not carol.
    const revoked = await laptop.page.evaluate(
      async (t) => (await fetch('/api/users/me/sockets', { method: 'DELETE', headers: { authorization: `Bearer ${t}` } })).status,
      token('alice'),
    );
    assert.equal(revoked, 204);
    for (const page of [laptop.page, phone.page]) await page.getByTestId('login').waitFor({ timeout: 10_000 });
    await connected(carol.page);
    for (const d of [laptop, phone, carol]) assert.deepEqual(d.dialogs, []);
  });
});
