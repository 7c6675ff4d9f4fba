// Sending: composed messages go into the outbox (IndexedDB) first, then leave in order, one at
// a time, encrypted for every member device (device lists, Olm sessions, key shares) when a
// connection is up. Permanent refusals are shown as failed, never retried forever.

import { ServerError, type Connection } from './connection';
import { sleep, type DriverContext } from './context';
import { queryDeviceLists } from './keys';
import { randomClientMsgId, type ClaimTarget, type ServerMessage } from './protocol';
import { mergeItem, notify, updateTimeline, useApp, type TimelineItem } from '../state/store';

/** Outbox entries kept at once (FR-20: the limit is shown; composing beyond it is refused). */
export const OUTBOX_LIMIT = 500;
/** Characters a message may hold; the frame limit bounds the ciphertext too. */
export const MAX_TEXT_CHARS = 8_000;
/** Device-list query and claim rounds per send (the SDK's MAX_QUERY_ROUNDS / MAX_CLAIM_ROUNDS). */
const MAX_QUERY_ROUNDS = 3;
const MAX_CLAIM_ROUNDS = 2;
/** Refusals that a retry cannot fix. */
const PERMANENT = [
  'forbidden',
  'not_found',
  'invalid_argument',
  'frame_too_large',
  'limit_exceeded',
];

export interface OutboxEntry {
  order: number;
  conversation: string;
  clientMsgId: string;
  text: string;
  createdMs: number;
}

type SendAck = Extract<ServerMessage, { type: 'send_ack' }>;

export class Sender {
  private outbox: OutboxEntry[] = [];
  private draining = false;

  constructor(
    private readonly ctx: DriverContext,
    private readonly refreshConversations: () => Promise<void>,
  ) {}

  /** Loads what was composed before a reload and shows it as queued. */
  async load(): Promise<void> {
    const device = this.ctx.device();
    if (!device) return;
    this.outbox = (await device.local.outbox<OutboxEntry>()).sort((a, b) => a.order - b.order);
    for (const e of this.outbox) this.showQueued(e);
    this.updateCount();
  }

  reset(): void {
    this.outbox = [];
  }

  private showQueued(e: OutboxEntry): void {
    const me = useApp.getState().session?.userId ?? '';
    updateTimeline(e.conversation, (t) => ({
      ...t,
      items: mergeItem(t.items, {
        key: e.clientMsgId,
        sender: me,
        text: e.text,
        timestampMs: e.createdMs,
        mine: true,
        state: 'queued',
      }),
    }));
  }

  private updateCount(): void {
    useApp.setState({ outboxCount: this.outbox.length, outboxLimit: OUTBOX_LIMIT });
  }

  private setState(entry: OutboxEntry, state: TimelineItem['state'], error?: string): void {
    updateTimeline(entry.conversation, (t) => ({
      ...t,
      items: t.items.map((i) => (i.key === entry.clientMsgId ? { ...i, state, error } : i)),
    }));
  }

  /** Composes a message: stored in the outbox first (it survives a reload), then sent. */
  async compose(conversation: string, text: string): Promise<void> {
    const body = text.trim();
    if (!body) return;
    if (body.length > MAX_TEXT_CHARS)
      throw new Error(`a message holds at most ${MAX_TEXT_CHARS} characters`);
    if (this.outbox.length >= OUTBOX_LIMIT) {
      throw new Error(
        `the outbox is full (${OUTBOX_LIMIT} messages waiting): wait for the network`,
      );
    }
    const device = this.ctx.device();
    if (!device) throw new Error('not signed in');
    const last = this.outbox[this.outbox.length - 1];
    const entry: OutboxEntry = {
      order: Math.max(Date.now(), (last?.order ?? 0) + 1),
      conversation,
      clientMsgId: randomClientMsgId(),
      text: body,
      createdMs: Date.now(),
    };
    await device.local.putOutbox(entry);
    this.outbox.push(entry);
    this.updateCount();
    this.showQueued(entry);
    void this.drain();
  }

