import { client } from '../core/client';
import { useApp } from '../state/store';

const TRANSPORT_NAMES = { webtransport: 'WebTransport', websocket: 'WebSocket' } as const;

/** The connection state, always visible (and announced when it changes). */
export function ConnectionBadge() {
  const c = useApp((s) => s.connection);
  const queued = useApp((s) => s.outboxCount);
  const limit = useApp((s) => s.outboxLimit);
  let text: string;
  switch (c.status) {
    case 'connected':
      text = `Connected over ${c.transport ? TRANSPORT_NAMES[c.transport] : 'the network'}`;
      break;
    case 'connecting':
      text = 'Connecting…';
      break;
    case 'reconnecting':
      text = 'Reconnecting…';
      break;
    case 'other-tab':
      text = 'Open in another tab';
      break;
    default:
      text = 'Offline';
  }
  return (
    <span
      className={`badge ${c.status}`}
      role="status"
      aria-live="polite"
      data-testid="connection"
      data-status={c.status}
      data-transport={c.status === 'connected' ? c.transport : ''}
      title={c.detail}
    >
      <span className="dot" aria-hidden="true" />
      {text}
      {c.status === 'other-tab' && (
        <button type="button" className="link" onClick={() => client.useHere()}>
          Use here
        </button>
      )}
      {queued > 0 && (
        <span className="queued">
          {' '}
          · {queued} of {limit} waiting to send
        </span>
      )}
    </span>
  );
}
