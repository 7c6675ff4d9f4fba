//! `Machine`: one device's end-to-end encryption state ([`CryptoMachine`]).
//!
//! Inputs and outputs use the wire's JSON shapes so the page can pass decoded frames straight
//! in and put results straight into client messages: device keys are tern-wire `DeviceKeys`
//! (hex byte fields), key shares `KeyShareItem`s, messages `Message`s (hex payload). Backup
//! values use the HTTPS API's shapes (`KeyBackup`, `PutBackupSessions`, `BackupSessionPage`:
//! base64 byte fields), so they are the request bodies and answers as they are.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use tern_core::crypto::{
    BackupEntry, Body, CryptoConfig, CryptoError, CryptoEvent, CryptoMachine, Decrypted,
    PublishedKeys, TrustEvent, Undecryptable,
};
use tern_wire::api::{BackupSessionPage, BackupSessionView, KeyBackup, PutBackupSessions};
use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::msg::{DeviceKeys, KeyShareItem, Message};
use wasm_bindgen::prelude::*;

use crate::js::{Fail, JsResult, err, fail, from_json, key32, ms, parse, to_json};

/// The JS `Error.name` of a wrong backup passphrase, so the page can tell it from other
/// failures (`e.name === 'WrongPassphraseError'`) and ask again.
pub const WRONG_PASSPHRASE: &str = "WrongPassphraseError";

fn crypto_err(e: CryptoError) -> Fail {
    match e {
        CryptoError::WrongPassphrase => Fail::named(WRONG_PASSPHRASE, e.to_string()),
        other => err(other),
    }
}

/// `tern_wire` device keys → the core's published keys.
pub fn published_from_wire(k: &DeviceKeys) -> PublishedKeys {
    PublishedKeys::from_wire(k)
}

pub fn trust_event(e: &TrustEvent) -> Value {
    match e {
        TrustEvent::NewDevice { user, device } => {
            json!({"type":"new_device","user":user,"device":device})
        }
        TrustEvent::IdentityChanged { user, device } => {
            json!({"type":"identity_changed","user":user,"device":device})
        }
        TrustEvent::DeviceRemoved { user, device } => {
            json!({"type":"device_removed","user":user,"device":device})
        }
        TrustEvent::InvalidKeys {
            user,
            device,
            reason,
        } => json!({"type":"invalid_keys","user":user,"device":device,"reason":reason}),
    }
}

pub(crate) fn crypto_event(e: &CryptoEvent) -> Value {
    match e {
        CryptoEvent::RoomKeyReceived {
            conversation,
            session_id,
            sender_user,
            sender_device,
        } => json!({"type":"room_key_received","conversation":conversation,
            "session_id":session_id,"sender_user":sender_user,"sender_device":sender_device}),
        CryptoEvent::Withheld {
            conversation,
            session_id,
            reason,
        } => json!({"type":"withheld","conversation":conversation,"session_id":session_id,
            "reason":reason}),
        CryptoEvent::UntrustedKey { user, device } => {
            json!({"type":"untrusted_key","user":user,"device":device})
        }
        CryptoEvent::UnknownDevice { user, device } => {
            json!({"type":"unknown_device","user":user,"device":device})
        }
        CryptoEvent::Rejected {
            user,
            device,
            reason,
        } => json!({"type":"rejected","user":user,"device":device,"reason":reason}),
    }
}

fn undecryptable(u: &Undecryptable) -> Value {
    match u {
        Undecryptable::Withheld(reason) => json!({"error":"Withheld","reason":reason}),
        other => json!({"error": format!("{other:?}"), "reason": other.to_string()}),
    }
}

fn pairs(v: &[(UserId, DeviceId)]) -> Vec<Value> {
    v.iter()
        .map(|(u, d)| json!({"user": u, "device": d}))
        .collect()
}

/// The fields of a server `key_share` message the machine needs (other fields are ignored,
/// so the decoded message can be passed as it is).
#[derive(Deserialize)]
pub(crate) struct InboxShare {
    pub from_user: UserId,
    pub from_device: DeviceId,
    #[serde(with = "crate::js::hex_bytes")]
    pub payload: Vec<u8>,
}

