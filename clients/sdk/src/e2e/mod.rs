//! End-to-end encryption for [`crate::Client`]: the tokio driver of the core's
//! [`CryptoMachine`] (the machine decides, this module does the I/O it asks for).
//!
//! * **State** lives in a [`CryptoStore`]: [`FileCryptoStore`] writes the sealed state
//!   atomically (temp file, fsync, rename) after every change that must survive a crash — an
//!   advanced outbound Megolm index before the message leaves (a reused index would be refused
//!   by every receiver as a replay), a received key before its inbox entry is acknowledged.
//! * **Sending**: [`E2e::encrypt_outgoing`] makes sure the member list, the members' device
//!   lists and an Olm session per member device exist (`ClientQueryKeys`, `ClientClaimKeysBatch`),
//!   encrypts, stores the key shares in the recipients' inboxes (`ClientSendKeyShares`) and
//!   returns the Megolm payload; the caller sends it with the outbox entry's client id.
//! * **Receiving**: key shares (`ServerKeyShare`, from the device's inbox, before the resume
//!   replay) go to [`E2e::on_key_share`]; messages to [`E2e::decrypt`], which turns a Megolm
//!   message into the plaintext message (content type and payload of its body) or says why not.
//!   Messages waiting for a key are kept (bounded) and retried when it arrives.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use tern_core::crypto::{
    Body, CryptoError, CryptoMachine, CryptoStore, InboxAcks, PublishedKeys, TrustEvent,
    WaitingForKeys,
};
use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::msg::{ClientMessage, DeviceKeys, Message, ServerMessage};

use crate::connection::{Connection, ConnectionSender};

mod requests;
mod send;
mod store;

use crate::error::{Error, Result};
pub use requests::{
    claim_batch_devices, claim_batches, fetch_claims, fetch_device_lists, request_patiently,
    share_batches, upload_key_shares,
};
pub use send::{E2eCell, encrypt_outgoing_shared};
pub use store::{FileCryptoStore, load_or_create_pickle_key};

pub use tern_core::crypto::{
    CryptoConfig, CryptoEvent, MEGOLM_CONTENT_TYPE, MEGOLM_CONTENT_TYPE_V1, Undecryptable,
    is_encrypted_content_type,
};

/// What [`E2e`] sends its key requests over: a whole [`Connection`] or its sending half (a
/// driver that split the connection keeps reading events elsewhere while it encrypts).
pub trait KeyRequests {
    fn key_requests(&self) -> &ConnectionSender;
}

impl KeyRequests for Connection {
    fn key_requests(&self) -> &ConnectionSender {
        self.sender()
    }
}

impl KeyRequests for ConnectionSender {
    fn key_requests(&self) -> &ConnectionSender {
        self
    }
}

/// Where the time of the last [`E2e::encrypt_outgoing`] went (load measurements: a rotation
/// burst is dominated by the Olm encryptions and the share upload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutgoingCost {
    /// `ClientQueryKeys` round trips.
    pub query: std::time::Duration,
    /// `ClientClaimKeys` round trips and Olm session creation.
    pub claim: std::time::Duration,
    /// The machine's `encrypt`: one Olm encryption per key share plus the Megolm message.
    pub encrypt: std::time::Duration,
    /// `ClientSendKeyShares` round trips.
    pub upload: std::time::Duration,
    pub devices_claimed: usize,
    pub key_shares: usize,
    /// The message started a new outbound session (first message, rotation).
    pub new_session: bool,
}

/// Content type of plain text bodies, as apps and the CLI use it (defined by the core).
pub use tern_core::crypto::TEXT_CONTENT_TYPE;
/// Messages kept for a retry while their key has not arrived (the core's bound). Beyond this
/// the oldest are dropped (they can still be decrypted from history later).
pub const MAX_PENDING_UNDECRYPTABLE: usize = tern_core::crypto::waiting::MAX_WAITING_FOR_KEYS;
/// Why a message is shown as undecryptable, for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecryptableMessage {
    /// Boxed: results carrying it stay small on the common (decrypted) path.
    pub message: Box<Message>,
    pub reason: Undecryptable,
}

