// The example app (web/examples/ai-sdk-chat: a stock `useChat({ resume: true })`
// page, built by `npm run build:example`) in headless Chromium against the
// real stack: ask, reload mid-answer, the answer finishes once; Stop stops.
// The page is served from its own origin (EXAMPLE_PORT), so the gateway's
// CORS (GATEWAY_CORS_ORIGINS) is on the path too. AI_SDK_SCREENSHOT=1 writes
// the README's screenshot (web/screenshots/ai-sdk-chat.png).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFileSync, existsSync } from 'node:fs';
import { join, extname, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, waitFor } from './browser.mjs';

const BASE = process.env.CHAT_BASE_URL ?? 'http://127.0.0.1:8080';
const PORT = Number(process.env.EXAMPLE_PORT ?? 28090);
const web = dirname(dirname(fileURLToPath(import.meta.url)));
const DIST = join(web, 'examples', 'ai-sdk-chat', 'dist');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };

let server;
let browser;
before(async () => {
  assert.ok(existsSync(join(DIST, 'index.html')), 'build the example first: npm run build:example');
  server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const file = join(DIST, path === '/' || !extname(path) ? 'index.html' : path);
    if (!file.startsWith(DIST) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  await new Promise((ok) => server.listen(PORT, '127.0.0.1', ok));
  browser = await launch({ viewport: { width: 900, height: 700 } });
});
after(async () => {
  await browser?.close();
  server?.close();
});

const URL_ = `http://127.0.0.1:${PORT}/?gateway=${encodeURIComponent(BASE)}`;
const status = (page) => page.getAttribute('[data-status]', 'data-status');
const answers = (page) => page.locator('[data-role="assistant"] .text').allTextContents();

async function lastTurn(page) {
  const { id, token } = JSON.parse(await page.evaluate(() => localStorage.getItem('ai-sdk-chat')));
  const res = await fetch(`${BASE}/api/history?session=${id}`, { headers: { Authorization: `Bearer ${token}` } });
  return (await res.json()).turns.at(-1);
}

test('ask, reload mid-answer: the answer finishes once; Stop stops', async () => {
  const page = await browser.context.newPage();
  await page.goto(URL_);
  await page.fill('input[aria-label="Message"]', 'Tell me about streams');
  await page.click('button[type="submit"]');
  await waitFor(async () => (await status(page)) === 'streaming' && (await answers(page)).join('').length > 0, {
    what: 'text mid-answer',
  });
  const before = (await answers(page)).join('');
  await page.reload();
  await waitFor(async () => (await status(page)) === 'streaming', { what: 'the resumed stream' });
  if (process.env.AI_SDK_SCREENSHOT) {
    await page.screenshot({ path: join(web, 'screenshots', 'ai-sdk-chat.png') });
  }
  await waitFor(async () => (await status(page)) === 'ready', { ms: 20_000, what: 'the answer to finish' });
  const shown = await answers(page);
  assert.equal(shown.length, 1, 'one answer on the page');
  const turn = await waitFor(() => lastTurn(page), { what: 'the stored turn' });
  assert.equal(turn.status, 'done');
  assert.equal(shown[0], turn.assistant, 'the whole answer, once');
  assert.ok(turn.assistant.startsWith(before));

  await page.fill('input[aria-label="Message"]', 'And now a long one');
  await page.click('button[type="submit"]');
  await waitFor(async () => (await status(page)) === 'streaming' && (await answers(page)).length === 2, {
    what: 'the second answer streaming',
  });
  await page.click('button:has-text("Stop")');
  await waitFor(async () => (await status(page)) === 'ready', { what: 'the stop' });
  const stopped = await waitFor(async () => {
    const t = await lastTurn(page);
    return t?.status === 'cancelled' ? t : null;
  }, { what: 'the cancelled turn' });
  const [, second] = await answers(page);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await answers(page))[1], second, 'nothing arrives after the stop');
  assert.equal(second, stopped.assistant, 'the page shows what was stored before the stop');
  await page.close();
});
