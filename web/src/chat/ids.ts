// Message ids are made by the client, so that sending the same question again
// after a reconnect is recognised by the server instead of answered twice.

/** A random UUIDv4. `crypto.randomUUID` exists only in secure contexts (https, localhost); plain http elsewhere falls back to getRandomValues. */
export function newMessageId(): string {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