/// `decrypt`'s result JSON (see [`Machine::decrypt`]).
pub(crate) fn decrypted_json(result: &Result<Decrypted, Undecryptable>) -> Value {
    match result {
        Ok(d) => {
            let (text, data) = match &d.body {
                Body::Text { text } => (Some(text), None),
                Body::Data { content_type, data } => (
                    None,
                    Some(json!({"content_type": content_type, "data": hex::encode(data)})),
                ),
                // A file is data under "tern.file" (its FileBody JSON) for code that only
                // knows (content type, payload), and the parsed body under "file".
                Body::File(_) => {
                    let (content_type, data) = d.body.to_content();
                    (
                        None,
                        Some(json!({"content_type": content_type, "data": hex::encode(data)})),
                    )
                }
            };
            let file = match &d.body {
                Body::File(f) => serde_json::to_value(f).ok(),
                _ => None,
            };
            json!({"text": text, "data": data, "file": file, "sender_user": d.sender_user,
                "sender_device": d.sender_device, "trust": d.trust,
                "session_id": d.session_id, "message_index": d.message_index})
        }
        Err(u) => undecryptable(u),
    }
}

/// One device's crypto state.
#[wasm_bindgen]
pub struct Machine {
    pub(crate) inner: CryptoMachine,
}

#[wasm_bindgen]
impl Machine {
    /// A new device identity with the default config.
    #[wasm_bindgen(constructor)]
    pub fn new(user: &str, device: &str) -> JsResult<Machine> {
        Self::with_config(user, device, "{}")
    }

    /// A new device identity; `config_json` overrides fields of the default config
    /// (`{rotation_messages, rotation_ms, one_time_keys_target, backup_kdf: {m_kib, t, p}}`).
    #[wasm_bindgen(js_name = withConfig)]
    pub fn with_config(user: &str, device: &str, config_json: &str) -> JsResult<Machine> {
        let mut config = serde_json::to_value(CryptoConfig::default()).map_err(err)?;
        let overrides: Value = from_json(config_json, "crypto config")?;
        let Some(over) = overrides.as_object() else {
            return Err(fail("crypto config must be a JSON object"));
        };
        if let Some(base) = config.as_object_mut() {
            for (k, v) in over {
                if !base.contains_key(k) {
                    return Err(fail(format!("unknown crypto config field {k:?}")));
                }
                base.insert(k.clone(), v.clone());
            }
        }
        let config: CryptoConfig = serde_json::from_value(config)
            .map_err(|e| fail(format!("invalid crypto config JSON: {e}")))?;
        let inner =
            CryptoMachine::new(parse(user, "user id")?, parse(device, "device id")?, config)
                .map_err(crypto_err)?;
        Ok(Machine { inner })
    }

    /// Opens a pickle made by this crate or by the native core (same format).
    pub fn unpickle(sealed: &[u8], pickle_key: &[u8]) -> JsResult<Machine> {
        let inner = CryptoMachine::from_pickle(sealed, &key32(pickle_key)?).map_err(crypto_err)?;
        Ok(Machine { inner })
    }

    /// The whole state sealed with the 32-byte `pickle_key`: store it after every call that
    /// changed state (before acknowledging inbox shares, before sending an encrypted message).
    pub fn pickle(&self, pickle_key: &[u8]) -> JsResult<Vec<u8>> {
        self.inner.pickle(&key32(pickle_key)?).map_err(crypto_err)
    }

    #[wasm_bindgen(js_name = userId)]
    pub fn user_id(&self) -> String {
        self.inner.user_id().to_string()
    }

    #[wasm_bindgen(js_name = deviceId)]
    pub fn device_id(&self) -> String {
        self.inner.device_id().to_string()
    }

