import { describe, expect, it } from 'vitest';
import { inFlight, initialState, isReplaying, reduce, sendable, type ChatAction, type ChatState } from './state';
import type { ServerFrame } from './types';

const A = '11111111-1111-4111-8111-111111111111';
const B = '22222222-2222-4222-8222-222222222222';
const C = '33333333-3333-4333-8333-333333333333';

const run = (frames: (ServerFrame | ChatAction)[], from: ChatState = initialState): ChatState =>
  frames.reduce<ChatState>(
    (s, f) => reduce(s, 'kind' in f || !('type' in f) || isAction(f) ? (f as ChatAction) : { type: 'frame', frame: f as ServerFrame }),
    from,
  );
function isAction(f: ServerFrame | ChatAction): f is ChatAction {
  return ['ask', 'sent', 'stop_requested', 'remove', 'connection_lost', 'dismiss_notice'].includes(f.type) || (f.type === 'history' && 'lastSeq' in f);
}

const user = (id: string, seq: number, content = 'q'): ServerFrame => ({ type: 'user_message', message_id: id, content, seq });
const chunk = (id: string, seq: number, index: number, text: string, attempt = 1): ServerFrame => ({
  type: 'chunk', message_id: id, attempt, index, text, seq,
});
const done = (id: string, seq: number, attempt = 1): ServerFrame => ({ type: 'done', message_id: id, attempt, finish_reason: 'stop', seq });

describe('merging by seq', () => {
  it('builds a turn from its events', () => {
    const s = run([user(A, 1, 'hi'), chunk(A, 2, 0, 'Hel'), chunk(A, 3, 1, 'lo'), done(A, 4)]);
    expect(s.lastSeq).toBe(4);
    expect(s.turns).toHaveLength(1);
    expect(s.turns[0]).toMatchObject({ user: 'hi', answer: 'Hello', status: 'done', userSeq: 1 });
  });

  it('drops duplicates a replay delivers again', () => {
    const live = [user(A, 1), chunk(A, 2, 0, 'a'), chunk(A, 3, 1, 'b')];
    // After a reconnect the gateway replays from after_seq; an overlap must not double the text.
    const s = run([...live, ...live, chunk(A, 4, 2, 'c'), chunk(A, 3, 1, 'b'), done(A, 5), done(A, 5)]);
    expect(s.turns[0].answer).toBe('abc');
    expect(s.turns[0].status).toBe('done');
    expect(s.lastSeq).toBe(5);
  });

  it('returns the same state object for a duplicate', () => {
    const s = run([user(A, 1), chunk(A, 2, 0, 'a')]);
    expect(reduce(s, { type: 'frame', frame: chunk(A, 2, 0, 'a') })).toBe(s);
    expect(reduce(s, { type: 'frame', frame: user(A, 1) })).toBe(s);
  });

  it('does not take the seq of `accepted` as a stream position', () => {
    let s = run([{ type: 'ask', messageId: A, content: 'q' }, { type: 'sent', messageId: A }]);
    s = reduce(s, { type: 'frame', frame: { type: 'accepted', message_id: A, seq: 7 } });
    expect(s.lastSeq).toBe(0);
    expect(s.turns[0]).toMatchObject({ status: 'queued', userSeq: 7 });
    // The echo with that seq must still be applied.
    s = reduce(s, { type: 'frame', frame: user(A, 7) });
    expect(s.lastSeq).toBe(7);
  });

  it('keys turns by message_id and interleaves two answers', () => {
    const s = run([user(A, 1), user(B, 2), chunk(A, 3, 0, 'a1'), chunk(B, 4, 0, 'b1'), chunk(A, 5, 1, 'a2'), done(B, 6), done(A, 7)]);
    expect(s.turns.map((t) => [t.messageId, t.answer])).toEqual([
      [A, 'a1a2'],
      [B, 'b1'],
    ]);
  });

  it('shows another tab’s question from its echo, in seq order', () => {
    let s = run([{ type: 'ask', messageId: A, content: 'mine' }, { type: 'sent', messageId: A }]);
    s = run([user(B, 3, 'theirs'), user(A, 4, 'mine')], s);
    expect(s.turns.map((t) => t.user)).toEqual(['theirs', 'mine']);
  });

  it('ignores late chunks after the end', () => {
    const s = run([user(A, 1), chunk(A, 2, 0, 'a'), done(A, 3), chunk(A, 4, 1, 'zzz')]);
    expect(s.turns[0].answer).toBe('a');
  });
});

