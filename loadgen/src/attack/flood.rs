//! `attack flood` (hidden; started by [`super::bystander`] as a child process): the attacker.
//! (a) wrong-password logins for one username over many keep-alive connections from the
//! attacker's addresses; (b) sends as fast as the server acknowledges them from one socket
//! into the attacker's own 1:1 conversation. Both stop by themselves after `--duration`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId};
use tern_sdk::{Connection, Error as SdkError, TransportPref};
use tokio::io::AsyncWriteExt as _;

use super::probe::lock;
use super::{AttackTarget, Outcome, bounded, bounded_duration, require_loopback};
use crate::cli::{AlpnChoice, FLOOD_TOKEN_ENV, FloodArgs};

/// The wrong password the login flood uses.
pub const WRONG_PASSWORD: &str = "not-the-password-0000";
/// One login answer may take this long (argon2 queueing under the flood) before it counts as
/// an error and the connection is replaced.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginFloodStats {
    pub conns: u64,
    /// Requests written.
    pub tried: u64,
    /// Answers by HTTP status.
    pub by_status: BTreeMap<String, u64>,
    /// Requests that got no answer (write failed, closed, timed out), by message.
    pub errors: BTreeMap<String, u64>,
    /// Connections that could not be opened, by message (retried after 100 ms).
    pub connect_errors: BTreeMap<String, u64>,
    pub reconnects: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SendFloodStats {
    pub inflight: u64,
    pub payload_bytes: u64,
    pub tried: u64,
    pub acked: u64,
    /// Refusals by wire error code (e.g. rate_limited, quota_exceeded).
    pub refused: BTreeMap<String, u64>,
    pub timeouts: u64,
    /// Sends cut by the end of the phase.
    pub unsettled: u64,
    /// Sends that failed because the server closed the socket, by close reason.
    pub closed: BTreeMap<String, u64>,
    pub connects: u64,
    pub errors: BTreeMap<String, u64>,
    pub acked_per_sec: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FloodResult {
    pub duration_secs: f64,
    pub logins: Option<LoginFloodStats>,
    pub sends: Option<SendFloodStats>,
}

pub async fn run(target: &AttackTarget, a: &FloodArgs) -> anyhow::Result<Outcome> {
    for ip in &a.from.0 {
        require_loopback("--from", *ip)?;
    }
    let duration = bounded_duration("--duration", a.duration)?;
    let deadline = tokio::time::Instant::now() + duration;
    let t0 = Instant::now();
    let logins = a.logins_for.clone().map(|user| {
        let conns = bounded("--login-conns", a.login_conns, 1, 10_000);
        let (t, from) = (target.clone(), a.from.0.clone());
        tokio::spawn(async move { login_flood(t, user, conns?, from, deadline).await })
    });
    let sends = match &a.send_conversation {
        Some(conv) => {
            let conversation: ConversationId = conv
                .parse()
                .map_err(|_| super::AttackError::Usage(format!("bad conversation id {conv}")))?;
            let token = std::env::var(FLOOD_TOKEN_ENV).map_err(|_| {
                super::AttackError::Usage(format!("${FLOOD_TOKEN_ENV} must hold the token"))
            })?;
            let inflight = bounded("--inflight", a.inflight, 1, 100_000)?;
            let bytes = bounded("--bytes", a.bytes, 1, 1 << 20)?;
            let t = target.clone();
            let transport = a.transport.sdk();
            Some(tokio::spawn(async move {
                send_flood(t, transport, token, conversation, inflight, bytes, deadline).await
            }))
        }
        None => None,
    };
    let mut r = FloodResult::default();
    if let Some(h) = logins {
        r.logins = Some(h.await??);
    }
    if let Some(h) = sends {
        r.sends = Some(h.await?);
    }
    r.duration_secs = t0.elapsed().as_secs_f64();
    if let Some(s) = &mut r.sends {
        s.acked_per_sec = s.acked as f64 / r.duration_secs.max(1e-9);
    }
    let summary = format!("  attacker: {}\n", serde_json::to_string(&r)?);
    Ok(Outcome {
        result: serde_json::to_value(&r)?,
        summary,
        rss: None,
        healthz: None,
    })
}

async fn login_flood(
    target: AttackTarget,
    username: String,
    conns: usize,
    from: Vec<std::net::IpAddr>,
    deadline: tokio::time::Instant,
) -> Result<LoginFloodStats, super::AttackError> {
    let stats = Arc::new(Mutex::new(LoginFloodStats {
        conns: conns as u64,
        ..LoginFloodStats::default()
    }));
    let request = Arc::new(super::raw::login_request(
        &target.authority,
        &username,
        WRONG_PASSWORD,
        false,
    ));
    let tls = target.tls_with_alpn(AlpnChoice::Http11);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conns {
        let source = from[i % from.len()];
        let (t, tls, st, req) = (target.clone(), tls.clone(), stats.clone(), request.clone());
        tasks.spawn(async move {
            let one = async {
                let mut first = true;
                loop {
                    if !first {
                        lock(&st).reconnects += 1;
                    }
                    first = false;
                    let mut s =
                        match super::raw::tls_from(&t, tls.clone(), source, LOGIN_TIMEOUT).await {
                            Ok(s) => s,
                            Err(e) => {
                                *lock(&st).connect_errors.entry(e).or_default() += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                    let mut buf = Vec::new();
                    loop {
                        lock(&st).tried += 1;
                        if let Err(e) = s.write_all(&req).await {
                            *lock(&st).errors.entry(format!("write: {e}")).or_default() += 1;
                            break;
                        }
                        let answer = tokio::time::timeout(
                            LOGIN_TIMEOUT,
                            super::raw::read_response(&mut s, &mut buf),
                        )
                        .await
                        .unwrap_or_else(|_| Err("timed out".into()));
                        match answer {
                            Ok(r) => {
                                *lock(&st).by_status.entry(r.status.to_string()).or_default() += 1;
                                if !r.reusable {
                                    break;
                                }
                            }
                            Err(e) => {
                                *lock(&st).errors.entry(e).or_default() += 1;
                                break;
                            }
                        }
                    }
                }
            };
            let _ = tokio::time::timeout_at(deadline, one).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    let s = lock(&stats).clone();
    Ok(s)
}

async fn send_flood(
    target: AttackTarget,
    transport: TransportPref,
    token: String,
    conversation: ConversationId,
    inflight: usize,
    bytes: usize,
    deadline: tokio::time::Instant,
) -> SendFloodStats {
    let stats = Arc::new(Mutex::new(SendFloodStats {
        inflight: inflight as u64,
        payload_bytes: bytes as u64,
        ..SendFloodStats::default()
    }));
    let config = target.sdk.clone().with_transport(transport);
    let device = DeviceId(rand::random::<u128>());
    let payload = vec![0x5a_u8; bytes];
    while tokio::time::Instant::now() < deadline {
        lock(&stats).connects += 1;
        let conn = match tokio::time::timeout_at(
            deadline,
            Connection::connect(&config, &token, device, &[]),
        )
        .await
        {
            Err(_) => break,
            Ok(Err(e)) => {
                *lock(&stats)
                    .errors
                    .entry(format!("connect: {e}"))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok(Ok(c)) => c,
        };
        let (sender, mut events) = conn.split();
        // Deliveries back to the flooder's own device (if any) must be drained.
        let drain = tokio::spawn(async move { while events.next_event().await.is_some() {} });
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..inflight {
            let (sender, st, payload) = (sender.clone(), stats.clone(), payload.clone());
            workers.spawn(async move {
                loop {
                    lock(&st).tried += 1;
                    let send = sender.send(conversation, rand::random(), "flood", payload.clone());
                    let Ok(outcome) = tokio::time::timeout_at(deadline, send).await else {
                        lock(&st).unsettled += 1;
                        return;
                    };
                    let mut s = lock(&st);
                    match outcome {
                        Ok(_) => s.acked += 1,
                        Err(SdkError::Server { code, fatal, .. }) => {
                            *s.refused.entry(code.as_str().to_string()).or_default() += 1;
                            if fatal {
                                return;
                            }
                        }
                        Err(SdkError::Timeout(_)) => s.timeouts += 1,
                        Err(SdkError::Closed(reason)) => {
                            *s.closed.entry(reason.to_string()).or_default() += 1;
                            return;
                        }
                        Err(e) => {
                            *s.errors.entry(e.to_string()).or_default() += 1;
                            return;
                        }
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        drain.abort();
        sender.close().await;
        if tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    lock(&stats).clone()
}