    /// This device's identity fingerprint (for the device list).
    pub fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }

    /// tern-wire `DeviceKeys` JSON to put in `{"type":"publish_keys","request_id":n,"keys":…}`,
    /// or `undefined` when nothing needs publishing. `one_time_keys_left`: the Welcome's (or
    /// `one_time_keys_low`'s) count. Call `markKeysPublished` after the server's `ok`.
    #[wasm_bindgen(js_name = keysToPublish)]
    pub fn keys_to_publish(&mut self, one_time_keys_left: u32) -> JsResult<Option<String>> {
        self.inner
            .keys_to_publish(one_time_keys_left)
            .map(|k| to_json(&k.to_wire()))
            .transpose()
    }

    #[wasm_bindgen(js_name = markKeysPublished)]
    pub fn mark_keys_published(&mut self) {
        self.inner.mark_keys_published();
    }

    /// `user`'s COMPLETE device list: a JSON array of tern-wire `DeviceKeys` (the devices of a
    /// `key_bundle` answer that belong to `user`; `[]` when it has none). Returns trust events
    /// `[{type: new_device|identity_changed|device_removed|invalid_keys, user, device,
    /// reason?}]` to show.
    #[wasm_bindgen(js_name = onDeviceList)]
    pub fn on_device_list(
        &mut self,
        user: &str,
        devices_json: &str,
        now_ms: f64,
    ) -> JsResult<String> {
        let user: UserId = parse(user, "user id")?;
        let devices: Vec<DeviceKeys> = from_json(devices_json, "device keys list")?;
        if let Some(other) = devices.iter().find(|d| d.user != user) {
            return Err(fail(format!(
                "device list of {user} holds a device of {}",
                other.user
            )));
        }
        let published: Vec<PublishedKeys> = devices.iter().map(published_from_wire).collect();
        let events = self
            .inner
            .on_device_list(user, &published, ms(now_ms)?)
            .map_err(crypto_err)?;
        to_json(&events.iter().map(trust_event).collect::<Vec<_>>())
    }

    /// A `device_list_changed` push for `user`: its list is queried again before the next
    /// send to a conversation it is in.
    #[wasm_bindgen(js_name = markDeviceListStale)]
    pub fn mark_device_list_stale(&mut self, user: &str) -> JsResult<()> {
        self.inner.mark_device_list_stale(parse(user, "user id")?);
        Ok(())
    }

    /// `members_json`: array of user ids. Returns `{query_users: [user], claim: [{user,
    /// device}]}`: what to fetch before `encrypt`. (`SendPlan` runs the whole loop.)
    pub fn prepare(
        &mut self,
        conversation: &str,
        members_json: &str,
        now_ms: f64,
    ) -> JsResult<String> {
        let members: Vec<UserId> = from_json(members_json, "member list")?;
        let needs = self
            .inner
            .prepare(
                parse(conversation, "conversation id")?,
                &members,
                ms(now_ms)?,
            )
            .map_err(crypto_err)?;
        Ok(json!({"query_users": needs.query_users, "claim": pairs(&needs.claim)}).to_string())
    }

    /// `bundles_json`: array of claimed tern-wire `DeviceKeys` (a `key_bundle` answer's
    /// `devices`). Returns the bundles that made no Olm session: `[{user, device, reason}]`.
    #[wasm_bindgen(js_name = onClaimed)]
    pub fn on_claimed(&mut self, bundles_json: &str) -> JsResult<String> {
        let bundles: Vec<DeviceKeys> = from_json(bundles_json, "claimed device keys list")?;
        let bundles: Vec<PublishedKeys> = bundles.iter().map(published_from_wire).collect();
        let problems: Vec<Value> = self
            .inner
            .on_claimed(&bundles)
            .iter()
            .map(|p| json!({"user":p.user,"device":p.device,"reason":p.reason}))
            .collect();
        to_json(&problems)
    }

    /// `user` left or was removed from `conversation` (`member_removed`): the next message
    /// rotates the session.
    #[wasm_bindgen(js_name = onMemberRemoved)]
    pub fn on_member_removed(&mut self, conversation: &str, user: &str) -> JsResult<()> {
        self.inner.on_member_removed(
            parse(conversation, "conversation id")?,
            parse(user, "user id")?,
        );
        Ok(())
    }

    /// Encrypts a text message (after `prepare` / `SendPlan` for the conversation). Returns
    /// `{content_type, payload (hex), session_id, key_shares: [KeyShareItem {to_user,
    /// to_device, payload (hex)}], missing: [{user, device}]}`. Send `key_shares` first
    /// (`send_key_shares`), then the message with `content_type` and `payload`; pickle before
    /// either leaves (the advanced index must be stored).
    #[wasm_bindgen(js_name = encryptText)]
    pub fn encrypt_text(
        &mut self,
        conversation: &str,
        text: &str,
        now_ms: f64,
    ) -> JsResult<String> {
        self.encrypt_body(conversation, &Body::text(text), now_ms)
    }

    /// Encrypts an outbox entry's `(content_type, payload)`: `"text"` with UTF-8 bytes is a
    /// text body, `"tern.file"` with a valid FileBody JSON a file body (see `files.rs`),
    /// anything else travels as data with its own content type (hidden from the server).
    /// Same result as `encryptText` for text.
    pub fn encrypt(
        &mut self,
        conversation: &str,
        content_type: &str,
        payload: &[u8],
        now_ms: f64,
    ) -> JsResult<String> {
        self.encrypt_body(
            conversation,
            &Body::from_content(content_type, payload),
            now_ms,
        )
    }

    /// A `key_share` from the server (the decoded ServerMessage JSON, or any object with
    /// `from_user`, `from_device` and hex `payload`). Returns events `[{type:
    /// room_key_received|withheld|untrusted_key|unknown_device|rejected, …}]`;
    /// `room_key_received` means messages of that conversation waiting with `NoKeyYet` may now
    /// decrypt. Pickle, then acknowledge the share's `inbox_id` with
    /// `{"type":"ack_key_shares","up_to":0,"ids":[…]}`.
    #[wasm_bindgen(js_name = onKeyShare)]
    pub fn on_key_share(&mut self, share_json: &str, now_ms: f64) -> JsResult<String> {
        let share: InboxShare = from_json(share_json, "key share")?;
        let events = self.inner.on_key_share(
            share.from_user,
            share.from_device,
            &share.payload,
            ms(now_ms)?,
        );
        to_json(&events.iter().map(crypto_event).collect::<Vec<_>>())
    }

    /// `message_json`: tern-wire `Message` JSON (hex payload, e.g. a `deliver`'s `message`).
    /// Returns `{text, data: {content_type, data (hex)} | null, sender_user, sender_device,
    /// trust: verified|unverified|changed, session_id, message_index}` or, when it cannot be
    /// read (yet), `{error: NoKeyYet|Withheld|UntrustedDevice|Tampered|Replayed|
    /// WrongConversation|Unsupported, reason}`. Malformed JSON throws.
    pub fn decrypt(&mut self, message_json: &str) -> JsResult<String> {
        let message: Message = from_json(message_json, "message")?;
        Ok(decrypted_json(&self.inner.decrypt(&message)).to_string())
    }

    /// The 60-digit safety number with `other` (12 groups of 5 digits), or `undefined` when
    /// its devices are not known yet (query them first).
    #[wasm_bindgen(js_name = safetyNumber)]
    pub fn safety_number(&self, other: &str) -> JsResult<Option<String>> {
        Ok(self.inner.safety_number(parse::<UserId>(other, "user id")?))
    }

    // ------------------------------------------------------------------ trust store

    /// The trust store's devices of `user` (pass this user's own id for "my devices"):
    /// `[{user, device, trust: verified|unverified|changed, blocked, fingerprint,
    /// first_seen_ms, previous_identities}]`, sorted by device; `[]` when the user's list was
    /// never fetched. `trust: "changed"` is the identity-change warning to show.
    #[wasm_bindgen(js_name = deviceList)]
    pub fn device_list(&self, user: &str) -> JsResult<String> {
        let devices: Vec<Value> = self
            .inner
            .device_list(parse(user, "user id")?)
            .into_iter()
            .map(|d| {
                json!({"user": d.user, "device": d.device, "trust": d.trust,
                    "blocked": d.blocked, "fingerprint": d.fingerprint,
                    "first_seen_ms": d.first_seen_ms,
                    "previous_identities": d.previous_identities})
            })
            .collect();
        to_json(&devices)
    }

    /// The user compared the safety number with `user`: every known device of `user` becomes
    /// verified. Returns false when none is known (query first). Pickle afterwards.
    #[wasm_bindgen(js_name = markUserVerified)]
    pub fn mark_user_verified(&mut self, user: &str) -> JsResult<bool> {
        Ok(self.inner.mark_user_verified(parse(user, "user id")?))
    }

    /// Marks one device verified (its fingerprint was compared); false when unknown.
    #[wasm_bindgen(js_name = markDeviceVerified)]
    pub fn mark_device_verified(&mut self, user: &str, device: &str) -> JsResult<bool> {
        Ok(self
            .inner
            .mark_device_verified(parse(user, "user id")?, parse(device, "device id")?))
    }

    /// Blocks a device: it gets no more keys (a `withheld` notice instead) and its messages
    /// show as `UntrustedDevice`. False when unknown.
    #[wasm_bindgen(js_name = blockDevice)]
    pub fn block_device(&mut self, user: &str, device: &str) -> JsResult<bool> {
        Ok(self
            .inner
            .block_device(parse(user, "user id")?, parse(device, "device id")?))
    }

    // ------------------------------------------------------------------ key backup

    /// Starts a new backup protected by `passphrase`: returns the `PUT /api/v1/keys/backup`
    /// body `{version, meta (base64)}`. Then upload `backupExportSessions` until it is empty.
    /// Slow on purpose (argon2id, ~19 MiB): run it in a worker or show progress.
    #[wasm_bindgen(js_name = backupCreate)]
    pub fn backup_create(&mut self, passphrase: &str, now_ms: f64) -> JsResult<String> {
        if passphrase.is_empty() {
            return Err(fail("the backup passphrase is empty"));
        }
        let (version, meta) = self
            .inner
            .backup_create(passphrase, ms(now_ms)?)
            .map_err(crypto_err)?;
        to_json(&KeyBackup {
            version,
            meta: B64.encode(meta),
        })
    }

    /// The backup version this device holds the key of, or `undefined`.
    #[wasm_bindgen(js_name = backupVersion)]
    pub fn backup_version(&self) -> Option<String> {
        self.inner.backup_version().map(str::to_string)
    }

    /// Up to 1,000 sessions not yet backed up, as the `PUT /api/v1/keys/backup/sessions` body
    /// `{version, sessions: [{conversation, session_id, data (base64)}]}`; `sessions` is empty
    /// when everything is uploaded. After the server stored them call `backupMarkUploaded`
    /// with their `session_id`s. Throws when no backup key is set.
    #[wasm_bindgen(js_name = backupExportSessions)]
    pub fn backup_export_sessions(&self) -> JsResult<String> {
        let version = self
            .inner
            .backup_version()
            .ok_or_else(|| crypto_err(CryptoError::NoBackup))?
            .to_string();
        let sessions = self
            .inner
            .backup_export_sessions()
            .map_err(crypto_err)?
            .into_iter()
            .map(|e| BackupSessionView {
                conversation: e.conversation,
                session_id: e.session_id,
                data: B64.encode(&e.data),
            })
            .collect();
        to_json(&PutBackupSessions { version, sessions })
    }

    /// `session_ids_json`: array of session id strings the server stored.
    #[wasm_bindgen(js_name = backupMarkUploaded)]
    pub fn backup_mark_uploaded(&mut self, session_ids_json: &str) -> JsResult<()> {
        let ids: Vec<String> = from_json(session_ids_json, "session id list")?;
        self.inner.backup_mark_uploaded(&ids);
        Ok(())
    }

    /// Derives the recovery key from `passphrase` and checks it against the backup header
    /// (`GET /api/v1/keys/backup` answer `{version, meta}`). A wrong passphrase throws an
    /// `Error` whose `name` is `WrongPassphraseError` and changes nothing.
    #[wasm_bindgen(js_name = backupUnlock)]
    pub fn backup_unlock(&mut self, passphrase: &str, backup_json: &str) -> JsResult<()> {
        let header: KeyBackup = from_json(backup_json, "key backup")?;
        let meta = B64
            .decode(&header.meta)
            .map_err(|_| fail("backup meta is not base64"))?;
        self.inner
            .backup_unlock(passphrase, &header.version, &meta)
            .map_err(crypto_err)
    }

    /// `backupUnlock` + `backupImport` of one page in one call (a new device restoring). Same
    /// errors; a wrong passphrase imports nothing.
    #[wasm_bindgen(js_name = backupRestore)]
    pub fn backup_restore(
        &mut self,
        passphrase: &str,
        backup_json: &str,
        page_json: &str,
        now_ms: f64,
    ) -> JsResult<String> {
        // Parse everything first: malformed input changes nothing.
        from_json::<BackupSessionPage>(page_json, "backup session page")?;
        self.backup_unlock(passphrase, backup_json)?;
        self.backup_import(page_json, now_ms)
    }

    /// Imports one page of `GET /api/v1/keys/backup/sessions` (`{sessions, next_after}`) after
    /// `backupUnlock`. Returns `{imported, already_known, invalid}`.
    #[wasm_bindgen(js_name = backupImport)]
    pub fn backup_import(&mut self, page_json: &str, now_ms: f64) -> JsResult<String> {
        let page: BackupSessionPage = from_json(page_json, "backup session page")?;
        let mut entries = Vec::with_capacity(page.sessions.len());
        for s in page.sessions {
            let data = B64
                .decode(&s.data)
                .map_err(|_| fail(format!("backup session {} is not base64", s.session_id)))?;
            entries.push(BackupEntry {
                conversation: s.conversation,
                session_id: s.session_id,
                data,
            });
        }
        let report = self
            .inner
            .backup_import(&entries, ms(now_ms)?)
            .map_err(crypto_err)?;
        Ok(
            json!({"imported": report.imported, "already_known": report.already_known,
            "invalid": report.invalid})
            .to_string(),
        )
    }
}

impl Machine {
    fn encrypt_body(&mut self, conversation: &str, body: &Body, now_ms: f64) -> JsResult<String> {
        let conversation: ConversationId = parse(conversation, "conversation id")?;
        let out = self
            .inner
            .encrypt(conversation, body, ms(now_ms)?)
            .map_err(crypto_err)?;
        let shares: Vec<KeyShareItem> = out
            .key_shares
            .into_iter()
            .map(|s| KeyShareItem {
                to_user: s.to_user,
                to_device: s.to_device,
                payload: s.payload,
            })
            .collect();
        Ok(
            json!({"content_type": out.content_type, "payload": hex::encode(&out.payload),
            "session_id": out.session_id, "key_shares": shares, "missing": pairs(&out.missing)})
            .to_string(),
        )
    }
}
