// Background backfill: older history of every conversation into the search index, a page at a
// time. tern-search's planner (in the worker, beside the index) decides which page comes next
// from its checkpoints; this driver fetches the page over the connection, decrypts it with the
// device's crypto state and hands the readable messages back, and the index stores them and the
// new checkpoint in one transaction, so a reload or a restart resumes where it stopped.

import { errorText, sleep, type DriverContext } from '../context';
import type { WireMessage } from '../protocol';
import { useApp } from '../../state/store';
import type { IndexedMessage } from './protocol';
import { search } from './service';

/** Pause between pages: the person's own requests and the page's main thread come first. */
const PAUSE_MS = 250;

export class Backfill {
  private running = false;
  private stopped = false;

  constructor(private readonly ctx: DriverContext) {}

  /** Starts (or continues) the backfill when the index and a connection are up. */
  kick(): void {
    this.stopped = false;
    if (!this.running && search.state === 'ready') void this.run();
  }

  stop(): void {
    this.stopped = true;
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (!this.stopped && this.ctx.running() && search.state === 'ready') {
        if (!(await this.step())) return;
        await sleep(PAUSE_MS);
      }
    } catch (e) {
      // The next connection (afterConnect) kicks it again from the stored checkpoints.
      console.warn('search backfill paused:', errorText(e));
    } finally {
      this.running = false;
    }
  }

  /** One page; false when there is nothing to do now (done, or offline). */
  private async step(): Promise<boolean> {
    const conn = this.ctx.connection();
    const device = this.ctx.device();
    if (!conn || !device) return false;
    const conversations = Object.values(useApp.getState().conversations).map((c) => ({
      conversation: c.id,
      newest_seq: c.lastSeq,
    }));
    const fetch = await search.backfillNext(conversations);
    if (!fetch) return false;
    let page;
    try {
      page = await conn.request((request_id) => ({
        type: 'history',
        request_id,
        conversation: fetch.conversation,
        before_seq: fetch.before_seq,
        after_seq: 0,
        limit: fetch.limit,
      }));
    } catch (e) {
      await search.backfillFailed(fetch);
      throw e;
    }
    if (page.type !== 'history_page') {
      await search.backfillFailed(fetch);
      return false;
    }
    const messages = page.messages.flatMap((m) => {
      const x = this.readable(m);
      return x ? [x] : [];
    });
    // Replay records advanced: stored with the rest of the crypto state.
    await device.persist();
    const lowest = page.messages.length
      ? page.messages.reduce((a, m) => Math.min(a, m.seq), Number.MAX_SAFE_INTEGER)
      : null;
    await search.backfillPage({
      conversation: fetch.conversation,
      before_seq: fetch.before_seq,
      lowest_seq: lowest,
      has_more: page.has_more,
      messages,
    });
    return true;
  }

  /** The message as the index keeps it, when this device can read it (a message whose key
   * never reached this device is left out; opening its history later indexes it if readable). */
  private readable(m: WireMessage): IndexedMessage | undefined {
    const device = this.ctx.device();
    if (!device || !m.content_type.startsWith('e2e.')) return undefined;
    const d = device.machine.decrypt(m);
    if (d.error !== undefined) return undefined;
    const text = d.file ? `${d.file.name} ${d.file.caption}`.trim() : d.text;
    if (!text) return undefined;
    return {
      conversation: m.conversation,
      seq: m.seq,
      sender: m.sender_user,
      sender_name: useApp.getState().usernames[m.sender_user] ?? '',
      sent_at_ms: m.timestamp_ms,
      text,
    };
  }
}
