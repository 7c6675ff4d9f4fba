// The one typed facade over the wasm core (clients/core-wasm, built by scripts/build-web.sh into
// clients/web/wasm/). Loaded lazily: the login screen paints before the wasm is fetched. All
// protocol, crypto and framing logic lives in Rust; this file only converts JSON strings to the
// TypeScript shapes of protocol.ts.

import type {
  FileRef,
  ClaimTarget,
  ClientMessage,
  Cursor,
  DeliveryMark,
  DeviceKeys,
  KeyShareItem,
  ServerMessage,
  WireMessage,
} from './protocol';

/** An attachment as the end-to-end encrypted message describes it (tern-core `FileBody`):
 * the server only ever sees `file_id` and the padded, encrypted size. */
export interface FileBodyJson {
  file_id: string;
  /** Base64: the file's 32-byte key. */
  key: string;
  /** Base64 SHA-256 of the plaintext, checked after the download. */
  sha256: string;
  name: string;
  mime: string;
  /** Plaintext bytes. */
  size: number;
  caption: string;
}

/** tern-core's file encryption for one file (format v1: header, then 64 KiB chunks). */
export interface CoreFileEncryptor {
  header(): Uint8Array;
  /** Chunk `index` sealed; `plaintext` is exactly the file's bytes
   * `[chunkFileStart(index), chunkFileEnd(index))` (padding is added; deterministic). */
  encryptChunk(index: number, plaintext: Uint8Array): Uint8Array;
  chunkFileStart(index: number): number;
  chunkFileEnd(index: number): number;
  /** Where an object offset falls: [chunk index, bytes into the sealed chunk]; undefined
   * inside the header or at the end. */
  chunkAt(offset: number): [number, number] | undefined;
  encryptedSize(): number;
  chunkCount(): number;
  /** The message body; throws unless every chunk was encrypted once in order (the hash). */
  fileBody(fileId: string, name: string, mime: string, caption: string): FileBodyJson;
  free(): void;
}

/** Verifies and decrypts a download as it streams; `finish` throws on truncation or a hash
 * that is not the sender's. */
export interface CoreFileDecryptor {
  /** Plaintext of the chunks these bytes completed (each verified first); throws
   * `FileTamperedError`. */
  push(ciphertext: Uint8Array): Uint8Array;
  /** Throws `FileTruncatedError` / `FileHashMismatchError` unless the file is complete. */
  finish(): void;
  free(): void;
}

/** What `Machine.decrypt` returns. */
export type Decrypted =
  | {
      text: string | null;
      data: { content_type: string; data: string } | null;
      file?: FileBodyJson | null;
      sender_user: string;
      sender_device: string;
      trust: 'verified' | 'unverified' | 'changed' | string;
      session_id: string;
      message_index: number;
      error?: undefined;
    }
  | { error: string; reason?: string };

export interface Encrypted {
  content_type: string;
  payload: string;
  session_id: string;
  key_shares: KeyShareItem[];
  missing: { user: string; device: string }[];
}

export interface Prepared {
  query_users: string[];
  claim: { user: string; device: string }[];
}

export interface CryptoEvent {
  type: 'room_key_received' | 'withheld' | 'untrusted_key' | 'unknown_device' | 'rejected';
  conversation?: string;
  session_id?: string;
  user?: string;
  device?: string;
  reason?: string;
}

export interface TrustEvent {
  type: 'new_device' | 'identity_changed' | 'device_removed' | 'invalid_keys';
  user: string;
  device: string;
  reason?: string;
}

export interface TrustedDevice {
  user: string;
  device: string;
  trust: 'verified' | 'unverified' | 'changed';
  blocked: boolean;
  fingerprint: string;
  first_seen_ms: number;
  previous_identities: unknown[];
}