/// What the driver tells the app about crypto (trust warnings, refused keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoNotice {
    Trust(TrustEvent),
    Key(CryptoEvent),
}

/// The E2E state of one device, driven by [`crate::Client`].
pub struct E2e {
    machine: CryptoMachine,
    store: Box<dyn CryptoStore + Send>,
    pickle_key: [u8; 32],
    /// Member lists by conversation, from `Conversation` frames and the HTTPS API.
    members: HashMap<ConversationId, Vec<UserId>>,
    /// Messages waiting for their Megolm session or their sender's device (the core's rules),
    /// and the senders to look up.
    waiting: WaitingForKeys,
    /// Inbox ids handled and persisted, not yet acknowledged. Exact ids, not "up to": live
    /// key shares arrive out of id order, and a lower id still in flight must not be deleted.
    inbox_acks: InboxAcks,
    notices: VecDeque<CryptoNotice>,
    /// The server said claims left this device with this many one-time keys: publish more.
    one_time_keys_low: Option<u32>,
    /// The plaintext switch for tests that must show an at-rest scan can find plaintext.
    plaintext: bool,
    /// False for [`E2e::in_memory`]: nobody ever loads that state again, and sealing the whole
    /// state after every decrypt would cost more than the decryption itself.
    persistent: bool,
    last_cost: OutgoingCost,
    /// The outbound session of the last message per conversation (to tell a rotation).
    last_session: HashMap<ConversationId, String>,
}

impl std::fmt::Debug for E2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2e")
            .field("user", &self.machine.user_id())
            .field("device", &self.machine.device_id())
            .finish_non_exhaustive()
    }
}

