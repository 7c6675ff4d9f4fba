import { useEffect, useId, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import { client, MAX_TEXT_CHARS } from '../core/client';
import type { TrustedDevice } from '../core/wasm';
import { useApp } from '../state/store';
import { presenceText } from './Presence';
import { conversationTitle } from './Sidebar';
import { TimelineView } from './Timeline';

const EMOJI = ['😀', '😂', '👍', '❤️', '🎉', '🙏', '😮', '😢'];

function TypingLine({ id }: { id: string }) {
  const typing = useApp((s) => s.typing[id]);
  const names = useApp((s) => s.usernames);
  const me = useApp((s) => s.session?.userId);
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = window.setInterval(() => setNow(Date.now()), 1_000);
    return () => window.clearInterval(t);
  }, []);
  const who = Object.entries(typing ?? {})
    .filter(([u, until]) => u !== me && until > now)
    .map(([u]) => names[u] ?? 'Someone');
  return (
    <p className="typing" aria-live="polite" data-testid="typing">
      {who.length === 1
        ? `${who[0]} is typing…`
        : who.length > 1
          ? `${who.join(', ')} are typing…`
          : ''}
    </p>
  );
}

/** Uploads of this conversation: progress, and cancel (or dismiss a failed one). */
function Uploads({ id }: { id: string }) {
  const transfers = useApp((s) => s.transfers);
  const mine = Object.values(transfers).filter((t) => t.kind === 'upload' && t.conversation === id);
  if (mine.length === 0) return null;
  return (
    <ul className="uploads" aria-label="Uploads">
      {mine.map((t) => {
        const pct = t.total > 0 ? Math.round((100 * t.done) / t.total) : 0;
        return (
          <li key={t.id} data-testid="upload" data-state={t.state}>
            <span className="file-name">{t.name}</span>{' '}
            {t.state === 'running' ? (
              <progress max={100} value={pct} aria-label={`Uploading ${t.name}`}>
                {pct}%
              </progress>
            ) : (
              <span className="error" role="alert">
                Not sent: {t.error}
              </span>
            )}
            <button
              type="button"
              className="secondary small"
              onClick={() => client.files.cancel(t.id)}
            >
              {t.state === 'running' ? 'Cancel' : 'Dismiss'}
              <span className="sr-only"> {t.name}</span>
            </button>
          </li>
        );
      })}
    </ul>
  );
}

function Composer({ id }: { id: string }) {
  const follower = useApp((s) => s.connection.status === 'other-tab');
  const [text, setText] = useState('');
  const [error, setError] = useState<string>();
  const [emojiOpen, setEmojiOpen] = useState(false);
  const inputId = useId();
  const fileInputId = useId();
  const ref = useRef<HTMLTextAreaElement>(null);

  useEffect(() => ref.current?.focus(), []);

  async function submit(ev?: FormEvent) {
    ev?.preventDefault();
    setError(undefined);
    const body = text;
    if (!body.trim()) return;
    setText('');
    try {
      await client.send(id, body);
    } catch (e) {
      setText(body);
      setError(e instanceof Error ? e.message : String(e));
    }
  }

  function onKeyDown(ev: KeyboardEvent<HTMLTextAreaElement>) {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.nativeEvent.isComposing) {
      ev.preventDefault();
      void submit();
    }
  }

  return (
    <form className="composer" onSubmit={(e) => void submit(e)} aria-label="Send a message">
      <label htmlFor={inputId} className="sr-only">
        Message
      </label>
      <textarea
        id={inputId}
        ref={ref}
        rows={1}
        value={text}
        maxLength={MAX_TEXT_CHARS}
        placeholder={follower ? 'Tern is open in another tab' : 'Write a message…'}
        disabled={follower}
        onChange={(e) => {
          setText(e.target.value);
          if (e.target.value) client.typing(id);
          else client.stopTyping(id);
        }}
        onBlur={() => client.stopTyping(id)}
        onKeyDown={onKeyDown}
      />
      <div className="emoji-wrap">
        <button
          type="button"
          className="icon"
          aria-expanded={emojiOpen}
          aria-label="Insert emoji"
          onClick={() => setEmojiOpen((o) => !o)}
        >
          🙂
        </button>
        {emojiOpen && (
          <div className="emoji-picker" role="group" aria-label="Emoji">
            {EMOJI.map((e) => (
              <button
                key={e}
                type="button"
                className="icon"
                onClick={() => {
                  setText((t) => t + e);
                  setEmojiOpen(false);
                  ref.current?.focus();
                }}
              >
                {e}
              </button>
            ))}
          </div>
        )}
      </div>
      <label htmlFor={fileInputId} className={follower ? 'icon attach disabled' : 'icon attach'}>
        <span aria-hidden="true">📎</span>
        <span className="sr-only">Attach files</span>
      </label>
      <input
        id={fileInputId}
        type="file"
        multiple
        className="sr-only"
        disabled={follower}
        data-testid="attach"
        onChange={(e) => {
          const files = e.target.files;
          if (files && files.length > 0) client.sendFiles(id, Array.from(files));
          e.target.value = '';
        }}
      />
      <button type="submit" className="primary" disabled={follower}>
        Send
      </button>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}

