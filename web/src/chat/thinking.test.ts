import { describe, expect, it } from 'vitest';
import { addReasoning, thoughtFor, type Thinking } from './thinking';
import type { ReasoningFrame } from './types';

const piece = (index: number, text: string, publishedMs?: number): ReasoningFrame => ({
  type: 'reasoning',
  message_id: 'm',
  attempt: 1,
  index,
  text,
  seq: index + 1,
  ...(publishedMs === undefined ? {} : { published_at_us: publishedMs * 1000 }),
});

describe('thinking', () => {
  it('appends pieces in index order and keeps the first and last time', () => {
    let t: Thinking | null = null;
    t = addReasoning(t, piece(0, 'a', 1_000), 0);
    t = addReasoning(t, piece(1, 'b', 2_000), 0);
    expect(addReasoning(t, piece(1, 'b', 2_000), 0)).toBe(t);
    expect(t).toEqual({ text: 'ab', nextIndex: 2, startedAtMs: 1_000, lastAtMs: 2_000 });
  });

  it('says how long the model thought', () => {
    const span = (ms: number): Thinking => ({ text: 'x', nextIndex: 1, startedAtMs: 1_000, lastAtMs: 1_000 + ms });
    expect(thoughtFor(span(0))).toBe('Thought for a moment');
    expect(thoughtFor(span(400))).toBe('Thought for a moment');
    expect(thoughtFor(span(2_600))).toBe('Thought for 3 s');
    expect(thoughtFor(span(65_000))).toBe('Thought for 1 min 5 s');
    expect(thoughtFor(span(120_000))).toBe('Thought for 2 min');
  });
});
