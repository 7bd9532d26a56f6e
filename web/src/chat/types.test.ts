import { describe, expect, it } from 'vitest';
import { CONTROL_FRAME_TYPES, EVENT_KINDS } from './protocol';
import { parseServerFrame } from './types';

describe('parseServerFrame', () => {
  it('knows every frame type the protocol names', () => {
    for (const type of [...EVENT_KINDS, ...CONTROL_FRAME_TYPES]) {
      expect(parseServerFrame(JSON.stringify({ type }))?.type).toBe(type);
    }
  });

  it('ignores frame types it does not know, and what is not a frame', () => {
    expect(parseServerFrame('{"type":"telemetry","seq":3}')).toBeNull();
    expect(parseServerFrame('{"seq":3}')).toBeNull();
    expect(parseServerFrame('[1]')).toBeNull();
    expect(parseServerFrame('not json')).toBeNull();
  });

  it('reads a known frame with fields it does not know', () => {
    const frame = parseServerFrame('{"type":"cancelled","message_id":"m","seq":7,"reason":"later"}');
    expect(frame).toMatchObject({ type: 'cancelled', message_id: 'm', seq: 7 });
  });
});
