// Glue between the pure reducer and a live connection: holds the state of one
// conversation, applies frames synchronously (so the seq a reconnect resumes
// after is always exact), and sends the questions waiting for a free slot.

import { ChatConnection, type ConnectionOptions, type ConnectionStatus } from './connection';
import { newMessageId } from './ids';
import { initialState, reduce, sendable, type ChatAction, type ChatState } from './state';

export class ConversationStore {
  private state: ChatState = initialState;
  private status: ConnectionStatus = { kind: 'connecting', attempt: 0 };
  private listeners = new Set<() => void>();
  private connection: ChatConnection | null = null;
  private pumping = false;
  /** Whether this store was ever attached: a later `connecting` is a reconnect. */
  everConnected = false;

  constructor(
    private readonly sessionId: string,
    private readonly token: string,
    private readonly extra: Partial<ConnectionOptions> = {},
  ) {}

  getState = (): ChatState => this.state;
  getStatus = (): ConnectionStatus => this.status;

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  start(): void {
    if (this.connection) return;
    this.connection = new ChatConnection({
      sessionId: this.sessionId,
      token: this.token,
      afterSeq: () => this.state.lastSeq,
      onFrame: (frame) => this.dispatch({ type: 'frame', frame, receivedAtMs: Date.now() }),
      onDisconnect: () => this.dispatch({ type: 'connection_lost' }),
      onStatus: (status) => {
        if (status.kind === 'connected') this.everConnected = true;
        this.status = status;
        if (status.kind === 'connected') this.pump();
        this.emit();
      },
      ...this.extra,
    });
    this.connection.start();
  }

  stop(): void {
    this.connection?.stop();
    this.connection = null;
  }

  retryNow(): void {
    this.connection?.retryNow();
  }

  dispatch(action: ChatAction): void {
    const next = reduce(this.state, action);
    if (next === this.state) return;
    this.state = next;
    this.pump();
    this.emit();
  }

  /** Asks a question; it is sent as soon as the connection and the in-flight limit allow. */
  ask(content: string): string {
    const messageId = newMessageId();
    this.dispatch({ type: 'ask', messageId, content });
    return messageId;
  }

  /**
   * Asks for a new answer to the question of `replaces` (the conversation's
   * last, finished turn): a new message sent as a `regenerate` frame, shown
   * as the next version of that question (versions.ts).
   */
  regenerate(replaces: string): string | null {
    const turn = this.state.turns.find((t) => t.messageId === replaces);
    if (!turn) return null;
    const messageId = newMessageId();
    this.dispatch({ type: 'ask', messageId, content: turn.user, replaces });
    return messageId;
  }

  stopAnswer(messageId: string): void {
    const turn = this.state.turns.find((t) => t.messageId === messageId);
    if (!turn) return;
    if (turn.status === 'local') {
      // Never left this tab: forget it.
      this.dispatch({ type: 'remove', messageId });
      return;
    }
    this.dispatch({ type: 'stop_requested', messageId });
    this.connection?.send({ type: 'cancel', message_id: messageId });
  }

  /** Asks a failed question again. A question the server never stored goes again under its own id. */
  retry(messageId: string): void {
    const turn = this.state.turns.find((t) => t.messageId === messageId);
    if (!turn) return;
    if (turn.refused) this.dispatch({ type: 'remove', messageId });
    if (turn.replaces) {
      // A failed regeneration is regenerated again: in place of the version
      // the server never stored, or after the one it stored (now the last).
      this.regenerate(turn.refused ? turn.replaces : turn.messageId);
      return;
    }
    // A stored question keeps its id in the server's memory (a resend would
    // be a no-op), so a retry is a new question with the same words.
    this.ask(turn.user);
  }

  private pump(): void {
    if (this.pumping || !this.connection?.isReady) return;
    this.pumping = true;
    try {
      for (const turn of sendable(this.state)) {
        const frame = turn.replaces
          ? ({ type: 'regenerate', message_id: turn.messageId, replaces: turn.replaces } as const)
          : ({ type: 'chat', message_id: turn.messageId, content: turn.user } as const);
        if (!this.connection.send(frame)) break;
        this.state = reduce(this.state, { type: 'sent', messageId: turn.messageId });
      }
    } finally {
      this.pumping = false;
    }
  }

  private emit(): void {
    for (const l of this.listeners) l();
  }
}
