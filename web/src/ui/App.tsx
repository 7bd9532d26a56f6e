import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import type { ConnectionOptions } from '../chat/connection';
import { refreshHook } from '../chat/login';
import {
  createSession,
  fromListed,
  listSessions,
  loadCurrent,
  revokeSession,
  loadSessions,
  saveCurrent,
  saveSessions,
  titleFrom,
  type StoredSession,
} from '../chat/sessions';
import { Conversation } from './Conversation';
import { Sidebar } from './Sidebar';

interface Props {
  /** `GATEWAY_AUTH=jwt`: the user's JWT. The list is then the server's, on every device. */
  jwt?: string;
  /** `jwt` mode: the login ended; the page asks for a new token. */
  onSignedOut?: () => void;
}

export function App({ jwt, onSignedOut }: Props) {
  const [sessions, setSessions] = useState<StoredSession[]>(() => (jwt ? [] : loadSessions()));
  const [currentId, setCurrentId] = useState<string | null>(() => {
    if (jwt) return null;
    const saved = loadCurrent();
    const list = loadSessions();
    return list.some((s) => s.sessionId === saved) ? saved : (list[0]?.sessionId ?? null);
  });
  const [creating, setCreating] = useState(false);
  const [createError, setCreateError] = useState<string | null>(null);
  const [menuOpen, setMenuOpen] = useState(false);
  // jwt mode: the list comes from the server; nothing is created before it did.
  const [loaded, setLoaded] = useState(!jwt);
  // The newest token (refreshed before expiry) for REST calls.
  const token = useRef(jwt ?? '');

  useEffect(() => {
    if (!jwt) saveSessions(sessions);
  }, [sessions, jwt]);
  useEffect(() => saveCurrent(currentId), [currentId]);

  // Another tab added or removed a conversation: follow it.
  useEffect(() => {
    if (jwt) return;
    const onStorage = (e: StorageEvent) => {
      if (e.key === null || e.key.startsWith('chat.sessions')) setSessions(loadSessions());
    };
    window.addEventListener('storage', onStorage);
    return () => window.removeEventListener('storage', onStorage);
  }, [jwt]);

  // jwt mode: the server's list, read at start and again on every change
  // another device (or this one) made.
  const reload = useCallback(async () => {
    if (!jwt) return;
    try {
      const listed = await listSessions(token.current);
      setSessions(listed.map((s) => fromListed(s, jwt)));
      setCurrentId((id) => {
        const saved = id ?? loadCurrent();
        return listed.some((s) => s.id === saved) ? saved : (listed[0]?.id ?? null);
      });
    } catch (e) {
      setCreateError(e instanceof Error ? e.message : String(e));
    } finally {
      setLoaded(true);
    }
  }, [jwt]);
  useEffect(() => {
    void reload();
  }, [reload]);
  const connection = useMemo<Partial<ConnectionOptions> | undefined>(() => {
    if (!jwt) return undefined;
    const refresh = refreshHook();
    return {
      refreshToken: async () => {
        const fresh = await refresh();
        if (fresh) token.current = fresh;
        return fresh;
      },
      onSessionList: () => void reload(),
    };
  }, [jwt, reload]);

  const current = sessions.find((s) => s.sessionId === currentId) ?? null;

  const newConversation = useCallback(async () => {
    setMenuOpen(false);
    // An empty conversation is already a new one.
    if (current && !current.title) return;
    setCreating(true);
    setCreateError(null);
    try {
      const created = await createSession('', jwt ? token.current : undefined);
      const now = Date.now();
      const entry: StoredSession = {
        sessionId: created.session_id,
        token: jwt ?? created.token ?? '',
        title: '',
        createdAt: now,
        updatedAt: now,
      };
      setSessions((list) => [entry, ...list]);
      setCurrentId(entry.sessionId);
    } catch (e) {
      setCreateError(e instanceof Error ? e.message : String(e));
    } finally {
      setCreating(false);
    }
  }, [current, jwt]);

  // First visit: start a conversation.
  useEffect(() => {
    if (loaded && !current && !creating && !createError) void newConversation();
  }, [loaded, current, creating, createError, newConversation]);

  const remove = (id: string) => {
    // Revoked on the server too, so the token opens nothing any more. The
    // local entry goes at once; a failure (offline) leaves the session to
    // expire on its own.
    const gone = sessions.find((s) => s.sessionId === id);
    if (gone) revokeSession(jwt ? { sessionId: id, token: token.current } : gone).catch(() => undefined);
    setSessions((list) => list.filter((s) => s.sessionId !== id));
    if (id === currentId) setCurrentId(sessions.find((s) => s.sessionId !== id)?.sessionId ?? null);
  };

  const onFirstQuestion = useCallback((id: string, question: string) => {
    setSessions((list) =>
      list.map((s) => (s.sessionId === id && !s.title ? { ...s, title: titleFrom(question), updatedAt: Date.now() } : s)),
    );
  }, []);

  return (
    <div className={`app ${menuOpen ? 'menu-open' : ''}`}>
      <Sidebar
        sessions={sessions}
        currentId={currentId}
        onSelect={(id) => {
          setCurrentId(id);
          setMenuOpen(false);
        }}
        onNew={() => void newConversation()}
        onDelete={remove}
        onClose={() => setMenuOpen(false)}
        foot={jwt ? 'Your conversations, on every device.' : undefined}
      />
      <div className="scrim" onClick={() => setMenuOpen(false)} aria-hidden="true" />
      <main className="main">
        {current ? (
          <Conversation
            key={current.sessionId}
            session={current}
            onMenu={() => setMenuOpen(true)}
            onFirstQuestion={onFirstQuestion}
            onNewConversation={() => void newConversation()}
            onForget={() => remove(current.sessionId)}
            connection={connection}
            onSignedOut={onSignedOut}
          />
        ) : (
          <div className="empty-main">
            <button type="button" className="icon-button menu-button" onClick={() => setMenuOpen(true)} aria-label="Open conversations">
              ☰
            </button>
            {createError ? (
              <div className="banner banner-error" role="alert">
                <p>Could not start a conversation: {createError}</p>
                <button type="button" className="button" onClick={() => { setCreateError(null); void newConversation(); }}>
                  Try again
                </button>
              </div>
            ) : (
              <p className="muted">Starting a conversation…</p>
            )}
          </div>
        )}
      </main>
    </div>
  );
}
