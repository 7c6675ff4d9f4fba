// Receiving. tern-core decides; this file does the I/O and the store updates:
// * Delivery (cursors, dedupe, gaps, acks): every `deliver`, `sync_complete` and backlog notice
//   goes in; messages come out in order, once; gap fetches and acks it asks for are sent; the
//   cursors it reports are kept in IndexedDB and given to the next Hello.
// * WaitingForKeys: decrypts, keeps messages whose key or sender device is not known yet, and
//   hands them back when a key share or a device-list answer makes them readable.

import type { Connection } from './connection';
import { errorText, type DriverContext } from './context';
import { queryDeviceLists } from './keys';
import type { Cursor, ServerMessage, WireMessage } from './protocol';
import { indexItems } from './search/feed';
import type { Core, CoreDelivery, CoreWaiting, Decrypted, Settled } from './wasm';
import {
  mergeItem,
  mergeItems,
  notify,
  updateTimeline,
  useApp,
  type TimelineItem,
} from '../state/store';

const CURSORS_KEY = 'cursors';
/** Acks and cursor writes are coalesced for this long. */
const ACK_DELAY_MS = 200;

export class Receiver {
  private delivery?: CoreDelivery;
  private waiting?: CoreWaiting;
  private inboxAckDue = new Set<number>();
  private ackTimer?: number;
  private pumping = false;
  private nextGapId = 1;

  constructor(
    private readonly ctx: DriverContext,
    private readonly unknownConversation: (id: string) => void,
  ) {}

  /** Opens Delivery with the cursors kept from the last session. */
  async load(core: Core): Promise<void> {
    this.reset();
    const cursors = (await this.ctx.device()?.local.get<Cursor[]>(CURSORS_KEY)) ?? [];
    this.delivery = core.newDelivery(cursors);
    this.waiting = core.newWaiting();
  }

  reset(): void {
    window.clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    this.delivery?.free();
    this.waiting?.free();
    this.delivery = undefined;
    this.waiting = undefined;
    this.inboxAckDue.clear();
  }

  /** Before each Hello: the positions to resume after. */
  onConnect(): Cursor[] {
    this.delivery?.onConnect();
    return this.delivery?.resumeCursors() ?? [];
  }

  /** Our own message was stored as `seq` (it is never delivered back to this device). */
  onOwnSend(conversation: string, seq: number): void {
    this.delivery?.onOwnSend(conversation, seq);
  }

  /** A server push; true when Delivery took it (deliver, sync_complete, backlog notices). */
  onServerMessage(m: ServerMessage): boolean {
    if (!this.delivery?.onServerMessage(m)) return false;
    void this.pump();
    return true;
  }

  /** Takes what Delivery has ready (in order), fetches the gaps it names, sends due acks. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      for (;;) {
        const delivery = this.delivery;
        if (!delivery) return;
        const popped = delivery.pop();
        if (popped) {
          if (popped.kind === 'message')
            this.show(popped.message, this.decrypt(popped.message), true);
          else if (popped.kind === 'skipped') {
            updateTimeline(popped.conversation, (t) => ({ ...t, hasMoreBefore: true }));
          }
          continue;
        }
        const conn = this.ctx.connection();
        const fetch = conn ? delivery.nextGapFetch(this.nextGapId++) : undefined;
        if (!conn || !fetch || fetch.type !== 'history') break;
        await this.fetchGap(conn, delivery, fetch);
      }
    } finally {
      this.pumping = false;
    }
    this.scheduleAcks();
  }

  private async fetchGap(
    conn: Connection,
    delivery: CoreDelivery,
    fetch: Extract<ReturnType<CoreDelivery['nextGapFetch']>, { type: 'history' }>,
  ): Promise<void> {
    try {
      const page = await conn.request(() => fetch);
      if (page.type === 'history_page') delivery.onHistoryPage(page);
      else delivery.onHistoryPage({ conversation: fetch.conversation, messages: [] });
    } catch (e) {
      // Skipped, not retried forever (tern-core marks the range unavailable).
      console.warn('gap fetch failed', errorText(e));
      delivery.onHistoryPage({ conversation: fetch.conversation, messages: [] });
    }
  }

  private decrypt(msg: WireMessage): Decrypted {
    const device = this.ctx.device();
    if (!device || !this.waiting) return { error: 'NoKeyYet' };
    if (!msg.content_type.startsWith('e2e.')) return { error: 'NotEncrypted' };
    const result = this.waiting.decrypt(device.machine, msg);
    // Replay records advanced (and waiting messages kept): stored with the rest of the state.
    void device.persist();
    if (this.waiting.hasUnknownSenders()) void this.resolveSenders();
    return result;
  }

  /** A history page (scrolling back): shown, not fed to Delivery (it is behind the cursor).
   *  One store update for the whole page: each update copies and re-renders the timeline. */
  showHistoryPage(conversation: string, page: WireMessage[]): void {
    const timeline = useApp.getState().timelines[conversation];
    const readable = new Set(
      (timeline?.items ?? []).filter((i) => i.text !== null).map((i) => i.seq),
    );
    const fresh = page.filter((m) => m.conversation === conversation && !readable.has(m.seq));
    if (fresh.length === 0) return;
    const items = fresh.map((m) => this.itemOf(m, this.decrypt(m)));
    updateTimeline(conversation, (t) => ({ ...t, items: mergeItems(t.items, items) }));
    indexItems(conversation, items);
    const newest = fresh.reduce((a, b) => (b.seq > a.seq ? b : a));
    const newestItem = items[fresh.indexOf(newest)];
    if (newestItem) this.summarize(newest, newestItem, false);
  }

