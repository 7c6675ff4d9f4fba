// The search index's dedicated worker. SQLite (compiled to wasm with FTS5 and page encryption,
// clients/search-wasm) keeps its files in the Origin Private File System through synchronous
// access handles, which exist only in dedicated workers; everything the index does (adding,
// querying, dropping, backfill bookkeeping) runs here, off the page's main thread.
//
// Requests are handled one at a time, in arrival order (the index is one connection); every
// request gets exactly one response with its id. Nothing here logs message text or the key.

import * as searchWasm from '@tern/search-wasm';
import {
  OPFS_ROOT,
  type IndexedMessage,
  type OpenResult,
  type Request,
  type Response,
  type SearchHit,
  type Stats,
} from './protocol';
/** The database's name inside the account's pool directory. */
const DB_NAME = 'index.db';

interface RawIndex {
  add(messagesJson: string): void;
  search(queryJson: string): string;
  removeConversation(conversation: string): number;
  backfillNext(conversationsJson: string): string | undefined;
  backfillPage(pageJson: string): void;
  backfillFailed(conversation: string, beforeSeq: number): void;
  count(): number;
  free(): void;
}

interface RawSearchModule {
  default(): Promise<unknown>;
  /** Installs the OPFS pool at `directory` as SQLite's default VFS; false when OPFS sync
   * access handles are not available here. */
  installOpfs(directory: string): Promise<boolean>;
  /** Removes the database files from the pool (closed first). */
  removeDatabase(name: string): void;
  /** Deletes every file of the pool and uninstalls it. */
  wipeOpfs(): void;
  /** Releases the pool's access handles (after the index is closed). */
  pauseOpfs(): void;
  SearchIndex: {
    open(name: string, key: Uint8Array): RawIndex;
    openInMemory(): RawIndex;
  };
}

interface Scope {
  onmessage: ((ev: MessageEvent<{ id: number; req: Request }>) => void) | null;
  postMessage(m: Response): void;
}
const scope = self as unknown as Scope;

let mod: RawSearchModule | undefined;
let index: RawIndex | undefined;
let directory: string | undefined;

async function module(): Promise<RawSearchModule> {
  if (!mod) {
    // Static import: the worker exists for the index, so its module is part of the worker.
    const m = searchWasm as unknown as RawSearchModule;
    await m.default();
    mod = m;
  }
  return mod;
}

async function open(dir: string, key: Uint8Array): Promise<OpenResult> {
  if (index) throw new Error('the index is already open');
  if (!dir.startsWith(OPFS_ROOT + '/')) throw new Error(`index directory outside ${OPFS_ROOT}`);
  const m = await module();
  if (!(await m.installOpfs(dir))) {
    index = m.SearchIndex.openInMemory();
    return { persistent: false, recreated: false };
  }
  directory = dir;
  try {
    index = m.SearchIndex.open(DB_NAME, key);
    return { persistent: true, recreated: false };
  } catch (e) {
    // A key that does not open it (the key was lost with IndexedDB) or damaged files: the
    // index is a cache of what this device decrypted, so it starts anew and backfills.
    console.warn('search index unreadable, starting a new one:', (e as Error).name);
    m.removeDatabase(DB_NAME);
    index = m.SearchIndex.open(DB_NAME, key);
    return { persistent: true, recreated: true };
  }
}

function opened(): RawIndex {
  if (!index) throw new Error('the search index is not open');
  return index;
}

/** Closes the index and deletes every OPFS file of search indexes (logout). */
async function wipe(): Promise<void> {
  index?.free();
  index = undefined;
  if (mod && directory) mod.wipeOpfs();
  directory = undefined;
  const root = await navigator.storage.getDirectory();
  try {
    await root.removeEntry(OPFS_ROOT, { recursive: true });
  } catch (e) {
    if ((e as DOMException).name !== 'NotFoundError') throw e;
  }
}

async function handle(req: Request): Promise<unknown> {
  switch (req.op) {
    case 'open':
      return open(req.directory, req.key);
    case 'add':
      opened().add(JSON.stringify(req.messages satisfies IndexedMessage[]));
      return null;
    case 'search':
      return JSON.parse(opened().search(JSON.stringify(req.query))) as SearchHit[];
    case 'remove_conversation':
      return opened().removeConversation(req.conversation);
    case 'backfill_next': {
      const next = opened().backfillNext(JSON.stringify(req.conversations));
      return next === undefined ? null : (JSON.parse(next) as unknown);
    }
    case 'backfill_page':
      opened().backfillPage(JSON.stringify(req.page));
      return null;
    case 'backfill_failed':
      opened().backfillFailed(req.fetch.conversation, req.fetch.before_seq);
      return null;
    case 'stats':
      return { messages: opened().count() } satisfies Stats;
    case 'close':
      index?.free();
      index = undefined;
      if (directory) mod?.pauseOpfs();
      return null;
    case 'wipe':
      await wipe();
      return null;
  }
}

let queue: Promise<void> = Promise.resolve();
scope.onmessage = (ev) => {
  const { id, req } = ev.data;
  queue = queue.then(async () => {
    try {
      scope.postMessage({ id, ok: true, value: await handle(req) });
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      scope.postMessage({ id, ok: false, error: err.message, name: err.name });
    }
  });
};