fn crypto(e: CryptoError) -> Error {
    match e {
        // Too large to encrypt is as permanent as too large to send: the outbox drops and
        // reports the entry instead of retrying it forever.
        CryptoError::TooLarge { size, max } => Error::FrameTooLarge { size, max },
        e => Error::Crypto(e.to_string()),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `tern_wire` device keys → the core's published keys.
pub fn published_from_wire(k: &DeviceKeys) -> PublishedKeys {
    PublishedKeys::from_wire(k)
}

/// The core's published keys → `tern_wire` device keys.
pub fn wire_from_published(k: &PublishedKeys) -> DeviceKeys {
    k.to_wire()
}

/// The body an app's `(content_type, payload)` becomes inside the encryption (the core's
/// rule, shared with the web client).
pub fn body_of(content_type: &str, payload: &[u8]) -> Body {
    Body::from_content(content_type, payload)
}

/// The `(content_type, payload)` of a decrypted body.
pub fn content_of(body: &Body) -> (String, Vec<u8>) {
    body.to_content()
}

impl E2e {
    /// Loads the device's crypto state from `store`, or creates a new identity when there is
    /// none (a new device). A state of another user or device is refused.
    pub fn open(
        user: UserId,
        device: DeviceId,
        store: Box<dyn CryptoStore + Send>,
        pickle_key: [u8; 32],
        config: CryptoConfig,
    ) -> Result<E2e> {
        let machine = match CryptoMachine::load_from(store.as_ref(), &pickle_key).map_err(crypto)? {
            Some(m) if m.user_id() == user && m.device_id() == device => m,
            Some(m) => {
                return Err(Error::Config(format!(
                    "the crypto state belongs to {}/{}, not {user}/{device}",
                    m.user_id(),
                    m.device_id()
                )));
            }
            None => CryptoMachine::new(user, device, config).map_err(crypto)?,
        };
        let mut e2e = E2e {
            machine,
            store,
            pickle_key,
            members: HashMap::new(),
            waiting: WaitingForKeys::default(),
            inbox_acks: InboxAcks::default(),
            notices: VecDeque::new(),
            one_time_keys_low: None,
            plaintext: false,
            persistent: true,
            last_cost: OutgoingCost::default(),
            last_session: HashMap::new(),
        };
        e2e.persist()?;
        Ok(e2e)
    }

    /// A machine in memory only (load generator devices, tests).
    pub fn in_memory(user: UserId, device: DeviceId, config: CryptoConfig) -> Result<E2e> {
        let store = Box::new(tern_core::crypto::MemoryCryptoStore::default());
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| Error::Config(format!("random: {e}")))?;
        let mut e2e = E2e::open(user, device, store, key, config)?;
        e2e.persistent = false;
        Ok(e2e)
    }

    /// Where the time of the last [`E2e::encrypt_outgoing`] went.
    pub fn last_outgoing_cost(&self) -> OutgoingCost {
        self.last_cost
    }

    /// Test-only: send plaintext (so a test can show that its at-rest scan finds plaintext).
    pub fn set_plaintext_for_tests(&mut self, on: bool) {
        self.plaintext = on;
    }

    pub fn machine(&self) -> &CryptoMachine {
        &self.machine
    }

    /// Mutable access for trust decisions (verify, block); call [`E2e::persist`] after.
    pub fn machine_mut(&mut self) -> &mut CryptoMachine {
        &mut self.machine
    }

    /// Writes the sealed state.
    pub fn persist(&mut self) -> Result<()> {
        if !self.persistent {
            return Ok(());
        }
        self.machine
            .save_to(self.store.as_mut(), &self.pickle_key)
            .map_err(crypto)
    }

    pub fn take_notices(&mut self) -> Vec<CryptoNotice> {
        self.notices.drain(..).collect()
    }

    /// Records a conversation's members (from a `Conversation` frame or the HTTPS API).
    pub fn set_members(&mut self, conversation: ConversationId, members: Vec<UserId>) {
        self.members.insert(conversation, members);
    }

    pub fn members(&self, conversation: ConversationId) -> Option<&[UserId]> {
        self.members.get(&conversation).map(Vec::as_slice)
    }

    /// `user` left or was removed: the next message uses a new session.
    pub fn on_member_removed(&mut self, conversation: ConversationId, user: UserId) -> Result<()> {
        if let Some(m) = self.members.get_mut(&conversation) {
            m.retain(|u| *u != user);
        }
        self.machine.on_member_removed(conversation, user);
        self.persist()
    }

    /// `user`'s devices changed: re-query before the next message to them.
    pub fn on_device_list_changed(&mut self, user: UserId) {
        self.machine.mark_device_list_stale(user);
    }

    /// Publishes this device's keys when the machine has new ones (first connection, one-time
    /// keys running low). `one_time_keys_left` is the server's count from `Welcome`.
    pub async fn publish_keys(
        &mut self,
        conn: &impl KeyRequests,
        one_time_keys_left: u32,
    ) -> Result<()> {
        let Some(keys) = self.machine.keys_to_publish(one_time_keys_left) else {
            return Ok(());
        };
        let keys = wire_from_published(&keys);
        conn.key_requests()
            .request(|request_id| ClientMessage::PublishKeys { request_id, keys })
            .await?;
        self.machine.mark_keys_published();
        self.persist()
    }

    /// Publishes more one-time keys if the server said claims left few ([`ServerMessage::
    /// OneTimeKeysLow`]); true when it published. Tried once per notice: after a failure the
    /// next notice or the next connection's `Welcome` count tries again (never a retry loop).
    pub async fn publish_if_low(&mut self, conn: &impl KeyRequests) -> Result<bool> {
        let Some(left) = self.one_time_keys_low.take() else {
            return Ok(false);
        };
        self.publish_keys(conn, left).await?;
        Ok(true)
    }

    /// Whether [`E2e::publish_if_low`] has work.
    pub fn one_time_keys_low(&self) -> bool {
        self.one_time_keys_low.is_some()
    }

    /// Asks the server for the device lists of `users` and feeds them to the machine.
    pub async fn query(&mut self, conn: &impl KeyRequests, users: &[UserId]) -> Result<()> {
        let lists = requests::fetch_device_lists(conn.key_requests(), users).await?;
        self.apply_device_lists(lists)
    }

    /// Claims one-time keys for `devices` and creates Olm sessions with them.
    pub async fn claim(
        &mut self,
        conn: &impl KeyRequests,
        devices: &[(UserId, DeviceId)],
    ) -> Result<()> {
        let bundles = requests::fetch_claims(conn.key_requests(), devices).await?;
        self.apply_claims(&bundles)
    }

    /// Encrypts an outgoing message for every member device of `conversation` (whose member
    /// list must be known: see [`E2e::set_members`]) and stores the key shares it needs in the
    /// recipients' inboxes. Returns the content type and payload to send. A driver that shares
    /// the state between tasks uses [`send::encrypt_outgoing_shared`] instead.
    pub async fn encrypt_outgoing(
        &mut self,
        conn: &impl KeyRequests,
        conversation: ConversationId,
        content_type: &str,
        payload: &[u8],
    ) -> Result<(String, Vec<u8>)> {
        let sender = conn.key_requests();
        let (content_type, payload, _) = send::encrypt_outgoing_shared(
            &send::Exclusive::new(self),
            sender,
            conversation,
            content_type,
            payload,
        )
        .await?;
        Ok((content_type, payload))
    }

    /// A key share from this device's inbox. Returns messages that became readable. The entry
    /// is acknowledged (by [`E2e::take_inbox_ack`]) only once the state holding it is on disk.
    pub fn on_key_share(
        &mut self,
        from_user: UserId,
        from_device: DeviceId,
        payload: &[u8],
        inbox_id: u64,
    ) -> Result<Vec<std::result::Result<Message, UndecryptableMessage>>> {
        // Messages whose key came from a device the directory does not have yet keep waiting
        // (a query makes them readable); the sender is queued for that lookup.
        let outcome =
            self.waiting
                .on_key_share(&mut self.machine, from_user, from_device, payload, now_ms());
        self.notices
            .extend(outcome.events.into_iter().map(CryptoNotice::Key));
        self.persist()?;
        self.inbox_acks.on_handled(inbox_id);
        Ok(plain_results(outcome.settled))
    }

    /// Whether [`E2e::resolve_unknown_senders`] has work.
    pub fn has_unknown_senders(&self) -> bool {
        self.waiting.has_unknown_senders()
    }

    /// Queries the device lists of senders whose keys or messages came from a device not in
    /// our directory, then retries the messages waiting on them. Returns what became readable
    /// (and what is now undecryptable for another reason).
    pub async fn resolve_unknown_senders(
        &mut self,
        conn: &impl KeyRequests,
    ) -> Result<Vec<std::result::Result<Message, UndecryptableMessage>>> {
        let users = self.waiting.take_to_query();
        if users.is_empty() {
            return Ok(Vec::new());
        }
        for u in &users {
            self.machine.mark_device_list_stale(*u);
        }
        self.query(conn, &users).await?;
        let out = plain_results(self.waiting.retry_senders(&mut self.machine, &users));
        self.persist()?;
        Ok(out)
    }

    /// Decrypts history pages (the server's stored payloads): senders whose devices this
    /// device has not looked up yet are looked up once, then their messages retried. One
    /// result per message, in order. The state (replay records) is persisted once for the
    /// whole page, not once per message: a backfill decrypts thousands.
    pub async fn decrypt_history(
        &mut self,
        conn: &impl KeyRequests,
        messages: Vec<Message>,
    ) -> Result<Vec<std::result::Result<Message, UndecryptableMessage>>> {
        let mut out: Vec<_> = messages
            .iter()
            .map(|m| {
                if is_encrypted_content_type(&m.content_type) {
                    plain_result(m, self.waiting.decrypt(&mut self.machine, m))
                } else {
                    Ok(m.clone())
                }
            })
            .collect();
        self.persist()?;
        if self.has_unknown_senders() {
            for r in self.resolve_unknown_senders(conn).await? {
                let id = match &r {
                    Ok(m) => m.message_id,
                    Err(u) => u.message.message_id,
                };
                if let Some(slot) = out.iter_mut().find(|o| match o {
                    Ok(m) => m.message_id == id,
                    Err(u) => u.message.message_id == id,
                }) {
                    *slot = r;
                }
            }
        }
        Ok(out)
    }

    /// Tries every message kept for a retry again, e.g. after a device-list query made their
    /// sender's device known (a key from a device not yet in the directory is stored, but its
    /// messages stay `UntrustedDevice` until the directory has the device). Returns the
    /// messages that became readable or failed for good; the others keep waiting.
    pub fn retry_waiting(&mut self) -> Vec<std::result::Result<Message, UndecryptableMessage>> {
        let done = plain_results(self.waiting.retry_all(&mut self.machine));
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "could not persist replay records");
        }
        done
    }

    /// Messages kept for a retry.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Feeds a server event the crypto state depends on: key shares (returns the messages they
    /// made readable), member lists (`Conversation`), removals (rotate), device-list changes
    /// (re-query). Anything else is ignored. Returns whether the event was a key share (which
    /// the app need not see).
    pub fn on_server_message(
        &mut self,
        message: &ServerMessage,
    ) -> Result<(
        bool,
        Vec<std::result::Result<Message, UndecryptableMessage>>,
    )> {
        match message {
            ServerMessage::KeyShare {
                from_user,
                from_device,
                payload,
                inbox_id,
            } => Ok((
                true,
                self.on_key_share(*from_user, *from_device, payload, *inbox_id)?,
            )),
            ServerMessage::Conversation { info, .. } => {
                self.set_members(
                    info.conversation,
                    info.members.iter().map(|m| m.user).collect(),
                );
                Ok((false, Vec::new()))
            }
            ServerMessage::MemberRemoved { conversation, user } => {
                self.on_member_removed(*conversation, *user)?;
                Ok((false, Vec::new()))
            }
            ServerMessage::DeviceListChanged { user } => {
                self.on_device_list_changed(*user);
                Ok((false, Vec::new()))
            }
            ServerMessage::OneTimeKeysLow { left } => {
                self.one_time_keys_low = Some(*left);
                Ok((false, Vec::new()))
            }
            _ => Ok((false, Vec::new())),
        }
    }

    /// The `AckKeyShares` frames to send now: every inbox id handled since the last call (its
    /// key is on disk), in frames of at most `MAX_ACK_INBOX_IDS` ids. Empty when none is due.
    pub fn take_inbox_ack(&mut self) -> Vec<ClientMessage> {
        self.inbox_acks.take_acks()
    }

    /// Decrypts `message` (anything but Megolm passes through untouched). A message whose key
    /// has not arrived is kept and retried when it does.
    // The undecryptable message travels with its reason (the app shows it): boxing it would
    // only move the allocation.
    #[allow(clippy::result_large_err)]
    pub fn decrypt(
        &mut self,
        message: &Message,
    ) -> std::result::Result<Message, UndecryptableMessage> {
        if !is_encrypted_content_type(&message.content_type) {
            return Ok(message.clone());
        }
        let result = self.waiting.decrypt(&mut self.machine, message);
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "could not persist replay records");
        }
        plain_result(message, result)
    }
}

