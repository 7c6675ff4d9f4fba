// The browser driver of the wasm core (the equivalent of clients/sdk's Client + E2e): picks a
// transport, keeps one connection up (reconnecting with backoff), publishes keys, feeds key
// shares and messages to the crypto machine, encrypts and sends the outbox in order, and writes
// what the screens show into the store. The machine decides; this file does the I/O it asks for.

import { Connection, ServerError } from './connection';
import { ApiError, HttpApi, type ConversationView, type TransportInfo } from './http';
import {
  randomClientMsgId,
  type ClaimTarget,
  type DeviceKeys,
  type PresenceStatus,
  type ServerMessage,
  type WireMessage,
} from './protocol';
import { LocalStore, deleteAllLocalData } from './storage';
import {
  connectWebSocket,
  connectWebTransport,
  webTransportAvailable,
  type FrameTransport,
} from './transport';
import { loadCore, type Core, type CryptoMachine } from './wasm';
import {
  initialState,
  mergeItem,
  notify,
  useApp,
  type ConversationState,
  type Session,
  type Timeline,
  type TimelineItem,
} from '../state/store';

/** The frame limit this page accepts (the server's default; Welcome may lower it). */
const MAX_FRAME_BYTES = 65_536;
/** Reconnect backoff: first wait, ceiling (a server restart is seconds; a long outage is not
 * worth hammering). */
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** After falling back to WebSocket, WebTransport is tried again on the next connection after
 * this long (a network that blocks UDP stays blocked for a while). */
const WEBTRANSPORT_RETRY_MS = 60_000;
/** Device-list query and claim rounds per send (the SDK's MAX_QUERY_ROUNDS / MAX_CLAIM_ROUNDS). */
const MAX_QUERY_ROUNDS = 3;
const MAX_CLAIM_ROUNDS = 2;
/** Messages kept waiting for their key (the SDK's MAX_PENDING_UNDECRYPTABLE, smaller: a tab). */
const MAX_WAITING = 2_000;
/** History page size. */
export const HISTORY_PAGE = 50;
/** Outbox entries kept at once (FR-20: the limit is shown; composing beyond it is refused). */
export const OUTBOX_LIMIT = 500;
/** Text a message may hold (characters); the frame limit bounds the ciphertext too. */
export const MAX_TEXT_CHARS = 8_000;
/** How long a typing indicator lasts without a refresh (the server's default is 6 s). */
const TYPING_SHOWN_MS = 6_000;

const SESSION_KEY = 'tern.session';

interface OutboxEntry {
  order: number;
  conversation: string;
  clientMsgId: string;
  text: string;
  createdMs: number;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return b;
}

function uuid(): string {
  return crypto.randomUUID();
}

export function loadSavedSession(): Session | undefined {
  try {
    const raw = localStorage.getItem(SESSION_KEY);
    if (!raw) return undefined;
    const s = JSON.parse(raw) as Session;
    return s.expiresAtMs > Date.now() ? s : undefined;
  } catch {
    return undefined;
  }
}

export class TernClient {
  readonly api = new HttpApi();
  private core?: Core;
  private machine?: CryptoMachine;
  private local?: LocalStore;
  private pickleKey?: Uint8Array;
  private deviceId = '';
  private conn?: Connection;
  private stopped = true;
  private wtFailedAt = 0;
  /** Messages waiting for their Megolm key, by conversation (oldest first). */
  private waiting = new Map<string, WireMessage[]>();
  private waitingCount = 0;
  private inboxAckDue = new Set<number>();
  private ackDue = new Map<string, number>();
  private ackTimer?: number;
  private outbox: OutboxEntry[] = [];
  private draining = false;
  private typingSentAt = new Map<string, number>();
  /** Forces the next connection onto one transport (tests, diagnostics); undefined = auto. */
  forceTransport?: 'websocket' | 'webtransport';

  // ---- session ---------------------------------------------------------------------------

  async register(username: string, password: string): Promise<void> {
    await this.api.register(username, password);
    await this.login(username, password);
  }

  async login(username: string, password: string): Promise<void> {
    const r = await this.api.login(username, password);
    const session: Session = {
      token: r.token,
      userId: r.user_id,
      username: r.username,
      expiresAtMs: r.expires_at_ms,
    };
    localStorage.setItem(SESSION_KEY, JSON.stringify(session));
    await this.start(session);
  }

