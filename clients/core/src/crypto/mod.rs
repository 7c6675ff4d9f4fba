//! End-to-end encryption (Olm/Megolm via vodozemac), sans-IO.
//!
//! One [`CryptoMachine`] per device. It never does I/O and never reads a clock: the driver
//! (the tokio SDK, the browser) feeds it server data and `now_ms`, and carries out what it
//! returns. Who holds which key:
//!
//! * The device: its vodozemac `Account` (Curve25519 identity + Ed25519 signing key, one-time
//!   and fallback keys' secrets), Olm sessions per peer device, one outbound Megolm session
//!   per conversation, inbound Megolm sessions (its own and every sender's), the trust store.
//!   All of it leaves the machine only as [`CryptoMachine::pickle`], sealed with a 32-byte key
//!   the driver supplies (XChaCha20-Poly1305).
//! * The server: public keys ([`PublishedKeys`]), per-device inboxes of Olm ciphertext
//!   (key shares), Megolm ciphertext messages, and the backup (meta + sealed session blobs).
//!
//! Driver flow:
//! 1. `CryptoMachine::new(user, device, config)` (or `from_pickle`). Publish
//!    `keys_to_publish(one_time_keys_left)` when it returns `Some`; after the server accepted
//!    it call `mark_keys_published()`. Pass the server's count of unclaimed one-time keys
//!    (`ServerWelcome.one_time_keys_left`).
//! 2. Device lists: on a query answer call `on_device_list(user, devices, now_ms)` with the
//!    user's COMPLETE list (signatures are checked; TOFU pinning; returns [`TrustEvent`]s to
//!    show); on a `DeviceListChanged` push call `mark_device_list_stale(user)`.
//! 3. Sending: `prepare(conversation, members, now_ms)` returns which users to query and which
//!    devices to claim one-time keys for; feed the answers to `on_device_list` / `on_claimed`;
//!    then `encrypt(conversation, body, now_ms)` ([`SendPlan`] runs that loop with its round
//!    limits). Send its `key_shares` first
//!    (`ClientSendKeyShares`), then the message (`ClientSend`, `content_type` =
//!    [`MEGOLM_CONTENT_TYPE`]; recognise incoming encrypted messages with
//!    [`is_encrypted_content_type`], which also accepts v1 history). Devices listed in `Encrypted::missing` got no key (no Olm
//!    session yet): a later `prepare`/`encrypt` shares the same session with them.
//! 4. Receiving: every `ServerKeyShare` goes to `on_key_share`; `RoomKeyReceived` means
//!    messages that were `NoKeyYet` for that session should be retried. Messages go to
//!    `decrypt`, which returns the body and the sender device's [`Trust`], or an
//!    [`Undecryptable`] reason.
//! 5. Backup: `backup_create` (upload version + meta), then periodically
//!    `backup_export_sessions` -> upload -> `backup_mark_uploaded`. A new device:
//!    `backup_unlock(passphrase, version, meta)` then `backup_import(entries)` page by page
//!    (or `backup_restore` for both at once).
//! 6. Persist with `pickle(key)` after every call that changed state (the driver decides when;
//!    [`CryptoStore`] is the small trait drivers implement for that).
//!
//! Formats are documented in [`keys`], [`formats`] and [`backup`].

mod backup;
#[cfg(test)]
mod envelope_tests;
mod error;
pub mod formats;
pub mod inbox;
pub mod keys;
mod machine;
pub mod send_plan;
mod trust;
pub mod waiting;

pub use backup::KdfParams;
pub use error::{CryptoError, Undecryptable};
pub use formats::{
    Body, Content, MEGOLM_CONTENT_TYPE, MEGOLM_CONTENT_TYPE_V1, TEXT_CONTENT_TYPE,
    is_encrypted_content_type,
};
pub use inbox::InboxAcks;
pub use keys::{KeyKind, PublishedKeys, SIGNED_KEY_BLOB_LEN, VerifiedIdentity, verify_device_keys};
pub use machine::{
    BackupEntry, ClaimProblem, CryptoConfig, CryptoEvent, CryptoMachine, CryptoStore, Decrypted,
    DeviceInfo, Encrypted, KeyShareOut, MemoryCryptoStore, Needs, RestoreReport,
};
pub use send_plan::{SendPlan, SendStep};
pub use trust::{Trust, TrustEvent};
pub use waiting::WaitingForKeys;

// ---- Limits (every one explicit; the reason beside it) ----

/// Devices cached per user. Real users have a handful; 64 leaves room for many browsers and
/// reinstalls while bounding what one user's list can cost every contact (keys, Olm sessions,
/// key shares per message).
pub const MAX_DEVICES_PER_USER: usize = 64;
/// Members of one conversation the machine shares keys with. The product's largest groups
/// are 1,000 members; 10,000 bounds a rotation burst (one Olm message per device).
pub const MAX_MEMBERS_PER_CONVERSATION: usize = 10_000;
/// Olm sessions kept per peer device identity: both sides may create a session at the same
/// time, and a peer may re-create one after losing state; 4 covers those races, the oldest is
/// dropped first.
pub const MAX_OLM_SESSIONS_PER_DEVICE: usize = 4;
/// Inbound Megolm sessions kept per conversation. Every sender rotates at least every 100
/// messages or 7 days by default, so a busy 1,000-member group produces many; 5,000 keeps
/// months of history in memory, the least recently received is dropped first (the backup
/// still holds it).
pub const MAX_INBOUND_SESSIONS_PER_CONVERSATION: usize = 5_000;
/// Replay records (message index -> message id) kept per inbound session. Senders rotate
/// after `rotation_messages` (<= this bound, checked in [`CryptoConfig::validate`]); when a
/// foreign sender exceeds it the lowest indices are forgotten and any index at or below the
/// forgotten ones is refused as `Replayed` (conservative: it cannot be proven fresh).
pub const MAX_REPLAY_RECORDS_PER_SESSION: usize = 10_000;
/// Withheld notices remembered (plaintext, cheap): enough to explain every missing key of a
/// long offline period, bounded so a flood cannot grow memory; oldest dropped first.
pub const MAX_WITHHELD_RECORDS: usize = 10_000;
/// Plaintext content size. The wire allows 64 KiB payloads; a v2 message adds ~110 B (AES
/// padding, Megolm header, MAC, signature, 33-byte envelope header), and 40 KiB also keeps a
/// v1-sized (base64 4/3) message under 64 KiB. Files go through the file store.
pub const MAX_CONTENT_BYTES: usize = 40 * 1024;
/// Key share payload size: the server's bound (8 KiB). A room key share is ~600 B.
pub const MAX_KEY_SHARE_BYTES: usize = 8 * 1024;
/// Backup sessions returned per `backup_export_sessions` call: the server's per-request
/// bound (1,000).
pub const MAX_BACKUP_BATCH: usize = 1_000;
