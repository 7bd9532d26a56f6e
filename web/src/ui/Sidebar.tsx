import type { StoredSession } from '../chat/sessions';

interface Props {
  sessions: StoredSession[];
  currentId: string | null;
  onSelect: (id: string) => void;
  onNew: () => void;
  onDelete: (id: string) => void;
  onClose: () => void;
  /** The line under the list (where the list is kept). */
  foot?: string;
}

export function Sidebar({ sessions, currentId, onSelect, onNew, onDelete, onClose, foot }: Props) {
  return (
    <nav className="sidebar" aria-label="Conversations">
      <div className="sidebar-head">
        <span className="brand">
          <span className="brand-mark" aria-hidden="true" />
          Chat
        </span>
        <button type="button" className="icon-button sidebar-close" onClick={onClose} aria-label="Close conversations">
          ✕
        </button>
      </div>
      <button type="button" className="button button-primary new-chat" onClick={onNew} data-testid="new-conversation">
        <svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true">
          <path d="M12 5v14M5 12h14" fill="none" stroke="currentColor" strokeWidth="2.2" strokeLinecap="round" />
        </svg>
        New conversation
      </button>
      <ul className="session-list">
        {sessions.map((s) => (
          <li key={s.sessionId} className={s.sessionId === currentId ? 'active' : ''}>
            <button
              type="button"
              className="session-item"
              onClick={() => onSelect(s.sessionId)}
              aria-current={s.sessionId === currentId ? 'page' : undefined}
              title={s.title || 'New conversation'}
            >
              {s.title || <span className="muted">New conversation</span>}
            </button>
            <button
              type="button"
              className="icon-button session-delete"
              onClick={() => onDelete(s.sessionId)}
              aria-label={`Remove “${s.title || 'New conversation'}” from the list`}
              title="Remove from list"
            >
              ✕
            </button>
          </li>
        ))}
      </ul>
      <p className="sidebar-foot muted">{foot ?? 'Conversations are kept in this browser.'}</p>
    </nav>
  );
}
