import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChatConnection, type ConnectionStatus } from './connection';
import { CloseCode } from './protocol';
import type { ServerFrame } from './types';

/** A stand-in socket that records its URL and lets the test drive events. */
class FakeSocket {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: string[] = [];
  onopen: (() => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: (() => void) | null = null;
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }
  send(data: string) {
    this.sent.push(data);
  }
  close() {
    this.readyState = 3;
  }
  open(node = 'gw-1', lastSeq = 0) {
    this.readyState = 1;
    this.onopen?.();
    this.receive({ type: 'ready', session_id: 's', node, last_seq: lastSeq });
  }
  receive(frame: object) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code: number, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const last = () => FakeSocket.all[FakeSocket.all.length - 1];
const afterSeqOf = (s: FakeSocket) => new URL(s.url).searchParams.get('after_seq');

function connect(seq: { value: number }) {
  const statuses: ConnectionStatus[] = [];
  const frames: ServerFrame[] = [];
  const conn = new ChatConnection({
    sessionId: 's',
    token: 't',
    base: 'ws://test',
    afterSeq: () => seq.value,
    onFrame: (f) => {
      frames.push(f);
      if ('seq' in f && typeof f.seq === 'number' && f.type !== 'accepted') seq.value = Math.max(seq.value, f.seq);
    },
    onStatus: (s) => statuses.push(s),
    backoff: { baseMs: 1000, maxMs: 8000, factor: 2 },
    WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
  });
  conn.start();
  return { conn, statuses, frames };
}

describe('connection', () => {
  beforeEach(() => {
    FakeSocket.all = [];
    vi.useFakeTimers();
  });
  afterEach(() => vi.useRealTimers());

  it('resumes after the highest seq seen, with backoff', () => {
    const seq = { value: 0 };
    const { conn, statuses } = connect(seq);
    // The token is never in the URL: it is the socket's first frame.
    expect(last().url).toBe('ws://test/ws/chat?session=s&after_seq=0');
    last().open();
    expect(JSON.parse(last().sent[0])).toEqual({ type: 'auth', token: 't' });
    expect(conn.isReady).toBe(true);
    last().receive({ type: 'user_message', message_id: 'm', content: 'q', seq: 41 });
    last().receive({ type: 'chunk', message_id: 'm', attempt: 1, index: 0, text: 'x', seq: 42 });
    last().drop(1006);
    expect(statuses.at(-1)?.kind).toBe('reconnecting');
    expect(FakeSocket.all).toHaveLength(1);
    vi.advanceTimersByTime(1000);
    expect(FakeSocket.all).toHaveLength(2);
    expect(afterSeqOf(last())).toBe('42');
    // Still failing: the wait grows.
    last().drop(1006);
    vi.advanceTimersByTime(999);
    expect(FakeSocket.all).toHaveLength(2);
    vi.advanceTimersByTime(1001);
    expect(FakeSocket.all).toHaveLength(3);
    last().open('gw-2');
    expect(statuses.at(-1)).toEqual({ kind: 'connected', node: 'gw-2' });
    conn.stop();
  });

  it('reconnects at once on 1012', () => {
    const seq = { value: 5 };
    const { conn } = connect(seq);
    last().open();
    last().drop(CloseCode.SERVICE_RESTART, 'restart');
    expect(FakeSocket.all).toHaveLength(2);
    expect(afterSeqOf(last())).toBe('5');
    conn.stop();
  });

  it('stops on 1008 and reports the session invalid', () => {
    const { statuses } = connect({ value: 0 });
    last().drop(CloseCode.POLICY_VIOLATION, 'bad token');
    expect(statuses.at(-1)).toEqual({ kind: 'invalid', reason: 'bad token' });
    vi.advanceTimersByTime(60_000);
    expect(FakeSocket.all).toHaveLength(1);
  });

  it('sends only while attached, and pings', () => {
    const { conn } = connect({ value: 0 });
    expect(conn.send({ type: 'ping' })).toBe(false);
    last().open();
    expect(conn.send({ type: 'cancel', message_id: 'm' })).toBe(true);
    vi.advanceTimersByTime(15_000);
    expect(last().sent.map((s) => JSON.parse(s).type)).toEqual(['auth', 'cancel', 'ping']);
    conn.stop();
  });

  it('takes a silent socket as dead', () => {
    const { conn } = connect({ value: 0 });
    last().open();
    vi.advanceTimersByTime(61_000);
    expect(FakeSocket.all.length).toBeGreaterThan(1);
    conn.stop();
  });

  it('jwt mode: refreshes an expiring token in place and reconnects with the new one', async () => {
    const lists: unknown[] = [];
    const frames: ServerFrame[] = [];
    const conn = new ChatConnection({
      sessionId: 's',
      token: 'old-jwt',
      base: 'ws://test',
      afterSeq: () => 0,
      onFrame: (f) => frames.push(f),
      onStatus: () => undefined,
      refreshToken: async () => 'new-jwt',
      onSessionList: (f) => lists.push(f),
      WebSocketImpl: FakeSocket as unknown as typeof WebSocket,
    });
    conn.start();
    last().open();
    last().receive({ type: 'token_expiring', in_ms: 30_000 });
    await vi.waitFor(() => expect(last().sent).toHaveLength(2));
    expect(JSON.parse(last().sent[1])).toEqual({ type: 'refresh', token: 'new-jwt' });
    // The live session list goes to its own callback, not to the conversation.
    const change = { type: 'session_list', change: 'renamed', session_id: 'x', session: { id: 'x', title: 'T', created: 1, updated: 2 } };
    last().receive(change);
    expect(lists).toEqual([change]);
    expect(frames.map((f) => f.type)).toEqual(['ready']);
    // A later socket authenticates with the refreshed token.
    last().drop(1006);
    vi.advanceTimersByTime(60_000);
    last().open();
    expect(JSON.parse(last().sent[0])).toEqual({ type: 'auth', token: 'new-jwt' });
    conn.stop();
  });
});
