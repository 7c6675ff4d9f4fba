// Receiving: key shares into the machine (then acknowledged), messages decrypted and shown,
// messages whose key has not arrived kept and retried, cursors acknowledged once shown.

import type { DriverContext } from './context';
import { queryDeviceLists } from './keys';
import type { ServerMessage, WireMessage } from './protocol';
import { mergeItem, notify, updateTimeline, useApp, type TimelineItem } from '../state/store';

/** Messages kept waiting for their key (the SDK keeps 10,000; a tab keeps fewer). */
const MAX_WAITING = 2_000;
/** Acks are coalesced for this long (one per conversation, one for the inbox). */
const ACK_DELAY_MS = 200;

export class Receiver {
  /** Messages waiting for their Megolm key, by conversation, oldest first. */
  private waiting = new Map<string, WireMessage[]>();
  private waitingCount = 0;
  private inboxAckDue = new Set<number>();
  private ackDue = new Map<string, number>();
  private ackTimer?: number;

  constructor(
    private readonly ctx: DriverContext,
    private readonly unknownConversation: (id: string) => void,
  ) {}

  reset(): void {
    this.waiting.clear();
    this.waitingCount = 0;
    this.inboxAckDue.clear();
    this.ackDue.clear();
  }

  async onKeyShare(m: Extract<ServerMessage, { type: 'key_share' }>): Promise<void> {
    const device = this.ctx.device();
    if (!device) return;
    const events = device.machine.onKeyShare(
      { from_user: m.from_user, from_device: m.from_device, payload: m.payload },
      Date.now(),
    );
    // The key is on disk before its inbox entry is acknowledged.
    await device.persist();
    if (m.inbox_id > 0) this.inboxAckDue.add(m.inbox_id);
    this.scheduleAcks();
    for (const ev of events) {
      if (ev.type === 'room_key_received' && ev.conversation) {
        const waiting = this.waiting.get(ev.conversation);
        if (waiting) {
          this.waiting.delete(ev.conversation);
          this.waitingCount -= waiting.length;
          for (const msg of waiting) await this.onMessage(msg, false);
        }
      } else if (ev.type === 'unknown_device' && ev.user) {
        await this.resolveSender(ev.user);
      } else if (ev.type === 'rejected' || ev.type === 'untrusted_key') {
        notify(
          `A key from ${useApp.getState().usernames[ev.user ?? ''] ?? 'a contact'} was refused.`,
        );
      }
    }
  }

  /** A sender's device is not in our directory yet: look it up, then retry what waits. */
  private async resolveSender(user: string): Promise<void> {
    const conn = this.ctx.connection();
    const device = this.ctx.device();
    if (!conn || !device) return;
    device.machine.markDeviceListStale(user);
    try {
      await queryDeviceLists(conn, device, [user]);
    } catch {
      return;
    }
    const all = [...this.waiting.values()].flat();
    this.waiting.clear();
    this.waitingCount = 0;
    for (const msg of all) await this.onMessage(msg, false);
  }

  /** Keeps a message whose key has not arrived (a key for its conversation retries them). */
  private park(msg: WireMessage): void {
    if (this.waitingCount >= MAX_WAITING) {
      const oldest = this.waiting.keys().next().value;
      if (oldest !== undefined) {
        this.waitingCount -= this.waiting.get(oldest)?.length ?? 0;
        this.waiting.delete(oldest);
      }
    }
    const list = this.waiting.get(msg.conversation) ?? [];
    if (list.some((x) => x.message_id === msg.message_id)) return;
    list.push(msg);
    this.waiting.set(msg.conversation, list);
    this.waitingCount++;
  }

  /** A delivered (`live`) or history message: decrypt, show, acknowledge. */
  async onMessage(msg: WireMessage, live: boolean): Promise<void> {
    const device = this.ctx.device();
    const me = useApp.getState().session?.userId;
    if (!device || !me) return;
    const known = useApp
      .getState()
      .timelines[msg.conversation]?.items.find(
        (i) => i.key === msg.client_msg_id && i.seq === msg.seq && i.text !== null,
      );
    if (!known) {
      let text: string | null = null;
      let undecryptable: string | undefined;
      if (msg.content_type.startsWith('e2e.')) {
        const d = device.machine.decrypt(msg);
        if (d.error === undefined) {
          text = d.text ?? `[${d.data?.content_type ?? 'data'}]`;
        } else {
          undecryptable = d.error;
          if (d.error === 'NoKeyYet' || d.error === 'UntrustedDevice') this.park(msg);
          if (d.error === 'UntrustedDevice') void this.resolveSender(msg.sender_user);
        }
        // Replay records advanced: stored with the rest of the state.
        await device.persist();
      } else {
        // The app sends only encrypted messages: anything else is marked, never shown as text.
        undecryptable = 'NotEncrypted';
      }
      const item: TimelineItem = {
        key: msg.client_msg_id,
        seq: msg.seq,
        sender: msg.sender_user,
        text,
        undecryptable,
        timestampMs: msg.timestamp_ms,
        mine: msg.sender_user === me,
        state: 'sent',
      };
      updateTimeline(msg.conversation, (t) => ({ ...t, items: mergeItem(t.items, item) }));
      if (!useApp.getState().conversations[msg.conversation])
        this.unknownConversation(msg.conversation);
      useApp.setState((s) => {
        const c = s.conversations[msg.conversation];
        if (!c) return {};
        const newer = msg.seq > c.lastSeq || c.lastText === undefined;
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
    if (live) {
      const prev = this.ackDue.get(msg.conversation) ?? 0;
      if (msg.seq > prev) this.ackDue.set(msg.conversation, msg.seq);
      this.scheduleAcks();
    }
  }

  private scheduleAcks(): void {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = window.setTimeout(() => {
      this.ackTimer = undefined;
      const conn = this.ctx.connection();
      if (!conn) return;
      for (const [conversation, seq] of this.ackDue) {
        void conn.send({ type: 'ack', conversation, seq }).catch(() => undefined);
      }
      this.ackDue.clear();
      if (this.inboxAckDue.size > 0) {
        const ids = [...this.inboxAckDue].sort((a, b) => a - b);
        this.inboxAckDue.clear();
        void conn
          .send({ type: 'ack_key_shares', up_to: ids[ids.length - 1] ?? 0, ids })
          .catch(() => undefined);
      }
    }, ACK_DELAY_MS);
  }
}
