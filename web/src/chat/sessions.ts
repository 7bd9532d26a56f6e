// The conversations this browser knows: session id and token, kept in
// localStorage (the token is shown once by the server and is the only key to
// the session), plus a title taken from the first question. In
// GATEWAY_AUTH=jwt mode the list is the server's (`listSessions`) and every
// session's token is the user's JWT.

import type { ListedSession } from './types';

export interface StoredSession {
  sessionId: string;
  token: string;
  title: string;
  createdAt: number;
  updatedAt: number;
}

const LIST_KEY = 'chat.sessions.v1';
const CURRENT_KEY = 'chat.current.v1';

function storage(): Storage | null {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

export function loadSessions(): StoredSession[] {
  const raw = storage()?.getItem(LIST_KEY);
  if (!raw) return [];
  try {
    const list = JSON.parse(raw) as unknown;
    if (!Array.isArray(list)) return [];
    return list.filter(
      (s): s is StoredSession =>
        typeof s === 'object' && s !== null && typeof s.sessionId === 'string' && typeof s.token === 'string',
    );
  } catch {
    return [];
  }
}

export function saveSessions(list: StoredSession[]): void {
  storage()?.setItem(LIST_KEY, JSON.stringify(list));
}

export function loadCurrent(): string | null {
  return storage()?.getItem(CURRENT_KEY) ?? null;
}

export function saveCurrent(sessionId: string | null): void {
  const s = storage();
  if (!s) return;
  if (sessionId) s.setItem(CURRENT_KEY, sessionId);
  else s.removeItem(CURRENT_KEY);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

async function apiError(res: Response): Promise<ApiError> {
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    return new ApiError(res.status, body.error?.code ?? 'internal', body.error?.message ?? res.statusText);
  } catch {
    return new ApiError(res.status, res.status === 429 ? 'overloaded' : 'internal', res.statusText || `HTTP ${res.status}`);
  }
}

/**
 * `POST /api/sessions`: a new conversation. With the user's JWT
 * (`GATEWAY_AUTH=jwt`) it belongs to the user and no token comes back: the
 * JWT opens it.
 */
export async function createSession(base = '', jwt?: string): Promise<{ session_id: string; token?: string }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (jwt) headers.authorization = `Bearer ${jwt}`;
  const res = await fetch(`${base}/api/sessions`, { method: 'POST', headers, body: '{}' });
  if (!res.ok) throw await apiError(res);
  return (await res.json()) as { session_id: string; token?: string };
}

/** Pages of `GET /api/sessions` read at most for the sidebar. */
const LIST_PAGES = 5;

/** `GET /api/sessions` (`jwt` mode): the user's conversations, newest activity first. */
export async function listSessions(jwt: string, base = ''): Promise<ListedSession[]> {
  const all: ListedSession[] = [];
  let cursor: string | undefined;
  for (let page = 0; page < LIST_PAGES; page++) {
    const q = new URLSearchParams({ limit: '50' });
    if (cursor) q.set('cursor', cursor);
    const res = await fetch(`${base}/api/sessions?${q.toString()}`, { headers: { authorization: `Bearer ${jwt}` } });
    if (!res.ok) throw await apiError(res);
    const body = (await res.json()) as { sessions: ListedSession[]; next_cursor?: string | null };
    all.push(...body.sessions);
    if (!body.next_cursor) break;
    cursor = body.next_cursor;
  }
  return all;
}

/** A listed session as the sidebar keeps it; its token is the user's JWT. */
export function fromListed(s: ListedSession, jwt: string): StoredSession {
  return { sessionId: s.id, token: jwt, title: s.title, createdAt: s.created, updatedAt: s.updated };
}

/**
 * `DELETE /api/sessions/{id}`: revokes a conversation on the server, so its
 * token stops working everywhere (other tabs' sockets close). One already
 * gone (expired, revoked elsewhere: 401) counts as removed.
 */
export async function revokeSession(session: { sessionId: string; token: string }, base = ''): Promise<void> {
  const res = await fetch(`${base}/api/sessions/${encodeURIComponent(session.sessionId)}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${session.token}` },
  });
  // Gone already: 401 (session mode) or 404 (jwt mode).
  if (!res.ok && res.status !== 401 && res.status !== 404) throw await apiError(res);
}

/** A short title from the first question. */
export function titleFrom(question: string): string {
  const line = question.trim().replace(/\s+/g, ' ');
  return line.length > 60 ? `${line.slice(0, 57)}…` : line;
}
