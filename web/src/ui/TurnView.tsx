import { memo, useMemo, type ReactNode } from 'react';
import { isRetryable, plainWords } from '../chat/errors';
import type { Turn } from '../chat/state';
import { renderMarkdown } from '../markdown';
import { Thinking } from './Thinking';

interface Props {
  turn: Turn;
  onStop: () => void;
  onRetry: () => void;
  /** Shown under the answer (the versions of a regenerated answer, Regenerate). */
  footer?: ReactNode;
}

function Answer({ text, streaming }: { text: string; streaming: boolean }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  return (
    <div
      className={`markdown ${streaming ? 'is-streaming' : ''}`}
      data-testid="answer-text"
      // Sanitised by renderMarkdown (raw HTML escaped, then DOMPurify).
      dangerouslySetInnerHTML={{ __html: html }}
    />
  );
}

export const TurnView = memo(function TurnView({ turn, onStop, onRetry, footer }: Props) {
  const waiting = turn.status === 'local' || turn.status === 'sent' || turn.status === 'queued';
  const streaming = turn.status === 'streaming';
  const inFlight = waiting || streaming;
  return (
    <article
      className="turn"
      data-testid="turn"
      data-message-id={turn.messageId}
      data-status={turn.status}
      data-answer-chars={turn.answer.length}
      data-attempt={turn.attempt}
    >
      {turn.user && (
        <div className="user-row">
          <div className="user-bubble" data-testid="question">
            {turn.user}
          </div>
        </div>
      )}
      <div className="assistant-row">
        <div className="avatar" aria-hidden="true" />
        <div className="assistant">
          {turn.restarts > 0 && inFlight && (
            <p className="note" data-testid="restarted">
              The answer is being written again (attempt {turn.attempt}).
            </p>
          )}
          {turn.thinking && <Thinking thinking={turn.thinking} active={inFlight && !turn.answer} />}
          {turn.answer ? (
            <Answer text={turn.answer} streaming={streaming} />
          ) : waiting ? (
            <div className="thinking" aria-label="Waiting for the answer">
              <span />
              <span />
              <span />
              <em className="muted">{turn.status === 'local' ? 'Waiting to send…' : 'Thinking…'}</em>
            </div>
          ) : null}

          {inFlight && (
            <div className="turn-actions">
              <button type="button" className="chip" onClick={onStop} disabled={turn.stopping} data-testid="turn-stop">
                {turn.stopping ? 'Stopping…' : '■ Stop'}
              </button>
            </div>
          )}
          {turn.status === 'cancelled' && (
            <p className="tag tag-stopped" data-testid="stopped">
              Stopped
            </p>
          )}
          {turn.status === 'done' && turn.finishReason === 'length' && <p className="tag">Cut off at the length limit</p>}
          {turn.status === 'failed' && turn.error && (
            <div className="turn-error" role="alert" data-testid="turn-error" data-code={turn.error.code}>
              <span>{plainWords(turn.error.code, turn.error.message)}</span>
              {isRetryable(turn.error.code) && (
                <button type="button" className="button button-small" onClick={onRetry} data-testid="retry">
                  Try again
                </button>
              )}
            </div>
          )}
          {footer}
        </div>
      </div>
    </article>
  );
});
