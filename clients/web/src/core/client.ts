// The browser driver of the wasm core (the page's clients/sdk Client): the session, one
// connection kept up (WebTransport, else WebSocket, reconnecting with backoff) and the routing
// of server events to its parts — receiver.ts (decrypt, acks), sender.ts (outbox, encrypt,
// send), conversations.ts (list, invitations, history, reactions), keys.ts (key directory).

import { Connection, ServerError } from './connection';
import { errorText, sleep, type Device, type DriverContext } from './context';
import { createBackup, restoreBackup, uploadBackup } from './backup';
import { Conversations } from './conversations';
import { Files } from './files';
import { BrowserDevice } from './device';
import { ApiError, HttpApi, type DeviceView, type TransportInfo } from './http';
import { publishKeys, queryDeviceLists } from './keys';
import type { PresenceStatus, ServerMessage } from './protocol';
import { Receipts } from './receipts';
import { Receiver } from './receiver';
import { Sender } from './sender';
import { Backfill } from './search/backfill';
import { search } from './search/service';
import { deleteAllLocalData } from './storage';
import {
  connectWebSocket,
  connectWebTransport,
  webTransportAvailable,
  type FrameTransport,
} from './transport';
import { loadCore, type Core, type CoreReconnect, type TrustedDevice } from './wasm';
import { initialState, notify, updateTimeline, useApp, type Session } from '../state/store';

export { MAX_TEXT_CHARS, OUTBOX_LIMIT } from './sender';

/** The frame limit this page accepts (the server's default; Welcome may lower it). */
const MAX_FRAME_BYTES = 65_536;
/** Reconnect backoff (tern-core's Reconnect): first wait, ceiling (a restart takes seconds; a
 * long outage is not worth hammering, and a person waits for the ceiling at most), and the
 * uptime after which a connection counts as stable (the next loss starts from the first wait). */
const RECONNECT_POLICY = { base_ms: 250, cap_ms: 15_000, reset_after_ms: 10_000 };
/** After falling back to WebSocket, WebTransport is tried again on a connection made at least
 * this long after the failure (a network that blocks UDP stays blocked for a while). */