/** The typed crypto state of one device. */
export interface CryptoMachine {
  pickle(key: Uint8Array): Uint8Array;
  fingerprint(): string;
  keysToPublish(oneTimeKeysLeft: number): DeviceKeys | undefined;
  markKeysPublished(): void;
  onDeviceList(user: string, devices: DeviceKeys[], nowMs: number): TrustEvent[];
  markDeviceListStale(user: string): void;
  prepare(conversation: string, members: string[], nowMs: number): Prepared;
  onClaimed(bundles: DeviceKeys[]): { user: string; device: string; reason: string }[];
  onMemberRemoved(conversation: string, user: string): void;
  encryptText(conversation: string, text: string, nowMs: number): Encrypted;
  /** An outbox entry's (content_type, payload): "text" + UTF-8 is a text body. */
  encrypt(conversation: string, contentType: string, payload: Uint8Array, nowMs: number): Encrypted;
  onKeyShare(
    share: { from_user: string; from_device: string; payload: string },
    nowMs: number,
  ): CryptoEvent[];
  decrypt(message: WireMessage): Decrypted;
  safetyNumber(other: string): string | undefined;
  /** `user`'s devices in the trust store (own user id: this account's devices). */
  deviceList(user: string): TrustedDevice[];
  /** After comparing safety numbers: every current device of `user` becomes verified. */
  markUserVerified(user: string): boolean;
  /** A new key backup sealed by `passphrase` (argon2id): the `PUT /keys/backup` body. */
  backupCreate(passphrase: string, nowMs: number): { version: string; meta: string };
  backupVersion(): string | undefined;
  /** Up to 1,000 sessions not yet uploaded: the `PUT /keys/backup/sessions` body (empty = done). */
  backupExportSessions(): { version: string; sessions: { session_id: string }[] };
  backupMarkUploaded(sessionIds: string[]): void;
  /** Throws an Error named `WrongPassphraseError` for a wrong passphrase (nothing changes). */
  backupUnlock(passphrase: string, backup: unknown): void;
  backupImport(
    page: unknown,
    nowMs: number,
  ): { imported: number; already_known: number; invalid: number };
  free(): void;
  /** The wasm object, for SendPlan. */
  readonly raw: unknown;
}

export type PlanStep =
  | { step: 'query'; batches: string[][] }
  | { step: 'claim'; batches: ClaimTarget[][] }
  | { step: 'ready' };

/** tern-core's SendPlan: the prepare → query device lists → claim keys loop of one send. */
export interface CoreSendPlan {
  next(machine: CryptoMachine, nowMs: number): PlanStep;
  onQueryAnswer(
    machine: CryptoMachine,
    batch: string[],
    answer: ServerMessage,
    nowMs: number,
  ): { events: TrustEvent[]; retry: string[] };
  onClaimAnswer(
    machine: CryptoMachine,
    batch: ClaimTarget[],
    answer: ServerMessage,
  ): { problems: unknown[]; retry: ClaimTarget[] };
  free(): void;
}

/** What the outbox keeps per message (stored as is in IndexedDB). */
export interface OutboxEntryJson {
  client_msg_id: string;
  conversation: string;
  content_type: string;
  payload: string;
  created_ms: number;
}

export interface OutboxLimits {
  max_entries: number;
  max_bytes: number;
  max_payload_bytes: number;
}

/** tern-core's Outbox: compose order and limits; the page persists the entries. */
export interface CoreOutbox {
  compose(
    conversation: string,
    contentType: string,
    payload: Uint8Array,
    nowMs: number,
  ): OutboxEntryJson;
  front(): OutboxEntryJson | undefined;
  onAcked(ack: ServerMessage): OutboxEntryJson | undefined;
  remove(clientMsgId: string): OutboxEntryJson | undefined;
  len(): number;
  bytes(): number;
  limits(): OutboxLimits;
  free(): void;
  /** The wasm object, for `Drain.onSendFailed`. */
  readonly raw: unknown;
}

export type SendFailure =
  | ServerMessage
  | { kind: 'transient' }
  | { kind: 'frame_too_large' }
  | { kind: 'setup' }
  | { kind: 'coded'; code: string };

export type DrainDecision =
  | {
      decision: 'rejected';
      rejected: { client_msg_id: string; conversation: string; code: string; message: string };
      removed: OutboxEntryJson | null;
    }
  | {
      decision: 'retry';
      gate: { state: 'open' } | { state: 'at'; at_ms: number } | { state: 'parked' };
    };

/** tern-core's Drain: when the outbox may send, and what a failed send means. */
export interface CoreDrain {
  onConnected(): void;
  mayDrain(nowMs: number): boolean;
  retryAt(): number | undefined;
  onSendFailed(
    outbox: CoreOutbox,
    clientMsgId: string,
    failure: SendFailure,
    message: string | undefined,
    reconnect: CoreReconnect,
    nowMs: number,
  ): DrainDecision;
  free(): void;
}

