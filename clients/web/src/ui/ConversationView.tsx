import { useEffect, useId, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import { client, MAX_TEXT_CHARS } from '../core/client';
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

function Composer({ id }: { id: string }) {
  const [text, setText] = useState('');
  const [error, setError] = useState<string>();
  const [emojiOpen, setEmojiOpen] = useState(false);
  const inputId = useId();
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
        placeholder="Write a message…"
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
      <button type="submit" className="primary">
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

export function ConversationView({ id }: { id: string }) {
  const c = useApp((s) => s.conversations[id]);
  const me = useApp((s) => s.session?.userId);
  const invitation = useApp((s) => s.invitations.find((i) => i.conversation_id === id));
  const presence = useApp((s) => s.presence);

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
    <section className="conversation-view" aria-labelledby="conversation-title">
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
      <TimelineView id={id} />
      <TypingLine id={id} />
      <Composer id={id} />
    </section>
  );
}
