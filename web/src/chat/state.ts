// The conversation as the client knows it: a pure reducer that merges the
// gateway's frames by stream sequence. No DOM, no sockets, no React: every
// rule of "no gap, no duplicate, show only the last attempt" lives here and is
// unit-tested in state.test.ts.

import { addReasoning, type Thinking } from './thinking';
import type { ErrorCode, HistoryTurn, ReasoningFrame, ServerFrame } from './types';

/**
 * Where a turn stands.
 * - `local`: written here, not yet sent (no connection, or no free slot).
 * - `sent`: sent on a socket, the server has not confirmed it yet.
 * - `queued`: the server stored the question; no piece of the answer yet.
 * - `streaming`: pieces of the answer (or of the model's thinking) are arriving.
 * - `done` / `cancelled` / `failed`: final.
 */
export type TurnStatus = 'local' | 'sent' | 'queued' | 'streaming' | 'done' | 'cancelled' | 'failed';

export interface TurnError {
  code: ErrorCode;
  message: string;
}

export interface Turn {
  messageId: string;
  user: string;
  answer: string;
  status: TurnStatus;
  /** The attempt whose text `answer` holds; a restart starts a new one. */
  attempt: number;
  /** The chunk index expected next within `attempt`. */
  nextIndex: number;
  /** Seq of the question's `user_message` event, once known. */
  userSeq: number | null;
  error: TurnError | null;
  /** The server refused the question before storing it: it can be sent again as it is. */
  refused: boolean;
  /** How many times a worker restarted this answer. */
  restarts: number;
  /** A Stop was asked for and not yet confirmed. */
  stopping: boolean;
  finishReason: string | null;
  /** The model's reasoning in `attempt`, before its answer (null when it did not think). */
  thinking: Thinking | null;
  /** Set on a regeneration: the message whose answer this turn replaces (see versions.ts). */
  replaces: string | null;
}

export interface ChatState {
  /** The highest stream seq applied: the `after_seq` of the next reconnect. */
  lastSeq: number;
  /** The session's last seq as the gateway announced it in `ready`. */
  serverLastSeq: number;
  turns: Turn[];
  /** A session-level problem not tied to one turn. */
  notice: TurnError | null;
  /** `replay_expired` was seen: a `history` frame is on its way. */
  awaitingHistory: boolean;
}

export type ChatAction =
  /** `receivedAtMs`: when the frame arrived (times the model's thinking when the event does not say). */
  | { type: 'frame'; frame: ServerFrame; receivedAtMs?: number }
  /** A question to send; with `replaces`, a regeneration of that message's question. */
  | { type: 'ask'; messageId: string; content: string; replaces?: string }
  | { type: 'sent'; messageId: string }
  | { type: 'stop_requested'; messageId: string }
  | { type: 'remove'; messageId: string }
  /** The socket went away: questions not yet confirmed go back to `local` to be sent again (idempotent by message_id). */
  | { type: 'connection_lost' }
  | { type: 'history'; turns: HistoryTurn[]; lastSeq: number }
  | { type: 'dismiss_notice' };

export const initialState: ChatState = {
  lastSeq: 0,
  serverLastSeq: 0,
  turns: [],
  notice: null,
  awaitingHistory: false,
};

/** Answers in flight per session the gateway accepts (CHAT_MAX_IN_FLIGHT_PER_SESSION). */
export const MAX_IN_FLIGHT = 2;

const FINAL: ReadonlySet<TurnStatus> = new Set(['done', 'cancelled', 'failed']);

export function isFinal(turn: Turn): boolean {
  return FINAL.has(turn.status);
}

/** Questions the server holds or may hold: they count against the in-flight limit. */
export function inFlight(state: ChatState): number {
  return state.turns.filter((t) => t.status === 'sent' || t.status === 'queued' || t.status === 'streaming').length;
}

/** The local questions that may be sent now without exceeding the limit, oldest first. */
export function sendable(state: ChatState, limit = MAX_IN_FLIGHT): Turn[] {
  const free = Math.max(0, limit - inFlight(state));
  return state.turns.filter((t) => t.status === 'local').slice(0, free);
}

/** Whether the gateway is still replaying what this client missed. */
export function isReplaying(state: ChatState): boolean {
  return state.awaitingHistory || state.lastSeq < state.serverLastSeq;
}

function newTurn(messageId: string): Turn {
  return {
    messageId,
    user: '',
    answer: '',
    status: 'queued',
    attempt: 1,
    nextIndex: 0,
    userSeq: null,
    error: null,
    refused: false,
    restarts: 0,
    stopping: false,
    finishReason: null,
    thinking: null,
    replaces: null,
  };
}