/** tern-core's Reconnect: backoff reset by uptime, GoingAway floor. */
export interface CoreReconnect {
  onConnected(nowMs: number): void;
  onDisconnected(nowMs: number): void;
  onGoingAway(retryAfterMs: number): void;
  begin(nowMs: number): void;
  nextAttemptDelayMs(): number;
  free(): void;
  readonly raw: unknown;
}

export type Popped =
  | { kind: 'message'; message: WireMessage }
  | { kind: 'sync_complete' }
  | { kind: 'skipped'; conversation: string; from_seq: number; to_seq: number; reason: string }
  | { kind: 'event'; event: unknown }
  | { kind: 'ack_only' };

/** tern-core's Delivery: cursors, dedupe, gaps and acks of delivered messages. */
export interface CoreDelivery {
  onConnect(): void;
  resumeCursors(): Cursor[];
  cursors(): Cursor[];
  /** Takes deliver / sync_complete / backlog_truncated; false for anything else. */
  onServerMessage(m: ServerMessage): boolean;
  onOwnSend(conversation: string, seq: number): void;
  nextGapFetch(requestId: number): ClientMessage | undefined;
  onHistoryPage(page: { conversation: string; messages: WireMessage[] }): void;
  pop(): Popped | undefined;
  acksDue(): { type: 'ack'; conversation: string; seq: number }[];
  onAckSent(conversation: string, seq: number): void;
  free(): void;
}

export interface Settled {
  message: WireMessage;
  result: Decrypted;
}

/** tern-core's queue of messages waiting for their key or their sender's device. */
export interface CoreWaiting {
  decrypt(machine: CryptoMachine, m: WireMessage): Decrypted;
  onKeyShare(
    machine: CryptoMachine,
    share: ServerMessage,
    nowMs: number,
  ): { events: CryptoEvent[]; settled: Settled[] };
  hasUnknownSenders(): boolean;
  takeToQuery(): string[];
  retrySenders(machine: CryptoMachine, users: string[]): Settled[];
  /** After a backup import: every waiting message again. */
  retryAll(machine: CryptoMachine): Settled[];
  free(): void;
}

/** What `checkWelcome` returns for a Welcome with a version we speak. */
export interface CheckedWelcome {
  version: number;
  user: string;
  device: string;
  server_time_ms: number;
  max_frame_bytes: number;
  one_time_keys_left: number;
  /** The largest frame this page may send (its own limit lowered to the server's). */
  max_out_frame: number;
}

/** Splits a WebTransport stream into envelopes (u32-LE length prefix). */
export interface CoreFrameDecoder {
  push(bytes: Uint8Array): void;
  /** The next envelope, undefined when more bytes are needed; throws on an oversized header. */
  next(): Uint8Array | undefined;
  free(): void;
}

export interface Core {
  encodeClient(m: ClientMessage, maxFrameBytes: number): Uint8Array;
  /** The Hello that opens every connection (our version range, token, device, cursors). */
  hello(token: string, device: string, clientName: string, cursors: Cursor[]): ClientMessage;
  /** Throws for an `error`, an unsupported version or anything but a Welcome. */
  checkWelcome(m: ServerMessage, localMaxFrameBytes: number): CheckedWelcome;
  /** `request:<id>` / `pong:<nonce>` for replies, undefined for pushes. */
  replyKey(m: ServerMessage): string | undefined;
  lengthPrefixed(envelope: Uint8Array): Uint8Array;
  newFrameDecoder(maxFrameBytes: number): CoreFrameDecoder;
  decodeServer(frame: Uint8Array, maxFrameBytes?: number): ServerMessage;
  newMachine(user: string, device: string): CryptoMachine;
  unpickleMachine(sealed: Uint8Array, key: Uint8Array): CryptoMachine;
  newOutbox(loaded: OutboxEntryJson[], limits?: Partial<OutboxLimits>): CoreOutbox;
  newDrain(): CoreDrain;
  newReconnect(policy?: {
    base_ms?: number;
    cap_ms?: number;
    reset_after_ms?: number;
  }): CoreReconnect;
  /** Whether a connect failure means "stop and log in again" (bad token, refused device…). */
  isPermanentConnectFailure(failure: SendFailure): boolean;
  newSendPlan(conversation: string, members: string[], maxFrameBytes: number): CoreSendPlan;
  newDelivery(cursors: Cursor[]): CoreDelivery;
  newWaiting(): CoreWaiting;
  newDeliveryMarks(): CoreDeliveryMarks;
  /** `encrypt`'s key shares split so each batch fits one `send_key_shares` frame. */
  shareBatches(shares: KeyShareItem[], maxFrameBytes: number): KeyShareItem[][];
  newFileEncryptor(size: number): CoreFileEncryptor;
  newFileDecryptor(body: FileBodyJson): CoreFileDecryptor;
  /** Exact encrypted size of a file of `size` bytes (the upload's declared size). */
  fileEncryptedLen(size: number): number;
  /** The Send frame's file reference for a file message (file id, encrypted size, type). */
  fileRef(body: FileBodyJson): FileRef;
  /** The outbox content type of a file message (its payload is the FileBody JSON). */
  fileContentType(): string;
}