/// The plaintext message of a decryption (content type and payload of its body), or the
/// message with the reason it cannot be read.
// The undecryptable message travels with its reason (the app shows it): boxing it would only
// move the allocation.
#[allow(clippy::result_large_err)]
fn plain_result(
    message: &Message,
    result: std::result::Result<tern_core::crypto::Decrypted, Undecryptable>,
) -> std::result::Result<Message, UndecryptableMessage> {
    match result {
        Ok(d) => {
            let (content_type, payload) = content_of(&d.body);
            let mut plain = message.clone();
            plain.content_type = content_type;
            plain.payload = payload;
            Ok(plain)
        }
        Err(reason) => Err(UndecryptableMessage {
            message: Box::new(message.clone()),
            reason,
        }),
    }
}

fn plain_results(
    outcomes: Vec<tern_core::crypto::waiting::Outcome>,
) -> Vec<std::result::Result<Message, UndecryptableMessage>> {
    outcomes
        .into_iter()
        .map(|(m, r)| plain_result(&m, r))
        .collect()
}

/// Key backup over the HTTPS API (opaque blobs the client sealed with a key derived from the
/// recovery passphrase; the server never sees the passphrase or the key).
impl E2e {
    /// Starts a new backup protected by `passphrase` (replacing any earlier one) and uploads
    /// every session this device holds.
    pub async fn create_backup(&mut self, api: &crate::HttpApi, passphrase: &str) -> Result<usize> {
        let (version, meta) = self
            .machine
            .backup_create(passphrase, now_ms())
            .map_err(crypto)?;
        self.persist()?;
        api.put_key_backup(&tern_wire::api::KeyBackup {
            version,
            meta: base64::engine::general_purpose::STANDARD.encode(meta),
        })
        .await?;
        self.upload_backup(api).await
    }

