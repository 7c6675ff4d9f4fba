// Sending: composed messages go into tern-core's Outbox (order, limits) and IndexedDB (one
// record per entry, written before the message shows as queued), then leave in order when
// tern-core's Drain says the outbox may send, encrypted for every member device (device lists,
// Olm sessions, key shares). Drain judges every failure: retry later, wait for the next
// connection, or reject for good (shown as failed, never retried forever).

import { ServerError, type Connection } from './connection';
import { errorText, type DriverContext } from './context';
import { hexToBytes, type ServerMessage } from './protocol';
import { indexItems } from './search/feed';
import type {
  Core,
  FileBodyJson,
  CoreDrain,
  CoreOutbox,
  CoreReconnect,
  OutboxEntryJson,
  SendFailure,
  TrustEvent,
} from './wasm';
import { mergeItem, notify, updateTimeline, useApp, type TimelineItem } from '../state/store';

/** Outbox entries kept at once (FR-20: the limit is shown; composing beyond it is refused).
 * Lower than tern-core's default (10,000): a browser tab's queue should stay readable. */
export const OUTBOX_LIMIT = 500;
/** Characters the composer accepts; tern-core bounds the payload bytes too. */
export const MAX_TEXT_CHARS = 8_000;
const TEXT = 'text';
/** Outbox content type of an attachment: the payload is the FileBody JSON, which tern-core
 * turns into its file body inside the encryption (the server sees `e2e.megolm.v2`). */
export const FILE_CONTENT_TYPE = 'tern.file';

/** The IndexedDB record: the entry as tern-core gave it, under its compose order. */
interface StoredEntry {
  order: number;
  entry: OutboxEntryJson;
}

type SendAck = Extract<ServerMessage, { type: 'send_ack' }>;

function fileOf(e: OutboxEntryJson): FileBodyJson | undefined {
  if (e.content_type !== FILE_CONTENT_TYPE) return undefined;
  try {
    return JSON.parse(new TextDecoder().decode(hexToBytes(e.payload))) as FileBodyJson;
  } catch {
    return undefined;
  }
}

function textOf(e: OutboxEntryJson): string {
  const file = fileOf(e);
  if (file) return `📎 ${file.name}`;
  return new TextDecoder().decode(hexToBytes(e.payload));
}

/** What tern-core's Drain needs to judge an exception from one send. */
function failureOf(e: unknown): SendFailure {
  if (e instanceof ServerError && e.raw) return e.raw;
  if (/frame too large/i.test(errorText(e))) return { kind: 'frame_too_large' };
  return { kind: 'transient' };
}

export class Sender {
  private outbox?: CoreOutbox;
  private drainer?: CoreDrain;
  private orders = new Map<string, number>();
  private nextOrder = 0;
  private draining = false;
  private retryTimer?: number;

  constructor(
    private readonly ctx: DriverContext,
    private readonly reconnect: () => CoreReconnect | undefined,
    private readonly core: () => Core | undefined,
    private readonly refreshConversations: () => Promise<void>,
    private readonly onOwnSend: (conversation: string, seq: number) => void,
  ) {}

  /** Loads what was composed before a reload into a new Outbox and shows it as queued. */
  async load(core: Core): Promise<void> {
    const device = this.ctx.device();
    if (!device) return;
    const stored = (await device.local.outbox<StoredEntry>()).sort((a, b) => a.order - b.order);
    this.reset();
    this.outbox = core.newOutbox(
      stored.map((r) => r.entry),
      { max_entries: OUTBOX_LIMIT },
    );
    this.drainer = core.newDrain();
    for (const r of stored) {
      this.orders.set(r.entry.client_msg_id, r.order);
      this.nextOrder = Math.max(this.nextOrder, r.order + 1);
      this.showQueued(r.entry);
    }
    this.updateCount();
  }

  reset(): void {
    window.clearTimeout(this.retryTimer);
    this.outbox?.free();
    this.drainer?.free();
    this.outbox = undefined;
    this.drainer = undefined;
    this.orders.clear();
    this.nextOrder = 0;
  }

  /** A new connection (after Welcome): parked entries may go again. */
  onConnected(): void {
    this.drainer?.onConnected();
    void this.drain();
  }

