// What of a decrypted timeline item goes into the index: its text (an attachment's name and
// caption), who sent it (id and username) and the server's time. Items without a seq (not
// stored yet) or without readable text are left out.

import type { TimelineItem } from '../../state/store';
import { useApp } from '../../state/store';
import type { IndexedMessage } from './protocol';
import { search } from './service';

export function indexedOf(conversation: string, item: TimelineItem): IndexedMessage | undefined {
  if (item.seq === undefined || item.text === null) return undefined;
  const text = item.file ? `${item.file.name} ${item.file.caption}`.trim() : item.text;
  if (!text) return undefined;
  return {
    conversation,
    seq: item.seq,
    sender: item.sender,
    sender_name: useApp.getState().usernames[item.sender] ?? '',
    sent_at_ms: item.timestampMs,
    text,
  };
}

/** Hands readable items to the index (no-op while search is off, e.g. in a follower tab). */
export function indexItems(conversation: string, items: TimelineItem[]): void {
  const out: IndexedMessage[] = [];
  for (const i of items) {
    const m = indexedOf(conversation, i);
    if (m) out.push(m);
  }
  search.add(out);
}
