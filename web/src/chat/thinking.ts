// A reasoning model's thinking, as the client keeps it beside a turn's answer:
// built from `reasoning` events (docs/PROTOCOL.md), never part of the answer.
// Pure, like state.ts, which calls these for the `reasoning` frame.

import type { ReasoningFrame } from './types';

export interface Thinking {
  text: string;
  /** The reasoning index expected next within the turn's attempt. */
  nextIndex: number;
  /** When the first and the latest piece were published (ms since the epoch): the worker's
   * clock when the event says, else this client's arrival time, so a replay measures the same. */
  startedAtMs: number;
  lastAtMs: number;
}

/** Adds a reasoning event to what the turn's attempt has; a piece it already has is dropped. */
export function addReasoning(thinking: Thinking | null, frame: ReasoningFrame, arrivedAtMs: number): Thinking {
  if (thinking && frame.index < thinking.nextIndex) return thinking;
  const at = typeof frame.published_at_us === 'number' ? frame.published_at_us / 1000 : arrivedAtMs;
  return {
    text: (thinking?.text ?? '') + frame.text,
    nextIndex: frame.index + 1,
    startedAtMs: thinking?.startedAtMs ?? at,
    lastAtMs: Math.max(thinking?.lastAtMs ?? at, at),
  };
}

/** How long the model thought, from its first piece of reasoning to its last. */
export function thoughtForMs(thinking: Thinking): number {
  return Math.max(0, thinking.lastAtMs - thinking.startedAtMs);
}

/** "Thought for 3 s", "Thought for 1 min 5 s", "Thought for a moment". */
export function thoughtFor(thinking: Thinking): string {
  const seconds = Math.round(thoughtForMs(thinking) / 1000);
  if (seconds < 1) return 'Thought for a moment';
  if (seconds < 60) return `Thought for ${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  const rest = seconds % 60;
  return rest ? `Thought for ${minutes} min ${rest} s` : `Thought for ${minutes} min`;
}
