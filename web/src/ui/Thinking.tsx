import { useEffect, useState } from 'react';
import { thoughtFor, type Thinking as ThinkingState } from '../chat/thinking';

interface Props {
  thinking: ThinkingState;
  /** The model is still thinking: no answer yet, and the turn is not over. */
  active: boolean;
}

/**
 * A reasoning model's thinking, above its answer: open while it streams, collapsed once the
 * answer begins (a click opens it again), with how long the model thought.
 */
export function Thinking({ thinking, active }: Props) {
  // null: follow the stream (open while thinking); a click decides from then on.
  const [chosen, setChosen] = useState<boolean | null>(null);
  useEffect(() => {
    if (!active) setChosen(null);
  }, [active]);
  const open = chosen ?? active;
  return (
    <section className="reasoning" data-testid="thinking" data-state={active ? 'thinking' : 'thought'} data-open={open}>
      <button
        type="button"
        className="reasoning-toggle"
        aria-expanded={open}
        onClick={() => setChosen(!open)}
        data-testid="thinking-toggle"
      >
        <span className="reasoning-chevron" aria-hidden="true">
          ›
        </span>
        <span data-testid="thinking-label">{active ? 'Thinking…' : thoughtFor(thinking)}</span>
      </button>
      {open && (
        <div className={`reasoning-text ${active ? 'is-streaming' : ''}`} data-testid="thinking-text">
          {thinking.text}
        </div>
      )}
    </section>
  );
}
