//! What the server costs and whether it still serves others while under attack: RSS from
//! /proc (via [`crate::sysstat`]) and GET /healthz from a bystanding address.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::AttackTarget;
use crate::util::fmt_bytes;

/// Server resident memory over a run (all `--server-pid`s summed), bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RssStats {
    pub samples: u64,
    /// Before the attack started.
    pub before_bytes: u64,
    pub peak_bytes: u64,
    /// The last sample, taken when the attack ended (before its sockets closed).
    pub end_bytes: u64,
    /// peak - before.
    pub growth_bytes: u64,
    /// Samples that could not be read (the server died, or no such pid).
    pub failed_samples: u64,
}

impl RssStats {
    fn add(&mut self, rss: Option<u64>) {
        let Some(rss) = rss else {
            self.failed_samples += 1;
            return;
        };
        if self.samples == 0 {
            self.before_bytes = rss;
        }
        self.samples += 1;
        self.peak_bytes = self.peak_bytes.max(rss);
        self.end_bytes = rss;
        self.growth_bytes = self.peak_bytes.saturating_sub(self.before_bytes);
    }

    pub fn line(&self) -> String {
        format!(
            "server RSS: before {}, peak {} (+{}), end {}, {} samples{}",
            fmt_bytes(self.before_bytes as f64),
            fmt_bytes(self.peak_bytes as f64),
            fmt_bytes(self.growth_bytes as f64),
            fmt_bytes(self.end_bytes as f64),
            self.samples,
            if self.failed_samples > 0 {
                format!(", {} FAILED samples (server gone?)", self.failed_samples)
            } else {
                String::new()
            }
        )
    }
}

fn rss_of(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for &pid in pids {
        total += crate::sysstat::sample(pid).ok()?.rss_bytes;
    }
    Some(total)
}

/// Samples RSS every `every` until [`RssSampler::finish`].
pub struct RssSampler {
    stats: Arc<Mutex<RssStats>>,
    pids: Vec<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// `None` without pids. The first sample is taken now (the "before").
    pub fn start(pids: &[u32], every: Duration) -> Option<RssSampler> {
        if pids.is_empty() {
            return None;
        }
        let stats = Arc::new(Mutex::new(RssStats::default()));
        lock(&stats).add(rss_of(pids));
        let (s, p) = (stats.clone(), pids.to_vec());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
            tick.tick().await;
            loop {
                tick.tick().await;
                lock(&s).add(rss_of(&p));
            }
        });
        Some(RssSampler {
            stats,
            pids: pids.to_vec(),
            task,
        })
    }

    /// Takes a last sample and stops.
    pub fn finish(self) -> RssStats {
        self.task.abort();
        let mut s = lock(&self.stats);
        s.add(rss_of(&self.pids));
        s.clone()
    }
}

/// GET /healthz answers seen by a client on another address during the attack.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthStats {
    pub probes: u64,
    pub ok: u64,
    pub failed: u64,
    /// The first few distinct failure messages.
    pub failures: Vec<String>,
    pub from: String,
}

impl HealthStats {
    pub fn add(&mut self, outcome: Result<u16, String>) {
        self.probes += 1;
        let failure = match outcome {
            Ok(200) => {
                self.ok += 1;
                return;
            }
            Ok(status) => format!("HTTP {status}"),
            Err(e) => e,
        };
        self.failed += 1;
        if self.failures.len() < 5 && !self.failures.contains(&failure) {
            self.failures.push(failure);
        }
    }

    pub fn line(&self) -> String {
        format!(
            "GET /healthz from {}: {} ok, {} failed of {}{}",
            self.from,
            self.ok,
            self.failed,
            self.probes,
            self.failures
                .first()
                .map(|f| format!(" (first failure: {f})"))
                .unwrap_or_default()
        )
    }
}

/// Probes /healthz every `every` (one at a time, 5 s timeout each) until finished.
pub struct HealthProber {
    stats: Arc<Mutex<HealthStats>>,
    task: tokio::task::JoinHandle<()>,
}

pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

impl HealthProber {
    pub fn start(target: &AttackTarget, from: IpAddr, every: Duration) -> HealthProber {
        let stats = Arc::new(Mutex::new(HealthStats {
            from: from.to_string(),
            ..HealthStats::default()
        }));
        let (s, t) = (stats.clone(), target.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                let outcome = healthz_once(&t, from).await;
                lock(&s).add(outcome);
            }
        });
        HealthProber { stats, task }
    }

    /// Probes once more (so a run always ends with a fresh answer) and stops.
    pub async fn finish(self, target: &AttackTarget, from: IpAddr) -> HealthStats {
        self.task.abort();
        let outcome = healthz_once(target, from).await;
        let mut s = lock(&self.stats).clone();
        s.add(outcome);
        s
    }
}

pub async fn healthz_once(target: &AttackTarget, from: IpAddr) -> Result<u16, String> {
    let req = super::raw::get_request(&target.authority, "/healthz");
    super::raw::request_once(target, from, &req, HEALTH_TIMEOUT)
        .await
        .map(|r| r.status)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain counters: a panic elsewhere mid-update leaves nothing inconsistent enough to stop.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_accounting() {
        let mut s = RssStats::default();
        s.add(Some(100));
        s.add(None);
        s.add(Some(300));
        s.add(Some(200));
        assert_eq!(
            (s.before_bytes, s.peak_bytes, s.end_bytes, s.growth_bytes),
            (100, 300, 200, 200)
        );
        assert_eq!((s.samples, s.failed_samples), (3, 1));
    }

    #[test]
    fn health_accounting() {
        let mut h = HealthStats::default();
        h.add(Ok(200));
        h.add(Ok(503));
        h.add(Err("connect: refused".into()));
        h.add(Ok(503));
        assert_eq!((h.probes, h.ok, h.failed), (4, 1, 3));
        assert_eq!(h.failures, vec!["HTTP 503", "connect: refused"]);
    }
}
