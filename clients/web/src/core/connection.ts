// One authenticated real-time connection (the browser's clients/sdk/src/connection.rs): Hello /
// Welcome, then a read loop that hands replies to the waiting request (by request_id or ping
// nonce) and everything else to the event callback.

import type { Core } from './wasm';
import type { FrameTransport, TransportKind } from './transport';
import type { ClientMessage, Cursor, ErrorCode, ServerMessage } from './protocol';

/** How long a request waits for its answer before it fails (the SDK's request timeout). */
export const REQUEST_TIMEOUT_MS = 15_000;
/** How long the server may take to answer Hello. */
export const WELCOME_TIMEOUT_MS = 10_000;
/** A ping this often keeps the connection inside the server's idle limit (90 s) and notices a
 * dead network within about two intervals. */
export const HEARTBEAT_MS = 25_000;
/** Requests waiting at once (bounded like every queue). */
const MAX_PENDING = 1_024;

export class ServerError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly fatal: boolean,
    readonly retryAfterMs: number,
    /** The server's `error` message as decoded (what tern-core's failure judges take). */
    readonly raw?: ServerMessage,
  ) {
    super(`${code}: ${message}`);
    this.name = 'ServerError';
  }
}

export interface Welcome {
  user: string;
  device: string;
  serverTimeMs: number;
  maxFrameBytes: number;
  oneTimeKeysLeft: number;
}

type Waiter = { resolve: (m: ServerMessage) => void; reject: (e: Error) => void; timer: number };

export class Connection {
  private pending = new Map<number, Waiter>();
  private nextId = 1;
  private closedReason?: string;
  private heartbeat?: number;
  private onClosedCallbacks: ((reason: string) => void)[] = [];
  /** When the last frame arrived: a connection silent for two heartbeats is dead. */
  private lastHeard = Date.now();

  private constructor(
    private readonly transport: FrameTransport,
    private readonly core: Core,
    readonly welcome: Welcome,
    private readonly maxFrameBytes: number,
    private readonly onEvent: (m: ServerMessage) => void,
  ) {}

  get kind(): TransportKind {
    return this.transport.kind;
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /** Sends Hello, waits for Welcome, starts the read loop and the heartbeat. */
  static async open(
    transport: FrameTransport,
    core: Core,
    token: string,
    device: string,
    cursors: Cursor[],
    maxFrameBytes: number,
    onEvent: (m: ServerMessage) => void,
  ): Promise<Connection> {
    const hello = core.hello(token, device, 'tern-web', cursors);
    await transport.send(core.encodeClient(hello, maxFrameBytes));
    const first = await Promise.race([
      transport.recv(),
      new Promise<null>((_, reject) =>
        setTimeout(() => reject(new Error('no Welcome in time')), WELCOME_TIMEOUT_MS),
      ),
    ]);
    if (!first) throw new Error(`closed before Welcome: ${transport.closeReason()}`);
    const msg = core.decodeServer(first);
    if (msg.type === 'error') {
      transport.close();
      throw new ServerError(msg.code, msg.message, msg.fatal, msg.retry_after_ms, msg);
    }
    let checked;
    try {
      // tern-core's handshake: a version we speak, and the largest frame we may send.
      checked = core.checkWelcome(msg, maxFrameBytes);
    } catch (e) {
      transport.close();
      throw e;
    }
    const welcome: Welcome = {
      user: checked.user,
      device: checked.device,
      serverTimeMs: checked.server_time_ms,
      maxFrameBytes: checked.max_frame_bytes,
      oneTimeKeysLeft: checked.one_time_keys_left,
    };
    const outMax = checked.max_out_frame;
    const conn = new Connection(transport, core, welcome, outMax, onEvent);
    void conn.readLoop();
    conn.heartbeat = window.setInterval(() => conn.ping(), HEARTBEAT_MS);
    return conn;
  }

  onClosed(cb: (reason: string) => void): void {
    if (this.closedReason !== undefined) cb(this.closedReason);
    else this.onClosedCallbacks.push(cb);
  }

  private async readLoop(): Promise<void> {
    for (;;) {
      const frame = await this.transport.recv();
      if (!frame) break;
      this.lastHeard = Date.now();
      let msg: ServerMessage;
      try {
        msg = this.core.decodeServer(frame);
      } catch (e) {
        this.shutdown(`undecodable frame: ${String(e)}`);
        return;
      }
      if (msg.type === 'pong') continue;
      // Which pending request this answers: tern-core's reply_key (`request:<id>`).
      const key = this.core.replyKey(msg);
      const id = key?.startsWith('request:') ? Number(key.slice('request:'.length)) : undefined;
      const waiter = id !== undefined ? this.pending.get(id) : undefined;
      if (waiter && id !== undefined) {
        this.pending.delete(id);
        clearTimeout(waiter.timer);
        if (msg.type === 'error') {
          waiter.reject(new ServerError(msg.code, msg.message, msg.fatal, msg.retry_after_ms, msg));
        } else {
          waiter.resolve(msg);
        }
        continue;
      }
      try {
        this.onEvent(msg);
      } catch (e) {
        console.error('event handler failed', e);
      }
      if (msg.type === 'error' && msg.fatal) {
        this.shutdown(`${msg.code}: ${msg.message}`);
        return;
      }
    }
    this.shutdown(this.transport.closeReason() || 'closed');
  }

  private shutdown(reason: string): void {
    if (this.closedReason !== undefined) return;
    this.closedReason = reason;
    window.clearInterval(this.heartbeat);
    this.transport.close();
    for (const w of this.pending.values()) {
      clearTimeout(w.timer);
      w.reject(new Error(`connection closed: ${reason}`));
    }
    this.pending.clear();
    for (const cb of this.onClosedCallbacks) cb(reason);
    this.onClosedCallbacks = [];
  }

  close(reason = 'closed locally'): void {
    this.shutdown(reason);
  }

  /** Sends a frame that expects no answer. */
  async send(msg: ClientMessage): Promise<void> {
    if (this.closedReason !== undefined) throw new Error(`connection closed: ${this.closedReason}`);
    await this.transport.send(this.core.encodeClient(msg, this.maxFrameBytes));
  }

  /** Sends unreliably where datagrams exist (typing), else as a normal frame. */
  async sendLossy(msg: ClientMessage): Promise<void> {
    if (this.closedReason !== undefined) return;
    const frame = this.core.encodeClient(msg, this.maxFrameBytes);
    if (!this.transport.sendDatagram(frame)) await this.transport.send(frame);
  }

  /** Sends a request built with a fresh request id and waits for its answer. */
  request(
    build: (requestId: number) => ClientMessage,
    timeoutMs = REQUEST_TIMEOUT_MS,
  ): Promise<ServerMessage> {
    if (this.closedReason !== undefined) {
      return Promise.reject(new Error(`connection closed: ${this.closedReason}`));
    }
    if (this.pending.size >= MAX_PENDING)
      return Promise.reject(new Error('too many requests in flight'));
    const id = this.nextId++;
    const msg = build(id);
    return new Promise<ServerMessage>((resolve, reject) => {
      const timer = window.setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${msg.type} timed out`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.send(msg).catch((e: unknown) => {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      });
    });
  }

  private ping(): void {
    if (Date.now() - this.lastHeard > 2 * HEARTBEAT_MS + 5_000) {
      this.shutdown('no answer from the server');
      return;
    }
    this.send({ type: 'ping', nonce: this.nextId++ }).catch(() => undefined);
  }
}