function InviteMember({ id }: { id: string }) {
  const [name, setName] = useState('');
  const [msg, setMsg] = useState<string>();
  const inputId = useId();
  async function submit(ev: FormEvent) {
    ev.preventDefault();
    try {
      await client.invite(id, name);
      setMsg(`Invited ${name.trim()}.`);
      setName('');
    } catch (e) {
      setMsg(e instanceof Error ? e.message : String(e));
    }
  }
  return (
    <form className="invite-member" onSubmit={(e) => void submit(e)} aria-label="Invite to group">
      <label htmlFor={inputId}>Invite</label>
      <input
        id={inputId}
        value={name}
        required
        placeholder="username"
        onChange={(e) => setName(e.target.value)}
      />
      <button type="submit" className="secondary">
        Invite
      </button>
      {msg && <span role="status">{msg}</span>}
    </form>
  );
}

/** Safety numbers: compare with the other person (in person or on a call), then mark verified. */
function VerifyPanel({ user, name }: { user: string; name: string }) {
  const [state, setState] = useState<{ number?: string; devices: TrustedDevice[] }>();
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    let live = true;
    void client.verification(user).then((v) => live && setState(v));
    return () => {
      live = false;
    };
  }, [user]);
  if (!state) return <p className="pad">Loading…</p>;
  const verified = state.devices.length > 0 && state.devices.every((d) => d.trust === 'verified');
  const groups = state.number?.match(/\d{5}/g) ?? [];
  return (
    <section className="verify" aria-labelledby="verify-heading">
      <h2 id="verify-heading">Verify {name}</h2>
      {state.number ? (
        <>
          <p>Compare this number with the one {name} sees. If they match, nobody is in between.</p>
          <p
            className="safety-number"
            data-testid="safety-number"
            aria-label={`Safety number ${groups.join(' ')}`}
          >
            {groups.map((g, i) => (
              <span key={i}>{g}</span>
            ))}
          </p>
        </>
      ) : (
        <p>{name}’s keys are not known yet: exchange a message first.</p>
      )}
      <ul className="devices" aria-label={`${name}’s devices`}>
        {state.devices.map((d) => (
          <li key={d.device}>
            Device <code>{d.fingerprint.slice(0, 24)}</code> —{' '}
            {d.trust === 'changed' ? 'key changed!' : d.trust}
          </li>
        ))}
      </ul>
      {state.number && !verified && (
        <button
          type="button"
          className="primary"
          disabled={busy}
          onClick={() => {
            setBusy(true);
            void client
              .markVerified(user)
              .then(() => client.verification(user))
              .then(setState)
              .finally(() => setBusy(false));
          }}
        >
          They match: mark {name} as verified
        </button>
      )}
      {verified && <p className="ok-text">{name} is verified.</p>}
    </section>
  );
}

