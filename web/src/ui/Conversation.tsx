import { useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';
import { isReplaying, MAX_IN_FLIGHT, inFlight } from '../chat/state';
import type { StoredSession } from '../chat/sessions';
import { ConversationStore } from '../chat/store';
import type { ConnectionOptions } from '../chat/connection';
import { plainWords } from '../chat/errors';
import { Composer } from './Composer';
import { ConnectionBadge } from './ConnectionBadge';
import { TurnView } from './TurnView';
import { VersionBar } from './VersionBar';
import { regenerable, shownVersion, slots } from '../chat/versions';

interface Props {
  session: StoredSession;
  onMenu: () => void;
  onFirstQuestion: (sessionId: string, question: string) => void;
  onNewConversation: () => void;
  onForget: () => void;
  /** `jwt` mode: the token refresh and the live session list (fixed for the conversation's life). */
  connection?: Partial<ConnectionOptions>;
  /** `jwt` mode: the login ended (token expired or refused, sockets revoked). */
  onSignedOut?: () => void;
}

/** Close reasons and refusals that mean the user's login, not the conversation, is gone. */
const SIGNED_OUT = /token expired|user revoked|missing or wrong token/;

export function Conversation({ session, onMenu, onFirstQuestion, onNewConversation, onForget, connection, onSignedOut }: Props) {
  // `connection` is fixed for the conversation's life: not a dependency.
  const store = useMemo(() => new ConversationStore(session.sessionId, session.token, connection), [session.sessionId, session.token]);
  useEffect(() => {
    store.start();
    const online = () => store.retryNow();
    window.addEventListener('online', online);
    return () => {
      window.removeEventListener('online', online);
      store.stop();
    };
  }, [store]);

  const state = useSyncExternalStore(store.subscribe, store.getState);
  const status = useSyncExternalStore(store.subscribe, store.getStatus);
  const replaying = status.kind === 'connected' && isReplaying(state);
  useEffect(() => {
    if (onSignedOut && status.kind === 'invalid' && SIGNED_OUT.test(status.reason)) onSignedOut();
  }, [status, onSignedOut]);

  const firstQuestion = state.turns.find((t) => t.user)?.user;
  useEffect(() => {
    if (firstQuestion && !session.title) onFirstQuestion(session.sessionId, firstQuestion);
  }, [firstQuestion, session.title, session.sessionId, onFirstQuestion]);

  // Follow the answer while the reader is at the bottom; leave them be when they scrolled up.
  const scroller = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);
  const [showJump, setShowJump] = useState(false);
  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    pinned.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
    setShowJump(!pinned.current);
  };
  useEffect(() => {
    const el = scroller.current;
    if (el && pinned.current) el.scrollTop = el.scrollHeight;
  }, [state.turns]);

  // The version of each regenerated question the reader chose (by the slot's
  // key); none chosen shows the latest.
  const [chosen, setChosen] = useState<Record<string, string>>({});
  const conversation = useMemo(() => slots(state.turns), [state.turns]);

  const busy = inFlight(state);
  const active = [...state.turns].reverse().find((t) => t.status === 'queued' || t.status === 'streaming' || t.status === 'sent');

  const onCopyClick = (e: React.MouseEvent) => {
    const button = (e.target as HTMLElement).closest<HTMLButtonElement>('button[data-copy-code]');
    if (!button) return;
    const code = button.closest('.code-block')?.querySelector('code')?.textContent ?? '';
    void navigator.clipboard?.writeText(code).then(
      () => {
        button.textContent = 'Copied';
        setTimeout(() => (button.textContent = 'Copy'), 1500);
      },
      () => {
        button.textContent = 'Copy failed';
      },
    );
  };

  return (
    <div className="conversation">
      <header className="conv-head">
        <button type="button" className="icon-button menu-button" onClick={onMenu} aria-label="Open conversations">
          ☰
        </button>
        <h1 className="conv-title">{session.title || 'New conversation'}</h1>
        <ConnectionBadge status={status} replaying={replaying} everConnected={store.everConnected} onRetry={() => store.retryNow()} />
      </header>

      {status.kind === 'invalid' && (
        <div className="banner banner-error" role="alert" data-testid="session-invalid">
          <p>
            This conversation can’t be opened any more: the server no longer knows it or the key stored in this browser is not
            accepted ({status.reason}).
          </p>
          <div className="banner-actions">
            <button type="button" className="button button-primary" onClick={onNewConversation}>
              Start a new conversation
            </button>
            <button type="button" className="button" onClick={onForget}>
              Remove it from the list
            </button>
          </div>
        </div>
      )}
      {state.notice && (
        <div className="banner banner-warn" role="status" data-testid="notice">
          <p>{plainWords(state.notice.code, state.notice.message)}</p>
          <button type="button" className="icon-button" aria-label="Dismiss" onClick={() => store.dispatch({ type: 'dismiss_notice' })}>
            ✕
          </button>
        </div>
      )}

      <div className="messages" ref={scroller} onScroll={onScroll} onClick={onCopyClick} aria-live="polite" data-testid="messages">
        <div className="messages-inner">
          {state.turns.length === 0 && status.kind !== 'invalid' && (
            <div className="welcome">
              <div className="welcome-mark" aria-hidden="true" />
              <h2>What would you like to know?</h2>
              <p className="muted">Answers stream in as they are written. You can stop one at any time, and they survive a reload.</p>
            </div>
          )}
          {conversation.map((slot) => {
            const shown = shownVersion(slot, chosen[slot.key]);
            const t = slot.versions[shown];
            const replaceable = regenerable(conversation, slot);
            const footer = (
              <VersionBar
                slot={slot}
                shown={shown}
                onShow={(i) => setChosen((c) => ({ ...c, [slot.key]: slot.versions[i].messageId }))}
                onRegenerate={
                  replaceable
                    ? () => {
                        pinned.current = true;
                        setChosen(({ [slot.key]: _, ...rest }) => rest);
                        store.regenerate(replaceable.messageId);
                      }
                    : null
                }
              />
            );
            return (
              <TurnView
                key={slot.key}
                turn={t}
                onStop={() => store.stopAnswer(t.messageId)}
                onRetry={() => store.retry(t.messageId)}
                footer={footer}
              />
            );
          })}
        </div>
      </div>
      {showJump && (
        <button
          type="button"
          className="jump"
          onClick={() => {
            const el = scroller.current;
            if (el) el.scrollTo({ top: el.scrollHeight, behavior: 'smooth' });
          }}
          aria-label="Scroll to the latest message"
        >
          ↓
        </button>
      )}

      <Composer
        disabled={status.kind === 'invalid'}
        busy={busy >= MAX_IN_FLIGHT}
        streaming={active ?? null}
        onSend={(text) => {
          pinned.current = true;
          store.ask(text);
        }}
        onStop={() => active && store.stopAnswer(active.messageId)}
      />
    </div>
  );
}
