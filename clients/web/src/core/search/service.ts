// The page's side of the search index: starts the dedicated worker (worker.ts) for the signed-in
// account with the index key this device keeps in IndexedDB beside the pickle key, feeds it the
// messages as they are decrypted (batched), asks it queries, drops a conversation the person
// left, and wipes the index (OPFS files included) at logout.

import type { LocalStore } from '../storage';
import { SEARCH_WORKER_URL, scriptUrl } from '../trusted';
import {
  OPFS_ROOT,
  type BackfillConversation,
  type BackfillFetch,
  type FetchedPage,
  type IndexedMessage,
  type OpenResult,
  type Request,
  type Response,
  type SearchHit,
  type SearchQuery,
  type Stats,
} from './protocol';

export type { IndexedMessage, SearchHit, SearchQuery } from './protocol';

/** IndexedDB key of the index's 32-byte encryption key (beside `pickle_key`). */
const KEY_NAME = 'search_key';
/** Messages waiting this long, or this many, are sent to the worker in one transaction. */
const FLUSH_DELAY_MS = 150;
const FLUSH_MAX = 500;
/** The most results one query asks for (tern-search's bound is higher). */
export const MAX_RESULTS = 50;
/** Longest query text sent (longer input is cut; the index bounds it too). */
export const MAX_QUERY_CHARS = 200;

export type SearchState = 'off' | 'opening' | 'ready' | 'failed';

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
}

export class SearchService {
  private worker?: Worker;
  private pending = new Map<number, Pending>();
  private nextId = 1;
  private queue: IndexedMessage[] = [];
  private flushTimer?: number;
  private opening?: Promise<OpenResult>;
  /** Where the index is: `persistent` false = in memory only (no OPFS in this browser). */
  info?: OpenResult;
  state: SearchState = 'off';
  private listeners = new Set<(s: SearchState) => void>();

  /** Opens this account's index (creating it and its key on first use). */
  start(userId: string, local: LocalStore): Promise<OpenResult> {
    this.opening ??= this.open(userId, local);
    return this.opening;
  }

  private async open(userId: string, local: LocalStore): Promise<OpenResult> {
    this.setState('opening');
    try {
      let key = await local.get<Uint8Array>(KEY_NAME);
      if (!(key instanceof Uint8Array) || key.length !== 32) {
        key = crypto.getRandomValues(new Uint8Array(32));
        await local.put(KEY_NAME, key);
      }
      this.worker = new Worker(scriptUrl(SEARCH_WORKER_URL), { type: 'module', name: 'search' });
      this.worker.onmessage = (ev: MessageEvent<Response>) => this.onResponse(ev.data);
      this.worker.onerror = (ev) => this.failAll(new Error(`search worker: ${ev.message}`));
      const info = (await this.call({
        op: 'open',
        directory: `${OPFS_ROOT}/${userId}`,
        key,
      })) as OpenResult;
      this.info = info;
      this.setState('ready');
      return info;
    } catch (e) {
      this.setState('failed');
      throw e;
    }
  }

