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
  /** The timeline and member list last looked at per conversation. */
  private seen = new Map<string, { t: Timeline; members: unknown }>();
  /** Items (keys) whose state was worked out since the conversation's marks last moved: a
   *  timeline change only costs the new items (a 10,000-message send burst stays linear). */
  private evaluated = new Map<string, Set<string>>();
  /** Conversations with at least one mark: without one, nothing can be delivered. */
  private withMarks = new Set<string>();
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
    this.evaluated.clear();
    this.withMarks.clear();
    this.queued.clear();
  }

  onDelivered(m: Delivered): void {
    if (!this.marks?.apply(m.conversation, m.marks)) return;
    this.withMarks.add(m.conversation);
    this.evaluated.delete(m.conversation);
    this.restate(m.conversation);
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
    this.evaluated.delete(conversation);
    this.withMarks.delete(conversation);
  }

  /** New items (a send became `sent`, a history page) and member changes are restated once the
   *  update ends. */
  private onState(s: AppState): void {
    for (const [conversation, t] of Object.entries(s.timelines)) {
      const seen = this.seen.get(conversation);
      const members = s.conversations[conversation]?.members;
      if ((seen?.t === t && seen.members === members) || this.queued.has(conversation)) continue;
      // A new member changes who counts: everything is worked out again.
      if (seen && seen.members !== members) this.evaluated.delete(conversation);
      this.queued.add(conversation);
      queueMicrotask(() => {
        this.queued.delete(conversation);
        this.restate(conversation);
      });
    }
  }

  /** Works out own sent messages not looked at since the marks last moved (delivered ones stay
   *  delivered: marks only rise). */
  private restate(conversation: string): void {
    const s = useApp.getState();
    const t = s.timelines[conversation];
    const members = s.conversations[conversation]?.members.map((m) => m.user_id);
    const me = s.session?.userId;
    const marks = this.marks;
    if (!t || !members || !me || !marks) return;
    let done = this.evaluated.get(conversation);
    if (!done) {
      done = new Set();
      this.evaluated.set(conversation, done);
    }
    const anyMarks = this.withMarks.has(conversation);
    let changed = false;
    const items = t.items.map((i) => {
      if (!i.mine || i.seq === undefined || i.state !== 'sent' || done.has(i.key)) return i;
      done.add(i.key);
      if (!anyMarks) return i;
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
