// The REAL Vercel AI SDK against the real stack through Nginx: `AbstractChat`
// with `DefaultChatTransport`, headless, as the SDK's own chat.test.ts drives
// it, on the current `ai` 7 and on `ai` 6 (pinned in package.json: `ai`,
// `ai6`). Needs a stack whose demo workers think (`DEMO_REASONING_TOKENS`)
// and answer slowly enough that "mid-answer" lasts seconds; scripts/test-web.sh
// starts one. The worker-kill test finds workers in CHAT_PID_DIR
// (`worker-<i>.pid` / `.port`, as scripts/up.sh writes them).
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  API,
  BASE,
  newSession,
  reasoningOf,
  stopAnswer,
  storedAnswer,
  textOf,
  waitFor,
} from './ui-chat.mjs';

const PID_DIR = process.env.CHAT_PID_DIR ?? join(process.cwd(), '..', 'run');
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

const SDKS = [
  ['ai 7', await import('ai')],
  ['ai 6', await import('ai6')],
];
if (process.env.AI_SDK_5) SDKS.push(['ai 5', await import('ai5')]);

/** A fetch that records every UI message chunk each response carried. */
function recordingFetch() {
  const responses = [];
  const record = async (input, init) => {
    const res = await fetch(input, init);
    const entry = { url: String(input), method: init?.method ?? 'GET', status: res.status, chunks: [] };
    responses.push(entry);
    if (!res.body || res.status !== 200) return res;
    const [mine, theirs] = res.body.tee();
    (async () => {
      const decoder = new TextDecoder();
      let buffer = '';
      try {
        for await (const bytes of mine) {
          buffer += decoder.decode(bytes, { stream: true });
          let cut;
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            for (const line of block.split('\n')) {
              if (!line.startsWith('data: ')) continue;
              const data = line.slice(6);
              entry.chunks.push(data === '[DONE]' ? '[DONE]' : JSON.parse(data));
            }
          }
        }
      } catch {
        entry.cut = true;
      }
    })();
    return new Response(theirs, { status: res.status, headers: res.headers });
  };
  record.responses = responses;
  return record;
}

function makeChat(sdk, session, { messages = [], fetch: fetchImpl, token, transport } = {}) {
  class State {
    constructor(initial) {
      this.messages = initial;
      this.status = 'ready';
      this.error = undefined;
    }
    pushMessage = (m) => { this.messages = this.messages.concat(m); };
    popMessage = () => { this.messages = this.messages.slice(0, -1); };
    replaceMessage = (i, m) => { this.messages = [...this.messages.slice(0, i), m, ...this.messages.slice(i + 1)]; };
    snapshot = (thing) => structuredClone(thing);
  }
  class TestChat extends sdk.AbstractChat {
    constructor(init) {
      super({ ...init, state: new State(init.messages ?? []) });
    }
  }
  return new TestChat({
    id: session.id,
    messages,
    transport:
      transport ??
      new sdk.DefaultChatTransport({
        api: API,
        headers: { Authorization: `Bearer ${token ?? session.token}` },
        fetch: fetchImpl,
      }),
  });
}

const assistants = (chat) => chat.messages.filter((m) => m.role === 'assistant');
const streamingText = (chat) => {
  const last = chat.messages.at(-1);
  return chat.status === 'streaming' && last?.role === 'assistant' && textOf(last).length > 0;
};

/** Worker `i`'s pid and metrics port from scripts/up.sh's files, if it runs. */
function workers() {
  let files = [];
  try {
    files = readdirSync(PID_DIR).filter((f) => /^worker-\d+\.pid$/.test(f));
  } catch {
    return [];
  }
  return files
    .map((f) => {
      const name = f.replace(/\.pid$/, '');
      const pid = Number(readFileSync(join(PID_DIR, f), 'utf8').trim());
      const port = Number(readFileSync(join(PID_DIR, `${name}.port`), 'utf8').trim());
      try {
        process.kill(pid, 0);
      } catch {
        return null;
      }
      return { name, pid, port };
    })
    .filter(Boolean);
}

