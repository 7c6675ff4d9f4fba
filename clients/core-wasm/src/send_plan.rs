//! `SendPlan`: one send's preparation (tern-core's [`CoreSendPlan`]: query stale device lists,
//! claim keys for devices without an Olm session, bounded rounds) plus the handling of the key
//! directory's answers the native SDK does in `e2e/requests.rs`: complete lists per user,
//! users and targets a full answer left out asked again, requests sized to the frame.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use tern_core::crypto::send_plan::{
    claim_batch_devices, claim_batches, query_batches, share_batches,
};
use tern_core::crypto::{PublishedKeys, SendPlan as CoreSendPlan, SendStep};
use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::msg::{ClaimTarget, DeviceKeys, KeyShareItem};
use wasm_bindgen::prelude::*;

use crate::js::{JsResult, err, fail, from_json, ms, parse, to_json};
use crate::machine::{Machine, published_from_wire, trust_event};

/// The fields of a `key_bundle` answer the plan reads (the decoded message can be passed as
/// it is).
#[derive(Deserialize)]
struct KeyBundle {
    devices: Vec<DeviceKeys>,
    #[serde(default)]
    unanswered: Vec<UserId>,
}

fn key_bundle(json: &str) -> JsResult<KeyBundle> {
    let value: Value = from_json(json, "key_bundle")?;
    match value.get("type").and_then(Value::as_str) {
        None | Some("key_bundle") => {}
        Some("error") => {
            return Err(fail(format!(
                "the key directory refused: {}: {}",
                value.get("code").and_then(Value::as_str).unwrap_or("?"),
                value.get("message").and_then(Value::as_str).unwrap_or("")
            )));
        }
        Some(other) => return Err(fail(format!("expected key_bundle, got {other}"))),
    }
    serde_json::from_value(value).map_err(|e| fail(format!("invalid key_bundle JSON: {e}")))
}

/// Prepares one send to a conversation. Flow (`step = JSON.parse(plan.next(machine, now))`):
/// * `{step: "query", batches: [[user]]}`: send `{type: "query_keys", request_id, users}` per
///   batch and give each answer to `onQueryAnswer(machine, users, answer, now)`; ask again for
///   the users it returns; then `next` again.
/// * `{step: "claim", batches: [[ClaimTarget {user, devices}]]}`: send `{type:
///   "claim_keys_batch", request_id, targets}` per batch, each answer to
///   `onClaimAnswer(machine, targets, answer)`; claim again what it returns; then `next`.
/// * `{step: "ready"}`: `machine.encrypt…`, pickle, upload the key shares in
///   `shareBatches(…)`, then send the message.
///
/// Throws when the device lists stay stale after 3 queries, or the machine refuses the
/// conversation (more than 10,000 members).
#[wasm_bindgen]
pub struct SendPlan {
    inner: CoreSendPlan,
    max_frame_bytes: usize,
}

#[wasm_bindgen]
impl SendPlan {
    /// `members_json`: the conversation's member user ids; `max_frame_bytes`: the Welcome's
    /// `max_frame_bytes` (claim batches are sized so the answer fits one frame).
    #[wasm_bindgen(constructor)]
    pub fn new(conversation: &str, members_json: &str, max_frame_bytes: u32) -> JsResult<SendPlan> {
        let conversation: ConversationId = parse(conversation, "conversation id")?;
        let members: Vec<UserId> = from_json(members_json, "member list")?;
        if max_frame_bytes == 0 {
            return Err(fail("maxFrameBytes must be at least 1"));
        }
        Ok(SendPlan {
            inner: CoreSendPlan::new(conversation, members),
            max_frame_bytes: max_frame_bytes as usize,
        })
    }

    /// The next step (see the class docs).
    pub fn next(&mut self, machine: &mut Machine, now_ms: f64) -> JsResult<String> {
        let step = self
            .inner
            .next(&mut machine.inner, ms(now_ms)?)
            .map_err(err)?;
        let out = match step {
            SendStep::Query(users) => json!({"step": "query", "batches": query_batches(&users)}),
            SendStep::Claim(devices) => json!({"step": "claim",
                "batches": claim_batches(&devices, claim_batch_devices(self.max_frame_bytes))}),
            SendStep::Ready => json!({"step": "ready"}),
        };
        to_json(&out)
    }

