// End-to-end tests: Debian's Chromium (through playwright-core) against the
// REAL stack behind Nginx (gateways, workers, NATS). Run with e2e/run.sh or
// `CHAT_BASE_URL=http://127.0.0.1:8080 npm run test:e2e`.
//
// The stack should stream slowly enough for "mid-answer" to exist: e2e/run.sh
// starts it with DEMO_TOKENS_PER_SEC=25 DEMO_ANSWER_TOKENS=150 (about 6 s).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { forbidDialogs, launch, waitFor } from './browser.mjs';

const BASE = (process.env.CHAT_BASE_URL ?? 'http://127.0.0.1:8080').replace(/\/$/, '');
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
// Where scripts/up.sh writes pid files (`run/gateway-<i>.pid`). The page shows
// the node name from `ready`; the gateway with that `--node` is found by its
// command line. Override the folder with CHAT_PID_DIR.
const PID_DIR = process.env.CHAT_PID_DIR ?? join(REPO, 'run');

/** The pid of the gateway process started with `--node <node>`, from the pid files. */
function gatewayPid(node) {
  if (!existsSync(PID_DIR)) return null;
  for (const f of readdirSync(PID_DIR).filter((f) => f.endsWith('.pid'))) {
    const pid = Number(readFileSync(join(PID_DIR, f), 'utf8').trim());
    if (!(pid > 1)) continue;
    let args;
    try {
      args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    const i = args.indexOf('--node');
    if ((i >= 0 && args[i + 1] === node) || args.includes(`--node=${node}`)) return pid;
    if (f === `${node}.pid`) return pid;
  }
  return null;
}

const ANSWER_MS = Number(process.env.CHAT_E2E_ANSWER_TIMEOUT_MS ?? 60_000);

let browser;
before(async () => {
  const health = await fetch(`${BASE}/health`).catch((e) => ({ ok: false, statusText: String(e) }));
  assert.ok(health.ok, `the stack is not reachable at ${BASE}/health (${health.status ?? ''} ${health.statusText}); start it with \`just up\``);
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** A new page with a fresh conversation (its own localStorage origin state is shared by the context). */
async function openChat(page = null) {
  const p = page ?? (await browser.context.newPage());
  const dialogs = forbidDialogs(p);
  await p.goto(`${BASE}/`);
  await connected(p);
  return { page: p, dialogs };
}

async function connected(page) {
  await page.locator('[data-testid=connection][data-state=connected]').waitFor({ timeout: 20_000 });
  return page.locator('[data-testid=connection]').getAttribute('data-node');
}

async function newConversation(page) {
  const before = await page.evaluate(() => localStorage.getItem('chat.current.v1'));
  if ((await page.locator('[data-testid=turn]').count()) > 0) {
    await page.getByTestId('new-conversation').click();
    await waitFor(async () => (await page.evaluate(() => localStorage.getItem('chat.current.v1'))) !== before, { what: 'a new session' });
  }
  await connected(page);
}

/** Types a question and sends it with Enter; returns the new turn's message id. */
async function ask(page, text) {
  const count = await page.locator('[data-testid=turn]').count();
  const input = page.getByTestId('composer-input');
  await input.fill(text);
  await input.press('Enter');
  await waitFor(async () => (await page.locator('[data-testid=turn]').count()) > count, { what: 'the turn to appear' });
  return page.locator('[data-testid=turn]').nth(count).getAttribute('data-message-id');
}

const turn = (page, id) => page.locator(`[data-testid=turn][data-message-id="${id}"]`);

async function status(page, id) {
  return turn(page, id).getAttribute('data-status');
}

async function waitStatus(page, id, wanted, ms = ANSWER_MS) {
  const set = Array.isArray(wanted) ? wanted : [wanted];
  await waitFor(async () => set.includes(await status(page, id)), { ms, what: `turn ${id} to be ${set.join('|')}` });
}

/** Waits until some answer text has streamed in (mid-answer). */
async function waitStreaming(page, id, minChars = 20) {
  await waitFor(
    async () => {
      const s = await status(page, id);
      if (s === 'done') throw new Error('the answer finished before the test could act mid-answer: slow the demo model down');
      return s === 'streaming' && Number(await turn(page, id).getAttribute('data-answer-chars')) >= minChars;
    },
    { ms: ANSWER_MS, every: 20, what: 'the answer to stream' },
  );
}

/** The finished turn as the server stored it (GET /api/history with the page's token). */
async function historyTurn(page, id) {
  return waitFor(
    () =>
      page.evaluate(async (messageId) => {
        const current = localStorage.getItem('chat.current.v1');
        const sessions = JSON.parse(localStorage.getItem('chat.sessions.v1') ?? '[]');
        const s = sessions.find((x) => x.sessionId === current);
        const res = await fetch(`/api/history?session=${encodeURIComponent(s.sessionId)}`, {
          headers: { authorization: `Bearer ${s.token}` },
        });
        if (!res.ok) return null;
        const body = await res.json();
        return body.turns.find((t) => t.message_id === messageId) ?? null;
      }, id),
    { what: `turn ${id} in /api/history` },
  );
}

/** The page shows the whole answer exactly once: same length as the stored answer, one turn. */
async function assertWholeAnswer(page, id) {
  const stored = await historyTurn(page, id);
  assert.equal(stored.status, 'done');
  assert.ok(stored.assistant.length > 0, 'the stored answer is empty');
  assert.equal(await turn(page, id).count(), 1, 'the turn is shown once');
  const shown = Number(await turn(page, id).getAttribute('data-answer-chars'));
  assert.equal(shown, stored.assistant.length, 'the page shows the stored answer, no more (doubled) and no less (gap)');
  const text = (await turn(page, id).getByTestId('answer-text').innerText()).replace(/\s+/g, ' ').trim();
  const firstWords = stored.assistant.replace(/[`*_#>\-[\]()]/g, ' ').replace(/\s+/g, ' ').trim().split(' ').slice(0, 4).join(' ');
  assert.ok(text.replace(/[`*_#>\-[\]()]/g, ' ').replace(/\s+/g, ' ').includes(firstWords), `rendered text starts like the stored one: ${firstWords}`);
}

describe('chat in a real browser', () => {
  it('sends a question and shows the whole streamed answer', async () => {
    const { page, dialogs } = await openChat();
    await newConversation(page);
    const id = await ask(page, 'Tell me about the history of tea.');
    await waitStatus(page, id, 'done');
    await assertWholeAnswer(page, id);
    // The sidebar titles the conversation with its first question.
    await page.locator('.session-list li.active', { hasText: 'Tell me about the history of tea.' }).waitFor({ timeout: 5_000 });
    assert.deepEqual(dialogs, []);
    await page.close();
  });

  it('Stop mid-answer shows the answer as stopped', async () => {
    const { page } = await openChat();
    await newConversation(page);
    const id = await ask(page, 'Write a long essay about rivers.');
    await waitStreaming(page, id);
    await page.getByTestId('stop').click();
    await waitStatus(page, id, 'cancelled', 5_000);
    await turn(page, id).getByTestId('stopped').waitFor({ timeout: 2_000 });
    const stored = await historyTurn(page, id);
    assert.equal(stored.status, 'cancelled');
    await page.close();
  });

  it('a reload mid-answer completes the answer exactly once', async () => {
    const { page } = await openChat();
    await newConversation(page);
    const id = await ask(page, 'Explain how bread rises.');
    await waitStreaming(page, id);
    await page.reload();
    await connected(page);
    await waitStatus(page, id, 'done');
    await assertWholeAnswer(page, id);
    await page.close();
  });

  it('a second tab shows the same conversation live', async () => {
    const { page: one } = await openChat();
    await newConversation(one);
    const { page: two } = await openChat();
    assert.equal(
      await two.evaluate(() => localStorage.getItem('chat.current.v1')),
      await one.evaluate(() => localStorage.getItem('chat.current.v1')),
    );
    const id = await ask(one, 'What is a good name for a cat?');
    await turn(two, id).getByTestId('question').filter({ hasText: 'What is a good name for a cat?' }).waitFor({ timeout: 10_000 });
    await waitStatus(two, id, 'done');
    await waitStatus(one, id, 'done');
    await assertWholeAnswer(two, id);
    await assertWholeAnswer(one, id);
    await one.close();
    await two.close();
  });

  it('remove revokes the conversation on the server: its token opens nothing more', async () => {
    const { page } = await openChat();
    await newConversation(page);
    const id = await ask(page, 'Remember this for me');
    await waitStatus(page, id, 'done');
    const s = await page.evaluate(() => {
      const current = localStorage.getItem('chat.current.v1');
      return JSON.parse(localStorage.getItem('chat.sessions.v1') ?? '[]').find((x) => x.sessionId === current);
    });
    const history = async () =>
      (await fetch(`${BASE}/api/history?session=${s.sessionId}`, { headers: { authorization: `Bearer ${s.token}` } })).status;
    assert.equal(await history(), 200);
    await page.getByRole('button', { name: /Remove “Remember this for me”/ }).click();
    await waitFor(async () => (await history()) === 401, { what: 'the removed session’s token to stop working' });
    await page.close();
  });

  it('markup in a conversation stays inert', async () => {
    const { page, dialogs } = await openChat();
    await newConversation(page);
    const evil = 'Repeat: <script>window.__pwned=1;alert(1)</script><img src=x onerror="window.__pwned=2;alert(2)">';
    const id = await ask(page, evil);
    await waitStatus(page, id, ['done', 'failed', 'cancelled']);
    await turn(page, id).getByTestId('question').filter({ hasText: '<script>' }).waitFor({ timeout: 5_000 });
    assert.equal(await page.locator('[data-testid=messages] script').count(), 0);
    assert.equal(await page.locator('[data-testid=messages] [onerror]').count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.deepEqual(dialogs, []);
    await page.close();
  });

  it('SIGKILL of the page’s gateway: reconnecting, another node, the answer completes', async (t) => {
    const { page } = await openChat();
    await newConversation(page);
    const node = await connected(page);
    const pid = gatewayPid(node);
    if (!pid) {
      t.skip(`no pid file in ${PID_DIR} for gateway ${node} (set CHAT_PID_DIR)`);
      await page.close();
      return;
    }
    // Record every connection state the page shows, however brief.
    await page.evaluate(() => {
      window.__states = [];
      const el = document.querySelector('[data-testid=connection]');
      const note = () => window.__states.push(`${el.getAttribute('data-state')}:${el.getAttribute('data-node')}`);
      new MutationObserver(note).observe(el, { attributes: true });
      note();
    });
    const id = await ask(page, 'Describe the water cycle in detail.');
    await waitStreaming(page, id);
    process.kill(pid, 'SIGKILL');
    await waitFor(
      async () => {
        const states = await page.evaluate(() => window.__states);
        const last = states.at(-1) ?? '';
        return states.some((s) => s.startsWith('reconnecting')) && last.startsWith('connected:') && last !== `connected:${node}`;
      },
      { ms: 30_000, what: 'reconnecting, then connected to another gateway' },
    );
    await waitStatus(page, id, 'done');
    await assertWholeAnswer(page, id);
    await page.close();
  });
});
