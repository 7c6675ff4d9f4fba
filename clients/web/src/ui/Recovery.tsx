import { useId, useState, type FormEvent } from 'react';
import { MIN_PASSPHRASE_CHARS } from '../core/backup';
import { client } from '../core/client';

/** Recovery passphrase: set it up on this device, or restore the history on a new one. */
export function Recovery({ onClose }: { onClose: () => void }) {
  const [passphrase, setPassphrase] = useState('');
  const [busy, setBusy] = useState(false);
  const [status, setStatus] = useState<string>();
  const [error, setError] = useState<string>();
  const id = useId();
  const hint = useId();

  async function run(ev: FormEvent, what: 'create' | 'restore') {
    ev.preventDefault();
    setBusy(true);
    setError(undefined);
    setStatus(what === 'create' ? 'Sealing your keys…' : 'Opening the backup…');
    try {
      if (what === 'create') {
        const n = await client.setUpRecovery(passphrase);
        setStatus(
          `Recovery is set up (${n} key${n === 1 ? '' : 's'} backed up). Keep the passphrase safe.`,
        );
      } else {
        const n = await client.restoreRecovery(passphrase);
        setStatus(`Restored ${n} key${n === 1 ? '' : 's'}: earlier messages are readable again.`);
      }
      setPassphrase('');
    } catch (e) {
      setStatus(undefined);
      setError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <section className="recovery" aria-labelledby="recovery-heading">
      <h2 id="recovery-heading">Recovery passphrase</h2>
      <p>
        A passphrase lets a new device (or this browser after you log out) read your earlier
        messages. The server only stores your keys sealed with it.
      </p>
      <form onSubmit={(e) => void run(e, 'create')} aria-label="Recovery passphrase">
        <label htmlFor={id}>Passphrase</label>
        <input
          id={id}
          type="password"
          autoComplete="new-password"
          value={passphrase}
          minLength={MIN_PASSPHRASE_CHARS}
          required
          aria-describedby={hint}
          onChange={(e) => setPassphrase(e.target.value)}
        />
        <p id={hint} className="hint">
          At least {MIN_PASSPHRASE_CHARS} characters. A few unusual words work well.
        </p>
        <div className="row">
          <button type="submit" className="primary" disabled={busy}>
            Set up recovery
          </button>
          <button
            type="button"
            className="secondary"
            disabled={busy || passphrase.length === 0}
            onClick={(e) => void run(e, 'restore')}
          >
            Restore from backup
          </button>
          <button type="button" className="secondary" onClick={onClose}>
            Close
          </button>
        </div>
      </form>
      {status && <p role="status">{status}</p>}
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </section>
  );
}
