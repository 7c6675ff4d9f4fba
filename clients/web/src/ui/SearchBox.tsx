import {
  useEffect,
  useId,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type KeyboardEvent,
} from 'react';
import { client } from '../core/client';
import { MAX_QUERY_CHARS, MAX_RESULTS, search, type SearchHit } from '../core/search/service';
import { useApp } from '../state/store';
import { conversationTitle } from './Sidebar';

/** Typing pauses this long before the index is asked (results as you type, not per key). */
const DEBOUNCE_MS = 150;

const dateFormat = new Intl.DateTimeFormat(undefined, {
  day: 'numeric',
  month: 'short',
  year: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
});

/** `yyyy-mm-dd` of a date input as local midnight (start) or the last ms of that day (end). */
function dayBound(value: string, end: boolean): number | undefined {
  if (!value) return undefined;
  const [y, m, d] = value.split('-').map(Number);
  if (!y || !m || !d) return undefined;
  const start = new Date(y, m - 1, d).getTime();
  return end ? new Date(y, m - 1, d + 1).getTime() - 1 : start;
}

function useSearchState() {
  return useSyncExternalStore(
    (f) => search.onState(f),
    () => search.state,
  );
}

function Snippet({ hit }: { hit: SearchHit }) {
  return (
    <span className="snippet">
      {hit.snippet.map((p, i) => (p.highlight ? <mark key={i}>{p.text}</mark> : p.text))}
    </span>
  );
}

/** The message search: results as you type (ranked, snippets highlighted), filters by
 * conversation, sender and date; a result opens its conversation at the message. An ARIA 1.2
 * combobox: arrow keys move through the results, Enter opens, Escape closes. */