  /** Starts everything for a signed-in session (also after a reload). */
  async start(session: Session): Promise<void> {
    this.api.setToken(session.token);
    useApp.setState({ session, connection: { status: 'connecting' } });
    this.core = await loadCore();
    this.local = await LocalStore.open(session.username);
    await this.openDevice(session);
    this.outbox = ((await this.local.outbox<OutboxEntry>()) ?? []).sort(
      (a, b) => a.order - b.order,
    );
    for (const e of this.outbox) this.showQueued(e);
    this.updateOutboxCount();
    this.stopped = false;
    try {
      await this.refreshConversations();
      await this.refreshInvitations();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        await this.logout();
        return;
      }
      // Offline at start: the connect loop keeps trying, the outbox keeps what is composed.
    }
    void this.connectLoop();
  }

  /** The device id and crypto state of this browser profile, created on first use. */
  private async openDevice(session: Session): Promise<void> {
    const local = this.local;
    const core = this.core;
    if (!local || !core) throw new Error('not started');
    let device = await local.get<string>('device');
    let key = await local.get<Uint8Array>('pickle_key');
    const sealed = await local.get<Uint8Array>('pickle');
    if (device && key && sealed) {
      try {
        this.machine = core.unpickleMachine(sealed, key);
      } catch (e) {
        console.warn('crypto state unreadable, starting a new device', e);
        this.machine = undefined;
      }
    }
    if (!this.machine || !device || !key) {
      device = uuid();
      key = randomBytes(32);
      this.machine = core.newMachine(session.userId, device);
      await local.put('device', device);
      await local.put('pickle_key', key);
    }
    this.deviceId = device;
    this.pickleKey = key;
    await this.persist();
  }

  /** Seals and stores the crypto state (before acknowledging shares, before a send leaves). */
  private async persist(): Promise<void> {
    if (!this.machine || !this.pickleKey || !this.local) return;
    await this.local.put('pickle', this.machine.pickle(this.pickleKey));
  }

  async logout(): Promise<void> {
    this.stopped = true;
    try {
      await this.api.logout();
    } catch {
      // offline or already revoked: local data is cleared anyway
    }
    this.conn?.close('logged out');
    this.conn = undefined;
    this.machine?.free();
    this.machine = undefined;
    this.local?.close();
    this.local = undefined;
    this.outbox = [];
    this.waiting.clear();
    this.waitingCount = 0;
    this.api.setToken(undefined);
    localStorage.removeItem(SESSION_KEY);
    await deleteAllLocalData();
    useApp.setState({ ...initialState, notices: [] }, true);
  }

  // ---- connection ------------------------------------------------------------------------

  private async pickTransport(info: TransportInfo): Promise<FrameTransport> {
    const wantWt =
      this.forceTransport !== 'websocket' &&
      webTransportAvailable() &&
      (this.forceTransport === 'webtransport' ||
        Date.now() - this.wtFailedAt > WEBTRANSPORT_RETRY_MS);
    if (wantWt) {
      try {
        return await connectWebTransport(
          info.webtransport_url,
          info.certificate_hashes,
          MAX_FRAME_BYTES,
        );
      } catch (e) {
        this.wtFailedAt = Date.now();
        console.info('WebTransport unavailable, using WebSocket:', errorText(e));
      }
    }
    return connectWebSocket(info.websocket_url);
  }

  private async connectLoop(): Promise<void> {
    let backoff = BACKOFF_FIRST_MS;
    while (!this.stopped) {
      const session = useApp.getState().session;
      if (!session || !this.core) return;
      try {
        const info = await this.api.transport();
        const transport = await this.pickTransport(info);
        const conn = await Connection.open(
          transport,
          this.core,
          session.token,
          this.deviceId,
          [],
          MAX_FRAME_BYTES,
          (m) => void this.onEvent(m),
        );
        if (this.stopped) {
          conn.close('logged out');
          return;
        }
        this.conn = conn;
        const closed = new Promise<string>((resolve) => conn.onClosed(resolve));
        useApp.setState({ connection: { status: 'connected', transport: conn.kind } });
        backoff = BACKOFF_FIRST_MS;
        await this.afterConnect(conn);
        const reason = await closed;
        this.conn = undefined;
        if (this.stopped) return;
        useApp.setState({ connection: { status: 'reconnecting', detail: reason } });
      } catch (e) {
        if (
          e instanceof ServerError &&
          (e.code === 'unauthenticated' || e.code === 'token_revoked')
        ) {
          notify('Your session ended. Please log in again.');
          await this.logout();
          return;
        }
        if (e instanceof ApiError && e.status === 401) {
          await this.logout();
          return;
        }
        const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
        useApp.setState({
          connection: { status: offline ? 'offline' : 'reconnecting', detail: errorText(e) },
        });
      }
      await sleep(backoff * (0.5 + Math.random()));
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }

  /** Wakes a waiting reconnect at once (the browser says the network is back). */
  networkBack(): void {
    // The loop's next attempt comes within its current backoff; nothing to do when connected.
  }

  private async afterConnect(conn: Connection): Promise<void> {
    const machine = this.machine;
    if (!machine) return;
    try {
      const keys = machine.keysToPublish(conn.welcome.oneTimeKeysLeft);
      if (keys) {
        await conn.request((request_id) => ({ type: 'publish_keys', request_id, keys }));
        machine.markKeysPublished();
        await this.persist();
      }
    } catch (e) {
      notify(`Could not publish this device's keys: ${errorText(e)}`);
    }
    void this.drain();
  }

  // ---- events ----------------------------------------------------------------------------

  private async onEvent(m: ServerMessage): Promise<void> {
    switch (m.type) {
      case 'deliver':
        await this.onMessage(m.message, true);
        break;
      case 'key_share':
        await this.onKeyShare(m);
        break;
      case 'conversation':
        this.upsertConversation(m.info.conversation, {
          kind: m.info.kind,
          name: m.info.name,
          description: m.info.description,
          members: m.info.members.map((x) => ({
            user_id: x.user,
            username: x.username,
            role: x.role,
          })),
          lastSeq: m.info.last_seq,
        });
        break;
      case 'invitation':
        void this.refreshInvitations();
        break;
      case 'invite_declined': {
        const name = useApp.getState().usernames[m.user] ?? 'Someone';
        const conv = useApp.getState().conversations[m.conversation]?.name ?? 'your group';
        notify(`${name} declined the invitation to ${conv}.`);
        break;
      }
      case 'member_removed':
        this.machine?.onMemberRemoved(m.conversation, m.user);
        await this.persist();
        if (m.user === useApp.getState().session?.userId) {
          useApp.setState((s) => {
            const conversations = { ...s.conversations };
            delete conversations[m.conversation];
            return { conversations };
          });
        } else {
          void this.refreshConversations();
        }
        break;
      case 'presence':
        useApp.setState((s) => ({
          presence: { ...s.presence, [m.user]: { status: m.status, lastSeenMs: m.last_seen_ms } },
        }));
        break;
      case 'typing':
        useApp.setState((s) => {
          const conv = { ...(s.typing[m.conversation] ?? {}) };
          if (m.active) conv[m.user] = Date.now() + TYPING_SHOWN_MS;
          else delete conv[m.user];
          return { typing: { ...s.typing, [m.conversation]: conv } };
        });
        break;
      case 'reaction':
        this.applyReaction(m.conversation, m.seq, m.user, m.emoji, m.add);
        break;
      case 'device_list_changed':
        this.machine?.markDeviceListStale(m.user);
        break;
      case 'one_time_keys_low': {
        const conn = this.conn;
        const keys = this.machine?.keysToPublish(m.left);
        if (conn && keys) {
          try {
            await conn.request((request_id) => ({ type: 'publish_keys', request_id, keys }));
            this.machine?.markKeysPublished();
            await this.persist();
          } catch {
            // the next Welcome's count tries again
          }
        }
        break;
      }
      case 'notice':
        if (m.notice.type === 'backlog_truncated') {
          this.setTimeline(m.notice.conversation, (t) => ({ ...t, hasMoreBefore: true }));
        }
        break;
      case 'error':
        if (!m.fatal) notify(`Server: ${m.message}`);
        break;
      default:
        break;
    }
  }

  private async onKeyShare(m: Extract<ServerMessage, { type: 'key_share' }>): Promise<void> {
    const machine = this.machine;
    if (!machine) return;
    const events = machine.onKeyShare(
      { from_user: m.from_user, from_device: m.from_device, payload: m.payload },
      Date.now(),
    );
    await this.persist();
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
        await this.queryUsers([ev.user]);
        await this.retryWaiting();
      }
    }
  }

  private async retryWaiting(): Promise<void> {
    const all = [...this.waiting.values()].flat();
    this.waiting.clear();
    this.waitingCount = 0;
    for (const msg of all) await this.onMessage(msg, false);
  }

  /** Keeps a message whose key has not arrived, by conversation (a key for it retries them). */
  private park(conversation: string, msg: WireMessage): void {
    if (this.waitingCount >= MAX_WAITING) {
      const oldest = this.waiting.keys().next().value;
      if (oldest !== undefined) {
        this.waitingCount -= this.waiting.get(oldest)?.length ?? 0;
        this.waiting.delete(oldest);
      }
    }
    const list = this.waiting.get(conversation) ?? [];
    if (list.some((x) => x.message_id === msg.message_id)) return;
    list.push(msg);
    this.waiting.set(conversation, list);
    this.waitingCount++;
  }

  /** A delivered or history message: decrypt, show, acknowledge. */
  private async onMessage(msg: WireMessage, live: boolean): Promise<void> {
    const machine = this.machine;
    const me = useApp.getState().session?.userId;
    if (!machine || !me) return;
    const known = useApp
      .getState()
      .timelines[msg.conversation]?.items.find(
        (i) => i.key === msg.client_msg_id && i.seq === msg.seq && i.text !== null,
      );
    if (!known) {
      let text: string | null = null;
      let undecryptable: string | undefined;
      if (msg.content_type.startsWith('e2e.')) {
        const d = machine.decrypt(msg);
        if (d.error === undefined) {
          text = d.text ?? `[${d.data?.content_type ?? 'data'}]`;
        } else {
          undecryptable = d.error;
          if (d.error === 'NoKeyYet' || d.error === 'UntrustedDevice') {
            this.park(msg.conversation, msg);
            if (d.error === 'UntrustedDevice') {
              void this.queryUsers([msg.sender_user]).then(() => this.retryWaiting());
            }
          }
        }
        await this.persist();
      } else {
        // Never shown as text: the app only sends encrypted messages; anything else is marked.
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
      this.setTimeline(msg.conversation, (t) => ({ ...t, items: mergeItem(t.items, item) }));
      if (!useApp.getState().conversations[msg.conversation]) void this.refreshConversations();
      useApp.setState((s) => {
        const c = s.conversations[msg.conversation];
        if (!c) return {};
        const newer = msg.seq > c.lastSeq;
        const unread =
          live && newer && item.mine === false && s.selected !== msg.conversation
            ? c.unread + 1
            : c.unread;
        return {
          conversations: {
            ...s.conversations,
            [msg.conversation]: {
              ...c,
              lastSeq: Math.max(c.lastSeq, msg.seq),
              unread,
              lastText:
                newer || c.lastText === undefined ? (text ?? 'Encrypted message') : c.lastText,
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
      const conn = this.conn;
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
    }, 200);
  }

  // ---- conversations ---------------------------------------------------------------------

  private upsertConversation(
    id: string,
    v: Omit<ConversationState, 'id' | 'unread'> & { unread?: number },
  ): void {
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
  }

  private fromView(c: ConversationView): void {
    this.upsertConversation(c.conversation_id, {
      kind: c.kind,
      name: c.name,
      description: c.description,
      members: c.members,
      lastSeq: c.last_seq,
    });
  }

  async refreshConversations(): Promise<void> {
    const { conversations } = await this.api.conversations();
    for (const c of conversations) this.fromView(c);
  }

  async refreshInvitations(): Promise<void> {
    const { invitations } = await this.api.invitations();
    useApp.setState((s) => {
      const usernames = { ...s.usernames };
      for (const i of invitations) usernames[i.inviter_id] = i.inviter;
      return { invitations, usernames };
    });
  }

  async startDirect(username: string): Promise<string> {
    const c = await this.api.createDirect(username.trim());
    this.fromView(c);
    return c.conversation_id;
  }

  async createGroup(name: string, description: string, members: string[]): Promise<string> {
    const c = await this.api.createGroup(name.trim(), description.trim(), members);
    this.fromView(c);
    return c.conversation_id;
  }

  async accept(conversation: string): Promise<void> {
    const c = await this.api.accept(conversation);
    this.fromView(c);
    await this.refreshInvitations();
  }

  async decline(conversation: string): Promise<void> {
    await this.api.decline(conversation);
    await this.refreshInvitations();
    useApp.setState((s) => {
      const conversations = { ...s.conversations };
      delete conversations[conversation];
      return { conversations };
    });
  }

  async invite(conversation: string, username: string): Promise<void> {
    await this.api.invite(conversation, username.trim());
  }

  select(conversation: string | undefined): void {
    useApp.setState((s) => {
      if (!conversation || !s.conversations[conversation]) return { selected: conversation };
      return {
        selected: conversation,
        conversations: {
          ...s.conversations,
          [conversation]: { ...s.conversations[conversation], unread: 0 },
        },
      };
    });
    if (conversation) void this.loadOlder(conversation, true);
  }

  private setTimeline(conversation: string, f: (t: Timeline) => Timeline): void {
    useApp.setState((s) => {
      const t = s.timelines[conversation] ?? {
        items: [],
        hasMoreBefore: true,
        loadingHistory: false,
      };
      return { timelines: { ...s.timelines, [conversation]: f(t) } };
    });
  }

  /** Fetches the page before the oldest message shown (`initial`: only if nothing is shown). */
  async loadOlder(conversation: string, initial = false): Promise<void> {
    const conn = this.conn;
    const t = useApp.getState().timelines[conversation];
    if (t?.loadingHistory || t?.hasMoreBefore === false) return;
    const withSeq = (t?.items ?? []).filter((i) => i.seq !== undefined);
    if (initial && withSeq.length >= HISTORY_PAGE) return;
    if (!conn) return;
    const oldest = withSeq.length > 0 ? (withSeq[0]?.seq ?? 0) : 0;
    if (oldest === 1) {
      this.setTimeline(conversation, (x) => ({ ...x, hasMoreBefore: false }));
      return;
    }
    this.setTimeline(conversation, (x) => ({ ...x, loadingHistory: true }));
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
        for (const msg of page.messages) await this.onMessage(msg, false);
        for (const r of page.reactions) {
          for (const u of r.users) this.applyReaction(conversation, r.seq, u, r.emoji, true);
        }
        this.setTimeline(conversation, (x) => ({ ...x, hasMoreBefore: page.has_more }));
      }
    } catch (e) {
      notify(`Could not load history: ${errorText(e)}`);
    } finally {
      this.setTimeline(conversation, (x) => ({ ...x, loadingHistory: false }));
    }
  }

  // ---- sending ---------------------------------------------------------------------------

  private showQueued(e: OutboxEntry): void {
    const me = useApp.getState().session?.userId ?? '';
    this.setTimeline(e.conversation, (t) => ({
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

  private updateOutboxCount(): void {
    useApp.setState({ outboxCount: this.outbox.length, outboxLimit: OUTBOX_LIMIT });
  }

  /** Composes a message: stored in the outbox first (survives a reload), then sent in order. */
  async send(conversation: string, text: string): Promise<void> {
    const body = text.trim();
    if (!body) return;
    if (body.length > MAX_TEXT_CHARS)
      throw new Error(`a message holds at most ${MAX_TEXT_CHARS} characters`);
    if (this.outbox.length >= OUTBOX_LIMIT) {
      throw new Error(
        `the outbox is full (${OUTBOX_LIMIT} messages waiting): wait for the network`,
      );
    }
    const last = this.outbox[this.outbox.length - 1];
    const entry: OutboxEntry = {
      order: Math.max(Date.now(), (last?.order ?? 0) + 1),
      conversation,
      clientMsgId: randomClientMsgId(),
      text: body,
      createdMs: Date.now(),
    };
    await this.local?.putOutbox(entry);
    this.outbox.push(entry);
    this.updateOutboxCount();
    this.showQueued(entry);
    this.stopTyping(conversation);
    void this.drain();
  }

  /** Sends outbox entries in order, one at a time; stops at the first that cannot go now. */
  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.outbox.length > 0 && !this.stopped) {
        const conn = this.conn;
        if (!conn || conn.closed) return;
        const entry = this.outbox[0];
        if (!entry) return;
        this.setItemState(entry, 'sending');
        try {
          const ack = await this.sendOne(conn, entry);
          await this.local?.deleteOutbox(entry.order);
          this.outbox.shift();
          this.updateOutboxCount();
          this.setTimeline(entry.conversation, (t) => ({
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
        } catch (e) {
          if (e instanceof ServerError && e.code === 'rate_limited') {
            this.setItemState(entry, 'queued');
            await sleep(Math.max(e.retryAfterMs, 100));
            continue;
          }
          if (
            e instanceof ServerError &&
            [
              'forbidden',
              'not_found',
              'invalid_argument',
              'frame_too_large',
              'limit_exceeded',
            ].includes(e.code)
          ) {
            // Permanent: dropped from the outbox and shown as failed (never retried forever).
            await this.local?.deleteOutbox(entry.order);
            this.outbox.shift();
            this.updateOutboxCount();
            this.setItemState(entry, 'failed', e.message);
            continue;
          }
          // The connection went away: the entry stays queued for the next connection.
          this.setItemState(entry, 'queued');
          return;
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private setItemState(entry: OutboxEntry, state: TimelineItem['state'], error?: string): void {
    this.setTimeline(entry.conversation, (t) => ({
      ...t,
      items: t.items.map((i) => (i.key === entry.clientMsgId ? { ...i, state, error } : i)),
    }));
  }

  private members(conversation: string): string[] {
    return (useApp.getState().conversations[conversation]?.members ?? []).map((m) => m.user_id);
  }

  private async queryUsers(users: string[]): Promise<void> {
    const conn = this.conn;
    const machine = this.machine;
    if (!conn || !machine || users.length === 0) return;
    let pending = [...users];
    const lists = new Map<string, DeviceKeys[]>(users.map((u) => [u, []]));
    while (pending.length > 0) {
      const asked = pending.length;
      const reply = await conn.request((request_id) => ({
        type: 'query_keys',
        request_id,
        users: pending,
      }));
      if (reply.type !== 'key_bundle') throw new Error(`query_keys answered with ${reply.type}`);
      for (const d of reply.devices) lists.get(d.user)?.push(d);
      if (reply.unanswered.length >= asked) throw new Error('query_keys made no progress');
      pending = reply.unanswered;
    }
    for (const [user, devices] of lists) {
      for (const ev of machine.onDeviceList(user, devices, Date.now())) {
        const name = useApp.getState().usernames[ev.user] ?? 'a contact';
        if (ev.type === 'identity_changed') notify(`Security: ${name}'s device key changed.`);
      }
    }
    await this.persist();
  }

  /** Device lists and Olm sessions for every member device, then encrypt and send. */
  private async sendOne(
    conn: Connection,
    entry: OutboxEntry,
  ): Promise<Extract<ServerMessage, { type: 'send_ack' }>> {
    const machine = this.machine;
    if (!machine) throw new Error('no crypto state');
    let members = this.members(entry.conversation);
    if (members.length === 0) {
      await this.refreshConversations();
      members = this.members(entry.conversation);
    }
    let queries = 0;
    let claims = 0;
    for (;;) {
      const needs = machine.prepare(entry.conversation, members, Date.now());
      if (needs.query_users.length > 0) {
        if (++queries > MAX_QUERY_ROUNDS)
          throw new Error('device lists stay stale after repeated queries');
        await this.queryUsers(needs.query_users);
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
        await this.persist();
        continue;
      }
      break;
    }
    const encrypted = machine.encryptText(entry.conversation, entry.text, Date.now());
    // The advanced index is stored before any byte leaves: a reload cannot reuse it.
    await this.persist();
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

  // ---- presence, typing, reactions -------------------------------------------------------

  typing(conversation: string): void {
    const conn = this.conn;
    if (!conn) return;
    const last = this.typingSentAt.get(conversation) ?? 0;
    // Refreshed every 3 s while typing (the indicator lasts ~6 s on the other side).
    if (Date.now() - last < 3_000) return;
    this.typingSentAt.set(conversation, Date.now());
    void conn.sendLossy({ type: 'typing', conversation, active: true }).catch(() => undefined);
  }

  stopTyping(conversation: string): void {
    if (!this.typingSentAt.has(conversation)) return;
    this.typingSentAt.delete(conversation);
    void this.conn
      ?.sendLossy({ type: 'typing', conversation, active: false })
      .catch(() => undefined);
  }

  setPresence(status: PresenceStatus): void {
    void this.conn?.send({ type: 'set_presence', status }).catch(() => undefined);
  }

  async react(conversation: string, seq: number, emoji: string): Promise<void> {
    const conn = this.conn;
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

  private applyReaction(
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

  /** The safety number with `user` (60 digits), once their devices are known. */
  safetyNumber(user: string): string | undefined {
    return this.machine?.safetyNumber(user);
  }

  fingerprint(): string | undefined {
    return this.machine?.fingerprint();
  }

  get transportKind(): string | undefined {
    return this.conn?.kind;
  }
}

export const client = new TernClient();
