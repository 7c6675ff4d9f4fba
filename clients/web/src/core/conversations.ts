// Conversations: the list (from the HTTPS API and `conversation` pushes, kept in IndexedDB as
// names and members only, for a start without network), invitations, history pages, reactions.

import { errorText, type DriverContext } from './context';
import type { ConversationView } from './http';
import type { Receiver } from './receiver';
import { notify, updateTimeline, useApp, type ConversationState } from '../state/store';

/** History page size. */
export const HISTORY_PAGE = 50;
const SNAPSHOT_KEY = 'conversations';

interface Snapshot {
  conversations: Record<string, ConversationState>;
  usernames: Record<string, string>;
}

export class Conversations {
  private snapshotTimer?: number;

  constructor(
    private readonly ctx: DriverContext,
    private readonly receiver: Receiver,
  ) {}

  async loadSnapshot(): Promise<void> {
    const snap = await this.ctx.device()?.local.get<Snapshot>(SNAPSHOT_KEY);
    if (!snap) return;
    useApp.setState((s) => ({
      usernames: { ...snap.usernames, ...s.usernames },
      conversations: { ...snap.conversations, ...s.conversations },
    }));
  }

  /** Names and members only: message text never goes to disk. */
  private scheduleSnapshot(): void {
    if (this.snapshotTimer !== undefined) return;
    this.snapshotTimer = window.setTimeout(() => {
      this.snapshotTimer = undefined;
      const s = useApp.getState();
      const conversations: Record<string, ConversationState> = {};
      for (const [id, c] of Object.entries(s.conversations))
        conversations[id] = { ...c, lastText: undefined, unread: 0 };
      void this.ctx
        .device()
        ?.local.put(SNAPSHOT_KEY, { conversations, usernames: s.usernames } satisfies Snapshot)
        .catch(() => undefined);
    }, 300);
  }

  upsert(id: string, v: Omit<ConversationState, 'id' | 'unread'>): void {
    useApp.setState((s) => {
      const prev = s.conversations[id];
      const usernames = { ...s.usernames };
      for (const m of v.members) usernames[m.user_id] = m.username;
      return {
        usernames,
        conversations: {
          ...s.conversations,
          [id]: {
            id,
            unread: prev?.unread ?? 0,
            lastText: prev?.lastText,
            lastAt: prev?.lastAt,
            ...v,
            lastSeq: Math.max(prev?.lastSeq ?? 0, v.lastSeq),
          },
        },
      };
    });
    this.scheduleSnapshot();
  }

  remove(id: string): void {
    useApp.setState((s) => {
      const conversations = { ...s.conversations };
      delete conversations[id];
      return { conversations, selected: s.selected === id ? undefined : s.selected };
    });
    this.scheduleSnapshot();
  }

  fromView(c: ConversationView): void {
    this.upsert(c.conversation_id, {
      kind: c.kind,
      name: c.name,
      description: c.description,
      members: c.members,
      lastSeq: c.last_seq,
    });
  }

  async refresh(): Promise<void> {
    const { conversations } = await this.ctx.api.conversations();
    for (const c of conversations) this.fromView(c);
  }

  async refreshInvitations(): Promise<void> {
    const { invitations } = await this.ctx.api.invitations();
    useApp.setState((s) => {
      const usernames = { ...s.usernames };
      for (const i of invitations) usernames[i.inviter_id] = i.inviter;
      return { invitations, usernames };
    });
  }

  async startDirect(username: string): Promise<string> {
    const c = await this.ctx.api.createDirect(username.trim());
    this.fromView(c);
    return c.conversation_id;
  }

  async createGroup(name: string, description: string, members: string[]): Promise<string> {
    const c = await this.ctx.api.createGroup(name.trim(), description.trim(), members);
    this.fromView(c);
    void this.learnUsers(members);
    return c.conversation_id;
  }

