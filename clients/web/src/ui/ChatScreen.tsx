import { useEffect, useState } from 'react';
import { client } from '../core/client';
import { useApp } from '../state/store';
import { ConnectionBadge } from './ConnectionBadge';
import { ConversationView } from './ConversationView';
import { Devices } from './Devices';
import { Recovery } from './Recovery';
import { Sidebar } from './Sidebar';

export function ChatScreen() {
  const username = useApp((s) => s.session?.username);
  const selected = useApp((s) => s.selected);
  const [busy, setBusy] = useState(false);
  const [panel, setPanel] = useState<'recovery' | 'devices' | undefined>();

  useEffect(() => {
    const onVisibility = () => client.setPresence(document.hidden ? 'away' : 'online');
    document.addEventListener('visibilitychange', onVisibility);
    return () => document.removeEventListener('visibilitychange', onVisibility);
  }, []);

  return (
    <div className={selected ? 'shell has-selection' : 'shell'}>
      <header className="topbar">
        <span className="brand small" aria-hidden="true">
          Tern
        </span>
        <ConnectionBadge />
        <span className="me">
          <span className="sr-only">Signed in as </span>
          {username}
        </span>
        <button
          type="button"
          className="secondary"
          aria-expanded={panel === 'devices'}
          onClick={() => setPanel((p) => (p === 'devices' ? undefined : 'devices'))}
        >
          Devices
        </button>
        <button
          type="button"
          className="secondary"
          aria-expanded={panel === 'recovery'}
          onClick={() => setPanel((p) => (p === 'recovery' ? undefined : 'recovery'))}
        >
          Recovery
        </button>
        <button
          type="button"
          className="secondary"
          disabled={busy}
          onClick={() => {
            setBusy(true);
            void client.logout().finally(() => setBusy(false));
          }}
        >
          Log out
        </button>
      </header>
      <Sidebar />
      <main className="main" aria-label="Conversation">
        {panel === 'recovery' && <Recovery onClose={() => setPanel(undefined)} />}
        {panel === 'devices' && <Devices onClose={() => setPanel(undefined)} />}
        {selected ? (
          <ConversationView key={selected} id={selected} />
        ) : (
          <div className="empty">
            <h1>Welcome, {username}</h1>
            <p>Start a chat: type a username under “New chat” and press Start.</p>
          </div>
        )}
      </main>
    </div>
  );
}
