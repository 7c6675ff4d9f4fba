//! `Reconnect` and `Backoff`: when to try connecting again (tern-core's schedule: full-jitter
//! exponential backoff, reset after a connection that stayed up, `GoingAway` as a floor), and
//! which connect failures end the loop.

use std::time::Duration;

use serde::Deserialize;
use tern_core::protocol::reconnect::{self, connect_failure_is_permanent};
use tern_core::{Backoff as CoreBackoff, BackoffPolicy};
use wasm_bindgen::prelude::*;

use super::failure::parse_failure;
use crate::js::{JsResult, fail, from_json, ms, num, uint};

/// `{base_ms, cap_ms, reset_after_ms}`, every field optional (defaults 250, 30000, 10000).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyJson {
    base_ms: Option<u64>,
    cap_ms: Option<u64>,
    reset_after_ms: Option<u64>,
}

fn policy(policy_json: Option<String>) -> JsResult<BackoffPolicy> {
    let mut policy = BackoffPolicy::default();
    let Some(json) = policy_json else {
        return Ok(policy);
    };
    let p: PolicyJson = from_json(&json, "backoff policy")?;
    if let Some(v) = p.base_ms {
        policy.base = Duration::from_millis(v);
    }
    if let Some(v) = p.cap_ms {
        policy.cap = Duration::from_millis(v);
    }
    if let Some(v) = p.reset_after_ms {
        policy.reset_after = Duration::from_millis(v);
    }
    if policy.base.is_zero() || policy.cap < policy.base {
        return Err(fail(format!(
            "backoff policy needs 0 < base_ms <= cap_ms, got base_ms {} and cap_ms {}",
            policy.base.as_millis(),
            policy.cap.as_millis()
        )));
    }
    Ok(policy)
}

/// A schedule seeded by the page (`seed`: an integer, for reproducible tests) or at random.
fn backoff(policy_json: Option<String>, seed: Option<f64>) -> JsResult<CoreBackoff> {
    let policy = policy(policy_json)?;
    Ok(match seed {
        Some(s) => CoreBackoff::new(policy, uint(s, "seed")?),
        None => CoreBackoff::random(policy),
    })
}

fn millis(d: Duration) -> f64 {
    num(d.as_millis().min(u64::MAX as u128) as u64)
}

/// Connect failures that retrying cannot fix (bad or revoked token, the device bound to
/// another user, an unsupported version, local setup): stop reconnecting and ask the user.
/// `failure_json`: a `{"kind": …}` failure or the server's `error` message (e.g. the answer
/// to the Hello).
#[wasm_bindgen(js_name = isPermanentConnectFailure)]
pub fn is_permanent_connect_failure(failure_json: &str) -> JsResult<bool> {
    Ok(connect_failure_is_permanent(
        &parse_failure(failure_json)?.0,
    ))
}

/// Exponential backoff with full jitter (attempt n waits uniformly in `[0, min(cap, base ·
/// 2^n)]`).
#[wasm_bindgen]
pub struct Backoff {
    inner: CoreBackoff,
}

#[wasm_bindgen]
impl Backoff {
    /// `policy_json`: `{base_ms, cap_ms, reset_after_ms}` (each optional) or `undefined`.
    #[wasm_bindgen(constructor)]
    pub fn new(policy_json: Option<String>, seed: Option<f64>) -> JsResult<Backoff> {
        Ok(Backoff {
            inner: backoff(policy_json, seed)?,
        })
    }

    /// The next delay in ms, advancing the schedule.
    #[wasm_bindgen(js_name = nextDelayMs)]
    pub fn next_delay_ms(&mut self) -> f64 {
        millis(self.inner.next_delay())
    }

    /// The upper bound of the next delay in ms.
    #[wasm_bindgen(js_name = ceilingMs)]
    pub fn ceiling_ms(&self) -> f64 {
        millis(self.inner.ceiling())
    }

    pub fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

/// The reconnect schedule of one client. Flow: `onConnected(now)` at Welcome; when the
/// connection ends `begin(now)`, then before each attempt wait `nextAttemptDelayMs()`; a
/// `going_away` notice: `onGoingAway(retry_after_ms)`. Its backoff is shared with the
/// outbox's rate-limit waits (`Drain.onSendFailed`).
#[wasm_bindgen]
pub struct Reconnect {
    pub(crate) inner: reconnect::Reconnect,
}

#[wasm_bindgen]
impl Reconnect {
    #[wasm_bindgen(constructor)]
    pub fn new(policy_json: Option<String>, seed: Option<f64>) -> JsResult<Reconnect> {
        Ok(Reconnect {
            inner: reconnect::Reconnect::new(backoff(policy_json, seed)?),
        })
    }

    /// A connection came up (Welcome received).
    #[wasm_bindgen(js_name = onConnected)]
    pub fn on_connected(&mut self, now_ms: f64) -> JsResult<()> {
        self.inner.on_connected(ms(now_ms)?);
        Ok(())
    }

    /// The connection ended (idempotent; `begin` calls it too).
    #[wasm_bindgen(js_name = onDisconnected)]
    pub fn on_disconnected(&mut self, now_ms: f64) -> JsResult<()> {
        self.inner.on_disconnected(ms(now_ms)?);
        Ok(())
    }

    /// The server is going away: wait at least `retry_after_ms` before the next attempt.
    #[wasm_bindgen(js_name = onGoingAway)]
    pub fn on_going_away(&mut self, retry_after_ms: u32) {
        self.inner.on_going_away(retry_after_ms);
    }

    /// Starts a run of attempts (resets the schedule if the last connection stayed up long
    /// enough).
    pub fn begin(&mut self, now_ms: f64) -> JsResult<()> {
        self.inner.begin(ms(now_ms)?);
        Ok(())
    }

    /// How long to wait (ms) before the next attempt: 0 for the first attempt after a stable
    /// connection, backoff (and the `GoingAway` floor) otherwise.
    #[wasm_bindgen(js_name = nextAttemptDelayMs)]
    pub fn next_attempt_delay_ms(&mut self) -> f64 {
        millis(self.inner.next_attempt_delay())
    }

    /// How long the last connection stayed up (ms), once it ended; `undefined` otherwise.
    #[wasm_bindgen(js_name = lastUptimeMs)]
    pub fn last_uptime_ms(&self) -> Option<f64> {
        self.inner.last_uptime_ms().map(num)
    }

    /// Attempts since the schedule last reset.
    pub fn attempt(&self) -> u32 {
        self.inner.backoff().attempt()
    }

    /// The upper bound (ms) of the next backoff delay.
    #[wasm_bindgen(js_name = ceilingMs)]
    pub fn ceiling_ms(&self) -> f64 {
        millis(self.inner.backoff().ceiling())
    }
}