    /// Uploads the sessions not yet in the backup (nothing when no backup is unlocked on this
    /// device). Returns how many were uploaded.
    pub async fn upload_backup(&mut self, api: &crate::HttpApi) -> Result<usize> {
        let Some(version) = self.machine.backup_version().map(str::to_string) else {
            return Ok(0);
        };
        let mut uploaded = 0;
        loop {
            let entries = self.machine.backup_export_sessions().map_err(crypto)?;
            if entries.is_empty() {
                return Ok(uploaded);
            }
            let sessions = entries
                .iter()
                .map(|e| tern_wire::api::BackupSessionView {
                    conversation: e.conversation,
                    session_id: e.session_id.clone(),
                    data: base64::engine::general_purpose::STANDARD.encode(&e.data),
                })
                .collect();
            api.put_backup_sessions(&tern_wire::api::PutBackupSessions {
                version: version.clone(),
                sessions,
            })
            .await?;
            let ids: Vec<String> = entries.iter().map(|e| e.session_id.clone()).collect();
            self.machine.backup_mark_uploaded(&ids);
            self.persist()?;
            uploaded += ids.len();
        }
    }

    /// Unlocks the server's backup with `passphrase` and imports every session in it, so this
    /// (new) device reads the history. A wrong passphrase is `Error::Crypto` saying so, and
    /// changes nothing.
    pub async fn restore_backup(
        &mut self,
        api: &crate::HttpApi,
        passphrase: &str,
    ) -> Result<tern_core::crypto::RestoreReport> {
        let header = api.key_backup().await?;
        let meta = base64::engine::general_purpose::STANDARD
            .decode(&header.meta)
            .map_err(|_| Error::BadResponse("backup meta is not base64".into()))?;
        self.machine
            .backup_unlock(passphrase, &header.version, &meta)
            .map_err(crypto)?;
        let total = self.import_backup(api, None).await?;
        self.persist()?;
        Ok(total)
    }