  async onKeyShare(m: Extract<ServerMessage, { type: 'key_share' }>): Promise<void> {
    const device = this.ctx.device();
    const waiting = this.waiting;
    if (!device || !waiting) return;
    const { events, settled } = waiting.onKeyShare(device.machine, m, Date.now());
    // The key is on disk before its inbox entry is acknowledged.
    await device.persist();
    if (m.inbox_id > 0) this.inboxAckDue.add(m.inbox_id);
    this.scheduleAcks();
    this.showSettled(settled);
    for (const ev of events) {
      if (ev.type === 'rejected' || ev.type === 'untrusted_key') {
        notify(
          `A key from ${useApp.getState().usernames[ev.user ?? ''] ?? 'a contact'} was refused.`,
        );
      }
    }
    if (waiting.hasUnknownSenders()) await this.resolveSenders();
  }

  /** Senders whose device is not in our directory: look them up, then retry their messages. */
  private async resolveSenders(): Promise<void> {
    const conn = this.ctx.connection();
    const device = this.ctx.device();
    const waiting = this.waiting;
    if (!conn || !device || !waiting) return;
    const users = waiting.takeToQuery();
    if (users.length === 0) return;
    try {
      for (const u of users) device.machine.markDeviceListStale(u);
      await queryDeviceLists(conn, device, users);
    } catch (e) {
      console.warn('device lookup failed', errorText(e));
    }
    this.showSettled(waiting.retrySenders(device.machine, users));
    await device.persist();
  }

  /** After a backup import: every message that waited for a key is tried again; keys that
   * came from devices this one has not looked up yet need the senders' device lists first. */
  async retryAll(): Promise<void> {
    const device = this.ctx.device();
    if (!device || !this.waiting) return;
    this.showSettled(this.waiting.retryAll(device.machine));
    await device.persist();
    if (this.waiting.hasUnknownSenders()) await this.resolveSenders();
  }

  private showSettled(settled: Settled[]): void {
    for (const s of settled) this.show(s.message, s.result, false);
  }

  /** Puts a message (readable or with the reason it is not) in its timeline. */
  private show(msg: WireMessage, d: Decrypted, live: boolean): void {
    const item = this.itemOf(msg, d);
    updateTimeline(msg.conversation, (t) => ({ ...t, items: mergeItem(t.items, item) }));
    indexItems(msg.conversation, [item]);
    this.summarize(msg, item, live);
  }

  private itemOf(msg: WireMessage, d: Decrypted): TimelineItem {
    const me = useApp.getState().session?.userId;
    const file = d.error === undefined ? (d.file ?? undefined) : undefined;
    const text =
      d.error !== undefined
        ? null
        : file
          ? `📎 ${file.name}`
          : (d.text ?? `[${d.data?.content_type ?? 'data'}]`);
    return {
      key: msg.client_msg_id,
      seq: msg.seq,
      sender: msg.sender_user,
      text,
      file,
      undecryptable: d.error,
      timestampMs: msg.timestamp_ms,
      mine: msg.sender_user === me,
      state: 'sent',
    };
  }

  /** The conversation list's last message, last seq and unread count after `msg`. */
  private summarize(msg: WireMessage, item: TimelineItem, live: boolean): void {
    const text = item.text;
    if (!useApp.getState().conversations[msg.conversation])
      this.unknownConversation(msg.conversation);
    useApp.setState((s) => {
      const c = s.conversations[msg.conversation];
      if (!c) return {};
      const newer = msg.seq >= c.lastSeq || c.lastText === undefined;
      const unread =
        live && msg.seq > c.lastSeq && !item.mine && s.selected !== msg.conversation
          ? c.unread + 1
          : c.unread;
      return {
        conversations: {
          ...s.conversations,
          [msg.conversation]: {
            ...c,
            lastSeq: Math.max(c.lastSeq, msg.seq),
            unread,
            lastText: newer ? (text ?? 'Encrypted message') : c.lastText,
            lastAt: newer ? msg.timestamp_ms : c.lastAt,
          },
        },
      };
    });
  }

  private scheduleAcks(): void {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = window.setTimeout(() => {
      this.ackTimer = undefined;
      const conn = this.ctx.connection();
      const delivery = this.delivery;
      if (!conn || !delivery) return;
      for (const ack of delivery.acksDue()) {
        conn.send(ack).then(
          () => this.delivery?.onAckSent(ack.conversation, ack.seq),
          () => undefined,
        );
      }
      void this.ctx
        .device()
        ?.local.put(CURSORS_KEY, delivery.cursors())
        .catch(() => undefined);
      if (this.inboxAckDue.size > 0) {
        const ids = [...this.inboxAckDue].sort((a, b) => a - b);
        this.inboxAckDue.clear();
        void conn.send({ type: 'ack_key_shares', up_to: 0, ids }).catch(() => undefined);
      }
    }, ACK_DELAY_MS);
  }
}
