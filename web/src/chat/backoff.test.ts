import { describe, expect, it } from 'vitest';
import { backoffDelay, DEFAULT_BACKOFF } from './backoff';

const policy = { baseMs: 100, maxMs: 5_000, factor: 2 };

describe('backoff', () => {
  it('grows exponentially', () => {
    const top = (n: number) => backoffDelay(n, policy, () => 1);
    expect([0, 1, 2, 3, 4].map(top)).toEqual([100, 200, 400, 800, 1600]);
  });

  it('is capped', () => {
    expect(backoffDelay(20, policy, () => 1)).toBe(5_000);
    expect(backoffDelay(1_000, policy, () => 1)).toBe(5_000);
    expect(backoffDelay(20, DEFAULT_BACKOFF, () => 1)).toBe(DEFAULT_BACKOFF.maxMs);
  });

  it('jitters within [ceiling/2, ceiling]', () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(policy.maxMs, policy.baseMs * 2 ** attempt);
      expect(backoffDelay(attempt, policy, () => 0)).toBe(ceiling / 2);
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, policy);
        expect(d).toBeGreaterThanOrEqual(ceiling / 2);
        expect(d).toBeLessThanOrEqual(ceiling);
      }
    }
  });

  it('spreads clients out', () => {
    const delays = new Set(Array.from({ length: 100 }, () => backoffDelay(5, policy)));
    expect(delays.size).toBeGreaterThan(20);
  });

  it('survives odd input', () => {
    expect(backoffDelay(-3, policy, () => 1)).toBe(100);
    expect(backoffDelay(0, policy, () => 7)).toBe(100);
  });
});
