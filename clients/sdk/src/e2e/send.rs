//! Encrypting one send: make sure every member device can get the key (device lists, Olm
//! sessions), encrypt, store the key shares in the recipients' inboxes, return the payload.
//!
//! The device's [`E2e`] is reached through an [`E2eCell`] and held only for the machine's own
//! synchronous steps, never across a round trip: a driver that shares the state between a
//! sending task and a receiving task (the load generator, a browser worker) keeps decrypting
//! while a large group's first message waits on the key directory. [`E2e::encrypt_outgoing`]
//! runs the same flow on state it owns exclusively.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tern_core::crypto::{Encrypted, PublishedKeys, SendPlan, SendStep};
use tern_wire::ids::{ConversationId, UserId};

use super::requests::{fetch_claims, fetch_device_lists, upload_key_shares};
use super::{E2e, OutgoingCost, body_of, crypto, now_ms};
use crate::connection::ConnectionSender;
use crate::error::{Error, Result};

/// Where a send finds the device's [`E2e`]: `with` runs one synchronous step on it.
pub trait E2eCell: Sync {
    fn with<R: Send>(
        &self,
        step: impl FnOnce(&mut E2e) -> R + Send,
    ) -> impl Future<Output = R> + Send;
}

/// State shared between tasks (e.g. `Arc<tokio::sync::Mutex<E2e>>`).
impl E2eCell for tokio::sync::Mutex<E2e> {
    async fn with<R: Send>(&self, step: impl FnOnce(&mut E2e) -> R + Send) -> R {
        let mut e2e = self.lock().await;
        step(&mut e2e)
    }
}

/// State the caller owns exclusively for the whole send (no other task can wait on it).
pub(crate) struct Exclusive<'a>(Mutex<&'a mut E2e>);

impl<'a> Exclusive<'a> {
    pub(crate) fn new(e2e: &'a mut E2e) -> Self {
        Exclusive(Mutex::new(e2e))
    }
}

impl E2eCell for Exclusive<'_> {
    async fn with<R: Send>(&self, step: impl FnOnce(&mut E2e) -> R + Send) -> R {
        let mut e2e = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        step(&mut e2e)
    }
}

/// Encrypts an outgoing message for every member device of `conversation` (whose member list
/// must be known: see [`E2e::set_members`]) and stores the key shares it needs in the
/// recipients' inboxes. Returns the content type and payload to send, and where the time went.
pub async fn encrypt_outgoing_shared(
    cell: &impl E2eCell,
    sender: &ConnectionSender,
    conversation: ConversationId,
    content_type: &str,
    payload: &[u8],
) -> Result<(String, Vec<u8>, OutgoingCost)> {
    let (plaintext, members) = cell
        .with(|e| (e.plaintext, e.members(conversation).map(<[UserId]>::to_vec)))
        .await;
    if plaintext {
        return Ok((
            content_type.to_string(),
            payload.to_vec(),
            OutgoingCost::default(),
        ));
    }
    let members =
        members.ok_or_else(|| Error::Crypto(format!("members of {conversation} are not known")))?;
    let mut cost = OutgoingCost::default();
    ensure_sessions(cell, sender, conversation, &members, &mut cost).await?;

    let body = body_of(content_type, payload);
    let started = Instant::now();
    let encrypted = cell
        .with(|e| encrypt_and_persist(e, conversation, &body, &mut cost))
        .await?;
    cost.encrypt = started.elapsed();

    let started = Instant::now();
    let full = upload_key_shares(sender, &encrypted.key_shares).await?;
    if !full.is_empty() {
        tracing::warn!(?full, "recipient inboxes full: those devices miss this key");
    }
    cost.upload = started.elapsed();
    cell.with(|e| e.last_cost = cost).await;
    Ok((encrypted.content_type.to_string(), encrypted.payload, cost))
}

/// Queries stale device lists and claims keys for member devices without an Olm session until
/// the machine has what it needs (or the round limits are reached): the core's [`SendPlan`]
/// decides each step, this only runs the round trips.
async fn ensure_sessions(
    cell: &impl E2eCell,
    sender: &ConnectionSender,
    conversation: ConversationId,
    members: &[UserId],
    cost: &mut OutgoingCost,
) -> Result<()> {
    let mut plan = SendPlan::new(conversation, members.to_vec());
    loop {
        let step = cell
            .with(|e| plan.next(&mut e.machine, now_ms()))
            .await
            .map_err(crypto)?;
        match step {
            SendStep::Query(users) => {
                let started = Instant::now();
                let lists = fetch_device_lists(sender, &users).await?;
                cell.with(|e| e.apply_device_lists(lists)).await?;
                cost.query += started.elapsed();
            }
            SendStep::Claim(devices) => {
                let started = Instant::now();
                let bundles = fetch_claims(sender, &devices).await?;
                cell.with(|e| e.apply_claims(&bundles)).await?;
                cost.claim += started.elapsed();
                cost.devices_claimed += devices.len();
            }
            SendStep::Ready => return Ok(()),
        }
    }
}

/// The machine's encrypt, then the advanced index on disk before any byte leaves: a crash
/// cannot make us reuse it.
fn encrypt_and_persist(
    e2e: &mut E2e,
    conversation: ConversationId,
    body: &tern_core::crypto::Body,
    cost: &mut OutgoingCost,
) -> Result<Encrypted> {
    let encrypted = e2e
        .machine
        .encrypt(conversation, body, now_ms())
        .map_err(crypto)?;
    cost.key_shares = encrypted.key_shares.len();
    cost.new_session = e2e.last_session.get(&conversation) != Some(&encrypted.session_id);
    e2e.last_session
        .insert(conversation, encrypted.session_id.clone());
    e2e.persist()?;
    if !encrypted.missing.is_empty() {
        tracing::warn!(
            %conversation,
            missing = encrypted.missing.len(),
            "member devices without an Olm session get no key for this message"
        );
    }
    Ok(encrypted)
}

impl E2e {
    /// Feeds device lists from the directory to the machine (trust events become notices).
    pub fn apply_device_lists(
        &mut self,
        lists: BTreeMap<UserId, Vec<PublishedKeys>>,
    ) -> Result<()> {
        let now = now_ms();
        for (user, list) in lists {
            let events = self
                .machine
                .on_device_list(user, &list, now)
                .map_err(crypto)?;
            self.notices
                .extend(events.into_iter().map(super::CryptoNotice::Trust));
        }
        self.persist()
    }

    /// Creates Olm sessions from claimed key bundles.
    pub fn apply_claims(&mut self, bundles: &[PublishedKeys]) -> Result<()> {
        for problem in self.machine.on_claimed(bundles) {
            tracing::warn!(?problem, "no Olm session from a claimed key");
        }
        self.persist()
    }
}
