import type { Slot } from '../chat/versions';

interface Props {
  slot: Slot;
  /** Index in `slot.versions` of the version shown. */
  shown: number;
  onShow: (index: number) => void;
  /** Set when this slot can be regenerated now (the conversation's last answer, ended). */
  onRegenerate: (() => void) | null;
}

/** Under an answer: "‹ 1 / 2 ›" between the versions of its question, and Regenerate on the last answer. */
export function VersionBar({ slot, shown, onShow, onRegenerate }: Props) {
  const count = slot.versions.length;
  if (count < 2 && !onRegenerate) return null;
  return (
    <div className="turn-actions version-bar" data-testid="version-bar">
      {count > 1 && (
        <span className="versions" role="group" aria-label="Answer versions">
          <button
            type="button"
            className="icon-button version-step"
            onClick={() => onShow(shown - 1)}
            disabled={shown === 0}
            aria-label="Previous answer"
            data-testid="version-prev"
          >
            ‹
          </button>
          <span className="muted" data-testid="version-label">
            {shown + 1} / {count}
          </span>
          <button
            type="button"
            className="icon-button version-step"
            onClick={() => onShow(shown + 1)}
            disabled={shown === count - 1}
            aria-label="Next answer"
            data-testid="version-next"
          >
            ›
          </button>
        </span>
      )}
      {onRegenerate && (
        <button type="button" className="chip" onClick={onRegenerate} data-testid="regenerate">
          ↻ Regenerate
        </button>
      )}
    </div>
  );
}
