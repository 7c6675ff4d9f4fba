//! wasm-bindgen bindings over [`tern_core::crypto::CryptoMachine`].
//!
//! The JavaScript surface is deliberately small and string-typed: ids are UUID strings, byte
//! fields are `Uint8Array` (pickles, key-share payloads) or base64 inside JSON, structured
//! values are JSON strings (`PublishedKeys` uses tern-core's serde shape, messages use
//! tern-wire's `Message` JSON with a hex payload). Times are JS numbers of milliseconds.
//! Every failure is a thrown `Error` with the core's message; undecryptable messages are not
//! errors but `{"error":"NoKeyYet"|...}` results so the UI can show the reason.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tern_core::crypto::{
    Body, CryptoConfig, CryptoEvent, CryptoMachine, PublishedKeys, TrustEvent, Undecryptable,
};
use tern_wire::ids::{DeviceId, UserId};

use tern_wire::msg::Message;
use wasm_bindgen::prelude::*;

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, JsError> {
    s.parse()
        .map_err(|_| JsError::new(&format!("invalid {what}: {s}")))
}

fn ms(now_ms: f64) -> Result<u64, JsError> {
    if now_ms.is_finite() && now_ms >= 0.0 {
        Ok(now_ms as u64)
    } else {
        Err(JsError::new("now_ms must be a non-negative number"))
    }
}

fn key32(key: &[u8]) -> Result<[u8; 32], JsError> {
    key.try_into()
        .map_err(|_| JsError::new("pickle key must be 32 bytes"))
}

fn trust_event(e: &TrustEvent) -> Value {
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

fn crypto_event(e: &CryptoEvent) -> Value {
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
        other => json!({"error": format!("{other:?}")}),
    }
}

/// One device's crypto state.
#[wasm_bindgen]
pub struct Machine {
    inner: CryptoMachine,
}

#[wasm_bindgen]
impl Machine {
    /// A new device identity with the default config.
    #[wasm_bindgen(constructor)]
    pub fn new(user: &str, device: &str) -> Result<Machine, JsError> {
        Self::with_config(user, device, "{}")
    }

    /// A new device identity; `config_json` overrides fields of the default `CryptoConfig`.
    pub fn with_config(user: &str, device: &str, config_json: &str) -> Result<Machine, JsError> {
        let mut config = serde_json::to_value(CryptoConfig::default()).map_err(err)?;
        let overrides: Value = serde_json::from_str(config_json).map_err(err)?;
        if let (Some(base), Some(over)) = (config.as_object_mut(), overrides.as_object()) {
            for (k, v) in over {
                base.insert(k.clone(), v.clone());
            }
        }
        let config: CryptoConfig = serde_json::from_value(config).map_err(err)?;
        let inner =
            CryptoMachine::new(parse(user, "user id")?, parse(device, "device id")?, config)
                .map_err(err)?;
        Ok(Machine { inner })
    }

    /// Opens a pickle made by this crate or by the native core (same format).
    pub fn unpickle(sealed: &[u8], pickle_key: &[u8]) -> Result<Machine, JsError> {
        let inner = CryptoMachine::from_pickle(sealed, &key32(pickle_key)?).map_err(err)?;
        Ok(Machine { inner })
    }

    pub fn pickle(&self, pickle_key: &[u8]) -> Result<Vec<u8>, JsError> {
        self.inner.pickle(&key32(pickle_key)?).map_err(err)
    }

    pub fn user_id(&self) -> String {
        self.inner.user_id().to_string()
    }

    pub fn device_id(&self) -> String {
        self.inner.device_id().to_string()
    }

