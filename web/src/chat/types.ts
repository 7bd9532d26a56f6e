// The wire frames of the gateway (docs/PROTOCOL.md; services/protocol/src/frames.rs,
// events.rs, records.rs). Field names are the wire's snake_case on purpose. The
// names of frame types and codes come from ./protocol, generated from the Rust types.

import {
  CONTROL_FRAME_TYPES,
  EVENT_KINDS,
  type ClientFrameType,
  type ControlFrameType,
  type EventKind,
  type KnownErrorCode,
} from './protocol';

/** A code the server may add later is still a string: a client treats it as a failure. */
export type ErrorCode = KnownErrorCode | (string & {});

export type TurnStatusWire = 'done' | 'cancelled' | 'failed';

/** One finished turn, as `GET /api/history` and the `history` frame carry it. */
export interface HistoryTurn {
  message_id: string;
  user: string;
  assistant: string;
  status: TurnStatusWire;
  created_at: number;
  finished_at?: number;
  attempt?: number;
  finish_reason?: string;
  user_seq?: number;
  /** Characters of reasoning before the answer (its text is not kept in the turn). */
  reasoning_chars?: number;
  /** Set on a regeneration's turn: the message whose answer it replaces. */
  replaces?: string;
}

// Frames that come from the session's event stream: they carry `seq`.
/** `replaces` only on a regeneration: the earlier message (same question) whose answer this one replaces. */
export type UserMessageFrame = { type: 'user_message'; message_id: string; content: string; replaces?: string; seq: number };
export type ChunkFrame = {
  type: 'chunk';
  message_id: string;
  attempt: number;
  index: number;
  text: string;
  seq: number;
  published_at_us?: number;
};
/** A piece of a reasoning model's thinking: its own `index` sequence, not part of the answer. */
export type ReasoningFrame = {
  type: 'reasoning';
  message_id: string;
  attempt: number;
  index: number;
  text: string;
  seq: number;
  published_at_us?: number;
};
export type RestartFrame = { type: 'restart'; message_id: string; attempt: number; seq: number };
export type DoneFrame = {
  type: 'done';
  message_id: string;
  attempt: number;
  finish_reason: string;
  usage?: { prompt_tokens: number; completion_tokens: number };
  seq: number;
};
export type CancelledFrame = { type: 'cancelled'; message_id: string; seq: number };
/** An error: with `seq` it is a stored event (a failed answer), without it a refused frame. */
export type ErrorFrame = { type: 'error'; message_id?: string; code: ErrorCode; message: string; seq?: number };

// Frames the gateway makes itself.
export type ReadyFrame = { type: 'ready'; session_id: string; token?: string; node: string; last_seq: number };
/** Note: `seq` here is the seq of the user_message event, not a stream position of this frame. */
export type AcceptedFrame = { type: 'accepted'; message_id: string; seq: number };
export type HistoryFrame = { type: 'history'; turns: HistoryTurn[]; last_seq: number };
export type PongFrame = { type: 'pong' };
/** `GATEWAY_AUTH=jwt`: the socket's token expires in `in_ms`; answer with a `refresh` frame. */
export type TokenExpiringFrame = { type: 'token_expiring'; in_ms: number };
/** A session as `GET /api/sessions` and `session_list` describe it. */
export interface ListedSession {
  id: string;
  title: string;
  created: number;
  updated: number;
  in_flight?: boolean;
}
export type SessionChange = 'created' | 'renamed' | 'deleted' | 'answer_started' | 'answer_finished';
/** `GATEWAY_AUTH=jwt`: the user's session list changed on some device. */
export type SessionListFrame = { type: 'session_list'; change: SessionChange; session_id: string; session?: ListedSession };

export type ServerFrame =
  | UserMessageFrame
  | ChunkFrame
  | ReasoningFrame
  | RestartFrame
  | DoneFrame
  | CancelledFrame
  | ErrorFrame
  | ReadyFrame
  | AcceptedFrame
  | HistoryFrame
  | PongFrame
  | TokenExpiringFrame
  | SessionListFrame;

export type ClientFrame =
  | { type: 'auth'; token: string }
  | { type: 'chat'; message_id: string; content: string; model?: string }
  | { type: 'regenerate'; message_id: string; replaces?: string; model?: string }
  | { type: 'cancel'; message_id: string }
  | { type: 'resume'; after_seq: number }
  | { type: 'refresh'; token: string }
  | { type: 'ping' };

// The frame types above are the generated names, no more and no fewer: an event
// kind or frame type added in Rust without its type here fails `tsc`.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type StreamFrameType = (UserMessageFrame | ChunkFrame | ReasoningFrame | RestartFrame | DoneFrame | CancelledFrame | ErrorFrame)['type'];
type GatewayFrameType = (ReadyFrame | AcceptedFrame | ErrorFrame | HistoryFrame | PongFrame | TokenExpiringFrame | SessionListFrame)['type'];
type Assert<T extends true> = T;
export type FrameTypesMatchTheProtocol = [
  Assert<Same<StreamFrameType, EventKind>>,
  Assert<Same<GatewayFrameType, ControlFrameType>>,
  Assert<Same<ClientFrame['type'], ClientFrameType>>,
];

const KNOWN: ReadonlySet<string> = new Set<string>([...EVENT_KINDS, ...CONTROL_FRAME_TYPES]);

/** Parses a text frame; `null` for anything that is not a frame we know. */
export function parseServerFrame(text: string): ServerFrame | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const type = (value as { type?: unknown }).type;
  if (typeof type !== 'string' || !KNOWN.has(type)) return null;
  return value as ServerFrame;
}