describe('restart', () => {
  it('replaces the partial answer with the new attempt', () => {
    const s = run([
      user(A, 1),
      chunk(A, 2, 0, 'first '),
      chunk(A, 3, 1, 'try'),
      { type: 'restart', message_id: A, attempt: 2, seq: 4 },
      chunk(A, 5, 0, 'second ', 2),
      chunk(A, 6, 1, 'try', 2),
      done(A, 7, 2),
    ]);
    expect(s.turns[0]).toMatchObject({ answer: 'second try', attempt: 2, restarts: 1, status: 'done' });
  });

  it('drops chunks of an older attempt that arrive after the restart', () => {
    const s = run([user(A, 1), chunk(A, 2, 0, 'old'), { type: 'restart', message_id: A, attempt: 2, seq: 3 }, chunk(A, 4, 1, 'stale', 1), chunk(A, 5, 0, 'new', 2)]);
    expect(s.turns[0].answer).toBe('new');
  });

  it('a chunk of a higher attempt without a restart event still starts over', () => {
    const s = run([user(A, 1), chunk(A, 2, 0, 'old'), chunk(A, 3, 0, 'new', 2)]);
    expect(s.turns[0]).toMatchObject({ answer: 'new', attempt: 2 });
  });
});

describe('cancel', () => {
  it('marks the turn stopped and keeps the text so far', () => {
    let s = run([user(A, 1), chunk(A, 2, 0, 'partial')]);
    s = reduce(s, { type: 'stop_requested', messageId: A });
    expect(s.turns[0].stopping).toBe(true);
    s = reduce(s, { type: 'frame', frame: { type: 'cancelled', message_id: A, seq: 3 } });
    expect(s.turns[0]).toMatchObject({ status: 'cancelled', answer: 'partial', stopping: false });
    expect(inFlight(s)).toBe(0);
  });

  it('a second cancelled or a done after it changes nothing', () => {
    const s = run([user(A, 1), { type: 'cancelled', message_id: A, seq: 2 }, done(A, 3), { type: 'cancelled', message_id: A, seq: 4 }]);
    expect(s.turns[0].status).toBe('cancelled');
  });

  it('a refused cancel clears the stopping mark', () => {
    let s = run([user(A, 1), chunk(A, 2, 0, 'x'), { type: 'stop_requested', messageId: A }]);
    s = reduce(s, { type: 'frame', frame: { type: 'error', message_id: A, code: 'not_found', message: 'unknown' } });
    expect(s.turns[0]).toMatchObject({ stopping: false, status: 'streaming' });
  });
});

describe('errors', () => {
  it('a stored error event fails its turn', () => {
    const s = run([user(A, 1), chunk(A, 2, 0, 'x'), { type: 'error', message_id: A, code: 'retries_exhausted', message: 'gave up', seq: 3 }]);
    expect(s.turns[0]).toMatchObject({ status: 'failed', refused: false, error: { code: 'retries_exhausted' } });
    expect(s.lastSeq).toBe(3);
  });

  it('a refused question (no seq) fails the local turn and does not move lastSeq', () => {
    let s = run([user(B, 5), { type: 'ask', messageId: A, content: 'q' }, { type: 'sent', messageId: A }]);
    s = reduce(s, { type: 'frame', frame: { type: 'error', message_id: A, code: 'rate_limited', message: 'slow down' } });
    expect(s.turns.find((t) => t.messageId === A)).toMatchObject({ status: 'failed', refused: true, error: { code: 'rate_limited' } });
    expect(s.lastSeq).toBe(5);
  });

  it('an error without a message becomes a notice', () => {
    const s = run([{ type: 'error', code: 'bad_request', message: 'nope' }]);
    expect(s.notice).toEqual({ code: 'bad_request', message: 'nope' });
    expect(reduce(s, { type: 'dismiss_notice' }).notice).toBeNull();
  });
});

