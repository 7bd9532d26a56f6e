// assistant-ui's own runtime hook, `useChatRuntime`, mounted with React in a
// DOM (jsdom) as an app mounts it, against the real stack through Nginx:
// it streams, resumes after a reload by its `x-resumable-stream-id`, stops
// through our stop endpoint and regenerates. The app's only code of ours is
// its transport: our URL, the bearer, the session as the chat id, and where
// a stream is resumed.
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { JSDOM } from 'jsdom';
import { API, newSession, stopAnswer, storedAnswer, waitFor } from './ui-chat.mjs';

// React DOM reads these globals when it loads: they must exist first.
const dom = new JSDOM('<!doctype html><html><body></body></html>', { url: API });
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.navigator = dom.window.navigator;
globalThis.HTMLElement = dom.window.HTMLElement;
const { createElement } = await import('react');
const { createRoot } = await import('react-dom/client');
const { AssistantRuntimeProvider } = await import('@assistant-ui/react');
const { AssistantChatTransport, useChatRuntime } = await import('@assistant-ui/react-ai-sdk');

after(() => dom.window.close());

/**
 * Where a page keeps the stream id of the answer in flight, over `kept` (an
 * app's localStorage): a reloaded page makes a new one over the same store.
 * (assistant-ui remembers per storage object which ids it resumed already.)
 */
function pageStorage(kept = new Map()) {
  return {
    kept,
    getStreamId: () => kept.get('id') ?? null,
    setStreamId: (id) => kept.set('id', id),
    clear: () => kept.delete('id'),
  };
}

/** The transport an app gives `useChatRuntime` for one of our sessions. */
function transportFor(session, storage) {
  return new AssistantChatTransport({
    api: API,
    headers: session.headers,
    // The chat id is our session (assistant-ui's local thread id is not).
    prepareSendMessagesRequest: ({ body, messages, trigger, messageId }) => ({
      body: { ...body, id: session.id, messages, trigger, messageId },
    }),
    resumable: { storage, resumeApi: (streamId) => `${API}/${session.id}/stream/${streamId}` },
  });
}

/** Mounts an app whose runtime is `useChatRuntime(options)`; returns its thread and unmount. */
async function mountApp(options) {
  const container = document.createElement('div');
  document.body.appendChild(container);
  let runtime;
  function App() {
    runtime = useChatRuntime(options);
    return createElement(AssistantRuntimeProvider, { runtime }, null);
  }
  const root = createRoot(container);
  root.render(createElement(App));
  await waitFor('the runtime', () => runtime);
  return {
    thread: () => runtime.thread,
    unmount: () => {
      root.unmount();
      container.remove();
    },
  };
}

const messagesOf = (app) => app.thread().getState().messages;
const assistantsOf = (app) => messagesOf(app).filter((m) => m.role === 'assistant');
const partsText = (message, type) =>
  message.content.filter((p) => p.type === type).map((p) => p.text).join('');
const lastAnswer = (app) => assistantsOf(app).at(-1);

const ask = (app, text) => app.thread().append({ role: 'user', content: [{ type: 'text', text }] });

const answering = (app) => app.thread().getState().isRunning && partsText(lastAnswer(app) ?? { content: [] }, 'text');
const settled = (app) => !app.thread().getState().isRunning && lastAnswer(app)?.status?.type !== 'running';

describe("assistant-ui's useChatRuntime on /api/ui/chat", () => {
  test('an answer streams with its reasoning, equal to the stored events', async () => {
    const session = await newSession();
    const app = await mountApp({ transport: transportFor(session, pageStorage()) });
    try {
      ask(app, 'Hello from assistant-ui');
      await waitFor('the answer to finish', () => lastAnswer(app) && settled(app), 30_000);
      const answer = lastAnswer(app);
      const stored = await storedAnswer(session, answer.id);
      assert.equal(stored.end, 'done');
      assert.equal(partsText(answer, 'text'), stored.text);
      assert.ok(partsText(answer, 'reasoning').length > 0, 'the demo model thought first');
      assert.equal(answer.status.type, 'complete');
    } finally {
      app.unmount();
    }
  });

  test('a reload mid-answer resumes it by x-resumable-stream-id, exactly once', async () => {
    const session = await newSession();
    const storage = pageStorage();
    const first = await mountApp({ transport: transportFor(session, storage) });
    ask(first, 'Resume me, assistant-ui');
    await waitFor('text mid-answer', () => answering(first));
    const streamId = storage.getStreamId();
    assert.equal(streamId, lastAnswer(first).id, 'the stream id is the answer id');
    first.unmount();

    // The reloaded page: the finished turns, then the runtime resumes the
    // stream it finds in storage by itself.
    const listed = await (await fetch(`${API}/${session.id}/messages`, { headers: session.headers })).json();
    const reloaded = pageStorage(storage.kept);
    const second = await mountApp({ messages: listed, transport: transportFor(session, reloaded) });
    try {
      await waitFor('the resumed answer to finish', () => lastAnswer(second) && settled(second), 30_000);
      const answers = assistantsOf(second);
      assert.equal(answers.length, 1, 'one answer, not a copy beside a partial one');
      const stored = await storedAnswer(session, answers[0].id);
      assert.equal(stored.end, 'done');
      assert.equal(partsText(answers[0], 'text'), stored.text, 'every chunk once, in order');
      assert.equal(reloaded.getStreamId(), null, 'the finished stream is forgotten');
    } finally {
      second.unmount();
    }
  });

  test('the stop endpoint ends the answer; the stored events end in cancelled', async () => {
    const session = await newSession();
    const app = await mountApp({ transport: transportFor(session, pageStorage()) });
    try {
      ask(app, 'Stop me, assistant-ui');
      await waitFor('text mid-answer', () => answering(app));
      await stopAnswer(session);
      await waitFor('the stopped answer to settle', () => settled(app));
      const answer = lastAnswer(app);
      const stored = await storedAnswer(session, answer.id);
      assert.equal(stored.end, 'cancelled');
      assert.equal(partsText(answer, 'text'), stored.text, 'what was stored before the stop, once');
      assert.notEqual(answer.status.type, 'running');
    } finally {
      app.unmount();
    }
  });

  test('reload() of an answer regenerates it as a new version', async () => {
    const session = await newSession();
    const app = await mountApp({ transport: transportFor(session, pageStorage()) });
    try {
      ask(app, 'Answer me twice, assistant-ui');
      await waitFor('the first answer', () => lastAnswer(app) && settled(app), 30_000);
      const firstId = lastAnswer(app).id;
      app.thread().getMessageById(firstId).reload();
      await waitFor('the second version', () => lastAnswer(app)?.id !== firstId && settled(app), 30_000);
      assert.equal(assistantsOf(app).length, 1, 'the new version replaces the old one in the thread');
      const second = lastAnswer(app);
      const stored = await storedAnswer(session, second.id);
      assert.equal(stored.end, 'done');
      assert.equal(partsText(second, 'text'), stored.text);
      // The question's turn now carries the first version beside the second.
      const versions = await waitFor('the turn with both versions', async () => {
        const listed = await (await fetch(`${API}/${session.id}/messages`, { headers: session.headers })).json();
        const answer = listed.find((m) => m.role === 'assistant' && m.id === second.id);
        return answer?.metadata?.versions;
      });
      assert.deepEqual(
        versions.map((v) => v.messageId),
        [firstId],
      );
    } finally {
      app.unmount();
    }
  });
});