export function SearchBox() {
  const state = useSearchState();
  const conversations = useApp((s) => s.conversations);
  const usernames = useApp((s) => s.usernames);
  const me = useApp((s) => s.session?.userId);
  const [text, setText] = useState('');
  const [conversation, setConversation] = useState('');
  const [sender, setSender] = useState('');
  const [since, setSince] = useState('');
  const [until, setUntil] = useState('');
  /** The last answer, with the query it answers: shown only while that query is current. */
  const [answer, setAnswer] = useState<{ key: string; hits: SearchHit[]; status: string }>();
  const [open, setOpen] = useState(false);
  const [active, setActive] = useState(-1);
  const asked = useRef(0);
  const ids = {
    input: useId(),
    list: useId(),
    status: useId(),
    conv: useId(),
    from: useId(),
    since: useId(),
    until: useId(),
  };

  const people = useMemo(
    () =>
      Object.entries(usernames)
        .map(([id, name]) => ({ id, name: id === me ? `${name} (you)` : name }))
        .sort((a, b) => a.name.localeCompare(b.name)),
    [usernames, me],
  );

  const words = text.trim();
  const key = JSON.stringify([words, conversation, sender, since, until]);
  const current = words && state === 'ready' && answer?.key === key ? answer : undefined;
  const hits = current?.hits ?? [];
  const status =
    state === 'failed' ? 'Search is not available in this browser.' : (current?.status ?? '');

  useEffect(() => {
    if (!words || state !== 'ready') return;
    const n = ++asked.current;
    const timer = window.setTimeout(() => {
      search
        .search({
          text: words,
          conversation: conversation || undefined,
          sender: sender || undefined,
          since_ms: dayBound(since, false),
          until_ms: dayBound(until, true),
          limit: MAX_RESULTS,
        })
        .then(
          (found) => {
            if (n !== asked.current) return;
            setActive(-1);
            setAnswer({
              key,
              hits: found,
              status:
                found.length === 0
                  ? 'No messages found.'
                  : `${found.length}${found.length === MAX_RESULTS ? '+' : ''} message${found.length === 1 ? '' : 's'} found.`,
            });
          },
          (e: unknown) => {
            if (n !== asked.current) return;
            setAnswer({
              key,
              hits: [],
              status: `Search failed: ${e instanceof Error ? e.message : String(e)}`,
            });
          },
        );
    }, DEBOUNCE_MS);
    return () => window.clearTimeout(timer);
  }, [key, words, conversation, sender, since, until, state]);

  function choose(hit: SearchHit | undefined) {
    if (!hit) return;
    setOpen(false);
    void client.openAt(hit.conversation, hit.seq);
  }

  function onKeyDown(ev: KeyboardEvent<HTMLInputElement>) {
    if (ev.key === 'ArrowDown' && hits.length > 0) {
      ev.preventDefault();
      setOpen(true);
      setActive((a) => (a + 1) % hits.length);
    } else if (ev.key === 'ArrowUp' && hits.length > 0) {
      ev.preventDefault();
      setOpen(true);
      setActive((a) => (a <= 0 ? hits.length - 1 : a - 1));
    } else if (ev.key === 'Enter' && open && hits.length > 0) {
      ev.preventDefault();
      choose(hits[active >= 0 ? active : 0]);
    } else if (ev.key === 'Escape') {
      if (open) setOpen(false);
      else setText('');
    }
  }

  const expanded = open && hits.length > 0;
  const optionId = (i: number) => `${ids.list}-${i}`;
  return (
    <section className="search" role="search" aria-label="Messages">
      <label htmlFor={ids.input}>Search messages</label>
      <input
        id={ids.input}
        type="search"
        role="combobox"
        autoComplete="off"
        spellCheck={false}
        maxLength={MAX_QUERY_CHARS}
        placeholder={state === 'ready' ? 'Words, or the start of a word' : 'Search is starting…'}
        value={text}
        aria-expanded={expanded}
        aria-controls={ids.list}
        aria-autocomplete="list"
        aria-describedby={ids.status}
        aria-activedescendant={expanded && active >= 0 ? optionId(active) : undefined}
        onChange={(e) => {
          setText(e.target.value);
          setOpen(true);
        }}
        onFocus={() => setOpen(true)}
        onKeyDown={onKeyDown}
      />
      <details className="search-filters">
        <summary>Filters</summary>
        <label htmlFor={ids.conv}>In</label>
        <select
          id={ids.conv}
          value={conversation}
          onChange={(e) => setConversation(e.target.value)}
        >
          <option value="">All conversations</option>
          {Object.values(conversations).map((c) => (
            <option key={c.id} value={c.id}>
              {conversationTitle(c, me)}
            </option>
          ))}
        </select>
        <label htmlFor={ids.from}>From</label>
        <select id={ids.from} value={sender} onChange={(e) => setSender(e.target.value)}>
          <option value="">Anyone</option>
          {people.map((p) => (
            <option key={p.id} value={p.id}>
              {p.name}
            </option>
          ))}
        </select>
        <label htmlFor={ids.since}>Since</label>
        <input
          id={ids.since}
          type="date"
          value={since}
          onChange={(e) => setSince(e.target.value)}
        />
        <label htmlFor={ids.until}>Until</label>
        <input
          id={ids.until}
          type="date"
          value={until}
          onChange={(e) => setUntil(e.target.value)}
        />
      </details>
      <p id={ids.status} className="hint" role="status" aria-live="polite">
        {status}
      </p>
      <ul
        id={ids.list}
        role="listbox"
        aria-label="Search results"
        className="search-results"
        hidden={!expanded}
        data-testid="search-results"
      >
        {hits.map((h, i) => {
          const c = conversations[h.conversation];
          return (
            <li
              key={`${h.conversation}-${h.seq}`}
              id={optionId(i)}
              role="option"
              aria-selected={i === active}
              className={i === active ? 'hit active' : 'hit'}
              data-testid="search-hit"
              onMouseDown={(e) => e.preventDefault()}
              onClick={() => choose(h)}
            >
              <span className="hit-head">
                <span className="hit-conv">{c ? conversationTitle(c, me) : 'Conversation'}</span>
                <span className="hit-from">
                  {h.sender === me ? 'You' : h.sender_name || usernames[h.sender] || 'Someone'}
                </span>
                <time dateTime={new Date(h.sent_at_ms).toISOString()}>
                  {dateFormat.format(h.sent_at_ms)}
                </time>
              </span>
              <Snippet hit={h} />
            </li>
          );
        })}
      </ul>
    </section>
  );
}
