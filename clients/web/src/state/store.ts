// The app's state (zustand): what the screens render. The driver (core/client.ts) writes it;
// components only read it and call the driver's actions.

import { create } from 'zustand';
import type { InvitationView, MemberView } from '../core/http';
import type { FileBodyJson } from '../core/wasm';
import type { PresenceStatus } from '../core/protocol';
import type { TransportKind } from '../core/transport';

/** `delivered`: a device of every other member has it (the server's delivery marks). */
export type DeliveryState = 'queued' | 'sending' | 'sent' | 'delivered' | 'failed';

export interface TimelineItem {
  /** Stable key: the client message id (hex), known before the server assigns a seq. */
  key: string;
  seq?: number;
  sender: string;
  /** Plaintext, or null when it could not be decrypted (see `undecryptable`). */
  text: string | null;
  /** An attachment: what the sender's encrypted message says about the file. */
  file?: FileBodyJson;
  undecryptable?: string;
  timestampMs: number;
  mine: boolean;
  state: DeliveryState;
  /** Own sent messages: how many of the other members have it, of how many. */
  deliveredTo?: number;
  recipients?: number;
  error?: string;
}

/** An upload or download in progress (or failed, until dismissed). */
export interface TransferView {
  id: string;
  kind: 'upload' | 'download';
  conversation: string;
  name: string;
  /** Encrypted bytes moved so far, of `total`. */
  done: number;
  total: number;
  state: 'running' | 'failed' | 'verified';
  error?: string;
}

export interface ConversationState {
  id: string;
  kind: 'direct' | 'group';
  name: string;
  description: string;
  members: MemberView[];
  lastSeq: number;
  unread: number;
  lastText?: string;
  lastAt?: number;
}

export interface Timeline {
  items: TimelineItem[];
  /** The server has messages older than the oldest item. */
  hasMoreBefore: boolean;
  loadingHistory: boolean;
  /** Opened at a search result: messages newer than `newestLoaded` are not loaded yet (they are
   * fetched as the person scrolls down; live messages may already sit after the gap). */
  hasMoreAfter?: boolean;
  newestLoaded?: number;
}

/** A message to scroll to and highlight (a search result opened in its conversation). */
export interface Focus {
  conversation: string;
  seq: number;
  /** Changes on every opening, so opening the same result again scrolls again. */
  nonce: number;
}

export interface ConnectionView {
  /** `other-tab`: another tab of this account holds the connection (one sender per account). */
  status: 'offline' | 'connecting' | 'connected' | 'reconnecting' | 'other-tab';
  transport?: TransportKind;
  detail?: string;
}

export interface Session {
  token: string;
  userId: string;
  username: string;
  expiresAtMs: number;
}

export interface AppState {
  session?: Session;
  connection: ConnectionView;
  conversations: Record<string, ConversationState>;
  timelines: Record<string, Timeline>;
  /** conversation → seq → emoji → user ids */
  reactions: Record<string, Record<number, Record<string, string[]>>>;
  presence: Record<string, { status: PresenceStatus; lastSeenMs: number }>;
  /** conversation → user → until (ms) */
  typing: Record<string, Record<string, number>>;
  invitations: InvitationView[];
  usernames: Record<string, string>;
  selected?: string;
  focus?: Focus;
  /** Short messages for the polite live region (declines, errors, new devices). */
  notices: { id: number; text: string }[];
  outboxCount: number;
  outboxLimit: number;
  /** Uploads and downloads by id (`up-N`, `down-<file id>`). */
  transfers: Record<string, TransferView>;
}

export const initialState: AppState = {
  connection: { status: 'offline' },
  conversations: {},
  timelines: {},
  reactions: {},
  presence: {},
  typing: {},
  invitations: [],
  usernames: {},
  notices: [],
  outboxCount: 0,
  outboxLimit: 500,
  transfers: {},
};

export const useApp = create<AppState>(() => ({ ...initialState }));

let noticeId = 0;
/** Notices kept on screen at once. */
const MAX_NOTICES = 5;

export function notify(text: string): void {
  useApp.setState((s) => ({
    notices: [...s.notices, { id: ++noticeId, text }].slice(-MAX_NOTICES),
  }));
}

export function dismissNotice(id: number): void {
  useApp.setState((s) => ({ notices: s.notices.filter((n) => n.id !== id) }));
}

/** Inserts or replaces `item` keeping the timeline ordered by seq (unsent items last). */
export function mergeItem(items: TimelineItem[], item: TimelineItem): TimelineItem[] {
  const out = items.filter(
    (i) => i.key !== item.key && (item.seq === undefined || i.seq !== item.seq),
  );
  out.push(item);
  out.sort(byTimelineOrder);
  return out;
}

/** By seq; unsent items (no seq yet) last, by compose time. */
function byTimelineOrder(a: TimelineItem, b: TimelineItem): number {
  if (a.seq !== undefined && b.seq !== undefined) return a.seq - b.seq;
  if (a.seq !== undefined) return -1;
  if (b.seq !== undefined) return 1;
  return a.timestampMs - b.timestampMs;
}

/** `mergeItem` for many items at once: one filter and one sort. */
export function mergeItems(items: TimelineItem[], add: TimelineItem[]): TimelineItem[] {
  if (add.length === 1 && add[0]) return mergeItem(items, add[0]);
  const keys = new Set(add.map((i) => i.key));
  const seqs = new Set(add.flatMap((i) => (i.seq === undefined ? [] : [i.seq])));
  const out = items.filter((i) => !keys.has(i.key) && (i.seq === undefined || !seqs.has(i.seq)));
  out.push(...add);
  out.sort(byTimelineOrder);
  return out;
}

/** Updates one conversation's timeline (creating it empty). */
export function updateTimeline(conversation: string, f: (t: Timeline) => Timeline): void {
  useApp.setState((s) => {
    const t = s.timelines[conversation] ?? {
      items: [],
      hasMoreBefore: true,
      loadingHistory: false,
    };
    return { timelines: { ...s.timelines, [conversation]: f(t) } };
  });
}