function fromHistory(h: HistoryTurn): Turn {
  const status = h.status === 'failed' ? 'failed' : h.status === 'cancelled' ? 'cancelled' : 'done';
  return {
    ...newTurn(h.message_id),
    user: h.user,
    answer: h.assistant,
    status,
    attempt: h.attempt ?? 1,
    userSeq: h.user_seq ? h.user_seq : null,
    error: status === 'failed' ? { code: 'model_failed', message: 'The answer failed.' } : null,
    finishReason: h.finish_reason ?? null,
    replaces: h.replaces ?? null,
  };
}

/** Returns a copy of `turns` with the turn `id` replaced by `f(turn)`; creates it when missing. */
function upsert(turns: Turn[], id: string, f: (t: Turn) => Turn): Turn[] {
  const i = turns.findIndex((t) => t.messageId === id);
  if (i < 0) return [...turns, f(newTurn(id))];
  const next = turns.slice();
  next[i] = f(turns[i]);
  return next;
}

function update(turns: Turn[], id: string, f: (t: Turn) => Turn): Turn[] {
  const i = turns.findIndex((t) => t.messageId === id);
  if (i < 0) return turns;
  const next = turns.slice();
  next[i] = f(turns[i]);
  return next;
}

/** Orders turns by the seq of their question; questions not yet stored keep their place at the end. */
function ordered(turns: Turn[]): Turn[] {
  const key = (t: Turn) => (t.userSeq ?? Number.POSITIVE_INFINITY);
  return turns
    .map((t, i) => ({ t, i }))
    .sort((a, b) => key(a.t) - key(b.t) || a.i - b.i)
    .map((x) => x.t);
}

type StreamEvent = Extract<
  ServerFrame,
  { type: 'user_message' | 'chunk' | 'reasoning' | 'restart' | 'done' | 'cancelled' | 'error' }
> & { seq: number };

function isStreamEvent(frame: ServerFrame): frame is StreamEvent {
  switch (frame.type) {
    case 'user_message':
    case 'chunk':
    case 'reasoning':
    case 'restart':
    case 'done':
    case 'cancelled':
      return true;
    case 'error':
      return typeof frame.seq === 'number';
    default:
      // `accepted` carries a `seq` too, but it is the seq of another event
      // (the question's echo), not a position of this frame in the stream.
      return false;
  }
}

export function reduce(state: ChatState, action: ChatAction): ChatState {
  switch (action.type) {
    case 'ask': {
      if (state.turns.some((t) => t.messageId === action.messageId)) return state;
      const turn = { ...newTurn(action.messageId), user: action.content, status: 'local' as const, replaces: action.replaces ?? null };
      return { ...state, turns: [...state.turns, turn] };
    }
    case 'sent':
      return {
        ...state,
        turns: update(state.turns, action.messageId, (t) => (t.status === 'local' ? { ...t, status: 'sent' } : t)),
      };
    case 'stop_requested':
      return {
        ...state,
        turns: update(state.turns, action.messageId, (t) => (isFinal(t) ? t : { ...t, stopping: true })),
      };
    case 'remove':
      return { ...state, turns: state.turns.filter((t) => t.messageId !== action.messageId) };
    case 'connection_lost':
      return {
        ...state,
        awaitingHistory: false,
        turns: state.turns.some((t) => t.status === 'sent')
          ? state.turns.map((t) => (t.status === 'sent' ? { ...t, status: 'local' } : t))
          : state.turns,
      };
    case 'history':
      return applyHistory(state, action.turns, action.lastSeq);
    case 'dismiss_notice':
      return { ...state, notice: null };
    case 'frame':
      return applyFrame(state, action.frame, action.receivedAtMs ?? 0);
  }
}

function applyHistory(state: ChatState, history: HistoryTurn[], lastSeq: number): ChatState {
  const finished = history.map(fromHistory);
  const known = new Set(finished.map((t) => t.messageId));
  // Turns the history does not hold yet (in flight, or only local) stay as they are.
  const rest = state.turns.filter((t) => !known.has(t.messageId));
  return {
    ...state,
    awaitingHistory: false,
    lastSeq: Math.max(state.lastSeq, lastSeq),
    turns: ordered([...finished, ...rest]),
  };
}

