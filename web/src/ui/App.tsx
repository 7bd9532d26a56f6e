import { useCallback, useEffect, useState } from 'react';
import {
  createSession,
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

export function App() {
  const [sessions, setSessions] = useState<StoredSession[]>(() => loadSessions());
  const [currentId, setCurrentId] = useState<string | null>(() => {
    const saved = loadCurrent();
    const list = loadSessions();
    return list.some((s) => s.sessionId === saved) ? saved : (list[0]?.sessionId ?? null);
  });
  const [creating, setCreating] = useState(false);
  const [createError, setCreateError] = useState<string | null>(null);
  const [menuOpen, setMenuOpen] = useState(false);

  useEffect(() => saveSessions(sessions), [sessions]);
  useEffect(() => saveCurrent(currentId), [currentId]);

  // Another tab added or removed a conversation: follow it.
  useEffect(() => {
    const onStorage = (e: StorageEvent) => {
      if (e.key === null || e.key.startsWith('chat.sessions')) setSessions(loadSessions());
    };
    window.addEventListener('storage', onStorage);
    return () => window.removeEventListener('storage', onStorage);
  }, []);

  const current = sessions.find((s) => s.sessionId === currentId) ?? null;

  const newConversation = useCallback(async () => {
    setMenuOpen(false);
    // An empty conversation is already a new one.
    if (current && !current.title) return;
    setCreating(true);
    setCreateError(null);
    try {
      const created = await createSession();
      const now = Date.now();
      const entry: StoredSession = { sessionId: created.session_id, token: created.token, title: '', createdAt: now, updatedAt: now };
      setSessions((list) => [entry, ...list]);
      setCurrentId(entry.sessionId);
    } catch (e) {
      setCreateError(e instanceof Error ? e.message : String(e));
    } finally {
      setCreating(false);
    }
  }, [current]);

  // First visit: start a conversation.
  useEffect(() => {
    if (!current && !creating && !createError) void newConversation();
  }, [current, creating, createError, newConversation]);

  const remove = (id: string) => {
    // Revoked on the server too, so the token opens nothing any more. The
    // local entry goes at once; a failure (offline) leaves the session to
    // expire on its own.
    const gone = sessions.find((s) => s.sessionId === id);
    if (gone) revokeSession(gone).catch(() => undefined);
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
