//! The per-device crypto state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::Message;
use vodozemac::Curve25519PublicKey;
use vodozemac::megolm::{
    ExportedSessionKey, GroupSession, GroupSessionPickle, InboundGroupSession,
    InboundGroupSessionPickle, SessionConfig as MegolmConfig, SessionKey,
};
use vodozemac::olm::{
    Account, AccountPickle, OlmMessage, Session, SessionConfig as OlmConfig, SessionPickle,
};
use zeroize::Zeroizing;

use super::backup::{self, BackupSession, KdfParams};
use super::formats::{
    self as formats, Body, Content, FORMAT_VERSION, SHARE_KIND_OLM, SHARE_KIND_WITHHELD,
    SharePlaintext, WireFormat, Withheld,
};
use super::keys::{self, KeyKind, PublishedKeys};
use super::trust::{self, DeviceRecord, Directory, Trust, TrustEvent};
use super::*;

const PICKLE_MAGIC: &[u8; 4] = b"TCP1";
const PICKLE_AAD: &[u8] = b"tern.core.crypto_state.v1";
const PICKLE_VERSION: u32 = 1;

/// Tunables of the machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CryptoConfig {
    /// Messages per outbound Megolm session before it rotates (default 100: a leaked session
    /// key exposes at most that many messages of one sender).
    pub rotation_messages: u32,
    /// Age of an outbound session before it rotates (default 7 days, same reason in time).
    pub rotation_ms: u64,
    /// One-time keys the device keeps published (default 50, the server asks clients to top up
    /// below 50 and vodozemac keeps at most 50 unpublished). Refilled when fewer than half are
    /// left.
    pub one_time_keys_target: u32,
    /// argon2id parameters for new backups (default m = 19 MiB, t = 2, p = 1).
    pub backup_kdf: KdfParams,
}

impl Default for CryptoConfig {
    fn default() -> Self {
        Self {
            rotation_messages: 100,
            rotation_ms: 7 * 24 * 3600 * 1000,
            one_time_keys_target: 50,
            backup_kdf: KdfParams::default(),
        }
    }
}

impl CryptoConfig {
    pub fn validate(&self) -> Result<(), CryptoError> {
        if self.rotation_messages == 0
            || self.rotation_messages as usize > MAX_REPLAY_RECORDS_PER_SESSION
        {
            return Err(CryptoError::BadConfig(
                "rotation_messages must be 1..=MAX_REPLAY_RECORDS_PER_SESSION",
            ));
        }
        if self.rotation_ms == 0 {
            return Err(CryptoError::BadConfig("rotation_ms must be > 0"));
        }
        if self.one_time_keys_target == 0 || self.one_time_keys_target > 50 {
            return Err(CryptoError::BadConfig(
                "one_time_keys_target must be 1..=50",
            ));
        }
        Ok(())
    }
}

/// What `prepare` says the driver must fetch before `encrypt` can reach every member device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Users whose device list is unknown or stale: send `ClientQueryKeys`.
    pub query_users: Vec<UserId>,
    /// Devices without an Olm session that still need the current key: `ClientClaimKeys`.
    pub claim: Vec<(UserId, DeviceId)>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.query_users.is_empty() && self.claim.is_empty()
    }
}

/// A claimed bundle that produced no Olm session, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimProblem {
    pub user: UserId,
    pub device: DeviceId,
    pub reason: &'static str,
}

/// One key share for `ClientSendKeyShares`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShareOut {
    pub to_user: UserId,
    pub to_device: DeviceId,
    pub payload: Vec<u8>,
}

/// Result of `encrypt`.
#[derive(Debug, Clone)]
pub struct Encrypted {
    /// Always [`MEGOLM_CONTENT_TYPE`] (v2).
    pub content_type: &'static str,
    /// The `ClientSend` payload.
    pub payload: Vec<u8>,
    /// The Megolm session the message uses.
    pub session_id: String,
    /// Shares to send BEFORE the message.
    pub key_shares: Vec<KeyShareOut>,
    /// Member devices that could not get the key (no Olm session): claim and encrypt again.
    pub missing: Vec<(UserId, DeviceId)>,
}

/// What an incoming key share did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoEvent {
    /// A new Megolm session: retry messages of `conversation` that were `NoKeyYet`.
    RoomKeyReceived {
        conversation: ConversationId,
        session_id: String,
        sender_user: UserId,
        sender_device: DeviceId,
    },
    /// The sender will not give us this key.
    Withheld {
        conversation: ConversationId,
        session_id: String,
        reason: String,
    },
    /// The Olm sender key does not match the directory's identity of the claimed device: the
    /// share was dropped.
    UntrustedKey { user: UserId, device: DeviceId },
    /// The sending device is not in the directory: the key was stored but messages using it
    /// stay `UntrustedDevice` until a device-list query shows the device with that identity.
    UnknownDevice { user: UserId, device: DeviceId },
    /// The share could not be used (malformed, not for us, Olm failure).
    Rejected {
        user: UserId,
        device: DeviceId,
        reason: &'static str,
    },
}

/// A decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    pub body: Body,
    pub sender_user: UserId,
    pub sender_device: DeviceId,
    /// Trust of the sender device now.
    pub trust: Trust,
    pub session_id: String,
    pub message_index: u32,
}

/// One device of the trust store, for a device list screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub user: UserId,
    pub device: DeviceId,
    pub trust: Trust,
    pub blocked: bool,
    /// The device's Ed25519 key in the same form as [`CryptoMachine::fingerprint`] (what two
    /// users read out to compare one device).
    pub fingerprint: String,
    /// When this device was first pinned (the driver's `now_ms` then).
    pub first_seen_ms: u64,
    /// How many earlier identity keys this device id had (reinstalls, or a server swapping keys).
    pub previous_identities: usize,
}

/// One backed-up session as the server stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupEntry {
    pub conversation: ConversationId,
    pub session_id: String,
    pub data: Vec<u8>,
}

/// Result of importing backup entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub imported: usize,
    /// Entries already known (with an equal or earlier first index).
    pub already_known: usize,
    /// Entries that did not open or parse (tampered or from another backup).
    pub invalid: usize,
}

/// Persistence the driver implements (native: a file written atomically; wasm: memory for
/// now). It only ever sees sealed bytes from [`CryptoMachine::pickle`].
pub trait CryptoStore {
    fn save(&mut self, sealed_state: &[u8]) -> Result<(), CryptoError>;
    fn load(&self) -> Result<Option<Vec<u8>>, CryptoError>;
}

