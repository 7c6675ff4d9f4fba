// What the page and the search worker say to each other, and the index's JSON shapes (the serde
// shapes of tern-search's public structs: ids are UUID strings, times are ms numbers).

/** The OPFS directory every account's index lives under (logout removes all of it). */
export const OPFS_ROOT = 'tern-search';

/** One decrypted message as the index keeps it. */
export interface IndexedMessage {
  conversation: string;
  seq: number;
  sender: string;
  /** The sender's username (display and "from" filters). */
  sender_name: string;
  /** The server's timestamp. */
  sent_at_ms: number;
  /** The decrypted text (a file's name and caption for attachments). */
  text: string;
}

export interface SearchQuery {
  /** The person's words; the last one is prefix-matched. */
  text: string;
  conversation?: string;
  sender?: string;
  since_ms?: number;
  until_ms?: number;
  limit: number;
}

export interface SnippetPart {
  text: string;
  highlight: boolean;
}

export interface SearchHit {
  conversation: string;
  seq: number;
  sender: string;
  sender_name: string;
  sent_at_ms: number;
  rank: number;
  snippet: SnippetPart[];
}

/** The next history page the backfill wants (tern-search's planner `PageRequest`): the newest
 * `limit` messages below `before_seq`. */
export interface BackfillFetch {
  conversation: string;
  before_seq: number;
  limit: number;
}

/** That page as fetched and decrypted (tern-search's `FetchedPage`). */
export interface FetchedPage {
  conversation: string;
  before_seq: number;
  /** The lowest seq the server returned, readable or not (null: an empty page). */
  lowest_seq: number | null;
  has_more: boolean;
  /** The page's messages this device could decrypt. */
  messages: IndexedMessage[];
}

export interface BackfillConversation {
  conversation: string;
  /** The newest seq the server reported (conversation list). */
  newest_seq: number;
}

export type Request =
  | {
      op: 'open';
      /** OPFS directory of this account's index. */
      directory: string;
      key: Uint8Array;
    }
  | { op: 'add'; messages: IndexedMessage[] }
  | { op: 'search'; query: SearchQuery }
  | { op: 'remove_conversation'; conversation: string }
  | { op: 'backfill_next'; conversations: BackfillConversation[] }
  | { op: 'backfill_page'; page: FetchedPage }
  | { op: 'backfill_failed'; fetch: BackfillFetch }
  | { op: 'stats' }
  | { op: 'close' }
  | { op: 'wipe' };

export interface OpenResult {
  /** false: OPFS is not available (the index lives in memory for this session only). */
  persistent: boolean;
  /** The stored index could not be opened with the key (wiped and created anew). */
  recreated: boolean;
}

export interface Stats {
  messages: number;
}

export type Response =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: string; name?: string };
