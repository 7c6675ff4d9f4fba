// Conversations: the list (from the HTTPS API and `conversation` pushes, kept in IndexedDB as
// names and members only, for a start without network), invitations, history pages, reactions.

import { errorText, type DriverContext } from './context';
import type { ConversationView, MessageView } from './http';
import { bytesToHex, type WireMessage } from './protocol';
import type { Receiver } from './receiver';
import { search } from './search/service';
import { notify, updateTimeline, useApp, type ConversationState } from '../state/store';

/** History page size. */
export const HISTORY_PAGE = 50;
/** Messages loaded around a search result (about half before it, half after). */
export const AROUND_PAGE = 40;

/** An HTTPS history message as the receiver takes it (the WebSocket/WebTransport shape). */
export function wireOf(conversation: string, m: MessageView): WireMessage {
  const raw = atob(m.payload_b64);
  const payload = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) payload[i] = raw.charCodeAt(i);
  return {
    conversation,
    seq: m.seq,
    message_id: m.message_id,
    sender_user: m.sender_user,
    sender_device: m.sender_device,
    client_msg_id: m.client_msg_id,
    timestamp_ms: m.timestamp_ms,
    content_type: m.content_type,
    payload: bytesToHex(payload),
    files: m.files,
  };
}
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

  /** The person is no longer a member (left, declined, removed): gone from the list and from
   * the search index. */
  remove(id: string): void {
    void search.removeConversation(id).catch(() => undefined);
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

  /**
   * Opens `conversation` scrolled to `seq`, highlighted, with the messages around it: from the
   * timeline when it is loaded there, otherwise the server's "around" page replaces what is
   * shown (older and newer pages load as the person scrolls either way).
   */
  async openAt(conversation: string, seq: number): Promise<void> {
    const shown = (useApp.getState().timelines[conversation]?.items ?? []).some(
      (i) => i.seq === seq && i.text !== null,
    );
    useApp.setState((s) => {
      const c = s.conversations[conversation];
      return {
        selected: conversation,
        focus: { conversation, seq, nonce: (s.focus?.nonce ?? 0) + 1 },
        conversations: c
          ? { ...s.conversations, [conversation]: { ...c, unread: 0 } }
          : s.conversations,
      };
    });
    if (shown) return;
    updateTimeline(conversation, (t) => ({ ...t, loadingHistory: true }));
    try {
      const page = await this.ctx.api.historyAround(conversation, seq, AROUND_PAGE);
      const messages = page.messages.map((m) => wireOf(conversation, m));
      const seqs = messages.map((m) => m.seq);
      const oldest = Math.min(...seqs);
      const newest = Math.max(...seqs);
      // The page replaces the loaded window: items outside it would leave an invisible gap.
      updateTimeline(conversation, (t) => ({
        ...t,
        items: t.items.filter((i) => i.seq === undefined || (i.seq >= oldest && i.seq <= newest)),
        hasMoreBefore: page.has_more_before ?? oldest > 1,
        hasMoreAfter: page.has_more_after ?? false,
        newestLoaded: newest,
      }));
      this.receiver.showHistoryPage(conversation, messages);
      for (const r of page.reactions)
        for (const u of r.users) this.applyReaction(conversation, r.seq, u, r.emoji, true);
    } catch (e) {
      notify(`Could not open the message: ${errorText(e)}`);
    } finally {
      updateTimeline(conversation, (x) => ({ ...x, loadingHistory: false }));
    }
  }

  /** After opening at a search result: the page after the newest loaded message. */
  async loadNewer(conversation: string): Promise<void> {
    const conn = this.ctx.connection();
    const t = useApp.getState().timelines[conversation];
    if (!conn || !t?.hasMoreAfter || t.loadingHistory || t.newestLoaded === undefined) return;
    const after = t.newestLoaded;
    updateTimeline(conversation, (x) => ({ ...x, loadingHistory: true }));
    try {
      const page = await conn.request((request_id) => ({
        type: 'history',
        request_id,
        conversation,
        before_seq: 0,
        after_seq: after,
        limit: HISTORY_PAGE,
      }));
      if (page.type === 'history_page') {
        this.receiver.showHistoryPage(conversation, page.messages);
        const newest = Math.max(after, ...page.messages.map((m) => m.seq));
        updateTimeline(conversation, (x) => ({
          ...x,
          hasMoreAfter: page.has_more,
          newestLoaded: newest,
        }));
      }
    } catch (e) {
      notify(`Could not load newer messages: ${errorText(e)}`);
    } finally {
      updateTimeline(conversation, (x) => ({ ...x, loadingHistory: false }));
    }
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
