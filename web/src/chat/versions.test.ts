import { describe, expect, it } from 'vitest';
import { initialState, reduce, sendable, type ChatAction, type ChatState } from './state';
import type { ServerFrame } from './types';
import { regenerable, shownVersion, slots } from './versions';

const Q = '11111111-1111-4111-8111-111111111111';
const R1 = '22222222-2222-4222-8222-222222222222';
const R2 = '33333333-3333-4333-8333-333333333333';
const P = '44444444-4444-4444-8444-444444444444';

const frame = (f: ServerFrame): ChatAction => ({ type: 'frame', frame: f });
const run = (actions: ChatAction[], from: ChatState = initialState): ChatState => actions.reduce(reduce, from);
const asked = (id: string, seq: number, replaces?: string, content = 'why?'): ChatAction =>
  frame({ type: 'user_message', message_id: id, content, seq, ...(replaces ? { replaces } : {}) });
const answered = (id: string, seq: number, text: string): ChatAction[] => [
  frame({ type: 'chunk', message_id: id, attempt: 1, index: 0, text, seq }),
  frame({ type: 'done', message_id: id, attempt: 1, finish_reason: 'stop', seq: seq + 1 }),
];

describe('versions of a question', () => {
  it('a user_message with replaces becomes the next version of that question', () => {
    const s = run([asked(Q, 1), ...answered(Q, 2, 'first'), asked(R1, 4, Q), ...answered(R1, 5, 'second')]);
    expect(s.turns.map((t) => [t.messageId, t.replaces])).toEqual([
      [Q, null],
      [R1, Q],
    ]);
    const all = slots(s.turns);
    expect(all).toHaveLength(1);
    expect(all[0].key).toBe(Q);
    expect(all[0].versions.map((t) => t.answer)).toEqual(['first', 'second']);
    expect(shownVersion(all[0], undefined)).toBe(1);
    expect(shownVersion(all[0], Q)).toBe(0);
    expect(shownVersion(all[0], 'gone')).toBe(1);
  });

  it('a chain of regenerations stays one slot, at the first version\'s place', () => {
    const s = run([
      asked(P, 1, undefined, 'earlier'),
      ...answered(P, 2, 'p'),
      asked(Q, 4),
      ...answered(Q, 5, 'a1'),
      asked(R1, 7, Q),
      ...answered(R1, 8, 'a2'),
      asked(R2, 10, R1),
      ...answered(R2, 11, 'a3'),
    ]);
    const all = slots(s.turns);
    expect(all.map((x) => x.key)).toEqual([P, Q]);
    expect(all[1].versions.map((t) => t.messageId)).toEqual([Q, R1, R2]);
    // Only the last question, with its latest version, can be regenerated.
    expect(regenerable(all, all[0])).toBeNull();
    expect(regenerable(all, all[1])?.messageId).toBe(R2);
  });

  it('the history frame carries replaces too', () => {
    const s = reduce(initialState, {
      type: 'history',
      lastSeq: 9,
      turns: [
        { message_id: Q, user: 'why?', assistant: 'a1', status: 'done', created_at: 1, user_seq: 1 },
        { message_id: R1, user: 'why?', assistant: 'a2', status: 'done', created_at: 2, user_seq: 5, replaces: Q },
      ],
    });
    const all = slots(s.turns);
    expect(all).toHaveLength(1);
    expect(all[0].versions.map((t) => t.answer)).toEqual(['a1', 'a2']);
  });

  it('a replaced turn this client does not hold starts the chain', () => {
    const s = run([asked(R1, 4, Q), ...answered(R1, 5, 'second')]);
    const all = slots(s.turns);
    expect(all).toHaveLength(1);
    expect(all[0].key).toBe(R1);
  });

  it('a regeneration asked here is a local version sent as a regenerate, and grouped at once', () => {
    let s = run([asked(Q, 1), ...answered(Q, 2, 'first')]);
    s = reduce(s, { type: 'ask', messageId: R1, content: 'why?', replaces: Q });
    expect(sendable(s).map((t) => [t.messageId, t.replaces])).toEqual([[R1, Q]]);
    const all = slots(s.turns);
    expect(all[0].versions.map((t) => t.status)).toEqual(['done', 'local']);
    // Not final yet: no second Regenerate until it has ended.
    expect(regenerable(all, all[0])).toBeNull();
    // The server's echo keeps it the same version.
    s = run([asked(R1, 4, Q), ...answered(R1, 5, 'second')], s);
    expect(slots(s.turns)[0].versions.map((t) => t.answer)).toEqual(['first', 'second']);
  });

  it('an answer still running, or a question the server never stored, is not regenerable', () => {
    const running = run([asked(Q, 1), frame({ type: 'chunk', message_id: Q, attempt: 1, index: 0, text: 'x', seq: 2 })]);
    let all = slots(running.turns);
    expect(regenerable(all, all[0])).toBeNull();
    const refused = run([
      { type: 'ask', messageId: Q, content: 'why?' },
      { type: 'sent', messageId: Q },
      frame({ type: 'error', message_id: Q, code: 'rate_limited', message: 'busy' }),
    ]);
    all = slots(refused.turns);
    expect(all[0].versions[0].status).toBe('failed');
    expect(regenerable(all, all[0])).toBeNull();
    const cancelled = run([asked(Q, 1), frame({ type: 'cancelled', message_id: Q, seq: 2 })]);
    all = slots(cancelled.turns);
    expect(regenerable(all, all[0])?.messageId).toBe(Q);
  });
});
