//! End-to-end encryption for the CLI: where the device's crypto state lives, and a short-lived
//! connection that brings the key state up to date (publishes this device's keys, takes the key
//! shares waiting in its inbox, looks up unknown senders) before history is decrypted or a
//! contact is verified.
//!
//! Files (all 0600 in a 0700 directory under the CLI home): `crypto/pickle.key` (32 random
//! bytes) and `crypto/<user>.<device>.state` (the sealed state: identity keys, Olm and Megolm
//! sessions, trust store). Anyone who can read both as this OS user can read the messages this
//! device could read: the same boundary as the token in `state.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use tern_sdk::tern_core::crypto::CryptoConfig;
use tern_sdk::tern_wire::ids::DeviceId;
use tern_sdk::tern_wire::msg::{Cursor, Message};
use tern_sdk::{Config, Connection, E2e, Event, UndecryptableMessage};

use crate::state::Session;

/// Test-only switch (honoured only by debug builds): send plaintext, so a test can show that
/// its scan of the server's data directory does find plaintext when it is there.
pub fn plaintext_for_tests() -> bool {
    cfg!(debug_assertions) && std::env::var("TERN_TEST_PLAINTEXT").as_deref() == Ok("1")
}

fn crypto_dir(home: &Path) -> Result<PathBuf> {
    let dir = home.join("crypto");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

/// Opens this device's crypto state (a new identity on first use).
pub fn open(home: &Path, session: &Session, device: DeviceId) -> Result<E2e> {
    let dir = crypto_dir(home)?;
    let key = tern_sdk::e2e::load_or_create_pickle_key(&dir.join("pickle.key"))?;
    let store =
        tern_sdk::FileCryptoStore::new(dir.join(format!("{}.{device}.state", session.user_id)));
    let mut e2e = E2e::open(
        session.user_id,
        device,
        Box::new(store),
        key,
        CryptoConfig::default(),
    )?;
    if plaintext_for_tests() {
        eprintln!("-- TERN_TEST_PLAINTEXT=1: messages are sent WITHOUT end-to-end encryption");
        e2e.set_plaintext_for_tests(true);
    }
    Ok(e2e)
}

/// Connects, publishes this device's keys when needed, and handles everything up to the end of
/// resume replay: key shares (acknowledged once stored), device-list changes. Messages are not
/// acknowledged (the chat's cursors stay where they are). Returns the open connection.
pub async fn sync(
    config: &Config,
    session: &Session,
    device: DeviceId,
    cursors: &[Cursor],
    e2e: &mut E2e,
) -> Result<Connection> {
    let mut conn = Connection::connect(config, &session.token, device, cursors).await?;
    e2e.publish_keys(&conn, conn.welcome().one_time_keys_left)
        .await?;
    let deadline = tokio::time::Instant::now() + config.request_timeout;
    loop {
        let event = tokio::time::timeout_at(deadline, conn.next_event())
            .await
            .context("waiting for the server to finish sending keys")?
            .context("the connection closed while syncing keys")?;
        match event {
            Event::SyncComplete => break,
            Event::Other(m) => {
                e2e.on_server_message(&m)?;
            }
            _ => {}
        }
    }
    for ack in e2e.take_inbox_ack() {
        conn.send_message(&ack).await?;
    }
    Ok(conn)
}

/// Decrypts history messages; senders whose devices this device has not looked up yet are
/// looked up once, then their messages retried.
pub async fn decrypt_all(
    e2e: &mut E2e,
    conn: &Connection,
    messages: Vec<Message>,
) -> Result<Vec<std::result::Result<Message, UndecryptableMessage>>> {
    Ok(e2e.decrypt_history(conn, messages).await?)
}

/// One line saying why a message cannot be shown.
pub fn why(u: &UndecryptableMessage) -> String {
    use tern_sdk::tern_core::crypto::Undecryptable as U;
    let hint = match &u.reason {
        U::NoKeyYet => "; it may still arrive, or restore a key backup: tern-cli backup restore",
        U::UntrustedDevice => "; the sender's device is not in their device list",
        _ => "",
    };
    format!("<cannot decrypt: {}{hint}>", u.reason)
}

/// The first 16 characters of a base64 identity key, grouped for reading aloud.
pub fn short_fingerprint(identity_b64: &str) -> String {
    identity_b64
        .chars()
        .take(16)
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn trust_label(trust: Option<tern_sdk::tern_core::crypto::Trust>) -> &'static str {
    use tern_sdk::tern_core::crypto::Trust as T;
    match trust {
        Some(T::Verified) => "verified",
        Some(T::Unverified) => "not verified (trusted on first use)",
        Some(T::Changed) => "IDENTITY CHANGED since first seen: verify again",
        None => "unknown",
    }
}

/// A crypto notice as one line for the terminal.
pub fn notice(n: &tern_sdk::CryptoNotice) -> String {
    use tern_sdk::tern_core::crypto::{CryptoEvent, TrustEvent};
    match n {
        tern_sdk::CryptoNotice::Trust(TrustEvent::IdentityChanged { user, device }) => format!(
            "WARNING: the identity key of {user}'s device {device} changed; compare safety \
             numbers again (tern-cli verify)"
        ),
        tern_sdk::CryptoNotice::Trust(TrustEvent::NewDevice { user, device }) => {
            format!("{user} has a new device {device}")
        }
        tern_sdk::CryptoNotice::Trust(TrustEvent::DeviceRemoved { user, device }) => {
            format!("{user}'s device {device} was removed")
        }
        tern_sdk::CryptoNotice::Trust(TrustEvent::InvalidKeys {
            user,
            device,
            reason,
        }) => {
            format!("ignored {user}'s device {device}: its keys are invalid ({reason})")
        }
        tern_sdk::CryptoNotice::Key(CryptoEvent::UntrustedKey { user, device }) => format!(
            "refused a message key from {user}'s device {device}: it does not match their published identity"
        ),
        tern_sdk::CryptoNotice::Key(e) => format!("{e:?}"),
    }
}
