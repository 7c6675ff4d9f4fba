// The JSON shapes of tern-wire's `ClientMessage` / `ServerMessage` serde form (wire/src/msg.rs):
// internally tagged by `type` (snake_case), ids as UUID strings, bytes as lowercase hex,
// `client_msg_id` as 32 hex digits. The wasm codec turns these into verified FlatBuffers
// envelopes and back; nothing in TypeScript builds frame bytes itself.

export type Uuid = string;
export type Hex = string;

export type ErrorCode =
  | 'internal'
  | 'malformed_frame'
  | 'frame_too_large'
  | 'unsupported_version'
  | 'unauthenticated'
  | 'token_revoked'
  | 'forbidden'
  | 'not_found'
  | 'rate_limited'
  | 'invalid_argument'
  | 'conflict'
  | 'slow_consumer'
  | 'server_shutdown'
  | 'limit_exceeded'
  | 'unsupported';

export type PresenceStatus = 'offline' | 'online' | 'away';

export interface Cursor {
  conversation: Uuid;
  seq: number;
}

export interface FileRef {
  file_id: Uuid;
  size: number;
  content_type: string;
}

export interface WireMessage {
  conversation: Uuid;
  seq: number;
  message_id: Uuid;
  sender_user: Uuid;
  sender_device: Uuid;
  client_msg_id: Hex;
  timestamp_ms: number;
  content_type: string;
  payload: Hex;
  files: FileRef[];
}

export interface WireMember {
  user: Uuid;
  username: string;
  role: 'member' | 'owner';
}

export interface ConversationInfo {
  conversation: Uuid;
  kind: 'direct' | 'group';
  name: string;
  description: string;
  members: WireMember[];
  last_seq: number;
}

export interface ReactionCount {
  seq: number;
  emoji: string;
  count: number;
  users: Uuid[];
}

export interface DeviceKeys {
  user: Uuid;
  device: Uuid;
  identity_key: Hex;
  signed_prekey: Hex;
  one_time_keys: Hex[];
  signing_key: Hex;
  fallback_key: Hex;
  signature: Hex;
}

/** A device of `user` has every message of the conversation up to `seq`. */
export interface DeliveryMark {
  user: Uuid;
  seq: number;
}

export interface KeyShareItem {
  to_user: Uuid;
  to_device: Uuid;
  payload: Hex;
}

export interface ClaimTarget {
  user: Uuid;
  devices: Uuid[];
}

export type ClientMessage =
  | {
      type: 'hello';
      min_version: number;
      max_version: number;
      token: string;
      device: Uuid;
      client_name: string;
      cursors: Cursor[];
    }
  | {
      type: 'send';
      request_id: number;
      conversation: Uuid;
      client_msg_id: Hex;
      content_type: string;
      payload: Hex;
      files: FileRef[];
    }
  | { type: 'ack'; conversation: Uuid; seq: number }
  | { type: 'resume'; cursors: Cursor[] }
  | {
      type: 'history';
      request_id: number;
      conversation: Uuid;
      before_seq: number;
      after_seq: number;
      limit: number;
      /** Non-zero: a page centred on this seq (not with before/after/since/until). */
      around_seq?: number;
      /** Non-zero: only messages the server stamped at or after this (Unix ms). */
      since_ms?: number;
      /** Non-zero: only messages the server stamped at or before this (Unix ms). */
      until_ms?: number;
      /** Only this user's messages. */
      sender?: Uuid;
    }
  | { type: 'accept_invite'; request_id: number; conversation: Uuid }
  | { type: 'decline_invite'; request_id: number; conversation: Uuid }
  | { type: 'set_presence'; status: PresenceStatus }
  | { type: 'typing'; conversation: Uuid; active: boolean }
  | {
      type: 'react';
      request_id: number;
      conversation: Uuid;
      seq: number;
      emoji: string;
      add: boolean;
    }
  | { type: 'publish_keys'; request_id: number; keys: DeviceKeys }
  | { type: 'ping'; nonce: number }
  | { type: 'query_keys'; request_id: number; users: Uuid[] }
  | { type: 'send_key_shares'; request_id: number; shares: KeyShareItem[] }
  | { type: 'ack_key_shares'; up_to: number; ids: number[] }
  | { type: 'claim_keys_batch'; request_id: number; targets: ClaimTarget[] }
  | { type: 'get_delivered'; request_id: number; conversation: Uuid };

export type Notice =
  | { type: 'backlog_truncated'; conversation: Uuid; from_seq: number; to_seq: number }
  | { type: 'slow_consumer' }
  | { type: 'going_away'; retry_after_ms: number };

export type ServerMessage =
  | {
      type: 'welcome';
      version: number;
      user: Uuid;
      device: Uuid;
      server_time_ms: number;
      max_frame_bytes: number;
      one_time_keys_left: number;
    }
  | {
      type: 'send_ack';
      request_id: number;
      conversation: Uuid;
      client_msg_id: Hex;
      seq: number;
      message_id: Uuid;
      timestamp_ms: number;
      duplicate: boolean;
    }
  | { type: 'deliver'; message: WireMessage }
  | { type: 'sync_complete' }
  | {
      type: 'history_page';
      request_id: number;
      conversation: Uuid;
      messages: WireMessage[];
      reactions: ReactionCount[];
      has_more: boolean;
      /** Older messages exist than the page's first (around pages). */
      has_more_before?: boolean;
      /** Newer messages exist than the page's last (around pages; forward pages: has_more). */
      has_more_after?: boolean;
    }
  | { type: 'conversation'; request_id: number; info: ConversationInfo }
  | { type: 'invitation'; conversation: Uuid; inviter: Uuid; name: string }
  | { type: 'invite_declined'; conversation: Uuid; user: Uuid }
  | { type: 'member_removed'; conversation: Uuid; user: Uuid }
  | { type: 'presence'; user: Uuid; status: PresenceStatus; last_seen_ms: number }
  | { type: 'typing'; conversation: Uuid; user: Uuid; active: boolean }
  | { type: 'reaction'; conversation: Uuid; seq: number; user: Uuid; emoji: string; add: boolean }
  | { type: 'key_bundle'; request_id: number; devices: DeviceKeys[]; unanswered: Uuid[] }
  | { type: 'key_share'; from_user: Uuid; from_device: Uuid; payload: Hex; inbox_id: number }
  | { type: 'ok'; request_id: number }
  | {
      type: 'error';
      request_id: number;
      code: ErrorCode;
      message: string;
      fatal: boolean;
      retry_after_ms: number;
    }
  | { type: 'notice'; notice: Notice }
  | { type: 'pong'; nonce: number }
  | { type: 'key_shares_stored'; request_id: number; full: Uuid[] }
  | { type: 'device_list_changed'; user: Uuid }
  | { type: 'delivered'; request_id: number; conversation: Uuid; marks: DeliveryMark[] }
  | { type: 'one_time_keys_low'; left: number };

export function bytesToHex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

export function hexToBytes(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || /[^0-9a-f]/i.test(hex)) throw new Error('invalid hex');
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** A random 128-bit client message id as 32 hex digits (the outbox's idempotency key). */
export function randomClientMsgId(): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return bytesToHex(b);
}
