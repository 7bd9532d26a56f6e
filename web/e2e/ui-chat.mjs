// What the tests of the SSE endpoints (`/api/ui/chat`) share: where the
// stack is, sessions, the stored events to compare a client's text with,
// and the stop endpoint.
import assert from 'node:assert/strict';

export const BASE = process.env.CHAT_BASE_URL ?? 'http://127.0.0.1:8080';
export const API = `${BASE}/api/ui/chat`;

export async function waitFor(what, check, timeoutMs = 20_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function newSession() {
  const res = await fetch(`${BASE}/api/sessions`, { method: 'POST' });
  assert.equal(res.status, 201);
  const { session_id, token } = await res.json();
  return { id: session_id, token, headers: { Authorization: `Bearer ${token}` } };
}

/** The session's stored events (GET /api/events, every page). */
export async function storedEvents(session) {
  const events = [];
  let after = 0;
  for (;;) {
    const res = await fetch(`${BASE}/api/events?session=${session.id}&after_seq=${after}`, {
      headers: session.headers,
    });
    assert.equal(res.status, 200);
    const page = await res.json();
    events.push(...page.events);
    if (page.events.length < 1000) return events;
    after = page.last_seq;
  }
}

/** The stored answer of `messageId`: its last attempt's chunks in order, and how it ended. */
export async function storedAnswer(session, messageId) {
  const mine = (await storedEvents(session)).filter((e) => e.message_id === messageId);
  const terminal = mine.find((e) => ['done', 'cancelled', 'error'].includes(e.type));
  const attempt = Math.max(0, ...mine.filter((e) => e.attempt).map((e) => e.attempt));
  const text = mine
    .filter((e) => e.type === 'chunk' && e.attempt === attempt)
    .sort((a, b) => a.index - b.index)
    .map((e) => e.text)
    .join('');
  return { text, end: terminal?.type, attempt, events: mine };
}

export const textOf = (message) => message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');
export const reasoningOf = (message) =>
  message.parts.filter((p) => p.type === 'reasoning').map((p) => p.text).join('');

export async function stopAnswer(session) {
  const res = await fetch(`${API}/${session.id}/stop`, { method: 'POST', headers: session.headers });
  assert.equal(res.status, 202);
  return res.json();
}