describe('history after replay_expired', () => {
  it('rebuilds finished turns, keeps the one in flight, and continues after last_seq', () => {
    let s = run([user(C, 90, 'in flight'), chunk(C, 91, 0, 'par')]);
    s = reduce(s, { type: 'frame', frame: { type: 'error', code: 'replay_expired', message: 'too old' } });
    expect(s.awaitingHistory).toBe(true);
    expect(isReplaying(s)).toBe(true);
    s = reduce(s, {
      type: 'frame',
      frame: {
        type: 'history',
        last_seq: 120,
        turns: [
          { message_id: A, user: 'one', assistant: 'answer one', status: 'done', created_at: 1, user_seq: 10 },
          { message_id: B, user: 'two', assistant: 'half', status: 'cancelled', created_at: 2, user_seq: 20 },
        ],
      },
    });
    expect(s.awaitingHistory).toBe(false);
    expect(s.lastSeq).toBe(120);
    expect(s.turns.map((t) => [t.messageId, t.status])).toEqual([
      [A, 'done'],
      [B, 'cancelled'],
      [C, 'streaming'],
    ]);
    // Events up to last_seq are covered by the history; later ones apply.
    s = run([chunk(C, 110, 1, 'dup'), chunk(C, 121, 1, 'tial'), done(C, 122)], s);
    expect(s.turns[2]).toMatchObject({ answer: 'partial', status: 'done' });
  });

  it('a history turn replaces the streamed version of the same turn', () => {
    let s = run([user(A, 1), chunk(A, 2, 0, 'x')]);
    s = reduce(s, { type: 'history', lastSeq: 9, turns: [{ message_id: A, user: 'q', assistant: 'full answer', status: 'done', created_at: 1 }] });
    expect(s.turns).toHaveLength(1);
    expect(s.turns[0]).toMatchObject({ answer: 'full answer', status: 'done' });
  });
});

describe('sending', () => {
  it('holds questions beyond the in-flight limit until a slot frees', () => {
    let s = run([
      { type: 'ask', messageId: A, content: 'a' },
      { type: 'ask', messageId: B, content: 'b' },
      { type: 'ask', messageId: C, content: 'c' },
    ]);
    expect(sendable(s).map((t) => t.messageId)).toEqual([A, B]);
    s = run([{ type: 'sent', messageId: A }, { type: 'sent', messageId: B }], s);
    expect(sendable(s)).toEqual([]);
    s = run([user(A, 1), user(B, 2), done(A, 3)], s);
    expect(sendable(s).map((t) => t.messageId)).toEqual([C]);
  });

  it('questions not yet confirmed are sent again after a reconnect (same message_id)', () => {
    let s = run([{ type: 'ask', messageId: A, content: 'a' }, { type: 'sent', messageId: A }]);
    s = reduce(s, { type: 'connection_lost' });
    expect(s.turns[0].status).toBe('local');
    expect(sendable(s).map((t) => t.messageId)).toEqual([A]);
  });

  it('is replaying until the seq announced by ready is reached', () => {
    let s = reduce(initialState, { type: 'frame', frame: { type: 'ready', session_id: 's', node: 'gw-1', last_seq: 3 } });
    expect(isReplaying(s)).toBe(true);
    s = run([user(A, 1), chunk(A, 3, 0, 'x')], s);
    expect(isReplaying(s)).toBe(false);
  });
});

