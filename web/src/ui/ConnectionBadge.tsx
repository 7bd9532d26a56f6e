import { useEffect, useState } from 'react';
import type { ConnectionStatus } from '../chat/connection';

interface Props {
  status: ConnectionStatus;
  replaying: boolean;
  everConnected: boolean;
  onRetry: () => void;
}

/** Always-visible state of the connection, with the gateway node serving this page. */
export function ConnectionBadge({ status, replaying, everConnected, onRetry }: Props) {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (status.kind !== 'reconnecting') return;
    const t = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(t);
  }, [status]);

  let kind: string;
  let text: string;
  let detail: string | null = null;
  switch (status.kind) {
    case 'connected':
      kind = replaying ? 'replaying' : 'connected';
      text = replaying ? 'Catching up…' : 'Connected';
      detail = status.node;
      break;
    case 'connecting':
      kind = everConnected || status.attempt > 0 ? 'reconnecting' : 'connecting';
      text = kind === 'reconnecting' ? 'Reconnecting…' : 'Connecting…';
      break;
    case 'reconnecting': {
      kind = 'reconnecting';
      const secs = Math.max(0, Math.ceil((status.retryAt - now) / 1000));
      text = secs > 0 ? `Reconnecting in ${secs}s` : 'Reconnecting…';
      break;
    }
    case 'invalid':
      kind = 'invalid';
      text = 'Session not valid';
      break;
    case 'stopped':
      kind = 'connecting';
      text = 'Offline';
      break;
  }
  return (
    <div className={`conn conn-${kind}`} role="status" aria-live="polite" data-testid="connection" data-state={kind} data-node={detail ?? ''}>
      <span className="conn-dot" aria-hidden="true" />
      <span className="conn-text">{text}</span>
      {detail && (
        <span className="conn-node" data-testid="node" title="The gateway serving this page">
          {detail}
        </span>
      )}
      {status.kind === 'reconnecting' && status.attempt > 0 && (
        <button type="button" className="link-button" onClick={onRetry}>
          Retry now
        </button>
      )}
    </div>
  );
}