// The raw wasm-bindgen exports this facade uses (camelCase names, JSON strings).
interface RawMachine {
  pickle(key: Uint8Array): Uint8Array;
  fingerprint(): string;
  keysToPublish(left: number): string | undefined;
  markKeysPublished(): void;
  onDeviceList(user: string, devicesJson: string, nowMs: number): string;
  markDeviceListStale(user: string): void;
  prepare(conversation: string, membersJson: string, nowMs: number): string;
  onClaimed(bundlesJson: string): string;
  onMemberRemoved(conversation: string, user: string): void;
  encryptText(conversation: string, text: string, nowMs: number): string;
  encrypt(conversation: string, contentType: string, payload: Uint8Array, nowMs: number): string;
  onKeyShare(shareJson: string, nowMs: number): string;
  decrypt(messageJson: string): string;
  safetyNumber(other: string): string | undefined;
  deviceList(user: string): string;
  markUserVerified(user: string): boolean;
  backupCreate(passphrase: string, nowMs: number): string;
  backupVersion(): string | undefined;
  backupExportSessions(): string;
  backupMarkUploaded(idsJson: string): void;
  backupUnlock(passphrase: string, backupJson: string): void;
  backupImport(pageJson: string, nowMs: number): string;
  free(): void;
}

interface RawOutbox {
  compose(conversation: string, contentType: string, payload: Uint8Array, nowMs: number): string;
  front(): string | undefined;
  onAcked(ackJson: string): string | undefined;
  remove(id: string): string | undefined;
  len(): number;
  bytes(): number;
  limits(): string;
  free(): void;
}

interface RawDrain {
  onConnected(): void;
  mayDrain(nowMs: number): boolean;
  retryAt(): number | undefined;
  onSendFailed(
    outbox: unknown,
    id: string,
    failureJson: string,
    message: string | undefined,
    reconnect: unknown,
    nowMs: number,
  ): string;
  free(): void;
}

interface RawReconnect {
  onConnected(nowMs: number): void;
  onDisconnected(nowMs: number): void;
  onGoingAway(retryAfterMs: number): void;
  begin(nowMs: number): void;
  nextAttemptDelayMs(): number;
  free(): void;
}

interface RawModule {
  default: (opts?: { module_or_path?: unknown }) => Promise<unknown>;
  encodeClient(json: string, maxFrameBytes: number): Uint8Array;
  decodeServer(frame: Uint8Array, maxFrameBytes?: number): string;
  hello(token: string, device: string, clientName: string, cursorsJson: string): string;
  checkWelcome(serverJson: string, localMaxFrameBytes: number): string;
  replyKey(serverJson: string): string | undefined;
  lengthPrefixed(envelope: Uint8Array): Uint8Array;
  FrameDecoder: new (maxFrameBytes: number) => CoreFrameDecoder;
  Machine: {
    new (user: string, device: string): RawMachine;
    unpickle(sealed: Uint8Array, key: Uint8Array): RawMachine;
  };
  Outbox: { fromLoaded(entriesJson: string, limitsJson?: string): RawOutbox };
  Drain: new () => RawDrain;
  Reconnect: new (policyJson?: string, seed?: number) => RawReconnect;
  isPermanentConnectFailure(failureJson: string): boolean;
  SendPlan: new (conversation: string, membersJson: string, maxFrameBytes: number) => RawSendPlan;
  shareBatches(sharesJson: string, maxFrameBytes: number): string;
  Delivery: new (cursorsJson: string) => RawDelivery;
  WaitingForKeys: new (max?: number) => RawWaiting;
  DeliveryMarks: new () => RawDeliveryMarks;
  FileEncryptor: new (size: number) => RawFileEncryptor;
  FileDecryptor: new (bodyJson: string) => CoreFileDecryptor;
  fileEncryptedSize(size: number): number;
  fileRef(bodyJson: string): string;
  fileContentType(): string;
}