describe('thinking (reasoning events)', () => {
  const thought = (id: string, seq: number, index: number, text: string, attempt = 1, atMs?: number): ServerFrame => ({
    type: 'reasoning',
    message_id: id,
    attempt,
    index,
    text,
    seq,
    ...(atMs === undefined ? {} : { published_at_us: atMs * 1000 }),
  });

  it('keeps the reasoning apart from the answer, in its own index sequence', () => {
    const s = run([
      user(A, 1),
      thought(A, 2, 0, 'Let me ', 1, 10_000),
      thought(A, 3, 1, 'think.', 1, 13_200),
      chunk(A, 4, 0, 'Hel'),
      chunk(A, 5, 1, 'lo'),
      done(A, 6),
    ]);
    expect(s.turns[0]).toMatchObject({ answer: 'Hello', status: 'done' });
    expect(s.turns[0].thinking).toEqual({ text: 'Let me think.', nextIndex: 2, startedAtMs: 10_000, lastAtMs: 13_200 });
  });

  it('a thinking turn is streaming before its first chunk', () => {
    const s = run([user(A, 1), thought(A, 2, 0, 'hmm')]);
    expect(s.turns[0]).toMatchObject({ status: 'streaming', answer: '' });
    expect(inFlight(s)).toBe(1);
  });

  it('drops reasoning a replay delivers again, by seq and by index', () => {
    const live = [user(A, 1), thought(A, 2, 0, 'a'), thought(A, 3, 1, 'b')];
    const s = run([...live, ...live, thought(A, 4, 2, 'c'), { ...thought(A, 9, 1, 'b') }]);
    expect(s.turns[0].thinking?.text).toBe('abc');
    expect(s.lastSeq).toBe(9);
  });

  it('a restart resets the reasoning with the answer; older attempts are ignored', () => {
    const s = run([
      user(A, 1),
      thought(A, 2, 0, 'first thought'),
      chunk(A, 3, 0, 'first answer'),
      { type: 'restart', message_id: A, attempt: 2, seq: 4 },
      thought(A, 5, 1, 'stale', 1),
    ]);
    expect(s.turns[0]).toMatchObject({ answer: '', attempt: 2, thinking: null, status: 'queued' });
    const t = run([thought(A, 6, 0, 'second thought', 2), chunk(A, 7, 0, 'second answer', 2)], s);
    expect(t.turns[0]).toMatchObject({ answer: 'second answer', thinking: { text: 'second thought' } });
  });

  it('a chunk or reasoning of a newer attempt without a restart event starts both over', () => {
    const s = run([user(A, 1), thought(A, 2, 0, 'old'), chunk(A, 3, 0, 'old'), thought(A, 4, 0, 'new', 2)]);
    expect(s.turns[0]).toMatchObject({ answer: '', attempt: 2, thinking: { text: 'new' } });
    const t = run([user(B, 10), thought(B, 11, 0, 'old'), chunk(B, 12, 0, 'new', 2)]);
    expect(t.turns.find((x) => x.messageId === B)).toMatchObject({ answer: 'new', thinking: null });
  });

  it('times the thinking by arrival when the event does not say when it was published', () => {
    let s = run([user(A, 1)]);
    s = reduce(s, { type: 'frame', frame: thought(A, 2, 0, 'a'), receivedAtMs: 5_000 });
    s = reduce(s, { type: 'frame', frame: thought(A, 3, 1, 'b'), receivedAtMs: 7_500 });
    expect(s.turns[0].thinking).toMatchObject({ startedAtMs: 5_000, lastAtMs: 7_500 });
  });

  it('reasoning after the end changes nothing', () => {
    const s = run([user(A, 1), chunk(A, 2, 0, 'a'), done(A, 3), thought(A, 4, 0, 'late')]);
    expect(s.turns[0].thinking).toBeNull();
  });
});