    /// Imports the backup's sessions (of one conversation, or all), page by page.
    async fn import_backup(
        &mut self,
        api: &crate::HttpApi,
        conversation: Option<ConversationId>,
    ) -> Result<tern_core::crypto::RestoreReport> {
        let mut total = tern_core::crypto::RestoreReport::default();
        let mut after: Option<String> = None;
        loop {
            let page = api
                .backup_sessions(conversation, after.as_deref(), None)
                .await?;
            let entries: Vec<tern_core::crypto::BackupEntry> = page
                .sessions
                .iter()
                .filter_map(|s| {
                    Some(tern_core::crypto::BackupEntry {
                        conversation: s.conversation,
                        session_id: s.session_id.clone(),
                        data: base64::engine::general_purpose::STANDARD
                            .decode(&s.data)
                            .ok()?,
                    })
                })
                .collect();
            total.invalid += page.sessions.len() - entries.len();
            let report = self
                .machine
                .backup_import(&entries, now_ms())
                .map_err(crypto)?;
            total.imported += report.imported;
            total.already_known += report.already_known;
            total.invalid += report.invalid;
            match page.next_after {
                Some(next) if !page.sessions.is_empty() => after = Some(next),
                _ => return Ok(total),
            }
        }
    }

    /// Conversations with messages waiting for a key, for [`E2e::recover_from_backup`].
    pub fn conversations_waiting(&self) -> Vec<ConversationId> {
        self.waiting.conversations()
    }

