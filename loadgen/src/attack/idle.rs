//! `attack idle-conns`: TLS connections from one source address that never send a request.
//! Each connection's task waits for the server to close it; the ones still waiting after
//! `--duration` are the connections one address can hold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::io::AsyncReadExt as _;
use tokio::sync::Semaphore;

use super::probe::{HealthProber, RssSampler, lock};
use super::{AttackTarget, Outcome, bounded, bounded_duration, require_loopback};
use crate::cli::{AlpnChoice, IdleConnsArgs};

/// Idle-connection counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IdleResult {
    pub from: String,
    pub attempted: u64,
    /// TCP + TLS handshakes that completed.
    pub opened: u64,
    pub open_failed: u64,
    /// Connections the server closed (EOF, reset, close_notify) while we held them.
    pub closed_by_server: u64,
    /// Most connections open at once.
    pub max_held: u64,
    /// Still open when --duration was over.
    pub held_at_end: u64,
    /// Seconds from the first connection attempt to the last one settled.
    pub open_secs: f64,
    pub hold_secs: f64,
    /// Failure messages by count.
    pub open_errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    max_open: AtomicU64,
    closed: AtomicU64,
}

impl Counters {
    fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_open.fetch_max(now, Ordering::Relaxed);
    }
    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(target: &AttackTarget, a: &IdleConnsArgs) -> anyhow::Result<Outcome> {
    require_loopback("--from", a.from)?;
    let max = bounded("--max", a.max, 1, 60_000)?;
    let concurrency = bounded("--concurrency", a.concurrency, 1, 4096)?;
    let duration = bounded_duration("--duration", a.duration)?;
    let rss = RssSampler::start(&a.common.server_pid, a.common.sample_every);
    let health = HealthProber::start(target, a.common.probe_from, a.common.sample_every);

    let counters = Arc::new(Counters::default());
    let errors = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let gate = Arc::new(Semaphore::new(concurrency));
    let tls = target.tls_with_alpn(AlpnChoice::Http11);
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..max {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (t, tls, c, e) = (
            target.clone(),
            tls.clone(),
            counters.clone(),
            errors.clone(),
        );
        let (from, timeout) = (a.from, a.connect_timeout);
        tasks.spawn(async move {
            let stream = super::raw::tls_from(&t, tls, from, timeout).await;
            drop(permit);
            let mut stream = match stream {
                Ok(s) => s,
                Err(msg) => {
                    *lock(&e).entry(msg).or_default() += 1;
                    return;
                }
            };
            c.opened();
            // Idle: nothing is sent. Any read result (EOF, error, or bytes) means the server
            // acted on the connection; EOF and errors mean it is gone.
            let mut byte = [0u8; 1];
            loop {
                match stream.read(&mut byte).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            c.closed();
        });
    }
    // Wait until every permit is back: all attempts have settled.
    let _all = gate.acquire_many(concurrency as u32).await;
    let open_secs = t0.elapsed().as_secs_f64();
    drop(_all);
    let t1 = Instant::now();
    tokio::time::sleep(duration).await;
    let hold_secs = t1.elapsed().as_secs_f64();

    let health = health.finish(target, a.common.probe_from).await;
    let rss = rss.map(RssSampler::finish);
    let open_errors = lock(&errors).clone();
    let open_failed: u64 = open_errors.values().sum();
    let result = IdleResult {
        from: a.from.to_string(),
        attempted: max as u64,
        opened: max as u64 - open_failed,
        open_failed,
        closed_by_server: counters.closed.load(Ordering::Relaxed),
        max_held: counters.max_open.load(Ordering::Relaxed),
        held_at_end: counters.open.load(Ordering::Relaxed),
        open_secs,
        hold_secs,
        open_errors,
    };
    tasks.abort_all();
    let summary = format!(
        "  idle connections from {}: {} attempted, {} opened, {} failed to open; \
         max held {}, still held after {:.0}s: {}, closed by the server: {}\n{}",
        result.from,
        result.attempted,
        result.opened,
        result.open_failed,
        result.max_held,
        hold_secs,
        result.held_at_end,
        result.closed_by_server,
        error_lines(&result.open_errors)
    );
    Ok(Outcome {
        result: serde_json::to_value(&result)?,
        summary,
        rss,
        healthz: Some(health),
    })
}

pub(crate) fn error_lines(errors: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<_> = errors.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .take(5)
        .map(|(m, n)| format!("    {n} x {m}\n"))
        .collect()
}
