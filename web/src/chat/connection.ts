// One session's WebSocket to the gateway, kept alive across drops: it
// reconnects with backoff and resumes after the highest seq the state has
// applied, so the gateway replays exactly what was missed.

import { backoffDelay, DEFAULT_BACKOFF, type BackoffPolicy } from './backoff';
import { CloseCode } from './protocol';
import { parseServerFrame, type ClientFrame, type ServerFrame, type SessionListFrame } from './types';

export type ConnectionStatus =
  | { kind: 'connecting'; attempt: number }
  | { kind: 'connected'; node: string }
  | { kind: 'reconnecting'; attempt: number; retryAt: number; reason: string }
  /** The gateway refused the session (close 1008 or unauthorized/not_found): reconnecting cannot help. */
  | { kind: 'invalid'; reason: string }
  | { kind: 'stopped' };

export interface ConnectionOptions {
  sessionId: string;
  /** The session's token, or in `GATEWAY_AUTH=jwt` mode the user's JWT. */
  token: string;
  /**
   * `jwt` mode: asked for a new token when the gateway says the current one
   * expires (`token_expiring`); the socket is refreshed in place. `null`: none
   * (the socket closes at expiry).
   */
  refreshToken?: () => Promise<string | null>;
  /** `jwt` mode: the user's session list changed (any device). */
  onSessionList?: (frame: SessionListFrame) => void;
  /** The highest seq applied so far, read at every (re)connect. */
  afterSeq: () => number;
  onFrame: (frame: ServerFrame) => void;
  onStatus: (status: ConnectionStatus) => void;
  /** Called when a socket is gone, before any retry is scheduled. */
  onDisconnect?: () => void;
  /** Base URL of the WebSocket endpoint, e.g. `ws://127.0.0.1:8080`; defaults to this page's origin. */
  base?: string;
  backoff?: BackoffPolicy;
  /** Ping this often; a socket silent for three times as long is taken as dead. */
  pingEveryMs?: number;
  WebSocketImpl?: typeof WebSocket;
}

/** A close this client makes itself when the socket went silent (4000-4999: private use). */
const CLOSE_SILENT = 4000;

/** The socket's URL: the session and where to resume, never the token (URLs are logged). */
export function chatUrl(base: string, sessionId: string, afterSeq: number): string {
  const q = new URLSearchParams({ session: sessionId, after_seq: String(afterSeq) });
  return `${base}/ws/chat?${q.toString()}`;
}

/** The first frame of every socket: the session's token. */
export function authFrame(token: string): string {
  return JSON.stringify({ type: 'auth', token });
}