    /// Recovery without the sender: when this device has the backup unlocked (it created or
    /// restored it) and messages of `conversation` wait for a key, the backup may hold it (one
    /// of the user's other devices uploaded it). Fetches that conversation's backed-up
    /// sessions and retries. Returns what became readable; nothing when no backup is unlocked.
    pub async fn recover_from_backup(
        &mut self,
        api: &crate::HttpApi,
        conversation: ConversationId,
    ) -> Result<Vec<std::result::Result<Message, UndecryptableMessage>>> {
        if self.machine.backup_version().is_none() {
            return Ok(Vec::new());
        }
        let report = self.import_backup(api, Some(conversation)).await?;
        if report.imported == 0 {
            return Ok(Vec::new());
        }
        Ok(self.retry_waiting())
    }

    /// Whether `error` is the wrong-passphrase refusal of [`E2e::restore_backup`].
    pub fn is_wrong_passphrase(error: &Error) -> bool {
        matches!(error, Error::Crypto(m) if m == &CryptoError::WrongPassphrase.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::ids::MessageId;

    const CONVERSATION: ConversationId = ConversationId(7);

    /// A 100-member group's shares (~900 B each) do not fit one 64 KiB frame: they go in
    /// several requests, none over the frame limit, all shares once and in order.
    fn device(user: u128) -> E2e {
        E2e::in_memory(UserId(user), DeviceId(user << 8), CryptoConfig::default()).expect("device")
    }

    fn published(e2e: &mut E2e) -> PublishedKeys {
        let keys = e2e.machine_mut().keys_to_publish(0).expect("keys");
        e2e.machine_mut().mark_keys_published();
        keys
    }

    /// A message that arrives before its key, whose key comes from a device this one has not
    /// looked up yet, keeps waiting (it is not reported as untrusted and forgotten), and a
    /// device-list answer for the sender makes it readable.
    #[test]
    fn message_before_a_key_from_an_unknown_device_is_readable_after_the_query() {
        let mut alice = device(1);
        let mut bob = device(2);
        let alice_keys = published(&mut alice);
        let bob_keys = published(&mut bob);
        let (a, b) = (UserId(1), UserId(2));
        let m = alice.machine_mut();
        m.on_device_list(b, std::slice::from_ref(&bob_keys), 0)
            .expect("bob's list");
        assert!(m.on_claimed(std::slice::from_ref(&bob_keys)).is_empty());
        m.prepare(CONVERSATION, &[a, b], 0).expect("prepare");
        let sent = m
            .encrypt(CONVERSATION, &Body::text("before its key"), 0)
            .expect("encrypt");
        assert_eq!(sent.key_shares.len(), 1);
        let message = Message {
            conversation: CONVERSATION,
            seq: 1,
            message_id: MessageId(99),
            sender_user: a,
            sender_device: DeviceId(1 << 8),
            client_msg_id: 5,
            timestamp_ms: 0,
            content_type: sent.content_type.to_string(),
            payload: sent.payload.clone(),
            files: Vec::new(),
        };

        let first = bob.decrypt(&message);
        assert!(matches!(first, Err(ref u) if u.reason == Undecryptable::NoKeyYet));
        let share = &sent.key_shares[0];
        let ready = bob
            .on_key_share(a, DeviceId(1 << 8), &share.payload, 1)
            .expect("share");
        assert!(
            ready.is_empty(),
            "nothing is readable before alice's device is known: {ready:?}"
        );
        assert_eq!(bob.waiting_count(), 1);

        bob.machine_mut()
            .on_device_list(a, std::slice::from_ref(&alice_keys), 0)
            .expect("alice's list");
        let ready = bob.retry_waiting();
        assert_eq!(ready.len(), 1);
        let plain = ready.into_iter().next().expect("one").expect("readable");
        assert_eq!(plain.payload, b"before its key");
        assert_eq!(bob.waiting_count(), 0);
    }

    /// A v1 (JSON envelope) message from stored history is recognised as encrypted: never
    /// passed through as plaintext, and parked by its session id until the key arrives.
    #[test]
    fn v1_history_is_decrypted_and_parked_not_passed_through() {
        let mut alice = device(1);
        let mut bob = device(2);
        let bob_keys = published(&mut bob);
        let (a, b) = (UserId(1), UserId(2));
        let m = alice.machine_mut();
        m.on_device_list(b, std::slice::from_ref(&bob_keys), 0)
            .expect("bob's list");
        assert!(m.on_claimed(std::slice::from_ref(&bob_keys)).is_empty());
        m.prepare(CONVERSATION, &[a, b], 0).expect("prepare");
        let sent = m
            .encrypt(CONVERSATION, &Body::text("old"), 0)
            .expect("encrypt");
        // The same Megolm message in the v1 JSON envelope.
        let v1 = serde_json::json!({
            "v": 1,
            "session_id": sent.session_id,
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(&sent.payload[33..]),
        });
        let message = Message {
            conversation: CONVERSATION,
            seq: 1,
            message_id: MessageId(98),
            sender_user: a,
            sender_device: DeviceId(1 << 8),
            client_msg_id: 4,
            timestamp_ms: 0,
            content_type: MEGOLM_CONTENT_TYPE_V1.to_string(),
            payload: serde_json::to_vec(&v1).expect("json"),
            files: Vec::new(),
        };
        assert!(is_encrypted_content_type(&message.content_type));
        let first = bob.decrypt(&message);
        assert!(
            matches!(first, Err(ref u) if u.reason == Undecryptable::NoKeyYet),
            "{first:?}"
        );
        assert_eq!(bob.waiting_count(), 1, "parked by its v1 session id");
        // Garbage under either content type is an undecryptable message, never plaintext.
        for content_type in [MEGOLM_CONTENT_TYPE, MEGOLM_CONTENT_TYPE_V1] {
            let mut garbage = message.clone();
            garbage.content_type = content_type.to_string();
            garbage.payload = b"garbage".to_vec();
            let result = bob.decrypt(&garbage);
            assert!(
                matches!(result, Err(ref u) if u.reason == Undecryptable::Tampered),
                "{content_type}: {result:?}"
            );
        }
    }

    #[test]
    fn data_bodies_carry_any_bytes() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let body = body_of("app/bin", &bytes);
        assert_eq!(content_of(&body), ("app/bin".to_string(), bytes));
        assert_eq!(body_of(TEXT_CONTENT_TYPE, b"hi"), Body::text("hi"));
        let not_utf8 = body_of(TEXT_CONTENT_TYPE, &[0xff, 0xfe]);
        assert_eq!(
            content_of(&not_utf8),
            (TEXT_CONTENT_TYPE.to_string(), vec![0xff, 0xfe])
        );
    }
}
