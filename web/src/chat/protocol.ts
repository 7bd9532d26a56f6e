// Generated from services/protocol by services/protocol/tests/web_mirror.rs: do not
// edit. After changing a close code, an event kind, an error code or a frame type
// in Rust, regenerate it with
//   UPDATE_WEB_PROTOCOL=1 cargo test -p protocol --test web_mirror
// What each name means and when the gateway sends it: docs/PROTOCOL.md.

/** WebSocket close codes a gateway sends (docs/PROTOCOL.md, "Close codes"). */
export const CloseCode = {
  PROTOCOL_ERROR: 1002,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  TOO_BIG: 1009,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** The `type` of each event stored in CHAT_EVENTS: the frames that carry a `seq`. */
export const EventKind = {
  USER_MESSAGE: 'user_message',
  CHUNK: 'chunk',
  REASONING: 'reasoning',
  RESTART: 'restart',
  DONE: 'done',
  CANCELLED: 'cancelled',
  ERROR: 'error',
} as const;
export type EventKind = (typeof EventKind)[keyof typeof EventKind];
export const EVENT_KINDS: readonly EventKind[] = ['user_message', 'chunk', 'reasoning', 'restart', 'done', 'cancelled', 'error'];

/** The `type` of each frame a gateway makes itself (none carries a `seq` of its own). */
export const CONTROL_FRAME_TYPES = ['ready', 'accepted', 'error', 'history', 'pong', 'token_expiring', 'session_list'] as const;
export type ControlFrameType = (typeof CONTROL_FRAME_TYPES)[number];

/** The `type` of each frame a client may send. */
export const CLIENT_FRAME_TYPES = ['auth', 'chat', 'regenerate', 'cancel', 'resume', 'refresh', 'ping'] as const;
export type ClientFrameType = (typeof CLIENT_FRAME_TYPES)[number];

/** Codes of `error` frames and REST error bodies (docs/PROTOCOL.md, "Error codes"). */
export const ERROR_CODES = [
  'bad_request',
  'unauthorized',
  'forbidden',
  'not_found',
  'too_large',
  'rate_limited',
  'overloaded',
  'model_failed',
  'retries_exhausted',
  'replay_expired',
  'internal',
] as const;
export type KnownErrorCode = (typeof ERROR_CODES)[number];