interface RawFileEncryptor {
  header(): Uint8Array;
  encryptChunk(index: number, plaintext: Uint8Array): Uint8Array;
  chunkFileStart(index: number): number;
  chunkFileEnd(index: number): number;
  chunkAt(offset: number): Float64Array | undefined;
  encryptedSize(): number;
  chunkCount(): number;
  fileBody(fileId: string, name: string, mime: string, caption: string): string;
  free(): void;
}

interface RawDeliveryMarks {
  apply(conversation: string, marksJson: string): boolean;
  state(conversation: string, seq: number, sender: string, membersJson: string): string;
  forget(conversation: string): void;
  free(): void;
}

/** How far one own message got: delivered to `delivered` of the `recipients` other members. */
export interface Delivery {
  delivered: number;
  recipients: number;
}

/** tern-core's DeliveryMarks: merges `delivered` messages; answers per message. */
export interface CoreDeliveryMarks {
  /** True when a mark moved (redraw then). */
  apply(conversation: string, marks: DeliveryMark[]): boolean;
  state(conversation: string, seq: number, sender: string, members: string[]): Delivery;
  forget(conversation: string): void;
  free(): void;
}

interface RawDelivery {
  onConnect(): void;
  resumeCursors(): string;
  cursors(): string;
  onServerMessage(json: string): boolean;
  onOwnSend(conversation: string, seq: number): void;
  nextGapFetch(requestId: number): string | undefined;
  onHistoryPage(json: string): void;
  pop(): string | undefined;
  acksDue(): string;
  onAckSent(conversation: string, seq: number): void;
  free(): void;
}

interface RawWaiting {
  decrypt(machine: unknown, json: string): string;
  onKeyShare(machine: unknown, json: string, nowMs: number): string;
  hasUnknownSenders(): boolean;
  takeToQuery(): string;
  retrySenders(machine: unknown, usersJson: string): string;
  retryAll(machine: unknown): string;
  free(): void;
}

interface RawSendPlan {
  next(machine: unknown, nowMs: number): string;
  onQueryAnswer(machine: unknown, batchJson: string, answerJson: string, nowMs: number): string;
  onClaimAnswer(machine: unknown, batchJson: string, answerJson: string): string;
  free(): void;
}

function parseOr<T>(s: string | undefined): T | undefined {
  return s === undefined ? undefined : (JSON.parse(s) as T);
}

function wrap(raw: RawMachine): CryptoMachine {
  return {
    raw,
    pickle: (key) => raw.pickle(key),
    fingerprint: () => raw.fingerprint(),
    keysToPublish: (left) => {
      const k = raw.keysToPublish(left);
      return k === undefined ? undefined : (JSON.parse(k) as DeviceKeys);
    },
    markKeysPublished: () => raw.markKeysPublished(),
    onDeviceList: (user, devices, now) =>
      JSON.parse(raw.onDeviceList(user, JSON.stringify(devices), now)) as TrustEvent[],
    markDeviceListStale: (user) => raw.markDeviceListStale(user),
    prepare: (c, members, now) =>
      JSON.parse(raw.prepare(c, JSON.stringify(members), now)) as Prepared,
    onClaimed: (bundles) =>
      JSON.parse(raw.onClaimed(JSON.stringify(bundles))) as {
        user: string;
        device: string;
        reason: string;
      }[],
    onMemberRemoved: (c, u) => raw.onMemberRemoved(c, u),
    encryptText: (c, text, now) => JSON.parse(raw.encryptText(c, text, now)) as Encrypted,
    encrypt: (c, t, p, now) => JSON.parse(raw.encrypt(c, t, p, now)) as Encrypted,
    onKeyShare: (share, now) =>
      JSON.parse(raw.onKeyShare(JSON.stringify(share), now)) as CryptoEvent[],
    decrypt: (m) => JSON.parse(raw.decrypt(JSON.stringify(m))) as Decrypted,
    safetyNumber: (other) => raw.safetyNumber(other),
    deviceList: (user) => JSON.parse(raw.deviceList(user)) as TrustedDevice[],
    markUserVerified: (user) => raw.markUserVerified(user),
    backupCreate: (pass, now) =>
      JSON.parse(raw.backupCreate(pass, now)) as { version: string; meta: string },
    backupVersion: () => raw.backupVersion(),
    backupExportSessions: () =>
      JSON.parse(raw.backupExportSessions()) as {
        version: string;
        sessions: { session_id: string }[];
      },
    backupMarkUploaded: (ids) => raw.backupMarkUploaded(JSON.stringify(ids)),
    backupUnlock: (pass, backup) => raw.backupUnlock(pass, JSON.stringify(backup)),
    backupImport: (page, now) =>
      JSON.parse(raw.backupImport(JSON.stringify(page), now)) as {
        imported: number;
        already_known: number;
        invalid: number;
      },
    free: () => raw.free(),
  };
}

