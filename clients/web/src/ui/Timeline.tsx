import { useVirtualizer } from '@tanstack/react-virtual';
import { memo, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';
import { client } from '../core/client';
import { formatBytes, isPreviewable, type FileBodyJson } from '../core/files';
import { useApp, type TimelineItem } from '../state/store';

const REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢'];
/** Rows rendered beyond the visible ones (smooth keyboard and wheel scrolling). */
const OVERSCAN = 8;

type Row =
  { kind: 'day'; key: string; label: string } | { kind: 'msg'; key: string; item: TimelineItem };

const dayFormat = new Intl.DateTimeFormat(undefined, {
  weekday: 'long',
  day: 'numeric',
  month: 'long',
  year: 'numeric',
});
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

function dayKey(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

function stateText(i: TimelineItem): string {
  switch (i.state) {
    case 'queued':
      return 'Queued';
    case 'sending':
      return 'Sending';
    case 'sent':
      // Groups say how far a message got before it reached everyone.
      return i.deliveredTo && i.recipients && i.recipients > 1
        ? `Delivered to ${i.deliveredTo} of ${i.recipients}`
        : 'Sent';
    case 'delivered':
      return i.recipients && i.recipients > 1 ? 'Delivered to everyone' : 'Delivered';
    case 'failed':
      return `Not sent${i.error ? `: ${i.error}` : ''}`;
  }
}

function undecryptableText(reason: string): string {
  switch (reason) {
    case 'NoKeyYet':
      return 'Waiting for this message’s key…';
    case 'Withheld':
      return 'The sender did not share the key for this message with this device.';
    case 'UntrustedDevice':
      return 'Checking the sender’s device…';
    case 'NotEncrypted':
      return 'This message was not end-to-end encrypted and is not shown.';
    default:
      return `This message cannot be decrypted (${reason}).`;
  }
}

/** An attachment: name, size, a download that verifies the hash, and images previewed
 * (decrypted in the page; the server only has ciphertext). */
function Attachment({ conversation, file }: { conversation: string; file: FileBodyJson }) {
  const transfer = useApp((s) => s.transfers[`down-${file.file_id}`]);
  const [preview, setPreview] = useState<string>();
  const [previewError, setPreviewError] = useState<string>();
  const previewable = isPreviewable(file);
  useEffect(() => {
    if (!previewable) return;
    let live = true;
    client.files
      .preview(file)
      .then((u) => live && setPreview(u))
      .catch((e: unknown) => live && setPreviewError(e instanceof Error ? e.message : String(e)));
    return () => {
      live = false;
    };
  }, [file, previewable]);
  const pct =
    transfer && transfer.total > 0 ? Math.round((100 * transfer.done) / transfer.total) : 0;
  return (
    <div className="attachment" data-testid="attachment">
      {preview && <img className="preview" src={preview} alt={file.name} data-testid="preview" />}
      {previewError && (
        <p className="error" role="alert">
          Preview failed: {previewError}
        </p>
      )}
      <p className="file-line">
        <span className="file-name">{file.name}</span>{' '}
        <span className="file-size">({formatBytes(file.size)})</span>
      </p>
      <button
        type="button"
        className="link small"
        disabled={transfer?.state === 'running'}
        onClick={() => void client.files.download(conversation, file)}
      >
        Download<span className="sr-only"> {file.name}</span>
      </button>
      {transfer?.state === 'running' && (
        <progress max={100} value={pct} aria-label={`Downloading ${file.name}`}>
          {pct}%
        </progress>
      )}
      {transfer?.state === 'verified' && (
        <span className="verified" data-testid="download-verified">
          {' '}
          Downloaded and verified
        </span>
      )}
      {transfer?.state === 'failed' && (
        <p className="error" role="alert" data-testid="download-failed">
          Download failed: {transfer.error}
        </p>
      )}
    </div>
  );
}

/** The last search-result opening whose message took keyboard focus. */
let lastFocused: number | undefined;
/** The last opening the view was centred on (module-wide: a remounted timeline must not pull
 * the reader back to the result after they scrolled away). */
let centred: number | undefined;

const Message = memo(function Message({
  conversation,
  item,
  showSender,
  focusNonce,
}: {
  conversation: string;
  item: TimelineItem;
  showSender: boolean;
  /** Set on the search result opened here: highlighted, and keyboard focus moves to it. */
  focusNonce?: number;
}) {
  const name = useApp((s) => s.usernames[item.sender] ?? 'Unknown');
  const ref = useRef<HTMLElement>(null);
  useEffect(() => {
    // Once per opening (a row scrolled out and back in mounts again and must not steal focus);
    // preventScroll: the virtualizer placed it already.
    if (focusNonce === undefined || focusNonce === lastFocused) return;
    lastFocused = focusNonce;
    ref.current?.focus({ preventScroll: true });
  }, [focusNonce]);
  const highlighted = focusNonce !== undefined;
  const reactions = useApp((s) =>
    item.seq !== undefined ? s.reactions[conversation]?.[item.seq] : undefined,
  );
  const me = useApp((s) => s.session?.userId);
  const [picker, setPicker] = useState(false);
  return (
    <article
      ref={ref}
      className={`msg${item.mine ? ' mine' : ''}${highlighted ? ' highlight' : ''}`}
      data-testid="message"
      data-seq={item.seq ?? ''}
      data-state={item.state}
      data-highlighted={highlighted ? 'true' : undefined}
      tabIndex={highlighted ? -1 : undefined}
      aria-label={`${highlighted ? 'Search result: ' : ''}${item.mine ? 'You' : name} at ${timeFormat.format(item.timestampMs)}`}
    >
      {showSender && !item.mine && <p className="sender">{name}</p>}
      {item.file ? (
        <Attachment conversation={conversation} file={item.file} />
      ) : item.text !== null ? (
        <p className="text">{item.text}</p>
      ) : (
        <p className="text undecryptable">{undecryptableText(item.undecryptable ?? 'Unknown')}</p>
      )}
      <p className="meta">
        <time dateTime={new Date(item.timestampMs).toISOString()}>
          {timeFormat.format(item.timestampMs)}
        </time>
        {item.mine && (
          <span className={`state ${item.state}`} data-testid="delivery">
            {' · '}
            {stateText(item)}
          </span>
        )}
      </p>
      {reactions && Object.keys(reactions).length > 0 && (
        <ul className="reactions" aria-label="Reactions">
          {Object.entries(reactions).map(([emoji, users]) => (
            <li key={emoji}>
              <button
                type="button"
                className={me && users.includes(me) ? 'reaction mine' : 'reaction'}
                aria-pressed={me ? users.includes(me) : false}
                data-testid="reaction"
                onClick={() =>
                  item.seq !== undefined && void client.react(conversation, item.seq, emoji)
                }
              >
                {emoji} {users.length}
                <span className="sr-only"> reaction{users.length === 1 ? '' : 's'}</span>
              </button>
            </li>
          ))}
        </ul>
      )}
      {item.seq !== undefined && (
        <div className="react-wrap">
          <button
            type="button"
            className="link small"
            aria-expanded={picker}
            onClick={() => setPicker((p) => !p)}
          >
            React<span className="sr-only"> to this message</span>
          </button>
          {picker && (
            <div className="emoji-picker" role="group" aria-label="Pick a reaction">
              {REACTIONS.map((e) => (
                <button
                  key={e}
                  type="button"
                  className="icon"
                  onClick={() => {
                    setPicker(false);
                    if (item.seq !== undefined) void client.react(conversation, item.seq, e);
                  }}
                >
                  {e}
                </button>
              ))}
            </div>
          )}
        </div>
      )}
    </article>
  );
});

/** The virtualised timeline: only the visible rows (plus a few) are in the DOM. */
export function TimelineView({ id }: { id: string }) {
  const timeline = useApp((s) => s.timelines[id]);
  const kind = useApp((s) => s.conversations[id]?.kind);
  const focus = useApp((s) => (s.focus?.conversation === id ? s.focus : undefined));
  const items = useMemo(() => timeline?.items ?? [], [timeline]);
  const rows = useMemo(() => {
    const out: Row[] = [];
    let lastDay = '';
    for (const item of items) {
      const d = dayKey(item.timestampMs);
      if (d !== lastDay) {
        out.push({ kind: 'day', key: `day-${d}`, label: dayFormat.format(item.timestampMs) });
        lastDay = d;
      }
      out.push({ kind: 'msg', key: item.key, item });
    }
    return out;
  }, [items]);

  const scrollRef = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const firstKey = useRef<string | undefined>(undefined);
  const heightBefore = useRef(0);
  // No React Compiler here: the virtualizer's functions are meant to be called fresh.
  // eslint-disable-next-line react-hooks/incompatible-library
  const virtualizer = useVirtualizer({
    count: rows.length,
    getScrollElement: () => scrollRef.current,
    estimateSize: (i) => (rows[i]?.kind === 'day' ? 36 : 72),
    overscan: OVERSCAN,
    getItemKey: (i) => rows[i]?.key ?? i,
  });

  // Older messages prepended: keep the reader's place. New ones appended: follow if at bottom.
  // The first *message* tells a prepend: the first row is a day separator, whose key stays the
  // same when older messages of that day arrive (the place was lost, the view stuck at the top,
  // and no further scroll event came to load the page before).
  useLayoutEffect(() => {
    const el = scrollRef.current;
    if (!el) return;
    const first = rows.find((r) => r.kind === 'msg')?.key;
    if (focus && centred !== focus.nonce) {
      // A search result: centred once it is loaded; until then the view does not follow the end.
      const at = rows.findIndex(
        (r) => r.kind === 'msg' && r.item.seq === focus.seq && r.item.text !== null,
      );
      if (at >= 0) {
        // One-shot: the estimated offset renders the row, then the real element is centred.
        // (The virtualizer's scrollToIndex keeps re-aiming at the index as rows are measured,
        // which pulled the view back whenever the person scrolled away.)
        const [offset] = virtualizer.getOffsetForIndex(at, 'center') ?? [0];
        el.scrollTop = offset;
        requestAnimationFrame(() =>
          el.querySelector('[data-highlighted="true"]')?.scrollIntoView({ block: 'center' }),
        );
        centred = focus.nonce;
      }
      atBottom.current = false;
    } else if (
      firstKey.current !== undefined &&
      first !== firstKey.current &&
      heightBefore.current > 0
    ) {
      el.scrollTop += el.scrollHeight - heightBefore.current;
    } else if (atBottom.current && rows.length > 0) {
      virtualizer.scrollToIndex(rows.length - 1, { align: 'end' });
    }
    firstKey.current = first;
    heightBefore.current = el.scrollHeight;
  }, [rows, virtualizer, focus]);

  useEffect(() => {
    const el = scrollRef.current;
    if (!el) return;
    const onScroll = () => {
      atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
      heightBefore.current = el.scrollHeight;
      if (el.scrollTop < 200 && timeline?.hasMoreBefore && !timeline.loadingHistory) {
        void client.loadOlder(id);
      }
    };
    el.addEventListener('scroll', onScroll, { passive: true });
    return () => el.removeEventListener('scroll', onScroll);
  }, [id, timeline?.hasMoreBefore, timeline?.loadingHistory]);

  /** Opened at a search result: near the end, the next newer page (state read now). */
  const onScrollNewer = () => {
    const el = scrollRef.current;
    const now = useApp.getState().timelines[id];
    if (!el || !now?.hasMoreAfter || now.loadingHistory) return;
    if (el.scrollHeight - el.scrollTop - el.clientHeight < 200) void client.loadNewer(id);
  };

  return (
    <div
      className="timeline"
      ref={scrollRef}
      onScroll={onScrollNewer}
      tabIndex={0}
      role="log"
      aria-label="Messages"
      aria-busy={timeline?.loadingHistory ?? false}
      data-testid="timeline"
    >
      {timeline?.loadingHistory && <p className="loading">Loading earlier messages…</p>}
      {rows.length === 0 && !timeline?.loadingHistory && (
        <p className="hint pad">No messages yet. Say hello!</p>
      )}
      <div className="timeline-inner" style={{ height: virtualizer.getTotalSize() }}>
        {virtualizer.getVirtualItems().map((v) => {
          const row = rows[v.index];
          if (!row) return null;
          return (
            <div
              key={v.key}
              data-index={v.index}
              ref={virtualizer.measureElement}
              className="row-wrap"
              style={{ transform: `translateY(${v.start}px)` }}
            >
              {row.kind === 'day' ? (
                <h2 className="day">{row.label}</h2>
              ) : (
                <Message
                  conversation={id}
                  item={row.item}
                  showSender={kind === 'group'}
                  focusNonce={
                    focus && row.item.seq === focus.seq && row.item.text !== null
                      ? focus.nonce
                      : undefined
                  }
                />
              )}
            </div>
          );
        })}
      </div>
    </div>
  );
}
