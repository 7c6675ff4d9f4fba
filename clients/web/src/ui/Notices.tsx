import { dismissNotice, useApp } from '../state/store';

/** Declines, errors and security warnings: a polite live region, each dismissable. */
export function Notices() {
  const notices = useApp((s) => s.notices);
  return (
    <div className="notices" role="status" aria-live="polite" aria-label="Notifications">
      {notices.map((n) => (
        <div key={n.id} className="notice">
          <span>{n.text}</span>
          <button type="button" className="link" onClick={() => dismissNotice(n.id)}>
            Dismiss<span className="sr-only"> notification</span>
          </button>
        </div>
      ))}
    </div>
  );
}
