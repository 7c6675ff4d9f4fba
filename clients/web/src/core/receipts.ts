// Delivery receipts: the "delivered" state of this user's own messages. tern-core's
// DeliveryMarks merges every `delivered` ServerMessage: live pushes (the server sends one to
// the senders of what a member's device just acknowledged) and the answer to `get_delivered`,
// asked when a conversation opens and whenever the connection comes back (pushes missed while
// offline). This file only asks, and writes each own message's count into the timeline.

import { updateTimeline, useApp, type AppState, type Timeline } from '../state/store';
import type { DriverContext } from './context';
import type { ServerMessage } from './protocol';
import type { Core, CoreDeliveryMarks } from './wasm';

type Delivered = Extract<ServerMessage, { type: 'delivered' }>;

export class Receipts {
  private marks?: CoreDeliveryMarks;
  /** The timeline and member list last looked at per conversation: only changed ones are
   *  restated (a new member changes who counts). */
  private seen = new Map<string, { t: Timeline; members: unknown }>();
  private unsubscribe?: () => void;
  private queued = new Set<string>();

  constructor(private readonly ctx: DriverContext) {}

  load(core: Core): void {
    this.reset();
    this.marks = core.newDeliveryMarks();
    this.unsubscribe = useApp.subscribe((s) => this.onState(s));
  }

  reset(): void {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    this.marks?.free();
    this.marks = undefined;
    this.seen.clear();
    this.queued.clear();
  }

  onDelivered(m: Delivered): void {
    if (this.marks?.apply(m.conversation, m.marks)) this.restate(m.conversation);
  }

  /** Asks for every member's mark (on opening a conversation, after reconnecting). */
  async refresh(conversation: string | undefined): Promise<void> {
    const conn = this.ctx.connection();
    if (!conversation || !conn || !this.marks) return;
    const reply = await conn.request((request_id) => ({
      type: 'get_delivered',
      request_id,
      conversation,
    }));
    if (reply.type === 'delivered' && reply.conversation === conversation) this.onDelivered(reply);
  }

  forget(conversation: string): void {
    this.marks?.forget(conversation);
    this.seen.delete(conversation);
  }

  /** New items (a send became `sent`, a history page) and member changes are restated once the
   *  update ends. */
  private onState(s: AppState): void {
    for (const [conversation, t] of Object.entries(s.timelines)) {
      const seen = this.seen.get(conversation);
      const members = s.conversations[conversation]?.members;
      if ((seen?.t === t && seen.members === members) || this.queued.has(conversation)) continue;
      this.queued.add(conversation);
      queueMicrotask(() => {
        this.queued.delete(conversation);
        this.restate(conversation);
      });
    }
  }

  /** Recomputes own messages not yet delivered to everyone (delivered ones stay delivered). */
  private restate(conversation: string): void {
    const s = useApp.getState();
    const t = s.timelines[conversation];
    const members = s.conversations[conversation]?.members.map((m) => m.user_id);
    const me = s.session?.userId;
    const marks = this.marks;
    if (!t || !members || !me || !marks) return;
    let changed = false;
    const items = t.items.map((i) => {
      if (!i.mine || i.seq === undefined || i.state !== 'sent') return i;
      const d = marks.state(conversation, i.seq, me, members);
      const state = d.recipients > 0 && d.delivered === d.recipients ? 'delivered' : 'sent';
      if (state === i.state && d.delivered === i.deliveredTo && d.recipients === i.recipients) {
        return i;
      }
      changed = true;
      return { ...i, state, deliveredTo: d.delivered, recipients: d.recipients } as const;
    });
    if (changed) updateTimeline(conversation, (x) => ({ ...x, items }));
    const now = useApp.getState();
    this.seen.set(conversation, {
      t: now.timelines[conversation] ?? t,
      members: now.conversations[conversation]?.members,
    });
  }
}