  /** Sends outbox entries in order, one at a time; stops at the first that cannot go now. */
  async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.outbox.length > 0 && this.ctx.running()) {
        const conn = this.ctx.connection();
        const entry = this.outbox[0];
        if (!conn || conn.closed || !entry) return;
        this.setState(entry, 'sending');
        try {
          const ack = await this.sendOne(conn, entry);
          await this.done(entry);
          this.showSent(entry, ack);
        } catch (e) {
          if (e instanceof ServerError && e.code === 'rate_limited') {
            this.setState(entry, 'queued');
            await sleep(Math.max(e.retryAfterMs, 100));
            continue;
          }
          if (e instanceof ServerError && PERMANENT.includes(e.code)) {
            await this.done(entry);
            this.setState(entry, 'failed', e.message);
            notify(`A message could not be sent: ${e.message}`);
            continue;
          }
          // The connection went away: the entry stays queued for the next one.
          this.setState(entry, 'queued');
          return;
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private async done(entry: OutboxEntry): Promise<void> {
    await this.ctx.device()?.local.deleteOutbox(entry.order);
    this.outbox.shift();
    this.updateCount();
  }

  private showSent(entry: OutboxEntry, ack: SendAck): void {
    updateTimeline(entry.conversation, (t) => ({
      ...t,
      items: mergeItem(t.items, {
        key: entry.clientMsgId,
        seq: ack.seq,
        sender: useApp.getState().session?.userId ?? '',
        text: entry.text,
        timestampMs: ack.timestamp_ms,
        mine: true,
        state: 'sent',
      }),
    }));
    useApp.setState((s) => {
      const c = s.conversations[entry.conversation];
      if (!c) return {};
      return {
        conversations: {
          ...s.conversations,
          [entry.conversation]: {
            ...c,
            lastSeq: Math.max(c.lastSeq, ack.seq),
            lastText: entry.text,
            lastAt: ack.timestamp_ms,
          },
        },
      };
    });
  }

  private async members(conversation: string): Promise<string[]> {
    const of = () =>
      (useApp.getState().conversations[conversation]?.members ?? []).map((m) => m.user_id);
    if (of().length === 0) await this.refreshConversations();
    return of();
  }

  /** Device lists and Olm sessions for every member device, then encrypt, share keys, send. */
  private async sendOne(conn: Connection, entry: OutboxEntry): Promise<SendAck> {
    const device = this.ctx.device();
    if (!device) throw new Error('no crypto state');
    const machine = device.machine;
    const members = await this.members(entry.conversation);
    let queries = 0;
    let claims = 0;
    for (;;) {
      const needs = machine.prepare(entry.conversation, members, Date.now());
      if (needs.query_users.length > 0) {
        if (++queries > MAX_QUERY_ROUNDS)
          throw new Error('device lists stay stale after repeated queries');
        await queryDeviceLists(conn, device, needs.query_users);
        continue;
      }
      if (needs.claim.length > 0 && claims < MAX_CLAIM_ROUNDS) {
        claims++;
        const byUser = new Map<string, string[]>();
        for (const c of needs.claim) byUser.set(c.user, [...(byUser.get(c.user) ?? []), c.device]);
        const targets: ClaimTarget[] = [...byUser].map(([user, devices]) => ({ user, devices }));
        const reply = await conn.request((request_id) => ({
          type: 'claim_keys_batch',
          request_id,
          targets,
        }));
        if (reply.type !== 'key_bundle') throw new Error(`claim answered with ${reply.type}`);
        machine.onClaimed(reply.devices);
        await device.persist();
        continue;
      }
      break;
    }
    const encrypted = machine.encryptText(entry.conversation, entry.text, Date.now());
    // The advanced index is stored before any byte leaves: a reload cannot reuse it.
    await device.persist();
    if (encrypted.key_shares.length > 0) {
      await conn.request((request_id) => ({
        type: 'send_key_shares',
        request_id,
        shares: encrypted.key_shares,
      }));
    }
    const ack = await conn.request((request_id) => ({
      type: 'send',
      request_id,
      conversation: entry.conversation,
      client_msg_id: entry.clientMsgId,
      content_type: encrypted.content_type,
      payload: encrypted.payload,
      files: [],
    }));
    if (ack.type !== 'send_ack') throw new Error(`send answered with ${ack.type}`);
    return ack;
  }
}
