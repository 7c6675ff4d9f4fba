import { useCallback, useEffect, useState } from 'react';
import { client } from '../core/client';
import type { DeviceView } from '../core/http';

const when = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

/** This account's devices: a device you do not recognise can be removed (its keys go). */
export function Devices({ onClose }: { onClose: () => void }) {
  const [state, setState] = useState<{ devices: DeviceView[]; current: string }>();
  const [msg, setMsg] = useState<string>();
  const load = useCallback(() => {
    client
      .myDevices()
      .then(setState, (e: unknown) => setMsg(e instanceof Error ? e.message : String(e)));
  }, []);
  useEffect(load, [load]);
  return (
    <section className="recovery" aria-labelledby="devices-heading">
      <h2 id="devices-heading">Your devices</h2>
      {!state && <p>Loading…</p>}
      <ul className="devices-list">
        {state?.devices.map((d) => (
          <li key={d.device_id} data-testid="device">
            <span>
              <strong>{d.device_id === state.current ? 'This browser' : 'Another device'}</strong>
              {' · '}
              {d.last_seen_ms > 0 ? `last seen ${when.format(d.last_seen_ms)}` : 'never connected'}
              {d.identity_key && (
                <>
                  {' · key '}
                  <code>{d.identity_key.slice(0, 12)}</code>
                </>
              )}
            </span>
            {d.device_id !== state.current && (
              <button
                type="button"
                className="secondary"
                onClick={() =>
                  void client
                    .revokeDevice(d.device_id)
                    .then(() => {
                      setMsg('Device removed.');
                      load();
                    })
                    .catch((e: unknown) => setMsg(e instanceof Error ? e.message : String(e)))
                }
              >
                Remove<span className="sr-only"> this device</span>
              </button>
            )}
          </li>
        ))}
      </ul>
      {msg && <p role="status">{msg}</p>}
      <div className="row">
        <button type="button" className="secondary" onClick={onClose}>
          Close
        </button>
      </div>
    </section>
  );
}