async function jobsInFlight(worker) {
  try {
    const text = await (await fetch(`http://127.0.0.1:${worker.port}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('chat_worker_jobs_in_flight'));
    return line ? Number(line.split(' ').pop()) : 0;
  } catch {
    return 0;
  }
}

for (const [name, sdk] of SDKS) {
  describe(`the AI SDK (${name}) on /api/ui/chat`, () => {
    test('sends, streams reasoning then text, and ends as stored', async () => {
      const session = await newSession();
      const record = recordingFetch();
      const chat = makeChat(sdk, session, { fetch: record });
      await chat.sendMessage({ text: 'Hello there' });
      assert.equal(chat.status, 'ready', String(chat.error));
      const [answer] = assistants(chat);
      assert.match(answer.id, UUID, 'the assistant message id is our message id');
      assert.ok(reasoningOf(answer).length > 0, 'the demo model thought first');
      const stored = await storedAnswer(session, answer.id);
      assert.equal(stored.end, 'done');
      assert.equal(textOf(answer), stored.text);
      const post = record.responses.find((r) => r.method === 'POST');
      assert.equal(post.chunks.at(-1), '[DONE]');
      const types = post.chunks.slice(0, -1).map((c) => c.type);
      assert.deepEqual(types.slice(0, 3), ['start', 'start-step', 'reasoning-start']);
      assert.ok(types.indexOf('reasoning-end') < types.indexOf('text-start'), 'reasoning closes before text');
      assert.deepEqual(types.slice(-3), ['text-end', 'finish-step', 'finish']);
    });

    test('a reload mid-answer resumes it from its start, exactly once', async () => {
      const session = await newSession();
      const first = makeChat(sdk, session);
      const sending = first.sendMessage({ text: 'Tell me a long story' });
      await waitFor('text mid-answer', () => streamingText(first));
      // The reload: the page's fetch is gone (the SDK's stop only aborts it).
      await first.stop();
      await sending;
      const seen = textOf(first.messages.at(-1));

      const listed = await (await fetch(`${API}/${session.id}/messages`, { headers: session.headers })).json();
      assert.deepEqual(
        listed.map((m) => m.role),
        ['user'],
        'the answer in flight is not listed, its question is',
      );
      const record = recordingFetch();
      const second = makeChat(sdk, session, { messages: listed, fetch: record });
      await second.resumeStream();
      assert.equal(second.status, 'ready', String(second.error));
      const answers = assistants(second);
      assert.equal(answers.length, 1, 'one answer, not two');
      const stored = await storedAnswer(session, answers[0].id);
      assert.equal(stored.end, 'done', 'the reload did not stop the answer');
      assert.equal(textOf(answers[0]), stored.text, 'the whole answer once');
      assert.ok(stored.text.startsWith(seen));
      const resumed = record.responses.find((r) => r.url.endsWith('/stream'));
      assert.equal(resumed.chunks[0].type, 'start', 'replayed from its start');
      // Finished: nothing more to resume.
      const res = await fetch(`${API}/${session.id}/stream`, { headers: session.headers });
      assert.equal(res.status, 204);
    });

    test('stop (the endpoint) ends the stream in abort and a stored cancelled', async () => {
      const session = await newSession();
      const record = recordingFetch();
      const chat = makeChat(sdk, session, { fetch: record });
      const sending = chat.sendMessage({ text: 'Count to a thousand' });
      await waitFor('text mid-answer', () => streamingText(chat));
      // The README's stop: the endpoint stops the answer, and the stream
      // ends with `abort` by itself.
      const { stopped } = await stopAnswer(session);
      await sending;
      const answer = chat.messages.at(-1);
      assert.deepEqual(stopped, [answer.id]);
      const stored = await waitFor('the cancelled event', async () => {
        const s = await storedAnswer(session, answer.id);
        return s.end ? s : null;
      });
      assert.equal(stored.end, 'cancelled');
      assert.equal(stored.events.at(-1).type, 'cancelled');
      const post = record.responses.find((r) => r.method === 'POST');
      await waitFor('the end of the stream', () => post.chunks.includes('[DONE]') || post.cut, 5_000);
      assert.deepEqual(post.chunks.slice(-3).map((c) => c.type ?? c), ['text-end', 'abort', '[DONE]']);
      assert.equal(textOf(answer), stored.text, 'the client has what was stored before the stop');
      const history = await (await fetch(`${BASE}/api/history?session=${session.id}`, { headers: session.headers })).json();
      assert.equal(history.turns.at(-1).status, 'cancelled');
    });

    test('regenerate makes a second version, listed with the first', async () => {
      const session = await newSession();
      const chat = makeChat(sdk, session);
      await chat.sendMessage({ text: 'Pick a colour' });
      const firstId = chat.messages.at(-1).id;
      await chat.regenerate();
      assert.equal(chat.status, 'ready', String(chat.error));
      const answers = assistants(chat);
      assert.equal(answers.length, 1, 'the regenerated answer replaces the first in the chat');
      assert.notEqual(answers[0].id, firstId);
      const stored = await storedAnswer(session, answers[0].id);
      assert.equal(textOf(answers[0]), stored.text);
      const listed = await (await fetch(`${API}/${session.id}/messages`, { headers: session.headers })).json();
      assert.deepEqual(listed.map((m) => m.role), ['user', 'assistant']);
      assert.equal(listed[1].id, answers[0].id);
      assert.deepEqual(listed[1].metadata.versions.map((v) => v.messageId), [firstId]);
    });

    test('an app that posts only the last message (the SDK persistence guide) chats the same', async () => {
      const session = await newSession();
      const posted = [];
      const transport = new sdk.DefaultChatTransport({
        api: API,
        headers: { Authorization: `Bearer ${session.token}` },
        prepareSendMessagesRequest: ({ id, messages }) => {
          const body = { id, message: messages.at(-1) };
          posted.push(body);
          return { body };
        },
      });
      const chat = makeChat(sdk, session, { transport });
      await chat.sendMessage({ text: 'First question' });
      await chat.sendMessage({ text: 'Second question' });
      assert.equal(chat.status, 'ready', String(chat.error));
      assert.equal(posted.length, 2);
      assert.ok(posted.every((b) => !('messages' in b) && b.message.role === 'user'));
      const answers = assistants(chat);
      assert.equal(answers.length, 2);
      for (const answer of answers) {
        const stored = await storedAnswer(session, answer.id);
        assert.equal(stored.end, 'done');
        assert.equal(textOf(answer), stored.text);
      }
      const listed = await (await fetch(`${API}/${session.id}/messages`, { headers: session.headers })).json();
      assert.deepEqual(
        listed.filter((m) => m.role === 'user').map(textOf),
        ['First question', 'Second question'],
      );
    });

    test('a long conversation is posted whole, as the SDK does, and answered', async () => {
      const session = await newSession();
      const said = 'x'.repeat(2000);
      // About 160 KB of earlier turns: past the REST body limit (64 KiB),
      // within the chat's own (4 MiB).
      const history = Array.from({ length: 40 }, (_, i) => [
        { id: `u${i}`, role: 'user', parts: [{ type: 'text', text: said }] },
        { id: `a${i}`, role: 'assistant', parts: [{ type: 'text', text: said }] },
      ]).flat();
      const chat = makeChat(sdk, session, { messages: history });
      await chat.sendMessage({ text: 'Still there?' });
      assert.equal(chat.status, 'ready', String(chat.error));
      const answer = chat.messages.at(-1);
      assert.equal(answer.role, 'assistant');
      const stored = await storedAnswer(session, answer.id);
      assert.equal(stored.end, 'done');
      assert.equal(textOf(answer), stored.text);
    });

    test('a worker killed mid-answer ends in one clean answer', async (t) => {
      const alive = workers();
      if (alive.length < 2) {
        t.skip('needs two workers started by scripts/up.sh (CHAT_PID_DIR)');
        return;
      }
      const session = await newSession();
      const chat = makeChat(sdk, session);
      const sending = chat.sendMessage({ text: 'Write a poem' });
      await waitFor('text mid-answer', () => streamingText(chat));
      const busy = await waitFor('the worker with the job', async () => {
        for (const w of alive) if ((await jobsInFlight(w)) > 0) return w;
        return null;
      });
      process.kill(busy.pid, 'SIGKILL');
      await sending;
      if (chat.status === 'error') {
        t.diagnostic(`the restart failed the answer (${chat.error?.message.slice(0, 80)}); resuming`);
        // ai < 7.0.70 does not know `reset-step`: the answer fails on the
        // restart, and a resume brings the new attempt alone.
        await chat.resumeStream();
      }
      assert.equal(chat.status, 'ready', String(chat.error));
      const answers = assistants(chat);
      assert.equal(answers.length, 1);
      const stored = await storedAnswer(session, answers[0].id);
      assert.equal(stored.end, 'done');
      assert.ok(stored.attempt >= 2, 'the answer was restarted');
      assert.equal(textOf(answers[0]), stored.text, 'the new attempt alone, once');
    });

    test('401, 404 and 429 surface as errors', async () => {
      const session = await newSession();
      const stranger = makeChat(sdk, session, { token: 'not-the-token' });
      await stranger.sendMessage({ text: 'hi' });
      assert.equal(stranger.status, 'error');
      assert.match(String(stranger.error?.message), /unauthorized|token/i);
      for (const path of ['stream', 'messages']) {
        const res = await fetch(`${API}/${session.id}/${path}`, { headers: { Authorization: 'Bearer nope' } });
        assert.equal(res.status, 401, path);
      }
      const bare = await fetch(`${API}/${session.id}/stop`, { method: 'POST' });
      assert.equal(bare.status, 401);

      // A regenerate in a chat with no question yet.
      const fresh = makeChat(sdk, session, {
        messages: [{ id: 'local', role: 'user', parts: [{ type: 'text', text: 'hi' }] }],
      });
      await fresh.regenerate().catch(() => {});
      assert.equal(fresh.status, 'error');
      assert.match(String(fresh.error?.message), /not_found|no question/i);

      // Two answers in flight is the session's limit: the third is refused.
      const a = makeChat(sdk, session);
      const b = makeChat(sdk, session);
      const c = makeChat(sdk, session);
      const running = [a.sendMessage({ text: 'one' }), b.sendMessage({ text: 'two' })];
      await waitFor('two answers streaming', () => streamingText(a) && streamingText(b));
      await c.sendMessage({ text: 'three' });
      assert.equal(c.status, 'error');
      assert.match(String(c.error?.message), /rate_limited/);
      await stopAnswer(session);
      await Promise.all(running);
    });
  });
}

test('CORS: only the listed origins may call from another site', async (t) => {
  const listed = (process.env.GATEWAY_CORS_ORIGINS ?? '').split(',').filter(Boolean)[0];
  if (!listed) {
    t.skip('the stack has no GATEWAY_CORS_ORIGINS');
    return;
  }
  const preflight = (origin) =>
    fetch(`${API}/00000000-0000-4000-8000-000000000000/stream`, {
      method: 'OPTIONS',
      headers: {
        Origin: origin,
        'Access-Control-Request-Method': 'GET',
        'Access-Control-Request-Headers': 'authorization',
      },
    });
  const allowed = await preflight(listed);
  assert.equal(allowed.headers.get('access-control-allow-origin'), listed);
  assert.match(allowed.headers.get('access-control-allow-headers') ?? '', /authorization/);
  const refused = await preflight('https://elsewhere.example');
  assert.equal(refused.headers.get('access-control-allow-origin'), null);
  const post = await fetch(`${BASE}/api/sessions`, { method: 'POST', headers: { Origin: listed } });
  assert.equal(post.headers.get('access-control-allow-origin'), listed);
});

// assistant-ui's transport (what its `useChatRuntime` hands the SDK), with
// its own resume: the POST's `x-resumable-stream-id`, kept in storage, and a
// GET of `resumeApi(streamId)` after the reload.
describe('assistant-ui (AssistantChatTransport, resumable) on /api/ui/chat', () => {
  test('a reload mid-answer resumes by x-resumable-stream-id, exactly once', async () => {
    const { AssistantChatTransport } = await import('@assistant-ui/react-ai-sdk');
    const sdk = await import('ai');
    const session = await newSession();
    const kept = new Map();
    const storage = {
      getStreamId: () => kept.get('id') ?? null,
      setStreamId: (id) => kept.set('id', id),
      clear: () => kept.delete('id'),
    };
    const transport = () =>
      new AssistantChatTransport({
        api: API,
        headers: session.headers,
        resumable: { storage, resumeApi: (streamId) => `${API}/${session.id}/stream/${streamId}` },
      });
    const chat = (messages) => makeChat(sdk, session, { messages, transport: transport() });
    const first = chat([]);
    const sending = first.sendMessage({ text: 'Resume me' });
    await waitFor('text mid-answer', () => streamingText(first));
    const streamId = storage.getStreamId();
    assert.equal(streamId, first.messages.at(-1).id, 'the stream id is the answer id');
    await first.stop();
    await sending;

    const listed = await (await fetch(`${API}/${session.id}/messages`, { headers: session.headers })).json();
    const second = chat(listed);
    await second.resumeStream();
    assert.equal(second.status, 'ready', String(second.error));
    const answers = assistants(second);
    assert.equal(answers.length, 1);
    const stored = await storedAnswer(session, answers[0].id);
    assert.equal(stored.end, 'done');
    assert.equal(textOf(answers[0]), stored.text);
    assert.equal(storage.getStreamId(), null, 'the finished stream is forgotten');
    const done = await fetch(`${API}/${session.id}/stream/${streamId}`, { headers: session.headers });
    assert.equal(done.status, 204);
  });
});