const WEBTRANSPORT_RETRY_MS = 60_000;
/** How long a typing indicator lasts without a refresh (the server's default is 6 s). */
const TYPING_SHOWN_MS = 6_000;
/** Typing is refreshed this often while the person keeps typing. */
const TYPING_REFRESH_MS = 3_000;
const SESSION_KEY = 'tern.session';

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
  private dev?: BrowserDevice;
  private reconnect?: CoreReconnect;
  private conn?: Connection;
  private stopped = true;
  private wtFailedAt = 0;
  /** How long after a WebTransport failure it is tried again (tests shorten it). */
  wtRetryMs = WEBTRANSPORT_RETRY_MS;
  private wake?: () => void;
  private typingSentAt = new Map<string, number>();
  private leader = false;
  private releaseLeader?: () => void;
  private readonly ctx: DriverContext = {
    api: this.api,
    device: (): Device | undefined => this.dev,
    connection: () => (this.conn && !this.conn.closed ? this.conn : undefined),
    running: () => !this.stopped && this.leader,
  };
  private readonly receiver = new Receiver(
    this.ctx,
    () => void this.conversations.refresh().catch(() => undefined),
  );
  readonly conversations = new Conversations(this.ctx, this.receiver);
  private readonly receipts = new Receipts(this.ctx);
  private readonly sender = new Sender(
    this.ctx,
    () => this.reconnect,
    () => this.core,
    () => this.conversations.refresh(),
    (conversation, seq) => this.receiver.onOwnSend(conversation, seq),
  );
  /** Older history into the search index in the background (search/backfill.ts). */
  private readonly backfill = new Backfill(this.ctx);
  /** Attachments: encrypted uploads, verified downloads, image previews (files.ts). */
  readonly files = new Files(
    this.ctx,
    () => this.core,
    (conversation, body) => this.sender.composeFile(conversation, body),
  );
  /** Forces the transport of the next connections (diagnostics); undefined = automatic. */
  forceTransport?: 'websocket' | 'webtransport';

  constructor() {
    if (typeof window !== 'undefined') window.addEventListener('online', () => this.wake?.());
    // Browser tests shorten the WebTransport retry (set before the app loads).
    const knob = (globalThis as { __ternWtRetryMs?: unknown }).__ternWtRetryMs;
    if (typeof knob === 'number' && knob >= 500) this.wtRetryMs = knob;
  }

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

  /** Starts everything for a signed-in session (also after a reload, possibly offline). */
  async start(session: Session): Promise<void> {
    this.api.setToken(session.token);
    useApp.setState({ session, connection: { status: 'connecting' } });
    this.core = await loadCore();
    this.dev = await BrowserDevice.open(this.core, session.username, session.userId);
    this.reconnect?.free();
    this.reconnect = this.core.newReconnect(RECONNECT_POLICY);
    await this.receiver.load(this.core);
    this.receipts.load(this.core);
    await this.conversations.loadSnapshot();
    await this.sender.load(this.core);
    this.stopped = false;
    try {
      await this.conversations.refresh();
      await this.conversations.refreshInvitations();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        await this.logout();
        return;
      }
      // Offline at start: the connect loop keeps trying; the outbox keeps what is composed.
    }
    await this.lead(session.username);
  }

  /**
   * One tab per account connects and sends (Web Locks): two tabs draining the same IndexedDB
   * outbox would send twice. A second tab waits, read-only, until the leader closes or the
   * person chooses "Use here" (which takes the lock over: the other tab stops).
   */
  private async lead(username: string, steal = false): Promise<void> {
    const locks = (navigator as Navigator & { locks?: LockManager }).locks;
    if (!locks) {
      this.startSearch();
      void this.connectLoop();
      return;
    }
    const name = `tern-leader:${username}`;
    const acquired = new Promise<boolean>((resolve) => {
      locks
        .request(name, steal ? { steal: true } : { ifAvailable: true }, (lock) => {
          resolve(lock !== null);
          if (!lock) return undefined;
          // Held until logout, the tab closing, or another tab stealing it.
          return new Promise<void>((release) => (this.releaseLeader = release));
        })
        .catch(() => {
          // Stolen by another tab: stop sending here.
          this.follow('Tern is now used in another tab.');
        });
    });
    if (await acquired) {
      // A tab that was following reloads the outbox the other tab may have changed.
      if (steal && this.core) await this.sender.load(this.core);
      this.leader = true;
      this.startSearch();
      void this.connectLoop();
      return;
    }
    this.follow();
    // Take over when the leader goes away.
    void locks
      .request(name, () => {
        if (!this.stopped && !this.leader) void this.lead(username, true);
        return undefined;
      })
      .catch(() => undefined);
  }

  /**
   * The leading tab keeps the search index (its OPFS files take one worker's exclusive access
   * handles): opened with the key beside the pickle key; a failure leaves search off and the
   * rest of the app unaffected.
   */
  startSearch(): void {
    const session = useApp.getState().session;
    const dev = this.dev;
    if (!session || !dev) return;
    search.start(session.userId, dev.local).then(
      () => this.backfill.kick(),
      (e: unknown) => console.warn('search unavailable:', errorText(e)),
    );
  }

  private follow(detail = 'Tern is open in another tab.'): void {
    this.backfill.stop();
    void search.stop();
    this.leader = false;
    this.conn?.close('another tab took over');
    this.conn = undefined;
    useApp.setState({ connection: { status: 'other-tab', detail } });
  }

  /** "Use here": this tab takes the connection over from the other one. */
  useHere(): void {
    const username = useApp.getState().session?.username;
    if (username && !this.leader) void this.lead(username, true);
  }

  /** Logs out: the token is revoked and every local trace of the account is deleted. */
  async logout(): Promise<void> {
    this.stopped = true;
    try {
      await this.api.logout();
    } catch {
      // offline or already revoked: local data is cleared anyway
    }
    this.conn?.close('logged out');
    this.conn = undefined;
    this.backfill.stop();
    // The index and its OPFS files go before IndexedDB (where its key is).
    await search.wipe();
    this.leader = false;
    this.releaseLeader?.();
    this.releaseLeader = undefined;
    this.dev?.close();
    this.dev = undefined;
    this.reconnect?.free();
    this.reconnect = undefined;
    this.sender.reset();
    this.files.reset();
    this.receiver.reset();
    this.receipts.reset();
    this.api.setToken(undefined);
    localStorage.removeItem(SESSION_KEY);
    await deleteAllLocalData();
    useApp.setState({ ...initialState }, true);
  }

  // ---- connection ------------------------------------------------------------------------

  private async pickTransport(info: TransportInfo, core: Core): Promise<FrameTransport> {
    const tryWt =
      this.forceTransport !== 'websocket' &&
      webTransportAvailable() &&
      (this.forceTransport === 'webtransport' || Date.now() - this.wtFailedAt > this.wtRetryMs);
    if (tryWt) {
      try {
        return await connectWebTransport(
          info.webtransport_url,
          info.certificate_hashes,
          MAX_FRAME_BYTES,
          core,
        );
      } catch (e) {
        this.wtFailedAt = Date.now();
        console.info('WebTransport unavailable, using WebSocket:', errorText(e));
      }
    }
    return connectWebSocket(info.websocket_url);
  }

  private async connectLoop(): Promise<void> {
    const reconnect = this.reconnect;
    if (!reconnect) return;
    reconnect.begin(Date.now());
    while (!this.stopped && this.leader) {
      const session = useApp.getState().session;
      const core = this.core;
      if (!session || !core || !this.dev) return;
      // tern-core's Reconnect: 0 for the first attempt after a stable connection, then backoff.
      const wait = reconnect.nextAttemptDelayMs();
      if (wait > 0) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          void sleep(wait).then(resolve);
        });
        this.wake = undefined;
        if (this.stopped) return;
      }
      try {
        const info = await this.api.transport();
        const transport = await this.pickTransport(info, core);
        const conn = await Connection.open(
          transport,
          core,
          session.token,
          this.dev.id,
          this.receiver.onConnect(),
          MAX_FRAME_BYTES,
          (m) => this.onEvent(m),
        );
        if (this.stopped) {
          conn.close('logged out');
          return;
        }
        this.conn = conn;
        reconnect.onConnected(Date.now());
        const closed = new Promise<string>((resolve) => conn.onClosed(resolve));
        useApp.setState({ connection: { status: 'connected', transport: conn.kind } });
        await this.afterConnect(conn);
        const probe = conn.kind === 'websocket' ? this.probeWebTransport(conn, info) : undefined;
        const reason = await closed;
        probe?.stop();
        this.conn = undefined;
        reconnect.onDisconnected(Date.now());
        reconnect.begin(Date.now());
        if (this.stopped || !this.leader) return;
        useApp.setState({ connection: { status: 'reconnecting', detail: reason } });
      } catch (e) {
        const failure = e instanceof ServerError && e.raw ? e.raw : undefined;
        if (
          (failure && core.isPermanentConnectFailure(failure)) ||
          (e instanceof ApiError && e.status === 401)
        ) {
          notify('Your session ended. Please log in again.');
          await this.logout();
          return;
        }
        const offline = navigator.onLine === false;
        useApp.setState({
          connection: { status: offline ? 'offline' : 'reconnecting', detail: errorText(e) },
        });
      }
    }
  }

  /**
   * While on WebSocket, WebTransport is tried again every `wtRetryMs`: once a session is ready
   * (and closed again at once), the WebSocket connection is ended so the loop reconnects at
   * once over WebTransport (a brief reconnect; Delivery resumes from the cursors, the outbox
   * resends what was in flight under the same client ids). Every try reads the certificate
   * hashes again: a WebSocket connection can outlive several rotations of a self-signed
   * certificate, and the hashes it was given then no longer match what the server presents.
   */
  private probeWebTransport(conn: Connection, info: TransportInfo): { stop(): void } {
    let stopped = false;
    let timer = 0;
    const core = this.core;
    let latest = info;
    const tick = async () => {
      if (stopped || conn.closed || !core || this.forceTransport === 'websocket') return;
      if (webTransportAvailable()) {
        try {
          latest = await this.api.transport().catch(() => latest);
          if (stopped || conn.closed) return;
          const t = await connectWebTransport(
            latest.webtransport_url,
            latest.certificate_hashes,
            MAX_FRAME_BYTES,
            core,
          );
          t.close();
          if (!stopped && !conn.closed) {
            this.wtFailedAt = 0;
            conn.close('WebTransport is available again: switching');
            return;
          }
        } catch {
          // still unavailable
        }
      }
      if (!stopped) timer = window.setTimeout(() => void tick(), this.wtRetryMs);
    };
    timer = window.setTimeout(() => void tick(), this.wtRetryMs);
    return {
      stop: () => {
        stopped = true;
        window.clearTimeout(timer);
      },
    };
  }

  private async afterConnect(conn: Connection): Promise<void> {
    const device = this.dev;
    if (!device) return;
    try {
      await publishKeys(conn, device, conn.welcome.oneTimeKeysLeft);
    } catch (e) {
      notify(`Could not publish this device's keys: ${errorText(e)}`);
    }
    // What changed while we were away.
    void this.conversations.refresh().catch(() => undefined);
    void this.conversations.refreshInvitations().catch(() => undefined);
    this.sender.onConnected();
    // A conversation opened before the connection was up (a reload) gets its history now, and
    // receipts pushed while we were away are in the marks the server keeps.
    const selected = useApp.getState().selected;
    if (selected) void this.conversations.loadOlder(selected, true);
    void this.receipts.refresh(selected).catch(() => undefined);
    // Keys received since the last connection go into the backup (when one is set up here).
    void uploadBackup(this.ctx).catch(() => undefined);
    // Older history into the search index, in the background, from its checkpoints.
    this.backfill.kick();
  }

  // ---- events ----------------------------------------------------------------------------

  /** Server pushes, in arrival order (each handled before the next is read). */
  private onEvent(m: ServerMessage): void | Promise<void> {
    if (m.type === 'notice' && m.notice.type === 'going_away') {
      this.reconnect?.onGoingAway(m.notice.retry_after_ms);
    }
    // deliver, sync_complete and backlog notices: tern-core's Delivery orders and acks them.
    if (this.receiver.onServerMessage(m)) return;
    switch (m.type) {
      case 'key_share':
        return this.receiver.onKeyShare(m);
      case 'conversation':
        this.conversations.upsert(m.info.conversation, {
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
        return;
      case 'invitation':
        void this.conversations.refreshInvitations().catch(() => undefined);
        return;
      case 'invite_declined': {
        const s = useApp.getState();
        notify(
          `${s.usernames[m.user] ?? 'Someone'} declined the invitation to ${s.conversations[m.conversation]?.name ?? 'your group'}.`,
        );
        return;
      }
      case 'member_removed':
        this.dev?.machine.onMemberRemoved(m.conversation, m.user);
        void this.dev?.persist();
        if (m.user === useApp.getState().session?.userId) {
          this.conversations.remove(m.conversation);
          this.receipts.forget(m.conversation);
        } else void this.conversations.refresh().catch(() => undefined);
        return;
      case 'presence':
        useApp.setState((s) => ({
          presence: { ...s.presence, [m.user]: { status: m.status, lastSeenMs: m.last_seen_ms } },
        }));
        return;
      case 'typing':
        useApp.setState((s) => {
          const conv = { ...(s.typing[m.conversation] ?? {}) };
          if (m.active) conv[m.user] = Date.now() + TYPING_SHOWN_MS;
          else delete conv[m.user];
          return { typing: { ...s.typing, [m.conversation]: conv } };
        });
        return;
      case 'reaction':
        this.conversations.applyReaction(m.conversation, m.seq, m.user, m.emoji, m.add);
        return;
      case 'delivered':
        this.receipts.onDelivered(m);
        return;
      case 'device_list_changed':
        this.dev?.machine.markDeviceListStale(m.user);
        return;
      case 'one_time_keys_low': {
        const conn = this.conn;
        if (conn && this.dev) void publishKeys(conn, this.dev, m.left).catch(() => undefined);
        return;
      }
      case 'notice':
        if (m.notice.type === 'backlog_truncated') {
          updateTimeline(m.notice.conversation, (t) => ({ ...t, hasMoreBefore: true }));
        }
        return;
      case 'error':
        if (!m.fatal) notify(`Server: ${m.message}`);
        return;
      default:
        return;
    }
  }

  // ---- actions the screens call ------------------------------------------------------------

  send(conversation: string, text: string): Promise<void> {
    this.stopTyping(conversation);
    return this.sender.compose(conversation, text);
  }

  /** Encrypts and uploads each file, then sends it (progress in the store's `transfers`). */
  sendFiles(conversation: string, files: Iterable<File>): void {
    for (const f of files) void this.files.send(conversation, f);
  }

  select(conversation: string | undefined): void {
    this.conversations.select(conversation);
    void this.receipts.refresh(conversation).catch(() => undefined);
  }

  startDirect(username: string): Promise<string> {
    return this.conversations.startDirect(username);
  }

  createGroup(name: string, description: string, members: string[]): Promise<string> {
    return this.conversations.createGroup(name, description, members);
  }

  accept(conversation: string): Promise<void> {
    return this.conversations.accept(conversation);
  }

  decline(conversation: string): Promise<void> {
    return this.conversations.decline(conversation);
  }

  async removeMember(conversation: string, username: string): Promise<void> {
    await this.api.removeMember(conversation, username);
    await this.conversations.refresh();
  }

  invite(conversation: string, username: string): Promise<void> {
    return this.conversations.invite(conversation, username);
  }

  loadOlder(conversation: string): Promise<void> {
    return this.conversations.loadOlder(conversation);
  }

  loadNewer(conversation: string): Promise<void> {
    return this.conversations.loadNewer(conversation);
  }

  /** A search result: its conversation opens scrolled to it, with the messages around it. */
  async openAt(conversation: string, seq: number): Promise<void> {
    await this.conversations.openAt(conversation, seq);
    void this.receipts.refresh(conversation).catch(() => undefined);
  }

  /** The search index of this device (the browser tests and benchmarks use it too). */
  readonly search = search;

  /** Closes the index and ends its worker (its OPFS files are released; `startSearch` opens it
   * again). What another tab taking over does; the browser tests use it to read the files. */
  async stopSearch(): Promise<void> {
    this.backfill.stop();
    await search.stop();
  }

  react(conversation: string, seq: number, emoji: string): Promise<void> {
    return this.conversations.react(conversation, seq, emoji);
  }

  typing(conversation: string): void {
    const conn = this.ctx.connection();
    if (!conn) return;
    const last = this.typingSentAt.get(conversation) ?? 0;
    if (Date.now() - last < TYPING_REFRESH_MS) return;
    this.typingSentAt.set(conversation, Date.now());
    void conn.sendLossy({ type: 'typing', conversation, active: true }).catch(() => undefined);
  }

  stopTyping(conversation: string): void {
    if (!this.typingSentAt.has(conversation)) return;
    this.typingSentAt.delete(conversation);
    void this.ctx
      .connection()
      ?.sendLossy({ type: 'typing', conversation, active: false })
      .catch(() => undefined);
  }

  setPresence(status: PresenceStatus): void {
    void this.ctx
      .connection()
      ?.send({ type: 'set_presence', status })
      .catch(() => undefined);
  }

  /** The safety number with `user` (60 digits) and their devices, once their keys are known
   * (asked for now if they are not). */
  async verification(user: string): Promise<{ number?: string; devices: TrustedDevice[] }> {
    const machine = this.dev?.machine;
    if (!machine) return { devices: [] };
    let number = machine.safetyNumber(user);
    const conn = this.ctx.connection();
    if (number === undefined && conn && this.dev) {
      await queryDeviceLists(conn, this.dev, [user]).catch(() => []);
      number = machine.safetyNumber(user);
    }
    return { number, devices: machine.deviceList(user) };
  }

  /** Sets up the recovery passphrase: a new backup of every message key on the server. */
  setUpRecovery(passphrase: string): Promise<number> {
    return createBackup(this.ctx, passphrase);
  }

  /** A new device (or this browser after a logout) reads the history again. */
  async restoreRecovery(passphrase: string): Promise<number> {
    const n = await restoreBackup(this.ctx, passphrase);
    await this.receiver.retryAll();
    return n;
  }

  /** This account's devices, this one marked. */
  async myDevices(): Promise<{ devices: DeviceView[]; current: string }> {
    const { devices } = await this.api.devices();
    return { devices, current: this.dev?.id ?? '' };
  }

  /** Removes another device: its keys, inbox and token go; contacts stop encrypting to it. */
  async revokeDevice(id: string): Promise<void> {
    if (id === this.dev?.id) throw new Error('use Log out for this device');
    await this.api.revokeDevice(id);
  }

  get hasRecovery(): boolean {
    return this.dev?.machine.backupVersion() !== undefined;
  }

  /** The person compared the safety number with `user` in person or on a call. */
  async markVerified(user: string): Promise<void> {
    this.dev?.machine.markUserVerified(user);
    await this.dev?.persist();
  }

  /** The app state (the browser tests and benchmarks read it through `window.tern`). */
  readonly store = useApp;

  /** Which transport the connection uses now (the tests read it too). */
  get transportKind(): string | undefined {
    return this.ctx.connection()?.kind;
  }
}

export const client = new TernClient();
