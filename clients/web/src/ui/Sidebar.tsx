import { useId, useState, type FormEvent } from 'react';
import { client } from '../core/client';
import { ApiError } from '../core/http';
import { useApp, type ConversationState } from '../state/store';
import { PresenceDot } from './Presence';
import { SearchBox } from './SearchBox';

function errorMessage(e: unknown): string {
  if (e instanceof ApiError) {
    if (e.status === 404) return 'No user with that name.';
    return e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

export function conversationTitle(c: ConversationState, me: string | undefined): string {
  if (c.kind === 'group') return c.name || 'Unnamed group';
  const other = c.members.find((m) => m.user_id !== me);
  return other?.username ?? (c.name || 'Direct chat');
}

function NewChat() {
  const [peer, setPeer] = useState('');
  const [error, setError] = useState<string>();
  const id = useId();
  const errId = useId();
  async function submit(ev: FormEvent) {
    ev.preventDefault();
    setError(undefined);
    try {
      const conv = await client.startDirect(peer);
      setPeer('');
      client.select(conv);
    } catch (e) {
      setError(errorMessage(e));
    }
  }
  return (
    <form className="new-chat" onSubmit={(e) => void submit(e)} aria-label="Start a new chat">
      <label htmlFor={id}>New chat</label>
      <div className="row">
        <input
          id={id}
          placeholder="username"
          value={peer}
          required
          autoComplete="off"
          aria-describedby={error ? errId : undefined}
          onChange={(e) => setPeer(e.target.value)}
        />
        <button type="submit" className="primary">
          Start
        </button>
      </div>
      {error && (
        <p id={errId} className="error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}

function NewGroup() {
  const [open, setOpen] = useState(false);
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  const [members, setMembers] = useState('');
  const [error, setError] = useState<string>();
  const ids = { name: useId(), desc: useId(), members: useId(), hint: useId() };
  async function submit(ev: FormEvent) {
    ev.preventDefault();
    setError(undefined);
    try {
      const list = members
        .split(/[\s,]+/)
        .map((m) => m.trim())
        .filter(Boolean);
      const conv = await client.createGroup(name, description, list);
      setOpen(false);
      setName('');
      setDescription('');
      setMembers('');
      client.select(conv);
    } catch (e) {
      setError(errorMessage(e));
    }
  }
  if (!open) {
    return (
      <button type="button" className="secondary wide" onClick={() => setOpen(true)}>
        New group
      </button>
    );
  }
  return (
    <form className="new-group" onSubmit={(e) => void submit(e)} aria-label="New group">
      <h2>New group</h2>
      <label htmlFor={ids.name}>Name</label>
      <input
        id={ids.name}
        value={name}
        required
        maxLength={100}
        onChange={(e) => setName(e.target.value)}
      />
      <label htmlFor={ids.desc}>Description</label>
      <input
        id={ids.desc}
        value={description}
        maxLength={500}
        onChange={(e) => setDescription(e.target.value)}
      />
      <label htmlFor={ids.members}>Invite (usernames)</label>
      <input
        id={ids.members}
        value={members}
        aria-describedby={ids.hint}
        onChange={(e) => setMembers(e.target.value)}
      />
      <p id={ids.hint} className="hint">
        Separate names with commas. They join when they accept.
      </p>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      <div className="row">
        <button type="submit" className="primary">
          Create group
        </button>
        <button type="button" className="secondary" onClick={() => setOpen(false)}>
          Cancel
        </button>
      </div>
    </form>
  );
}

function Invitations() {
  const invitations = useApp((s) => s.invitations);
  const [error, setError] = useState<string>();
  if (invitations.length === 0) return null;
  return (
    <section className="invitations" aria-labelledby="invitations-heading">
      <h2 id="invitations-heading">Invitations</h2>
      <ul>
        {invitations.map((i) => (
          <li key={i.conversation_id}>
            <span className="invite-text">
              {i.name ? (
                <>
                  <strong>{i.inviter}</strong> invites you to <strong>{i.name}</strong>
                </>
              ) : (
                <>
                  <strong>{i.inviter}</strong> wants to chat with you
                </>
              )}
            </span>
            <span className="row">
              <button
                type="button"
                className="primary"
                onClick={() =>
                  void client
                    .accept(i.conversation_id)
                    .then(() => client.select(i.conversation_id))
                    .catch((e: unknown) => setError(errorMessage(e)))
                }
              >
                Accept<span className="sr-only"> invitation from {i.inviter}</span>
              </button>
              <button
                type="button"
                className="secondary"
                onClick={() =>
                  void client
                    .decline(i.conversation_id)
                    .catch((e: unknown) => setError(errorMessage(e)))
                }
              >
                Decline<span className="sr-only"> invitation from {i.inviter}</span>
              </button>
            </span>
          </li>
        ))}
      </ul>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </section>
  );
}

function ConversationList() {
  const conversations = useApp((s) => s.conversations);
  const selected = useApp((s) => s.selected);
  const me = useApp((s) => s.session?.userId);
  const list = Object.values(conversations).sort((a, b) => (b.lastAt ?? 0) - (a.lastAt ?? 0));
  if (list.length === 0) return <p className="hint pad">No conversations yet.</p>;
  return (
    <ul className="conversations">
      {list.map((c) => {
        const title = conversationTitle(c, me);
        const other = c.kind === 'direct' ? c.members.find((m) => m.user_id !== me) : undefined;
        return (
          <li key={c.id}>
            <button
              type="button"
              className={c.id === selected ? 'conversation active' : 'conversation'}
              aria-current={c.id === selected ? 'true' : undefined}
              onClick={() => client.select(c.id)}
            >
              <span className="title">
                {other && <PresenceDot user={other.user_id} />}
                {title}
              </span>
              {c.unread > 0 && (
                <span className="unread">
                  {c.unread}
                  <span className="sr-only"> unread</span>
                </span>
              )}
              <span className="last">
                {c.lastText ?? (c.kind === 'group' ? c.description || 'Group' : 'Direct chat')}
              </span>
            </button>
          </li>
        );
      })}
    </ul>
  );
}

export function Sidebar() {
  return (
    <nav className="sidebar" aria-label="Conversations">
      <SearchBox />
      <NewChat />
      <NewGroup />
      <Invitations />
      <h2 className="list-heading">Chats</h2>
      <ConversationList />
    </nav>
  );
}