  private showQueued(e: OutboxEntryJson): void {
    const me = useApp.getState().session?.userId ?? '';
    updateTimeline(e.conversation, (t) => ({
      ...t,
      items: mergeItem(t.items, {
        key: e.client_msg_id,
        sender: me,
        text: textOf(e),
        file: fileOf(e),
        timestampMs: e.created_ms,
        mine: true,
        state: 'queued',
      }),
    }));
  }

  private updateCount(): void {
    useApp.setState({ outboxCount: this.outbox?.len() ?? 0, outboxLimit: OUTBOX_LIMIT });
  }

  private setState(e: OutboxEntryJson, state: TimelineItem['state'], error?: string): void {
    updateTimeline(e.conversation, (t) => ({
      ...t,
      items: t.items.map((i) => (i.key === e.client_msg_id ? { ...i, state, error } : i)),
    }));
  }

  /** Composes a message: in the outbox and IndexedDB before it shows (it survives a reload). */
  async compose(conversation: string, text: string): Promise<void> {
    const body = text.trim();
    if (!body) return;
    if (body.length > MAX_TEXT_CHARS)
      throw new Error(`a message holds at most ${MAX_TEXT_CHARS} characters`);
    await this.enqueue(conversation, TEXT, new TextEncoder().encode(body));
  }

  /** Composes the message that carries an uploaded file's key (see files.ts). */
  composeFile(conversation: string, file: FileBodyJson): Promise<void> {
    return this.enqueue(
      conversation,
      FILE_CONTENT_TYPE,
      new TextEncoder().encode(JSON.stringify(file)),
    );
  }

  private async enqueue(conversation: string, type: string, payload: Uint8Array): Promise<void> {
    const device = this.ctx.device();
    const outbox = this.outbox;
    if (!device || !outbox) throw new Error('not signed in');
    // Throws with counts and limits when the outbox is full or the message too large.
    const entry = outbox.compose(conversation, type, payload, Date.now());
    const order = this.nextOrder++;
    try {
      await device.local.putOutbox({ order, entry } satisfies StoredEntry);
    } catch (e) {
      outbox.remove(entry.client_msg_id);
      throw e;
    }
    this.orders.set(entry.client_msg_id, order);
    this.updateCount();
    this.showQueued(entry);
    void this.drain();
  }

  private async forget(e: OutboxEntryJson): Promise<void> {
    const order = this.orders.get(e.client_msg_id);
    this.orders.delete(e.client_msg_id);
    if (order !== undefined) await this.ctx.device()?.local.deleteOutbox(order);
    this.updateCount();
  }