/// An in-memory [`CryptoStore`] (tests, and the wasm driver until it has IndexedDB).
#[derive(Debug, Default)]
pub struct MemoryCryptoStore {
    state: Option<Vec<u8>>,
}

impl CryptoStore for MemoryCryptoStore {
    fn save(&mut self, sealed_state: &[u8]) -> Result<(), CryptoError> {
        self.state = Some(sealed_state.to_vec());
        Ok(())
    }
    fn load(&self) -> Result<Option<Vec<u8>>, CryptoError> {
        Ok(self.state.clone())
    }
}

struct OutboundEntry {
    session: GroupSession,
    created_ms: u64,
    sent: u32,
    shared_with: BTreeSet<(UserId, DeviceId)>,
    withheld_from: BTreeSet<(UserId, DeviceId)>,
}

struct InboundEntry {
    session: InboundGroupSession,
    conversation: ConversationId,
    sender_user: UserId,
    sender_device: DeviceId,
    sender_identity_key: [u8; 32],
    replay: BTreeMap<u32, MessageId>,
    /// Highest index whose record was evicted: indices <= it are refused.
    replay_floor: Option<u32>,
    backed_up: bool,
    received_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct WithheldRecord {
    from_user: UserId,
    from_device: DeviceId,
    conversation: ConversationId,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct BackupState {
    version: String,
    key: Zeroizing<[u8; 32]>,
}

/// Unpadded base64 of an Ed25519 key in groups of 4, for reading out.
fn fingerprint_of(b64: &str) -> String {
    b64.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One device's end-to-end encryption state. See the module docs for the driver flow.
pub struct CryptoMachine {
    user: UserId,
    device: DeviceId,
    config: CryptoConfig,
    account: Account,
    identity_published: bool,
    /// Peer device Curve25519 identity (base64) -> Olm sessions, newest last.
    olm: BTreeMap<String, Vec<Session>>,
    outbound: BTreeMap<ConversationId, OutboundEntry>,
    inbound: BTreeMap<String, InboundEntry>,
    /// Members as last told by `prepare` (always includes this user).
    conversations: BTreeMap<ConversationId, BTreeSet<UserId>>,
    directory: Directory,
    withheld: BTreeMap<String, WithheldRecord>,
    withheld_order: VecDeque<String>,
    backup: Option<BackupState>,
}

fn olm_key(identity: &[u8; 32]) -> String {
    B64.encode(identity)
}

impl CryptoMachine {
    /// A fresh device identity (new Curve25519/Ed25519 keys, a fallback key).
    pub fn new(user: UserId, device: DeviceId, config: CryptoConfig) -> Result<Self, CryptoError> {
        config.validate()?;
        let mut account = Account::new();
        account.generate_fallback_key();
        let mut directory = Directory::default();
        let own = keys::own_identity(&account, user, device);
        directory.apply_list(user, std::slice::from_ref(&own), (user, device), 0)?;
        if let Some(rec) = directory.users.get_mut(&user) {
            // Only this device is known: the first prepare must query our own other devices.
            rec.stale = true;
            if let Some(d) = rec.devices.get_mut(&device) {
                d.trust = Trust::Verified;
            }
        }
        Ok(Self {
            user,
            device,
            config,
            account,
            identity_published: false,
            olm: BTreeMap::new(),
            outbound: BTreeMap::new(),
            inbound: BTreeMap::new(),
            conversations: BTreeMap::new(),
            directory,
            withheld: BTreeMap::new(),
            withheld_order: VecDeque::new(),
            backup: None,
        })
    }

    pub fn user_id(&self) -> UserId {
        self.user
    }
    pub fn device_id(&self) -> DeviceId {
        self.device
    }
    pub fn config(&self) -> &CryptoConfig {
        &self.config
    }

    /// This device's Curve25519 identity key.
    pub fn identity_key(&self) -> [u8; 32] {
        self.account.identity_keys().curve25519.to_bytes()
    }

    // ---------------------------------------------------------------- identity, publishing

    /// The keys to publish, or `None` when the directory already has enough.
    /// `one_time_keys_left` is the server's count of this device's unclaimed one-time keys.
    /// Calling again before `mark_keys_published` returns the same keys (safe to retry).
    pub fn keys_to_publish(&mut self, one_time_keys_left: u32) -> Option<PublishedKeys> {
        let target = self.config.one_time_keys_target;
        let mut unpublished = self.account.one_time_keys();
        if unpublished.is_empty() && one_time_keys_left < target.div_ceil(2) {
            self.account
                .generate_one_time_keys(target.saturating_sub(one_time_keys_left) as usize);
            unpublished = self.account.one_time_keys();
        }
        let fallback = self.account.fallback_key();
        if self.identity_published && unpublished.is_empty() && fallback.is_empty() {
            return None;
        }
        let mut out = keys::own_identity(&self.account, self.user, self.device);
        let mut otks: Vec<Curve25519PublicKey> = unpublished.into_values().collect();
        otks.sort_by_key(|k| k.to_bytes());
        out.one_time_keys = otks
            .iter()
            .map(|k| {
                keys::sign_key_blob(&self.account, self.user, self.device, KeyKind::OneTime, k)
            })
            .collect();
        if let Some(k) = fallback.values().next() {
            out.fallback_key =
                keys::sign_key_blob(&self.account, self.user, self.device, KeyKind::Fallback, k);
        }
        Some(out)
    }

    /// The server accepted the last `keys_to_publish` result.
    pub fn mark_keys_published(&mut self) {
        self.account.mark_keys_as_published();
        self.identity_published = true;
    }

    /// This device's fingerprint: its Ed25519 key, unpadded base64 in groups of 4 (what the
    /// user reads out when comparing devices).
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.account.identity_keys().ed25519.to_base64())
    }

    /// Every cached device of `user` (this user included: its own other devices), sorted by
    /// device id; empty when the user's list was never fetched.
    pub fn device_list(&self, user: UserId) -> Vec<DeviceInfo> {
        let Some(rec) = self.directory.users.get(&user) else {
            return Vec::new();
        };
        rec.devices
            .iter()
            .map(|(device, d)| DeviceInfo {
                user,
                device: *device,
                trust: d.trust,
                blocked: d.blocked,
                fingerprint: fingerprint_of(B64.encode(d.signing_key).trim_end_matches('=')),
                first_seen_ms: d.first_seen_ms,
                previous_identities: d.previous_identity_keys.len(),
            })
            .collect()
    }

    // ---------------------------------------------------------------- directory, trust

    /// The user's complete device list from a query or claim answer. Verifies signatures,
    /// pins first-seen identities, flags changes; removed or changed devices make every
    /// outbound session they could read rotate.
    pub fn on_device_list(
        &mut self,
        user: UserId,
        devices: &[PublishedKeys],
        now_ms: u64,
    ) -> Result<Vec<TrustEvent>, CryptoError> {
        let events = self
            .directory
            .apply_list(user, devices, (self.user, self.device), now_ms)?;
        for ev in &events {
            match ev {
                TrustEvent::DeviceRemoved { user, device }
                | TrustEvent::IdentityChanged { user, device } => {
                    let gone = (*user, *device);
                    self.outbound
                        .retain(|_, entry| !entry.shared_with.contains(&gone));
                }
                _ => {}
            }
        }
        Ok(events)
    }

    /// A `DeviceListChanged` push: the next `prepare` asks to query `user` again.
    pub fn mark_device_list_stale(&mut self, user: UserId) {
        if let Some(rec) = self.directory.users.get_mut(&user) {
            rec.stale = true;
        }
    }

    /// Trust of one device, `None` if unknown.
    pub fn device_trust(&self, user: UserId, device: DeviceId) -> Option<Trust> {
        self.directory.device(user, device).map(|d| d.trust)
    }

    /// Devices cached for `user` (sorted).
    pub fn devices_of(&self, user: UserId) -> Vec<DeviceId> {
        self.directory
            .users
            .get(&user)
            .map(|r| r.devices.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The user compared the safety number: every cached device of `user` becomes Verified.
    /// Returns false when no device of the user is known.
    pub fn mark_user_verified(&mut self, user: UserId) -> bool {
        match self.directory.users.get_mut(&user) {
            Some(rec) if !rec.devices.is_empty() => {
                rec.devices
                    .values_mut()
                    .for_each(|d| d.trust = Trust::Verified);
                true
            }
            _ => false,
        }
    }

    /// Marks one device verified (e.g. after comparing its fingerprint).
    pub fn mark_device_verified(&mut self, user: UserId, device: DeviceId) -> bool {
        self.set_device(user, device, |d| d.trust = Trust::Verified)
    }

    /// Blocks a device: it gets `withheld` instead of keys, and its messages are
    /// `UntrustedDevice`.
    pub fn block_device(&mut self, user: UserId, device: DeviceId) -> bool {
        let found = self.set_device(user, device, |d| d.blocked = true);
        if found {
            self.outbound
                .retain(|_, e| !e.shared_with.contains(&(user, device)));
        }
        found
    }

    fn set_device(
        &mut self,
        user: UserId,
        device: DeviceId,
        f: impl FnOnce(&mut DeviceRecord),
    ) -> bool {
        match self
            .directory
            .users
            .get_mut(&user)
            .and_then(|r| r.devices.get_mut(&device))
        {
            Some(d) => {
                f(d);
                true
            }
            None => false,
        }
    }

    /// The 60-digit safety number between this user and `other` (12 groups of 5), from both
    /// users' cached device keys; `None` when `other`'s devices are unknown.
    pub fn safety_number(&self, other: UserId) -> Option<String> {
        let theirs = self.directory.key_set(other);
        if theirs.is_empty() {
            return None;
        }
        let mine = self.directory.key_set(self.user);
        Some(trust::safety_number(self.user, &mine, other, &theirs))
    }

    // ---------------------------------------------------------------- sending

    /// Records the members of `conversation` (this user is always included) and says what the
    /// driver must fetch. A member missing since the last call rotates the outbound session.
    pub fn prepare(
        &mut self,
        conversation: ConversationId,
        members: &[UserId],
        now_ms: u64,
    ) -> Result<Needs, CryptoError> {
        if members.len() > MAX_MEMBERS_PER_CONVERSATION {
            return Err(CryptoError::TooManyMembers {
                conversation,
                count: members.len(),
                max: MAX_MEMBERS_PER_CONVERSATION,
            });
        }
        let mut set: BTreeSet<UserId> = members.iter().copied().collect();
        set.insert(self.user);
        if let Some(old) = self.conversations.get(&conversation)
            && old.iter().any(|u| !set.contains(u))
        {
            self.outbound.remove(&conversation);
        }
        self.conversations.insert(conversation, set.clone());
        self.rotate_if_due(conversation, now_ms);
        let shared = self.outbound.get(&conversation).map(|e| &e.shared_with);
        let mut needs = Needs::default();
        for user in set {
            match self.directory.users.get(&user) {
                None => needs.query_users.push(user),
                Some(rec) => {
                    if rec.stale {
                        needs.query_users.push(user);
                    }
                    for (device, d) in &rec.devices {
                        if (user, *device) == (self.user, self.device) || d.blocked {
                            continue;
                        }
                        let has_key = shared.is_some_and(|s| s.contains(&(user, *device)));
                        if !has_key && !self.olm.contains_key(&olm_key(&d.identity_key)) {
                            needs.claim.push((user, *device));
                        }
                    }
                }
            }
        }
        Ok(needs)
    }

    /// `user` left or was removed from `conversation`: forget it as a member and rotate.
    pub fn on_member_removed(&mut self, conversation: ConversationId, user: UserId) {
        if let Some(set) = self.conversations.get_mut(&conversation) {
            set.remove(&user);
        }
        self.outbound.remove(&conversation);
    }

    /// Claimed key bundles: creates one Olm session per device from its one-time key (or its
    /// fallback key when none was left). The device must already be in the directory with the
    /// same identity.
    pub fn on_claimed(&mut self, bundles: &[PublishedKeys]) -> Vec<ClaimProblem> {
        let mut problems = Vec::new();
        for b in bundles {
            let problem = |reason| ClaimProblem {
                user: b.user,
                device: b.device,
                reason,
            };
            let identity = match keys::verify_device_keys(b) {
                Ok(i) => i,
                Err(_) => {
                    problems.push(problem("device keys signature does not verify"));
                    continue;
                }
            };
            let Some(rec) = self.directory.device(b.user, b.device) else {
                problems.push(problem("device not in the directory: query its user first"));
                continue;
            };
            if rec.identity_key != identity.identity_key || rec.signing_key != identity.signing_key
            {
                problems.push(problem("claimed identity differs from the directory's"));
                continue;
            }
            let otk = match b.one_time_keys.first() {
                Some(blob) => keys::verify_key_blob(
                    &identity.signing_key,
                    b.user,
                    b.device,
                    KeyKind::OneTime,
                    blob,
                ),
                None if !b.fallback_key.is_empty() => keys::verify_key_blob(
                    &identity.signing_key,
                    b.user,
                    b.device,
                    KeyKind::Fallback,
                    &b.fallback_key,
                ),
                None => Err("no one-time key and no fallback key left"),
            };
            let otk = match otk {
                Ok(k) => k,
                Err(reason) => {
                    problems.push(problem(reason));
                    continue;
                }
            };
            let their_identity = Curve25519PublicKey::from_bytes(identity.identity_key);
            match self
                .account
                .create_outbound_session(OlmConfig::version_1(), their_identity, otk)
            {
                Ok(session) => self.add_olm_session(&identity.identity_key, session),
                Err(_) => problems.push(problem("Olm session creation failed")),
            }
        }
        problems
    }

    fn add_olm_session(&mut self, identity: &[u8; 32], session: Session) {
        let list = self.olm.entry(olm_key(identity)).or_default();
        list.push(session);
        if list.len() > MAX_OLM_SESSIONS_PER_DEVICE {
            list.remove(0);
        }
    }

    fn rotate_if_due(&mut self, conversation: ConversationId, now_ms: u64) {
        if let Some(e) = self.outbound.get(&conversation)
            && (e.sent >= self.config.rotation_messages
                || now_ms.saturating_sub(e.created_ms) >= self.config.rotation_ms)
        {
            self.outbound.remove(&conversation);
        }
    }

    /// Encrypts `body` for `conversation` (members from the last `prepare`). Creates or
    /// rotates the outbound session and returns the key shares every member device without
    /// the key needs.
    pub fn encrypt(
        &mut self,
        conversation: ConversationId,
        body: &Body,
        now_ms: u64,
    ) -> Result<Encrypted, CryptoError> {
        self.encrypt_as(WireFormat::V2, conversation, body, now_ms)
    }

    /// The v1 (JSON) writer, kept for tests of v1 history decryption only.
    #[cfg(test)]
    pub(crate) fn encrypt_v1(
        &mut self,
        conversation: ConversationId,
        body: &Body,
        now_ms: u64,
    ) -> Result<Encrypted, CryptoError> {
        self.encrypt_as(WireFormat::V1, conversation, body, now_ms)
    }

    /// Encrypts arbitrary plaintext bytes in the given envelope (tests of content the
    /// encoder cannot produce: unknown body tags, trailing bytes, version mismatches).
    #[cfg(test)]
    pub(crate) fn encrypt_raw_plaintext(
        &mut self,
        format: WireFormat,
        conversation: ConversationId,
        plaintext: Vec<u8>,
        now_ms: u64,
    ) -> Result<Encrypted, CryptoError> {
        self.encrypt_plaintext(format, conversation, Zeroizing::new(plaintext), now_ms)
    }

    fn encrypt_as(
        &mut self,
        format: WireFormat,
        conversation: ConversationId,
        body: &Body,
        now_ms: u64,
    ) -> Result<Encrypted, CryptoError> {
        let content = Content {
            v: FORMAT_VERSION,
            conversation,
            sender_user: self.user,
            sender_device: self.device,
            body: body.clone(),
        };
        let plaintext = Zeroizing::new(match format {
            #[cfg(test)]
            WireFormat::V1 => {
                serde_json::to_vec(&content).map_err(|e| CryptoError::Serde(e.to_string()))?
            }
            WireFormat::V2 => formats::encode_content_v2(&content)?,
        });
        self.encrypt_plaintext(format, conversation, plaintext, now_ms)
    }

    fn encrypt_plaintext(
        &mut self,
        format: WireFormat,
        conversation: ConversationId,
        plaintext: Zeroizing<Vec<u8>>,
        now_ms: u64,
    ) -> Result<Encrypted, CryptoError> {
        let members = self
            .conversations
            .get(&conversation)
            .cloned()
            .ok_or(CryptoError::UnknownConversation(conversation))?;
        if plaintext.len() > MAX_CONTENT_BYTES {
            return Err(CryptoError::TooLarge {
                size: plaintext.len(),
                max: MAX_CONTENT_BYTES,
            });
        }
        self.rotate_if_due(conversation, now_ms);
        if !self.outbound.contains_key(&conversation) {
            self.start_outbound(conversation, now_ms);
        }
        let (session_id, session_key, first_index) = match self.outbound.get(&conversation) {
            Some(e) => (
                e.session.session_id(),
                e.session.session_key().to_base64(),
                e.session.message_index(),
            ),
            None => return Err(CryptoError::UnknownConversation(conversation)),
        };
        let mut targets = Vec::new();
        for user in &members {
            if let Some(rec) = self.directory.users.get(user) {
                for (device, d) in &rec.devices {
                    if (*user, *device) != (self.user, self.device) {
                        targets.push((*user, *device, d.identity_key, d.blocked));
                    }
                }
            }
        }
        let mut key_shares = Vec::new();
        let mut missing = Vec::new();
        for (user, device, identity, blocked) in targets {
            let Some(entry) = self.outbound.get(&conversation) else {
                break;
            };
            if entry.shared_with.contains(&(user, device)) {
                continue;
            }
            if blocked {
                if entry.withheld_from.contains(&(user, device)) {
                    continue;
                }
                let notice = Withheld {
                    conversation,
                    session_id: session_id.clone(),
                    reason: "blocked".into(),
                };
                let mut payload = vec![SHARE_KIND_WITHHELD];
                payload.extend(
                    serde_json::to_vec(&notice).map_err(|e| CryptoError::Serde(e.to_string()))?,
                );
                key_shares.push(KeyShareOut {
                    to_user: user,
                    to_device: device,
                    payload,
                });
                if let Some(e) = self.outbound.get_mut(&conversation) {
                    e.withheld_from.insert((user, device));
                }
                continue;
            }
            let Some(session) = self
                .olm
                .get_mut(&olm_key(&identity))
                .and_then(|l| l.last_mut())
            else {
                missing.push((user, device));
                continue;
            };
            let share = SharePlaintext::RoomKey {
                v: FORMAT_VERSION,
                conversation,
                session_id: session_id.clone(),
                session_key: session_key.clone(),
                sender_user: self.user,
                sender_device: self.device,
                recipient_user: user,
                recipient_device: device,
                first_index,
            };
            let share_bytes = Zeroizing::new(
                serde_json::to_vec(&share).map_err(|e| CryptoError::Serde(e.to_string()))?,
            );
            let Ok(olm_message) = session.encrypt(share_bytes.as_slice()) else {
                missing.push((user, device));
                continue;
            };
            let (kind, ciphertext) = olm_message.to_parts();
            let mut payload = Vec::with_capacity(2 + ciphertext.len());
            payload.push(SHARE_KIND_OLM);
            payload.push(kind as u8);
            payload.extend_from_slice(&ciphertext);
            key_shares.push(KeyShareOut {
                to_user: user,
                to_device: device,
                payload,
            });
            if let Some(e) = self.outbound.get_mut(&conversation) {
                e.shared_with.insert((user, device));
            }
        }
        let Some(entry) = self.outbound.get_mut(&conversation) else {
            return Err(CryptoError::UnknownConversation(conversation));
        };
        let message = entry.session.encrypt(plaintext.as_slice());
        entry.sent += 1;
        let payload = formats::encode_envelope(format, &session_id, &message)?;
        Ok(Encrypted {
            content_type: format.content_type(),
            payload,
            session_id,
            key_shares,
            missing,
        })
    }

    fn start_outbound(&mut self, conversation: ConversationId, now_ms: u64) {
        let session = GroupSession::new(MegolmConfig::version_1());
        // Our own inbound copy: this device reads its own messages (history, echoes) and backs
        // the session up like any other.
        let inbound = InboundGroupSession::new(&session.session_key(), MegolmConfig::version_1());
        let identity = self.identity_key();
        self.insert_inbound(
            session.session_id(),
            InboundEntry {
                session: inbound,
                conversation,
                sender_user: self.user,
                sender_device: self.device,
                sender_identity_key: identity,
                replay: BTreeMap::new(),
                replay_floor: None,
                backed_up: false,
                received_ms: now_ms,
            },
        );
        self.outbound.insert(
            conversation,
            OutboundEntry {
                session,
                created_ms: now_ms,
                sent: 0,
                shared_with: BTreeSet::new(),
                withheld_from: BTreeSet::new(),
            },
        );
    }

    fn insert_inbound(&mut self, session_id: String, entry: InboundEntry) {
        let conversation = entry.conversation;
        self.inbound.insert(session_id, entry);
        if self.inbound.len() <= MAX_INBOUND_SESSIONS_PER_CONVERSATION {
            return; // cannot be over the per-conversation bound: skip the scan
        }
        let in_conv: Vec<(u64, String)> = self
            .inbound
            .iter()
            .filter(|(_, e)| e.conversation == conversation)
            .map(|(id, e)| (e.received_ms, id.clone()))
            .collect();
        if in_conv.len() > MAX_INBOUND_SESSIONS_PER_CONVERSATION
            && let Some((_, oldest)) = in_conv.iter().min()
        {
            self.inbound.remove(oldest);
        }
    }

    // ---------------------------------------------------------------- receiving

    /// A key share from `from_user`/`from_device` (server-asserted; checked against the Olm
    /// sender key and the directory).
    pub fn on_key_share(
        &mut self,
        from_user: UserId,
        from_device: DeviceId,
        payload: &[u8],
        now_ms: u64,
    ) -> Vec<CryptoEvent> {
        let reject = |reason| {
            vec![CryptoEvent::Rejected {
                user: from_user,
                device: from_device,
                reason,
            }]
        };
        if payload.len() > MAX_KEY_SHARE_BYTES || payload.len() < 2 {
            return reject("key share size out of bounds");
        }
        match payload[0] {
            SHARE_KIND_WITHHELD => {
                let Ok(notice) = serde_json::from_slice::<Withheld>(&payload[1..]) else {
                    return reject("malformed withheld notice");
                };
                self.record_withheld(from_user, from_device, &notice);
                vec![CryptoEvent::Withheld {
                    conversation: notice.conversation,
                    session_id: notice.session_id,
                    reason: notice.reason,
                }]
            }
            SHARE_KIND_OLM => self.on_olm_share(from_user, from_device, payload, now_ms),
            _ => reject("unknown key share kind"),
        }
    }

    fn record_withheld(&mut self, from_user: UserId, from_device: DeviceId, n: &Withheld) {
        if self.inbound.contains_key(&n.session_id) {
            return;
        }
        let reason: String = n.reason.chars().take(128).collect();
        if self
            .withheld
            .insert(
                n.session_id.clone(),
                WithheldRecord {
                    from_user,
                    from_device,
                    conversation: n.conversation,
                    reason,
                },
            )
            .is_none()
        {
            self.withheld_order.push_back(n.session_id.clone());
        }
        while self.withheld_order.len() > MAX_WITHHELD_RECORDS {
            if let Some(old) = self.withheld_order.pop_front() {
                self.withheld.remove(&old);
            }
        }
    }

    fn on_olm_share(
        &mut self,
        from_user: UserId,
        from_device: DeviceId,
        payload: &[u8],
        now_ms: u64,
    ) -> Vec<CryptoEvent> {
        let mut events = Vec::new();
        let reject = |reason| CryptoEvent::Rejected {
            user: from_user,
            device: from_device,
            reason,
        };
        let Ok(message) = OlmMessage::from_parts(payload[1] as usize, &payload[2..]) else {
            return vec![reject("malformed Olm message")];
        };
        let directory_key = self
            .directory
            .device(from_user, from_device)
            .map(|d| d.identity_key);
        let sender_key = match (&message, directory_key) {
            (OlmMessage::PreKey(pre), Some(known)) => {
                if pre.identity_key().to_bytes() != known {
                    return vec![CryptoEvent::UntrustedKey {
                        user: from_user,
                        device: from_device,
                    }];
                }
                known
            }
            (OlmMessage::PreKey(pre), None) => {
                events.push(CryptoEvent::UnknownDevice {
                    user: from_user,
                    device: from_device,
                });
                pre.identity_key().to_bytes()
            }
            (OlmMessage::Normal(_), Some(known)) => known,
            (OlmMessage::Normal(_), None) => {
                return vec![
                    CryptoEvent::UnknownDevice {
                        user: from_user,
                        device: from_device,
                    },
                    reject("normal Olm message from a device not in the directory"),
                ];
            }
        };
        let mut plaintext = None;
        if let Some(list) = self.olm.get_mut(&olm_key(&sender_key)) {
            for session in list.iter_mut().rev() {
                if let Ok(p) = session.decrypt(&message) {
                    plaintext = Some(Zeroizing::new(p));
                    break;
                }
            }
        }
        if plaintext.is_none()
            && let OlmMessage::PreKey(pre) = &message
        {
            match self.account.create_inbound_session(
                OlmConfig::version_1(),
                Curve25519PublicKey::from_bytes(sender_key),
                pre,
            ) {
                Ok(created) => {
                    plaintext = Some(Zeroizing::new(created.plaintext));
                    self.add_olm_session(&sender_key, created.session);
                }
                Err(_) => {
                    events.push(reject("no Olm session decrypts it (one-time key used up?)"));
                    return events;
                }
            }
        }
        let Some(plaintext) = plaintext else {
            events.push(reject("no Olm session decrypts it"));
            return events;
        };
        let Ok(SharePlaintext::RoomKey {
            v,
            conversation,
            session_id,
            session_key,
            sender_user,
            sender_device,
            recipient_user,
            recipient_device,
            first_index: _,
        }) = serde_json::from_slice::<SharePlaintext>(&plaintext)
        else {
            events.push(reject("malformed room key"));
            return events;
        };
        if v != FORMAT_VERSION {
            events.push(reject("unsupported room key version"));
            return events;
        }
        if (recipient_user, recipient_device) != (self.user, self.device) {
            events.push(reject("room key addressed to another device"));
            return events;
        }
        if (sender_user, sender_device) != (from_user, from_device) {
            events.push(reject("room key names another sender"));
            return events;
        }
        let Ok(key) = SessionKey::from_base64(&session_key) else {
            events.push(reject("malformed session key"));
            return events;
        };
        let session = InboundGroupSession::new(&key, MegolmConfig::version_1());
        if session.session_id() != session_id {
            events.push(reject("session id does not match the session key"));
            return events;
        }
        if let Some(existing) = self.inbound.get(&session_id) {
            // Same id: must be the same sender; never replace (it could reset replay records).
            if (existing.sender_user, existing.sender_device) != (from_user, from_device) {
                events.push(reject("session id already used by another sender"));
            }
            return events;
        }
        self.withheld.remove(&session_id);
        self.insert_inbound(
            session_id.clone(),
            InboundEntry {
                session,
                conversation,
                sender_user,
                sender_device,
                sender_identity_key: sender_key,
                replay: BTreeMap::new(),
                replay_floor: None,
                backed_up: false,
                received_ms: now_ms,
            },
        );
        events.push(CryptoEvent::RoomKeyReceived {
            conversation,
            session_id,
            sender_user,
            sender_device,
        });
        events
    }

    /// Decrypts a message from the server (or history). Checks, in order: format, key known,
    /// session's conversation and sender equal the message's, sender device trusted (its
    /// directory identity is the one the key came from), Megolm authenticity, replay, and
    /// the content's own conversation and sender fields.
    pub fn decrypt(&mut self, message: &Message) -> Result<Decrypted, Undecryptable> {
        let envelope = formats::decode_envelope(&message.content_type, &message.payload)?;
        let megolm = &envelope.megolm;
        let Some(entry) = self.inbound.get_mut(&envelope.session_id) else {
            return Err(match self.withheld.get(&envelope.session_id) {
                Some(w)
                    if (w.from_user, w.from_device, w.conversation)
                        == (
                            message.sender_user,
                            message.sender_device,
                            message.conversation,
                        ) =>
                {
                    Undecryptable::Withheld(w.reason.clone())
                }
                _ => Undecryptable::NoKeyYet,
            });
        };
        if entry.conversation != message.conversation {
            return Err(Undecryptable::WrongConversation);
        }
        if (entry.sender_user, entry.sender_device) != (message.sender_user, message.sender_device)
        {
            return Err(Undecryptable::Tampered);
        }
        let trust = match self
            .directory
            .device(entry.sender_user, entry.sender_device)
        {
            Some(d) if !d.blocked && d.had_identity(&entry.sender_identity_key) => d.trust,
            _ => return Err(Undecryptable::UntrustedDevice),
        };
        let decrypted = entry.session.decrypt(megolm).map_err(|e| match e {
            vodozemac::megolm::DecryptionError::UnknownMessageIndex(..) => Undecryptable::NoKeyYet,
            _ => Undecryptable::Tampered,
        })?;
        let index = decrypted.message_index;
        let plaintext = Zeroizing::new(decrypted.plaintext);
        match entry.replay.get(&index) {
            Some(id) if *id != message.message_id => return Err(Undecryptable::Replayed),
            Some(_) => {}
            None => {
                if entry.replay_floor.is_some_and(|floor| index <= floor) {
                    return Err(Undecryptable::Replayed);
                }
                entry.replay.insert(index, message.message_id);
                while entry.replay.len() > MAX_REPLAY_RECORDS_PER_SESSION {
                    if let Some((lowest, _)) = entry.replay.pop_first() {
                        entry.replay_floor =
                            Some(entry.replay_floor.map_or(lowest, |f| f.max(lowest)));
                    }
                }
            }
        }
        // The content is of the envelope's version: a v1 envelope never carries v2 content.
        let content = if envelope.version == FORMAT_VERSION {
            formats::decode_content_v1(&plaintext)?
        } else {
            formats::decode_content_v2(&plaintext)?
        };
        if content.conversation != message.conversation {
            return Err(Undecryptable::WrongConversation);
        }
        if (content.sender_user, content.sender_device)
            != (message.sender_user, message.sender_device)
        {
            return Err(Undecryptable::Tampered);
        }
        Ok(Decrypted {
            body: content.body,
            sender_user: content.sender_user,
            sender_device: content.sender_device,
            trust,
            session_id: envelope.session_id,
            message_index: index,
        })
    }

    // ---------------------------------------------------------------- backup

    /// Starts a new backup protected by `passphrase`: returns (version, meta) to upload with
    /// `PUT /api/v1/keys/backup`. Every known session is exported again into the new version.
    pub fn backup_create(
        &mut self,
        passphrase: &str,
        now_ms: u64,
    ) -> Result<(String, Vec<u8>), CryptoError> {
        let nonce: [u8; 8] = backup::random_bytes()?;
        let version = format!("v1-{now_ms}-{}", B64.encode(nonce).trim_end_matches('='));
        let version = version.replace(['+', '/'], "_");
        let (meta, key) = backup::create_meta(passphrase, &version, self.config.backup_kdf)?;
        self.backup = Some(BackupState {
            version: version.clone(),
            key,
        });
        self.inbound.values_mut().for_each(|e| e.backed_up = false);
        Ok((version, meta))
    }

    /// The current backup version, if a backup key is set.
    pub fn backup_version(&self) -> Option<&str> {
        self.backup.as_ref().map(|b| b.version.as_str())
    }

    /// Up to [`MAX_BACKUP_BATCH`] sessions not yet backed up, sealed for the server. Call
    /// `backup_mark_uploaded` with their ids once the server stored them.
    pub fn backup_export_sessions(&self) -> Result<Vec<BackupEntry>, CryptoError> {
        let state = self.backup.as_ref().ok_or(CryptoError::NoBackup)?;
        let mut out = Vec::new();
        for (session_id, e) in self.inbound.iter().filter(|(_, e)| !e.backed_up) {
            if out.len() >= MAX_BACKUP_BATCH {
                break;
            }
            let plain = BackupSession {
                v: FORMAT_VERSION,
                conversation: e.conversation,
                session_id: session_id.clone(),
                sender_user: e.sender_user,
                sender_device: e.sender_device,
                sender_identity_key: B64.encode(e.sender_identity_key),
                session_key: e.session.export_at_first_known_index().to_base64(),
            };
            let bytes = Zeroizing::new(
                serde_json::to_vec(&plain).map_err(|err| CryptoError::Serde(err.to_string()))?,
            );
            out.push(BackupEntry {
                conversation: e.conversation,
                session_id: session_id.clone(),
                data: backup::seal(
                    &state.key,
                    &backup::session_aad(e.conversation, session_id),
                    &bytes,
                )?,
            });
        }
        Ok(out)
    }

    /// The server stored these sessions.
    pub fn backup_mark_uploaded(&mut self, session_ids: &[String]) {
        for id in session_ids {
            if let Some(e) = self.inbound.get_mut(id) {
                e.backed_up = true;
            }
        }
    }

    /// Derives the recovery key from `passphrase` and checks it against the backup's meta.
    /// Wrong passphrase: [`CryptoError::WrongPassphrase`].
    pub fn backup_unlock(
        &mut self,
        passphrase: &str,
        version: &str,
        meta: &[u8],
    ) -> Result<(), CryptoError> {
        let key = backup::unlock_meta(passphrase, version, meta)?;
        self.backup = Some(BackupState {
            version: version.to_string(),
            key,
        });
        Ok(())
    }

    /// Imports backed-up sessions (after `backup_unlock`), so history decrypts.
    pub fn backup_import(
        &mut self,
        entries: &[BackupEntry],
        now_ms: u64,
    ) -> Result<RestoreReport, CryptoError> {
        let key = match &self.backup {
            Some(b) => b.key.clone(),
            None => return Err(CryptoError::NoBackup),
        };
        let mut report = RestoreReport::default();
        for entry in entries {
            let aad = backup::session_aad(entry.conversation, &entry.session_id);
            let parsed = backup::open(&key, &aad, &entry.data)
                .and_then(|p| serde_json::from_slice::<BackupSession>(&p).ok())
                .filter(|s| {
                    s.v == FORMAT_VERSION
                        && s.conversation == entry.conversation
                        && s.session_id == entry.session_id
                });
            let Some(s) = parsed else {
                report.invalid += 1;
                continue;
            };
            let identity: Option<[u8; 32]> = B64
                .decode(&s.sender_identity_key)
                .ok()
                .and_then(|b| b.try_into().ok());
            let (Some(identity), Ok(exported)) =
                (identity, ExportedSessionKey::from_base64(&s.session_key))
            else {
                report.invalid += 1;
                continue;
            };
            let session = InboundGroupSession::import(&exported, MegolmConfig::version_1());
            if session.session_id() != s.session_id {
                report.invalid += 1;
                continue;
            }
            if let Some(existing) = self.inbound.get(&s.session_id)
                && existing.session.first_known_index() <= session.first_known_index()
            {
                report.already_known += 1;
                continue;
            }
            self.insert_inbound(
                s.session_id.clone(),
                InboundEntry {
                    session,
                    conversation: s.conversation,
                    sender_user: s.sender_user,
                    sender_device: s.sender_device,
                    sender_identity_key: identity,
                    replay: BTreeMap::new(),
                    replay_floor: None,
                    backed_up: true,
                    received_ms: now_ms,
                },
            );
            report.imported += 1;
        }
        Ok(report)
    }

    /// `backup_unlock` + `backup_import` in one call.
    pub fn backup_restore(
        &mut self,
        passphrase: &str,
        version: &str,
        meta: &[u8],
        entries: &[BackupEntry],
        now_ms: u64,
    ) -> Result<RestoreReport, CryptoError> {
        self.backup_unlock(passphrase, version, meta)?;
        self.backup_import(entries, now_ms)
    }

    // ---------------------------------------------------------------- persistence

    /// The whole state (account, Olm and Megolm sessions, trust store, replay records, device
    /// cache, backup key) as sealed bytes: `"TCP1" || nonce (24) ||
    /// XChaCha20-Poly1305(pickle_key, JSON state)`.
    pub fn pickle(&self, pickle_key: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        let state = PickledState {
            v: PICKLE_VERSION,
            user: self.user,
            device: self.device,
            config: self.config.clone(),
            account: self.account.pickle(),
            identity_published: self.identity_published,
            olm: self
                .olm
                .iter()
                .map(|(k, l)| (k.clone(), l.iter().map(|s| s.pickle()).collect()))
                .collect(),
            outbound: self
                .outbound
                .iter()
                .map(|(c, e)| OutboundPickle {
                    conversation: *c,
                    session: e.session.pickle(),
                    created_ms: e.created_ms,
                    sent: e.sent,
                    shared_with: e.shared_with.iter().copied().collect(),
                    withheld_from: e.withheld_from.iter().copied().collect(),
                })
                .collect(),
            inbound: self
                .inbound
                .iter()
                .map(|(id, e)| InboundPickle {
                    session_id: id.clone(),
                    session: e.session.pickle(),
                    conversation: e.conversation,
                    sender_user: e.sender_user,
                    sender_device: e.sender_device,
                    sender_identity_key: e.sender_identity_key,
                    replay: e.replay.iter().map(|(i, m)| (*i, *m)).collect(),
                    replay_floor: e.replay_floor,
                    backed_up: e.backed_up,
                    received_ms: e.received_ms,
                })
                .collect(),
            conversations: self
                .conversations
                .iter()
                .map(|(c, m)| (*c, m.iter().copied().collect()))
                .collect(),
            directory: &self.directory,
            withheld: self
                .withheld_order
                .iter()
                .filter_map(|id| self.withheld.get(id).map(|w| (id.clone(), w)))
                .collect(),
            backup: self.backup.as_ref(),
        };
        let json = Zeroizing::new(
            serde_json::to_vec(&state).map_err(|e| CryptoError::Serde(e.to_string()))?,
        );
        let mut out = PICKLE_MAGIC.to_vec();
        out.extend(backup::seal(pickle_key, PICKLE_AAD, &json)?);
        Ok(out)
    }

    /// Opens a [`pickle`](Self::pickle). A wrong key or changed byte: [`CryptoError::BadPickle`].
    pub fn from_pickle(sealed: &[u8], pickle_key: &[u8; 32]) -> Result<Self, CryptoError> {
        if sealed.len() < 4 || &sealed[..4] != PICKLE_MAGIC {
            return Err(CryptoError::BadPickle);
        }
        let json =
            backup::open(pickle_key, PICKLE_AAD, &sealed[4..]).ok_or(CryptoError::BadPickle)?;
        let state: UnpickledState =
            serde_json::from_slice(&json).map_err(|e| CryptoError::Serde(e.to_string()))?;
        if state.v != PICKLE_VERSION {
            return Err(CryptoError::PickleVersion(state.v));
        }
        state.config.validate()?;
        let mut withheld = BTreeMap::new();
        let mut withheld_order = VecDeque::new();
        for (id, w) in state.withheld {
            withheld_order.push_back(id.clone());
            withheld.insert(id, w);
        }
        Ok(Self {
            user: state.user,
            device: state.device,
            config: state.config,
            account: Account::from_pickle(state.account),
            identity_published: state.identity_published,
            olm: state
                .olm
                .into_iter()
                .map(|(k, l)| (k, l.into_iter().map(Session::from_pickle).collect()))
                .collect(),
            outbound: state
                .outbound
                .into_iter()
                .map(|o| {
                    (
                        o.conversation,
                        OutboundEntry {
                            session: GroupSession::from_pickle(o.session),
                            created_ms: o.created_ms,
                            sent: o.sent,
                            shared_with: o.shared_with.into_iter().collect(),
                            withheld_from: o.withheld_from.into_iter().collect(),
                        },
                    )
                })
                .collect(),
            inbound: state
                .inbound
                .into_iter()
                .map(|i| {
                    (
                        i.session_id,
                        InboundEntry {
                            session: InboundGroupSession::from_pickle(i.session),
                            conversation: i.conversation,
                            sender_user: i.sender_user,
                            sender_device: i.sender_device,
                            sender_identity_key: i.sender_identity_key,
                            replay: i.replay.into_iter().collect(),
                            replay_floor: i.replay_floor,
                            backed_up: i.backed_up,
                            received_ms: i.received_ms,
                        },
                    )
                })
                .collect(),
            conversations: state
                .conversations
                .into_iter()
                .map(|(c, m)| (c, m.into_iter().collect()))
                .collect(),
            directory: state.directory,
            withheld,
            withheld_order,
            backup: state.backup,
        })
    }

    /// Saves the sealed state into `store`.
    pub fn save_to(
        &self,
        store: &mut dyn CryptoStore,
        pickle_key: &[u8; 32],
    ) -> Result<(), CryptoError> {
        store.save(&self.pickle(pickle_key)?)
    }

    /// Loads the state from `store`, `None` when it holds none.
    pub fn load_from(
        store: &dyn CryptoStore,
        pickle_key: &[u8; 32],
    ) -> Result<Option<Self>, CryptoError> {
        match store.load()? {
            Some(bytes) => Self::from_pickle(&bytes, pickle_key).map(Some),
            None => Ok(None),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct OutboundPickle {
    conversation: ConversationId,
    session: GroupSessionPickle,
    created_ms: u64,
    sent: u32,
    shared_with: Vec<(UserId, DeviceId)>,
    withheld_from: Vec<(UserId, DeviceId)>,
}

#[derive(Serialize, Deserialize)]
struct InboundPickle {
    session_id: String,
    session: InboundGroupSessionPickle,
    conversation: ConversationId,
    sender_user: UserId,
    sender_device: DeviceId,
    sender_identity_key: [u8; 32],
    replay: Vec<(u32, MessageId)>,
    replay_floor: Option<u32>,
    backed_up: bool,
    received_ms: u64,
}

#[derive(Serialize)]
struct PickledState<'a> {
    v: u32,
    user: UserId,
    device: DeviceId,
    config: CryptoConfig,
    account: AccountPickle,
    identity_published: bool,
    olm: Vec<(String, Vec<SessionPickle>)>,
    outbound: Vec<OutboundPickle>,
    inbound: Vec<InboundPickle>,
    conversations: Vec<(ConversationId, Vec<UserId>)>,
    directory: &'a Directory,
    withheld: Vec<(String, &'a WithheldRecord)>,
    backup: Option<&'a BackupState>,
}

#[derive(Deserialize)]
struct UnpickledState {
    v: u32,
    user: UserId,
    device: DeviceId,
    config: CryptoConfig,
    account: AccountPickle,
    identity_published: bool,
    olm: Vec<(String, Vec<SessionPickle>)>,
    outbound: Vec<OutboundPickle>,
    inbound: Vec<InboundPickle>,
    conversations: Vec<(ConversationId, Vec<UserId>)>,
    directory: Directory,
    withheld: Vec<(String, WithheldRecord)>,
    backup: Option<BackupState>,
}