export function defaultWsBase(loc: Location = window.location): string {
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}`;
}

export class ChatConnection {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private restartsInARow = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private lastHeard = 0;
  private ready = false;
  private refusal: string | null = null;
  private stopped = false;
  private readonly opts: Required<Omit<ConnectionOptions, 'onDisconnect' | 'refreshToken' | 'onSessionList'>> &
    Pick<ConnectionOptions, 'onDisconnect' | 'refreshToken' | 'onSessionList'>;

  constructor(opts: ConnectionOptions) {
    this.opts = {
      ...opts,
      base: opts.base ?? defaultWsBase(),
      backoff: opts.backoff ?? DEFAULT_BACKOFF,
      pingEveryMs: opts.pingEveryMs ?? 15_000,
      WebSocketImpl: opts.WebSocketImpl ?? WebSocket,
    };
  }

  start(): void {
    this.stopped = false;
    this.open();
  }

  stop(): void {
    this.stopped = true;
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.onerror = null;
      ws.close(1000, 'bye');
    }
    this.opts.onStatus({ kind: 'stopped' });
  }

  /** Reconnect now (e.g. the browser came back online), skipping any pending wait. */
  retryNow(): void {
    if (this.stopped || this.ready) return;
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      this.open();
    }
  }

  /** Sends a frame if the session is attached; false otherwise (the caller keeps it for later). */
  send(frame: ClientFrame): boolean {
    if (!this.ready || !this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  get isReady(): boolean {
    return this.ready;
  }

  private open(): void {
    this.clearTimers();
    this.ready = false;
    this.refusal = null;
    this.opts.onStatus({ kind: 'connecting', attempt: this.attempt });
    const url = chatUrl(this.opts.base, this.opts.sessionId, this.opts.afterSeq());
    let ws: WebSocket;
    try {
      ws = new this.opts.WebSocketImpl(url);
    } catch (e) {
      this.scheduleRetry(`cannot connect: ${String(e)}`);
      return;
    }
    this.ws = ws;
    this.lastHeard = Date.now();
    ws.onopen = () => {
      if (ws === this.ws) ws.send(authFrame(this.opts.token));
    };
    ws.onmessage = (ev) => {
      this.lastHeard = Date.now();
      if (typeof ev.data !== 'string') return;
      const frame = parseServerFrame(ev.data);
      if (!frame) return;
      if (frame.type === 'ready') {
        this.ready = true;
        this.attempt = 0;
        this.opts.onStatus({ kind: 'connected', node: frame.node });
      } else if (frame.type === 'pong') {
        return;
      } else if (frame.type === 'session_list') {
        this.opts.onSessionList?.(frame);
        return;
      } else if (frame.type === 'token_expiring') {
        void this.refresh(ws);
        return;
      } else if (!this.ready && frame.type === 'error' && (frame.code === 'unauthorized' || frame.code === 'not_found')) {
        this.refusal = frame.message || frame.code;
      }
      this.opts.onFrame(frame);
    };
    ws.onclose = (ev) => this.closed(ws, ev.code, ev.reason);
    ws.onerror = () => {
      // A close event always follows; it decides what to do.
    };
    this.pingTimer = setInterval(() => this.keepAlive(ws), this.opts.pingEveryMs);
  }

  /** Asks the embedding app for a new token and hands it to the socket (and to later reconnects). */
  private async refresh(ws: WebSocket): Promise<void> {
    const token = await this.opts.refreshToken?.().catch(() => null);
    if (!token) return;
    this.opts.token = token;
    if (ws === this.ws && ws.readyState === 1) ws.send(JSON.stringify({ type: 'refresh', token }));
  }

  private keepAlive(ws: WebSocket): void {
    if (ws !== this.ws || ws.readyState !== 1) return;
    if (Date.now() - this.lastHeard > this.opts.pingEveryMs * 3) {
      // Nothing heard for a long time: the path is dead even if TCP has not noticed.
      ws.close(CLOSE_SILENT, 'silent');
      this.closed(ws, CLOSE_SILENT, 'no answer to pings');
      return;
    }
    ws.send(JSON.stringify({ type: 'ping' }));
  }

  private closed(ws: WebSocket, code: number, reason: string): void {
    if (ws !== this.ws) return;
    ws.onclose = null;
    ws.onmessage = null;
    this.ws = null;
    const wasReady = this.ready;
    this.ready = false;
    this.clearTimers();
    this.opts.onDisconnect?.();
    if (this.stopped) return;
    // The close codes and what a client does about each: docs/PROTOCOL.md, "Close codes".
    if (code === CloseCode.POLICY_VIOLATION || this.refusal) {
      this.opts.onStatus({ kind: 'invalid', reason: this.refusal ?? (reason || 'the session is not valid') });
      return;
    }
    if (code === CloseCode.SERVICE_RESTART && wasReady && this.restartsInARow < 3) {
      // The gateway is shutting down on purpose: go to another one at once.
      this.restartsInARow += 1;
      this.open();
      return;
    }
    if (wasReady) this.restartsInARow = 0;
    this.scheduleRetry(
      code === CloseCode.SERVICE_RESTART
        ? 'gateway restarting'
        : code === CloseCode.TOO_BIG
          ? 'frame too large'
          : 'connection lost',
    );
  }

  private scheduleRetry(reason: string): void {
    const delay = backoffDelay(this.attempt, this.opts.backoff);
    const attempt = this.attempt;
    this.attempt += 1;
    this.opts.onStatus({ kind: 'reconnecting', attempt, retryAt: Date.now() + delay, reason });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  private clearTimers(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.retryTimer = null;
    this.pingTimer = null;
  }
}
