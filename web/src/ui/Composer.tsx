import { useEffect, useRef, useState } from 'react';
import type { Turn } from '../chat/state';

interface Props {
  disabled: boolean;
  /** The in-flight limit is reached: a new question waits for a free slot. */
  busy: boolean;
  streaming: Turn | null;
  onSend: (text: string) => void;
  onStop: () => void;
}

export function Composer({ disabled, busy, streaming, onSend, onStop }: Props) {
  const [text, setText] = useState('');
  const area = useRef<HTMLTextAreaElement>(null);

  useEffect(() => {
    const el = area.current;
    if (!el) return;
    el.style.height = 'auto';
    el.style.height = `${Math.min(el.scrollHeight, 220)}px`;
  }, [text]);

  useEffect(() => {
    area.current?.focus();
  }, []);

  const send = () => {
    const content = text.trim();
    if (!content || disabled) return;
    onSend(content);
    setText('');
  };

  return (
    <form
      className="composer"
      onSubmit={(e) => {
        e.preventDefault();
        send();
      }}
    >
      <div className="composer-box">
        <textarea
          ref={area}
          value={text}
          rows={1}
          disabled={disabled}
          placeholder="Ask anything…"
          aria-label="Your question"
          data-testid="composer-input"
          onChange={(e) => setText(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
              e.preventDefault();
              send();
            } else if (e.key === 'Escape' && streaming) {
              e.preventDefault();
              onStop();
            }
          }}
        />
        {streaming && (
          <button type="button" className="round-button stop-button" onClick={onStop} aria-label="Stop the answer" title="Stop (Esc)" data-testid="stop">
            <span className="stop-square" aria-hidden="true" />
          </button>
        )}
        <button
          type="submit"
          className="round-button send-button"
          disabled={disabled || !text.trim()}
          aria-label={busy ? 'Queue the question' : 'Send'}
          title="Send (Enter)"
          data-testid="send"
        >
          <svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true">
            <path d="M12 19V5M5 12l7-7 7 7" fill="none" stroke="currentColor" strokeWidth="2.2" strokeLinecap="round" strokeLinejoin="round" />
          </svg>
        </button>
      </div>
      <p className="composer-hint muted">
        {busy
          ? 'Two answers are being written. Your next question will be sent when one finishes.'
          : 'Enter to send · Shift+Enter for a new line'}
      </p>
    </form>
  );
}
