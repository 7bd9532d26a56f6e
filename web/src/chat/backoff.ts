// How long to wait before the next reconnect attempt.

export interface BackoffPolicy {
  /** The ceiling of the first retry. */
  baseMs: number;
  /** No wait is ever longer than this. */
  maxMs: number;
  factor: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 300, maxMs: 10_000, factor: 2 };

/**
 * The delay before retry number `attempt` (0 = the first retry): exponential
 * growth capped at `maxMs`, with "equal jitter" — half of the ceiling fixed,
 * half random — so thousands of browsers dropped by the same gateway do not
 * come back in the same millisecond, yet none retries instantly in a loop.
 * The result lies in [ceiling / 2, ceiling].
 */
export function backoffDelay(attempt: number, policy: BackoffPolicy = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const n = Math.max(0, Math.floor(attempt));
  const ceiling = Math.min(policy.maxMs, policy.baseMs * Math.pow(policy.factor, n));
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(ceiling / 2 + (r * ceiling) / 2);
}