    /// The answer to `{type: "query_keys", users}` (`asked_json`: those users; `answer_json`:
    /// the decoded `key_bundle`). Every answered user's complete list goes to the machine
    /// (an answered user with no device gets an empty list). Returns `{events: [trust
    /// events], retry: [user]}`: ask again for `retry` (the frame was full). Throws for an
    /// `error` answer or one that answered nobody (no progress: never a loop).
    #[wasm_bindgen(js_name = onQueryAnswer)]
    pub fn on_query_answer(
        &mut self,
        machine: &mut Machine,
        asked_json: &str,
        answer_json: &str,
        now_ms: f64,
    ) -> JsResult<String> {
        let asked: Vec<UserId> = from_json(asked_json, "asked users")?;
        let answer = key_bundle(answer_json)?;
        let now = ms(now_ms)?;
        if !asked.is_empty() && answer.unanswered.len() >= asked.len() {
            return Err(fail("query_keys answer left every user unanswered"));
        }
        let mut lists: BTreeMap<UserId, Vec<PublishedKeys>> = asked
            .iter()
            .filter(|u| !answer.unanswered.contains(u))
            .map(|u| (*u, Vec::new()))
            .collect();
        for d in &answer.devices {
            if let Some(list) = lists.get_mut(&d.user) {
                list.push(published_from_wire(d));
            }
        }
        let mut events = Vec::new();
        for (user, list) in lists {
            let evs = machine
                .inner
                .on_device_list(user, &list, now)
                .map_err(err)?;
            events.extend(evs.iter().map(trust_event));
        }
        let retry: Vec<UserId> = asked
            .into_iter()
            .filter(|u| answer.unanswered.contains(u))
            .collect();
        to_json(&json!({"events": events, "retry": retry}))
    }

    /// The answer to `{type: "claim_keys_batch", targets}` (`targets_json`: those targets;
    /// `answer_json`: the decoded `key_bundle`). The claimed bundles go to the machine.
    /// Returns `{problems: [{user, device, reason}], retry: [ClaimTarget]}`: claim `retry`
    /// again (no key of theirs was consumed). Throws for an `error` answer or one that
    /// answered no target.
    #[wasm_bindgen(js_name = onClaimAnswer)]
    pub fn on_claim_answer(
        &mut self,
        machine: &mut Machine,
        targets_json: &str,
        answer_json: &str,
    ) -> JsResult<String> {
        let targets: Vec<ClaimTarget> = from_json(targets_json, "claim targets")?;
        let answer = key_bundle(answer_json)?;
        let retry: Vec<ClaimTarget> = targets
            .iter()
            .filter(|t| answer.unanswered.contains(&t.user))
            .cloned()
            .collect();
        if !targets.is_empty() && retry.len() >= targets.len() {
            return Err(fail("claim_keys_batch answer left every target unanswered"));
        }
        let asked: Vec<(UserId, DeviceId)> = targets
            .iter()
            .flat_map(|t| t.devices.iter().map(|d| (t.user, *d)))
            .collect();
        // Only bundles of devices that were asked for make Olm sessions.
        let bundles: Vec<PublishedKeys> = answer
            .devices
            .iter()
            .filter(|d| asked.contains(&(d.user, d.device)))
            .map(published_from_wire)
            .collect();
        let problems: Vec<Value> = machine
            .inner
            .on_claimed(&bundles)
            .iter()
            .map(|p| json!({"user": p.user, "device": p.device, "reason": p.reason}))
            .collect();
        to_json(&json!({"problems": problems, "retry": retry}))
    }

    /// Query rounds so far (at most 3) and claim rounds so far (at most 2).
    pub fn queries(&self) -> usize {
        self.inner.queries()
    }

    pub fn claims(&self) -> usize {
        self.inner.claims()
    }
}

/// Splits an encrypt result's `key_shares` (`[KeyShareItem]`) into `send_key_shares` batches
/// that each fit one frame of `max_frame_bytes`: `[[KeyShareItem]]`, in order.
#[wasm_bindgen(js_name = shareBatches)]
pub fn share_batches_of(key_shares_json: &str, max_frame_bytes: u32) -> JsResult<String> {
    let shares: Vec<KeyShareItem> = from_json(key_shares_json, "key shares")?;
    let sizes: Vec<usize> = shares.iter().map(|s| s.payload.len()).collect();
    let batches: Vec<&[KeyShareItem]> = share_batches(&sizes, max_frame_bytes as usize)
        .into_iter()
        .map(|r| &shares[r])
        .collect();
    to_json(&batches)
}