function applyFrame(state: ChatState, frame: ServerFrame, receivedAtMs: number): ChatState {
  if (isStreamEvent(frame)) {
    // A duplicate (e.g. a replay overlapping what live delivery already
    // gave us) is dropped whole: the seq is the one order that counts.
    if (frame.seq <= state.lastSeq) return state;
    if (frame.type === 'reasoning') return applyReasoning({ ...state, lastSeq: frame.seq }, frame, receivedAtMs);
    return applyEvent({ ...state, lastSeq: frame.seq }, frame);
  }
  switch (frame.type) {
    case 'ready':
      return { ...state, serverLastSeq: frame.last_seq };
    case 'accepted':
      return {
        ...state,
        turns: ordered(
          update(state.turns, frame.message_id, (t) => ({
            ...t,
            userSeq: t.userSeq ?? frame.seq,
            status: t.status === 'local' || t.status === 'sent' ? 'queued' : t.status,
          })),
        ),
      };
    case 'history':
      return applyHistory(state, frame.turns, frame.last_seq);
    case 'error': {
      // A refused frame: not part of the stream.
      if (frame.code === 'replay_expired') return { ...state, awaitingHistory: true };
      const error = { code: frame.code, message: frame.message };
      const turn = frame.message_id ? state.turns.find((t) => t.messageId === frame.message_id) : undefined;
      if (turn && (turn.status === 'local' || turn.status === 'sent')) {
        return {
          ...state,
          turns: update(state.turns, turn.messageId, (t) => ({ ...t, status: 'failed', error, refused: true })),
        };
      }
      if (turn && turn.stopping) {
        // A Stop the server could not apply (e.g. the answer had just finished).
        return { ...state, turns: update(state.turns, turn.messageId, (t) => ({ ...t, stopping: false })) };
      }
      return { ...state, notice: error };
    }
    default:
      return state;
  }
}

function applyEvent(state: ChatState, frame: StreamEvent): ChatState {
  switch (frame.type) {
    case 'user_message':
      return {
        ...state,
        turns: ordered(
          upsert(state.turns, frame.message_id, (t) => ({
            ...t,
            user: frame.content,
            userSeq: frame.seq,
            replaces: frame.replaces ?? t.replaces,
            status: t.status === 'local' || t.status === 'sent' ? 'queued' : t.status,
          })),
        ),
      };
    case 'chunk':
      return {
        ...state,
        turns: upsert(state.turns, frame.message_id, (t) => {
          if (isFinal(t) || frame.attempt < t.attempt) return t;
          const fresh = frame.attempt > t.attempt;
          const base = fresh ? { ...t, attempt: frame.attempt, answer: '', nextIndex: 0, thinking: null } : t;
          if (frame.index < base.nextIndex) return base; // already have it
          return { ...base, answer: base.answer + frame.text, nextIndex: frame.index + 1, status: 'streaming' };
        }),
      };
    case 'restart':
      return {
        ...state,
        turns: upsert(state.turns, frame.message_id, (t) => {
          if (isFinal(t) || frame.attempt < t.attempt) return t;
          return {
            ...t,
            attempt: frame.attempt,
            answer: '',
            nextIndex: 0,
            thinking: null,
            restarts: t.restarts + 1,
            status: 'queued',
          };
        }),
      };
    case 'done':
      return {
        ...state,
        turns: upsert(state.turns, frame.message_id, (t) =>
          isFinal(t) ? t : { ...t, status: 'done', stopping: false, finishReason: frame.finish_reason },
        ),
      };
    case 'cancelled':
      return {
        ...state,
        turns: upsert(state.turns, frame.message_id, (t) => (isFinal(t) ? t : { ...t, status: 'cancelled', stopping: false })),
      };
    case 'error': {
      const error = { code: frame.code, message: frame.message };
      if (!frame.message_id) return { ...state, notice: error };
      return {
        ...state,
        turns: upsert(state.turns, frame.message_id, (t) =>
          isFinal(t) ? t : { ...t, status: 'failed', stopping: false, error, refused: false },
        ),
      };
    }
    default:
      return state;
  }
}

/** A piece of the model's thinking: kept apart from the answer, in its own index sequence; a
 * newer attempt's starts the turn over, as its chunks do. */
function applyReasoning(state: ChatState, frame: ReasoningFrame, receivedAtMs: number): ChatState {
  return {
    ...state,
    turns: upsert(state.turns, frame.message_id, (t) => {
      if (isFinal(t) || frame.attempt < t.attempt) return t;
      const fresh = frame.attempt > t.attempt;
      const base = fresh ? { ...t, attempt: frame.attempt, answer: '', nextIndex: 0, thinking: null } : t;
      const thinking = addReasoning(base.thinking, frame, receivedAtMs);
      if (thinking === base.thinking) return base; // already have it
      return { ...base, thinking, status: 'streaming' };
    }),
  };
}