let loading: Promise<Core> | undefined;

/** Loads and instantiates the wasm module once (streaming compile of the hashed .wasm asset). */
export function loadCore(): Promise<Core> {
  loading ??= (async () => {
    const mod = (await import('@tern/core-wasm')) as unknown as RawModule;
    await mod.default();
    const core: Core = {
      encodeClient: (m, max) => mod.encodeClient(JSON.stringify(m), max),
      decodeServer: (frame, max) => JSON.parse(mod.decodeServer(frame, max)) as ServerMessage,
      hello: (token, device, name, cursors) =>
        JSON.parse(mod.hello(token, device, name, JSON.stringify(cursors))) as ClientMessage,
      checkWelcome: (m, max) =>
        JSON.parse(mod.checkWelcome(JSON.stringify(m), max)) as CheckedWelcome,
      replyKey: (m) => mod.replyKey(JSON.stringify(m)),
      lengthPrefixed: (e) => mod.lengthPrefixed(e),
      newFrameDecoder: (max) => new mod.FrameDecoder(max),
      newMachine: (user, device) => wrap(new mod.Machine(user, device)),
      unpickleMachine: (sealed, key) => wrap(mod.Machine.unpickle(sealed, key)),
      newOutbox: (loaded, limits) => {
        const raw = mod.Outbox.fromLoaded(
          JSON.stringify(loaded),
          limits ? JSON.stringify(limits) : undefined,
        );
        return {
          raw,
          compose: (c, t, p, now) => JSON.parse(raw.compose(c, t, p, now)) as OutboxEntryJson,
          front: () => parseOr<OutboxEntryJson>(raw.front()),
          onAcked: (ack) => parseOr<OutboxEntryJson>(raw.onAcked(JSON.stringify(ack))),
          remove: (id) => parseOr<OutboxEntryJson>(raw.remove(id)),
          len: () => raw.len(),
          bytes: () => raw.bytes(),
          limits: () => JSON.parse(raw.limits()) as OutboxLimits,
          free: () => raw.free(),
        };
      },
      newDrain: () => {
        const raw = new mod.Drain();
        return {
          onConnected: () => raw.onConnected(),
          mayDrain: (now) => raw.mayDrain(now),
          retryAt: () => raw.retryAt(),
          onSendFailed: (outbox, id, failure, message, reconnect, now) =>
            JSON.parse(
              raw.onSendFailed(
                outbox.raw,
                id,
                JSON.stringify(failure),
                message,
                reconnect.raw,
                now,
              ),
            ) as DrainDecision,
          free: () => raw.free(),
        };
      },
      newReconnect: (policy) => {
        const raw = new mod.Reconnect(policy ? JSON.stringify(policy) : undefined);
        return {
          raw,
          onConnected: (now) => raw.onConnected(now),
          onDisconnected: (now) => raw.onDisconnected(now),
          onGoingAway: (ms) => raw.onGoingAway(ms),
          begin: (now) => raw.begin(now),
          nextAttemptDelayMs: () => raw.nextAttemptDelayMs(),
          free: () => raw.free(),
        };
      },
      isPermanentConnectFailure: (f) => mod.isPermanentConnectFailure(JSON.stringify(f)),
      newDelivery: (cursors) => {
        const raw = new mod.Delivery(JSON.stringify(cursors));
        return {
          onConnect: () => raw.onConnect(),
          resumeCursors: () => JSON.parse(raw.resumeCursors()) as Cursor[],
          cursors: () => JSON.parse(raw.cursors()) as Cursor[],
          onServerMessage: (m) => raw.onServerMessage(JSON.stringify(m)),
          onOwnSend: (c, seq) => raw.onOwnSend(c, seq),
          nextGapFetch: (id) => parseOr<ClientMessage>(raw.nextGapFetch(id)),
          onHistoryPage: (page) => raw.onHistoryPage(JSON.stringify(page)),
          pop: () => parseOr<Popped>(raw.pop()),
          acksDue: () =>
            JSON.parse(raw.acksDue()) as { type: 'ack'; conversation: string; seq: number }[],
          onAckSent: (c, seq) => raw.onAckSent(c, seq),
          free: () => raw.free(),
        };
      },
      newWaiting: () => {
        const raw = new mod.WaitingForKeys();
        return {
          decrypt: (m, msg) => JSON.parse(raw.decrypt(m.raw, JSON.stringify(msg))) as Decrypted,
          onKeyShare: (m, share, now) =>
            JSON.parse(raw.onKeyShare(m.raw, JSON.stringify(share), now)) as {
              events: CryptoEvent[];
              settled: Settled[];
            },
          hasUnknownSenders: () => raw.hasUnknownSenders(),
          takeToQuery: () => JSON.parse(raw.takeToQuery()) as string[],
          retryAll: (m) => JSON.parse(raw.retryAll(m.raw)) as Settled[],
          retrySenders: (m, users) =>
            JSON.parse(raw.retrySenders(m.raw, JSON.stringify(users))) as Settled[],
          free: () => raw.free(),
        };
      },
      newDeliveryMarks: () => {
        const raw = new mod.DeliveryMarks();
        return {
          apply: (c, marks) => raw.apply(c, JSON.stringify(marks)),
          state: (c, seq, sender, members) =>
            JSON.parse(raw.state(c, seq, sender, JSON.stringify(members))) as Delivery,
          forget: (c) => raw.forget(c),
          free: () => raw.free(),
        };
      },
      newSendPlan: (conversation, members, max) => {
        const raw = new mod.SendPlan(conversation, JSON.stringify(members), max);
        return {
          next: (m, now) => JSON.parse(raw.next(m.raw, now)) as PlanStep,
          onQueryAnswer: (m, batch, answer, now) =>
            JSON.parse(
              raw.onQueryAnswer(m.raw, JSON.stringify(batch), JSON.stringify(answer), now),
            ) as {
              events: TrustEvent[];
              retry: string[];
            },
          onClaimAnswer: (m, batch, answer) =>
            JSON.parse(raw.onClaimAnswer(m.raw, JSON.stringify(batch), JSON.stringify(answer))) as {
              problems: unknown[];
              retry: ClaimTarget[];
            },
          free: () => raw.free(),
        };
      },
      shareBatches: (shares, max) =>
        JSON.parse(mod.shareBatches(JSON.stringify(shares), max)) as KeyShareItem[][],
      newFileEncryptor: (size) => {
        const raw = new mod.FileEncryptor(size);
        return {
          header: () => raw.header(),
          encryptChunk: (i, p) => raw.encryptChunk(i, p),
          chunkFileStart: (i) => raw.chunkFileStart(i),
          chunkFileEnd: (i) => raw.chunkFileEnd(i),
          chunkAt: (offset) => {
            const at = raw.chunkAt(offset);
            return at && at.length === 2 ? [at[0] ?? 0, at[1] ?? 0] : undefined;
          },
          encryptedSize: () => raw.encryptedSize(),
          chunkCount: () => raw.chunkCount(),
          fileBody: (id, name, mime, caption) =>
            JSON.parse(raw.fileBody(id, name, mime, caption)) as FileBodyJson,
          free: () => raw.free(),
        };
      },
      newFileDecryptor: (body) => new mod.FileDecryptor(JSON.stringify(body)),
      fileEncryptedLen: (size) => mod.fileEncryptedSize(size),
      fileRef: (body) => JSON.parse(mod.fileRef(JSON.stringify(body))) as FileRef,
      fileContentType: () => mod.fileContentType(),
    };
    return core;
  })();
  return loading;
}