  /** Invitees are not members yet: their ids are looked up so a decline can name them. */
  private async learnUsers(usernames: string[]): Promise<void> {
    for (const name of usernames) {
      try {
        const u = await this.ctx.api.user(name);
        useApp.setState((s) => ({ usernames: { ...s.usernames, [u.user_id]: u.username } }));
      } catch {
        // unknown or offline: the notice says "Someone"
      }
    }
  }

  async accept(conversation: string): Promise<void> {
    this.fromView(await this.ctx.api.accept(conversation));
    await this.refreshInvitations();
  }

  async decline(conversation: string): Promise<void> {
    await this.ctx.api.decline(conversation);
    await this.refreshInvitations();
    this.remove(conversation);
  }

  async invite(conversation: string, username: string): Promise<void> {
    await this.ctx.api.invite(conversation, username.trim());
    void this.learnUsers([username.trim()]);
  }

  select(conversation: string | undefined): void {
    useApp.setState((s) => {
      const c = conversation ? s.conversations[conversation] : undefined;
      if (!conversation || !c) return { selected: conversation };
      return {
        selected: conversation,
        conversations: { ...s.conversations, [conversation]: { ...c, unread: 0 } },
      };
    });
    if (conversation) void this.loadOlder(conversation, true);
  }

  /** Fetches the page before the oldest message shown (`initial`: only when few are shown). */
  async loadOlder(conversation: string, initial = false): Promise<void> {
    const conn = this.ctx.connection();
    const t = useApp.getState().timelines[conversation];
    if (t?.loadingHistory || t?.hasMoreBefore === false || !conn) return;
    const withSeq = (t?.items ?? []).filter((i) => i.seq !== undefined);
    if (initial && withSeq.length >= HISTORY_PAGE) return;
    const oldest = withSeq[0]?.seq ?? 0;
    if (oldest === 1) {
      updateTimeline(conversation, (x) => ({ ...x, hasMoreBefore: false }));
      return;
    }
    updateTimeline(conversation, (x) => ({ ...x, loadingHistory: true }));
    try {
      const page = await conn.request((request_id) => ({
        type: 'history',
        request_id,
        conversation,
        before_seq: oldest,
        after_seq: 0,
        limit: HISTORY_PAGE,
      }));
      if (page.type === 'history_page') {
        this.receiver.showHistoryPage(conversation, page.messages);
        for (const r of page.reactions)
          for (const u of r.users) this.applyReaction(conversation, r.seq, u, r.emoji, true);
        updateTimeline(conversation, (x) => ({ ...x, hasMoreBefore: page.has_more }));
      }
    } catch (e) {
      notify(`Could not load history: ${errorText(e)}`);
    } finally {
      updateTimeline(conversation, (x) => ({ ...x, loadingHistory: false }));
    }
  }

  async react(conversation: string, seq: number, emoji: string): Promise<void> {
    const conn = this.ctx.connection();
    const me = useApp.getState().session?.userId;
    if (!conn || !me) throw new Error('not connected');
    const mine = useApp.getState().reactions[conversation]?.[seq]?.[emoji]?.includes(me) ?? false;
    await conn.request((request_id) => ({
      type: 'react',
      request_id,
      conversation,
      seq,
      emoji,
      add: !mine,
    }));
    this.applyReaction(conversation, seq, me, emoji, !mine);
  }

  applyReaction(
    conversation: string,
    seq: number,
    user: string,
    emoji: string,
    add: boolean,
  ): void {
    useApp.setState((s) => {
      const conv = { ...(s.reactions[conversation] ?? {}) };
      const msg = { ...(conv[seq] ?? {}) };
      const users = new Set(msg[emoji] ?? []);
      if (add) users.add(user);
      else users.delete(user);
      if (users.size > 0) msg[emoji] = [...users];
      else delete msg[emoji];
      conv[seq] = msg;
      return { reactions: { ...s.reactions, [conversation]: conv } };
    });
  }
}