    pub fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }

    /// `PublishedKeys` JSON, or `undefined` when nothing needs publishing.
    pub fn keys_to_publish(&mut self, one_time_keys_left: u32) -> Result<Option<String>, JsError> {
        self.inner
            .keys_to_publish(one_time_keys_left)
            .map(|k| serde_json::to_string(&k).map_err(err))
            .transpose()
    }

    pub fn mark_keys_published(&mut self) {
        self.inner.mark_keys_published();
    }

    /// `devices_json`: array of `PublishedKeys`. Returns trust events JSON.
    pub fn on_device_list(
        &mut self,
        user: &str,
        devices_json: &str,
        now_ms: f64,
    ) -> Result<String, JsError> {
        let devices: Vec<PublishedKeys> = serde_json::from_str(devices_json).map_err(err)?;
        let events = self
            .inner
            .on_device_list(parse(user, "user id")?, &devices, ms(now_ms)?)
            .map_err(err)?;
        Ok(Value::from(events.iter().map(trust_event).collect::<Vec<_>>()).to_string())
    }

    /// `members_json`: array of user id strings. Returns `{query_users, claim:[{user,device}]}`.
    pub fn prepare(
        &mut self,
        conversation: &str,
        members_json: &str,
        now_ms: f64,
    ) -> Result<String, JsError> {
        let members: Vec<UserId> = serde_json::from_str(members_json).map_err(err)?;
        let needs = self
            .inner
            .prepare(
                parse(conversation, "conversation id")?,
                &members,
                ms(now_ms)?,
            )
            .map_err(err)?;
        let claim: Vec<Value> = needs
            .claim
            .iter()
            .map(|(u, d)| json!({"user":u,"device":d}))
            .collect();
        Ok(json!({"query_users": needs.query_users, "claim": claim}).to_string())
    }

    /// `bundles_json`: array of claimed `PublishedKeys`. Returns problems JSON.
    pub fn on_claimed(&mut self, bundles_json: &str) -> Result<String, JsError> {
        let bundles: Vec<PublishedKeys> = serde_json::from_str(bundles_json).map_err(err)?;
        let problems: Vec<Value> = self
            .inner
            .on_claimed(&bundles)
            .iter()
            .map(|p| json!({"user":p.user,"device":p.device,"reason":p.reason}))
            .collect();
        Ok(Value::from(problems).to_string())
    }

    /// Encrypts a text message. Returns `{content_type, payload (base64), session_id,
    /// key_shares:[{to_user,to_device,payload (base64)}], missing:[{user,device}]}`.
    pub fn encrypt_text(
        &mut self,
        conversation: &str,
        text: &str,
        now_ms: f64,
    ) -> Result<String, JsError> {
        let out = self
            .inner
            .encrypt(
                parse(conversation, "conversation id")?,
                &Body::text(text),
                ms(now_ms)?,
            )
            .map_err(err)?;
        let shares: Vec<Value> = out
            .key_shares
            .iter()
            .map(|s| json!({"to_user":s.to_user,"to_device":s.to_device,"payload":B64.encode(&s.payload)}))
            .collect();
        let missing: Vec<Value> = out
            .missing
            .iter()
            .map(|(u, d)| json!({"user":u,"device":d}))
            .collect();
        Ok(
            json!({"content_type": out.content_type, "payload": B64.encode(&out.payload),
            "session_id": out.session_id, "key_shares": shares, "missing": missing})
            .to_string(),
        )
    }

    /// A key share payload from the server's inbox. Returns events JSON.
    pub fn on_key_share(
        &mut self,
        from_user: &str,
        from_device: &str,
        payload: &[u8],
        now_ms: f64,
    ) -> Result<String, JsError> {
        let from_user: UserId = parse(from_user, "user id")?;
        let from_device: DeviceId = parse(from_device, "device id")?;
        let events = self
            .inner
            .on_key_share(from_user, from_device, payload, ms(now_ms)?);
        Ok(Value::from(events.iter().map(crypto_event).collect::<Vec<_>>()).to_string())
    }

    /// `message_json`: tern-wire `Message` JSON (payload hex). Returns `{text, sender_user,
    /// sender_device, trust, session_id, message_index}` or `{error: "<reason>"}`.
    pub fn decrypt(&mut self, message_json: &str) -> Result<String, JsError> {
        let message: Message = serde_json::from_str(message_json).map_err(err)?;
        Ok(match self.inner.decrypt(&message) {
            Ok(d) => {
                let (text, data) = match &d.body {
                    Body::Text { text } => (Some(text), None),
                    Body::Data { content_type, data } => (None, Some(json!({"content_type": content_type, "data": B64.encode(data)}))),
                };
                json!({"text": text, "data": data, "sender_user": d.sender_user, "sender_device": d.sender_device,
                    "trust": d.trust, "session_id": d.session_id, "message_index": d.message_index})
            }
            Err(u) => undecryptable(&u),
        }
        .to_string())
    }

    /// The 60-digit safety number with `other`, or `undefined` if its devices are unknown.
    pub fn safety_number(&self, other: &str) -> Result<Option<String>, JsError> {
        Ok(self.inner.safety_number(parse::<UserId>(other, "user id")?))
    }
}