  /** Sends the front entry while the Drain allows it; one at a time, in compose order. */
  async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      for (;;) {
        const outbox = this.outbox;
        const drainer = this.drainer;
        const reconnect = this.reconnect();
        const conn = this.ctx.connection();
        const entry = outbox?.front();
        if (!outbox || !drainer || !reconnect || !conn || !entry || !this.ctx.running()) return;
        if (!drainer.mayDrain(Date.now())) {
          this.retryLater(drainer.retryAt());
          return;
        }
        this.setState(entry, 'sending');
        try {
          const ack = await this.sendOne(conn, entry);
          const removed = outbox.onAcked(ack);
          this.onOwnSend(ack.conversation, ack.seq);
          await this.forget(removed ?? entry);
          this.showSent(entry, ack);
        } catch (e) {
          const decision = drainer.onSendFailed(
            outbox,
            entry.client_msg_id,
            failureOf(e),
            errorText(e),
            reconnect,
            Date.now(),
          );
          if (decision.decision === 'rejected') {
            await this.forget(entry);
            this.setState(entry, 'failed', decision.rejected.message);
            notify(`A message could not be sent: ${decision.rejected.message}`);
            continue;
          }
          this.setState(entry, 'queued');
          if (decision.gate.state === 'open') continue;
          if (decision.gate.state === 'at') this.retryLater(decision.gate.at_ms);
          // parked: the next connection's onConnected drains again.
          return;
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private retryLater(atMs: number | undefined): void {
    if (atMs === undefined) return;
    window.clearTimeout(this.retryTimer);
    this.retryTimer = window.setTimeout(() => void this.drain(), Math.max(atMs - Date.now(), 10));
  }

  private showSent(entry: OutboxEntryJson, ack: SendAck): void {
    const text = textOf(entry);
    const item: TimelineItem = {
      key: entry.client_msg_id,
      seq: ack.seq,
      sender: useApp.getState().session?.userId ?? '',
      text,
      file: fileOf(entry),
      timestampMs: ack.timestamp_ms,
      mine: true,
      state: 'sent',
    };
    updateTimeline(entry.conversation, (t) => ({ ...t, items: mergeItem(t.items, item) }));
    // Own messages are never delivered back to this device: indexed when stored.
    indexItems(entry.conversation, [item]);
    useApp.setState((s) => {
      const c = s.conversations[entry.conversation];
      if (!c) return {};
      return {
        conversations: {
          ...s.conversations,
          [entry.conversation]: {
            ...c,
            lastSeq: Math.max(c.lastSeq, ack.seq),
            lastText: text,
            lastAt: ack.timestamp_ms,
          },
        },
      };
    });
  }

  private fileRefs(
    core: Core,
    entry: OutboxEntryJson,
  ): { file_id: string; size: number; content_type: string }[] {
    const file = fileOf(entry);
    return file ? [core.fileRef(file)] : [];
  }

  private trustNotices(events: TrustEvent[]): void {
    for (const ev of events) {
      const name = useApp.getState().usernames[ev.user] ?? 'a contact';
      if (ev.type === 'identity_changed')
        notify(`Security: ${name}'s device key changed. Compare safety numbers.`);
    }
  }

  private async members(conversation: string): Promise<string[]> {
    const of = () =>
      (useApp.getState().conversations[conversation]?.members ?? []).map((m) => m.user_id);
    if (of().length === 0) await this.refreshConversations();
    return of();
  }

  /** Device lists and Olm sessions for every member device (tern-core's SendPlan decides the
   * round trips), then encrypt, store the key shares, send. */
  private async sendOne(conn: Connection, entry: OutboxEntryJson): Promise<SendAck> {
    const device = this.ctx.device();
    const core = this.core();
    if (!device || !core) throw new Error('no crypto state');
    const machine = device.machine;
    const members = await this.members(entry.conversation);
    const maxFrame = conn.welcome.maxFrameBytes || 65_536;
    const plan = core.newSendPlan(entry.conversation, members, maxFrame);
    try {
      for (
        let step = plan.next(machine, Date.now());
        step.step !== 'ready';
        step = plan.next(machine, Date.now())
      ) {
        if (step.step === 'query') {
          for (const first of step.batches) {
            let batch = first;
            while (batch.length > 0) {
              const users = batch;
              const answer = await conn.request((request_id) => ({
                type: 'query_keys',
                request_id,
                users,
              }));
              const result = plan.onQueryAnswer(machine, users, answer, Date.now());
              this.trustNotices(result.events);
              batch = result.retry;
            }
          }
        } else {
          for (const first of step.batches) {
            let batch = first;
            while (batch.length > 0) {
              const targets = batch;
              const answer = await conn.request((request_id) => ({
                type: 'claim_keys_batch',
                request_id,
                targets,
              }));
              batch = plan.onClaimAnswer(machine, targets, answer).retry;
            }
          }
        }
        await device.persist();
      }
    } finally {
      plan.free();
    }
    const encrypted = machine.encrypt(
      entry.conversation,
      entry.content_type,
      hexToBytes(entry.payload),
      Date.now(),
    );
    // The advanced index is stored before any byte leaves: a reload cannot reuse it.
    await device.persist();
    for (const shares of core.shareBatches(encrypted.key_shares, maxFrame)) {
      const stored = await conn.request((request_id) => ({
        type: 'send_key_shares',
        request_id,
        shares,
      }));
      if (stored.type === 'key_shares_stored' && stored.full.length > 0) {
        console.warn('recipient inboxes full: those devices miss this key', stored.full);
      }
    }
    const ack = await conn.request((request_id) => ({
      type: 'send',
      request_id,
      conversation: entry.conversation,
      client_msg_id: entry.client_msg_id,
      content_type: encrypted.content_type,
      payload: encrypted.payload,
      // The server keeps (and lets members download) only files a message names.
      files: this.fileRefs(core, entry),
    }));
    if (ack.type !== 'send_ack') throw new Error(`send answered with ${ack.type}`);
    return ack;
  }
}
