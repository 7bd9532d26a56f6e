// The versions of a question. A regeneration is a turn of its own (its own
// message id) whose `replaces` names the turn it replaces; the versions of one
// question are such a chain. The conversation shows each chain in one place,
// at its first version's position, with "‹ 1 / 2 ›" between the answers.
// Pure functions over the reducer's turns (state.ts), unit-tested in
// versions.test.ts.

import { isFinal, type Turn } from './state';

/** One question of the conversation and its answers, oldest version first. */
export interface Slot {
  /** The first version's message id: stable while versions are added. */
  key: string;
  versions: Turn[];
}

/** Groups the turns into slots, in the order of their first versions. */
export function slots(turns: Turn[]): Slot[] {
  const byId = new Map(turns.map((t) => [t.messageId, t]));
  const rootOf = (turn: Turn): string => {
    let current = turn;
    const seen = new Set<string>();
    // A replaced turn this client does not hold (e.g. older than the history
    // it was sent) leaves the chain's start here.
    while (current.replaces && byId.has(current.replaces) && !seen.has(current.messageId)) {
      seen.add(current.messageId);
      current = byId.get(current.replaces)!;
    }
    return current.messageId;
  };
  const out: Slot[] = [];
  const index = new Map<string, Slot>();
  for (const turn of turns) {
    const key = rootOf(turn);
    const slot = index.get(key);
    if (slot) {
      slot.versions.push(turn);
    } else {
      const fresh = { key, versions: [turn] };
      index.set(key, fresh);
      out.push(fresh);
    }
  }
  return out;
}

/** The version a slot shows: the chosen one if it still exists, else the latest. */
export function shownVersion(slot: Slot, chosen: string | undefined): number {
  const i = chosen === undefined ? -1 : slot.versions.findIndex((t) => t.messageId === chosen);
  return i >= 0 ? i : slot.versions.length - 1;
}

/**
 * The turn a Regenerate of this slot replaces, or null when it cannot be
 * regenerated: only the conversation's last question, once its latest
 * answer has ended and the server holds it (the gateway refuses the rest).
 */
export function regenerable(all: Slot[], slot: Slot): Turn | null {
  if (all[all.length - 1] !== slot) return null;
  const latest = slot.versions[slot.versions.length - 1];
  if (!isFinal(latest) || latest.refused || latest.userSeq === null) return null;
  return latest;
}