  onState(f: (s: SearchState) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private setState(s: SearchState): void {
    this.state = s;
    for (const f of this.listeners) f(s);
  }

  private call(req: Request, worker = this.worker): Promise<unknown> {
    if (!worker) return Promise.reject(new Error('search is not running'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, req });
    });
  }

  private onResponse(r: Response): void {
    const p = this.pending.get(r.id);
    if (!p) return;
    this.pending.delete(r.id);
    if (r.ok) p.resolve(r.value);
    else {
      const e = new Error(r.error);
      if (r.name) e.name = r.name;
      p.reject(e);
    }
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  /** Queues decrypted messages for the index (one worker transaction per batch). */
  add(messages: IndexedMessage[]): void {
    if (this.state === 'off' || this.state === 'failed' || messages.length === 0) return;
    this.queue.push(...messages);
    if (this.queue.length >= FLUSH_MAX) void this.flush();
    else this.flushTimer ??= window.setTimeout(() => void this.flush(), FLUSH_DELAY_MS);
  }

  /** Sends what is queued now (a query waits for it, so a message just shown is found). */
  async flush(): Promise<void> {
    window.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    await this.opening;
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, FLUSH_MAX);
      try {
        await this.call({ op: 'add', messages: batch });
      } catch (e) {
        console.warn('search index: adding failed:', (e as Error).message);
      }
    }
  }

  async search(query: SearchQuery): Promise<SearchHit[]> {
    await this.flush();
    const q: SearchQuery = {
      ...query,
      text: query.text.slice(0, MAX_QUERY_CHARS),
      limit: Math.min(query.limit, MAX_RESULTS),
    };
    return (await this.call({ op: 'search', query: q })) as SearchHit[];
  }

  /** The person left or was removed: the conversation's messages leave the index. */
  async removeConversation(conversation: string): Promise<number> {
    this.queue = this.queue.filter((m) => m.conversation !== conversation);
    if (this.state !== 'ready') return 0;
    return (await this.call({ op: 'remove_conversation', conversation })) as number;
  }

  /** The planner's next history page to fetch, or undefined when the backfill is done. */
  async backfillNext(conversations: BackfillConversation[]): Promise<BackfillFetch | undefined> {
    const next = (await this.call({ op: 'backfill_next', conversations })) as BackfillFetch | null;
    return next ?? undefined;
  }

  /** A fetched page: its readable messages are indexed and the checkpoint moves past it, in
   * one transaction (a restart resumes after the last page done). */
  async backfillPage(page: FetchedPage): Promise<void> {
    await this.call({ op: 'backfill_page', page });
  }

  /** The page could not be fetched: the planner asks for it again later. */
  async backfillFailed(fetch: BackfillFetch): Promise<void> {
    await this.call({ op: 'backfill_failed', fetch });
  }

  async stats(): Promise<Stats> {
    return (await this.call({ op: 'stats' })) as Stats;
  }

  /** Closes the index (another tab took over): queued messages are written first. The
   * service is off at once, so a `start` right after opens a new worker (which waits for the
   * old one's files: OPFS access handles are exclusive). */
  async stop(): Promise<void> {
    const worker = this.worker;
    if (!worker) return;
    await this.flush().catch(() => undefined);
    if (this.worker !== worker) return;
    this.detach();
    await this.call({ op: 'close' }, worker).catch(() => undefined);
    worker.terminate();
  }

  /** Logout: the index and its OPFS files are deleted (the key goes with IndexedDB). */
  async wipe(): Promise<void> {
    this.queue = [];
    window.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const worker = this.worker;
    if (worker) {
      await this.opening?.catch(() => undefined);
      this.detach();
      await this.call({ op: 'wipe' }, worker).catch((e: Error) => {
        console.warn('search index: wipe in the worker failed:', e.message);
      });
      worker.terminate();
    }
    // Also when no worker ran in this tab (a follower tab logging out): nothing may remain.
    await removeOpfsRoot();
  }

  /** Off from now on; the old worker's pending calls still get their answers. */
  private detach(): void {
    this.worker = undefined;
    this.opening = undefined;
    this.info = undefined;
    this.queue = [];
    window.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.setState('off');
  }
}

/** Deletes every search index of this browser profile from OPFS (files a worker still holds
 * open cannot be deleted: the worker wipes its own first). */
async function removeOpfsRoot(): Promise<void> {
  const storage = navigator.storage as StorageManager | undefined;
  if (!storage?.getDirectory) return;
  try {
    const root = await storage.getDirectory();
    await root.removeEntry(OPFS_ROOT, { recursive: true });
  } catch (e) {
    const name = (e as DOMException).name;
    if (name !== 'NotFoundError') console.warn('search index: OPFS removal failed:', name);
  }
}

export const search = new SearchService();