/** The owner's member list: remove someone (they receive nothing sent from then on). */
function Members({ id }: { id: string }) {
  const c = useApp((s) => s.conversations[id]);
  const me = useApp((s) => s.session?.userId);
  const [msg, setMsg] = useState<string>();
  if (!c) return null;
  return (
    <section className="members" aria-labelledby="members-heading">
      <h2 id="members-heading">Members</h2>
      <ul>
        {c.members.map((m) => (
          <li key={m.user_id}>
            <span>
              {m.username}
              {m.role === 'owner' ? ' (owner)' : ''}
            </span>
            {m.user_id !== me && (
              <button
                type="button"
                className="secondary"
                onClick={() =>
                  void client
                    .removeMember(id, m.username)
                    .then(() => setMsg(`Removed ${m.username}.`))
                    .catch((e: unknown) => setMsg(e instanceof Error ? e.message : String(e)))
                }
              >
                Remove<span className="sr-only"> {m.username}</span>
              </button>
            )}
          </li>
        ))}
      </ul>
      {msg && <p role="status">{msg}</p>}
    </section>
  );
}

export function ConversationView({ id }: { id: string }) {
  const c = useApp((s) => s.conversations[id]);
  const me = useApp((s) => s.session?.userId);
  const invitation = useApp((s) => s.invitations.find((i) => i.conversation_id === id));
  const presence = useApp((s) => s.presence);
  const [panel, setPanel] = useState<'verify' | 'members' | undefined>();
  const [dropping, setDropping] = useState(false);

  if (!c) return <p className="pad">Loading…</p>;
  const title = conversationTitle(c, me);
  const other = c.kind === 'direct' ? c.members.find((m) => m.user_id !== me) : undefined;
  const owner = c.members.find((m) => m.role === 'owner')?.user_id === me;
  const sub =
    c.kind === 'direct'
      ? other
        ? presenceText(presence[other.user_id]?.status)
        : 'waiting for them to accept'
      : `${c.members.length} member${c.members.length === 1 ? '' : 's'}${c.description ? ` · ${c.description}` : ''}`;

  return (
    <section
      className={dropping ? 'conversation-view dropping' : 'conversation-view'}
      aria-labelledby="conversation-title"
      onDragOver={(e) => {
        if (!e.dataTransfer.types.includes('Files')) return;
        e.preventDefault();
        e.dataTransfer.dropEffect = 'copy';
        setDropping(true);
      }}
      onDragLeave={(e) => {
        if (e.currentTarget === e.target) setDropping(false);
      }}
      onDrop={(e) => {
        if (e.dataTransfer.files.length === 0) return;
        e.preventDefault();
        setDropping(false);
        client.sendFiles(id, Array.from(e.dataTransfer.files));
      }}
    >
      {dropping && (
        <p className="drop-hint" aria-hidden="true">
          Drop to send encrypted
        </p>
      )}
      <header className="conv-header">
        <button type="button" className="secondary back" onClick={() => client.select(undefined)}>
          <span aria-hidden="true">←</span> Chats
        </button>
        <div>
          <h1 id="conversation-title">{title}</h1>
          <p className="sub" data-testid="conversation-sub">
            {sub}
          </p>
        </div>
        <div className="header-actions">
          {other && (
            <button
              type="button"
              className="secondary"
              aria-expanded={panel === 'verify'}
              onClick={() => setPanel((p) => (p === 'verify' ? undefined : 'verify'))}
            >
              Verify
            </button>
          )}
          {c.kind === 'group' && owner && (
            <button
              type="button"
              className="secondary"
              aria-expanded={panel === 'members'}
              onClick={() => setPanel((p) => (p === 'members' ? undefined : 'members'))}
            >
              Members
            </button>
          )}
        </div>
      </header>
      {invitation && (
        <div className="request" role="region" aria-label="Message request">
          <p>
            {invitation.name
              ? `${invitation.inviter} invited you to ${invitation.name}.`
              : `${invitation.inviter} wants to chat with you.`}
          </p>
          <button type="button" className="primary" onClick={() => void client.accept(id)}>
            Accept
          </button>
          <button type="button" className="secondary" onClick={() => void client.decline(id)}>
            Decline
          </button>
        </div>
      )}
      {c.kind === 'group' && owner && <InviteMember id={id} />}
      {panel === 'verify' && other && <VerifyPanel user={other.user_id} name={other.username} />}
      {panel === 'members' && <Members id={id} />}
      <TimelineView id={id} />
      <TypingLine id={id} />
      <Uploads id={id} />
      <Composer id={id} />
    </section>
  );
}
