import { afterEach, describe, expect, it } from 'vitest';
import { newMessageId } from './ids';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('message ids', () => {
  const original = Object.getOwnPropertyDescriptor(crypto, 'randomUUID');
  afterEach(() => {
    if (original) Object.defineProperty(crypto, 'randomUUID', original);
    else delete (crypto as { randomUUID?: unknown }).randomUUID;
  });
  it('are UUIDv4', () => {
    expect(newMessageId()).toMatch(UUID_V4);
  });
  it('are UUIDv4 without randomUUID (plain http)', () => {
    Object.defineProperty(crypto, 'randomUUID', { value: undefined, configurable: true });
    const ids = new Set(Array.from({ length: 100 }, newMessageId));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(UUID_V4);
  });
});
