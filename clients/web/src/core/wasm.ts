// The one typed facade over the wasm core (clients/core-wasm, built by scripts/build-web.sh into
// clients/web/wasm/). Loaded lazily: the login screen paints before the wasm is fetched. All
// protocol, crypto and framing logic lives in Rust; this file only converts JSON strings to the
// TypeScript shapes of protocol.ts.

import type {
  ClientMessage,
  DeviceKeys,
  KeyShareItem,
  ServerMessage,
  WireMessage,
} from './protocol';

/** What `Machine.decrypt` returns. */
export type Decrypted =
  | {
      text: string | null;
      data: { content_type: string; data: string } | null;
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
  onKeyShare(
    share: { from_user: string; from_device: string; payload: string },
    nowMs: number,
  ): CryptoEvent[];
  decrypt(message: WireMessage): Decrypted;
  safetyNumber(other: string): string | undefined;
  free(): void;
}

export interface Core {
  encodeClient(m: ClientMessage, maxFrameBytes: number): Uint8Array;
  decodeServer(frame: Uint8Array, maxFrameBytes?: number): ServerMessage;
  newMachine(user: string, device: string): CryptoMachine;
  unpickleMachine(sealed: Uint8Array, key: Uint8Array): CryptoMachine;
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
  onKeyShare(shareJson: string, nowMs: number): string;
  decrypt(messageJson: string): string;
  safetyNumber(other: string): string | undefined;
  free(): void;
}

interface RawModule {
  default: (opts?: { module_or_path?: unknown }) => Promise<unknown>;
  encodeClient(json: string, maxFrameBytes: number): Uint8Array;
  decodeServer(frame: Uint8Array, maxFrameBytes?: number): string;
  Machine: {
    new (user: string, device: string): RawMachine;
    unpickle(sealed: Uint8Array, key: Uint8Array): RawMachine;
  };
}

function wrap(raw: RawMachine): CryptoMachine {
  return {
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
    onKeyShare: (share, now) =>
      JSON.parse(raw.onKeyShare(JSON.stringify(share), now)) as CryptoEvent[],
    decrypt: (m) => JSON.parse(raw.decrypt(JSON.stringify(m))) as Decrypted,
    safetyNumber: (other) => raw.safetyNumber(other),
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
      newMachine: (user, device) => wrap(new mod.Machine(user, device)),
      unpickleMachine: (sealed, key) => wrap(mod.Machine.unpickle(sealed, key)),
    };
    return core;
  })();
  return loading;
}
