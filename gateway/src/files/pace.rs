//! Byte pacing of file transfers: one token bucket per direction for the whole server, so that
//! uploads and downloads share what the chat leaves over instead of taking the CPU (TLS) and the
//! disk (staging writes and their fsyncs) the chat needs. Measured on the 2-core machine
//! (RESULTS.md, "Files"): beside 20 unpaced 100 MB uploads (452 MB/s together) a chat's delivery
//! p99 went from 6.4 to 173 ms; paced at 32 MiB/s, from 7.1 to 41 ms.
//!
//! A transfer waits for tokens before it reads (upload) or writes (download) each piece, so a
//! paced upload is slowed by TCP flow control, never buffered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tern_engine::rate::{BucketConfig, TokenBucket};

/// A bucket holds a quarter of a second of transfer (at least 1 MiB): enough that pieces of a
/// few hundred KiB pass without a sleep each, little enough that a burst cannot starve the chat.
const MIN_BURST_BYTES: u64 = 1 << 20;

pub struct Pacer {
    /// `None`: unpaced (`*_bytes_per_sec = 0`).
    bucket: Option<Mutex<TokenBucket>>,
    capacity: u64,
    /// The bucket's clock: monotonic (tokio's, so tests can pause it).
    origin: tokio::time::Instant,
}

impl Pacer {
    pub fn new(bytes_per_sec: u64) -> Pacer {
        if bytes_per_sec == 0 {
            return Pacer {
                bucket: None,
                capacity: 0,
                origin: tokio::time::Instant::now(),
            };
        }
        let capacity = (bytes_per_sec / 4).max(MIN_BURST_BYTES);
        let config = BucketConfig::new(capacity, bytes_per_sec);
        Pacer {
            bucket: Some(Mutex::new(TokenBucket::new(config, 0))),
            capacity,
            origin: tokio::time::Instant::now(),
        }
    }

    /// Waits until `bytes` may move (in pieces of at most one bucket).
    pub async fn take(&self, bytes: u64) {
        let Some(bucket) = &self.bucket else { return };
        let mut left = bytes;
        while left > 0 {
            let piece = left.min(self.capacity);
            let wait = bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_take(self.now_ms(), piece);
            match wait {
                Ok(()) => left -= piece,
                Err(retry) => tokio::time::sleep(Duration::from_millis(u64::from(retry.ms))).await,
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `stream` with every piece paced before it is handed on.
    pub fn paced<S, E>(
        self: &Arc<Self>,
        stream: S,
    ) -> impl Stream<Item = Result<Bytes, E>> + use<S, E>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let pacer = Arc::clone(self);
        stream.then(move |item| {
            let pacer = Arc::clone(&pacer);
            async move {
                if let Ok(bytes) = &item {
                    pacer.take(bytes.len() as u64).await;
                }
                item
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate_after_the_burst() {
        // 4 MiB/s: a 1 MiB burst, then 4 MiB per second.
        let pacer = Pacer::new(4 << 20);
        let start = tokio::time::Instant::now();
        pacer.take(1 << 20).await;
        assert!(
            start.elapsed() < Duration::from_millis(5),
            "the burst passes at once"
        );
        // 8 MiB more take ~2 s at 4 MiB/s.
        for _ in 0..8 {
            pacer.take(1 << 20).await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1_900) && took <= Duration::from_millis(2_300),
            "took {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unpaced_never_waits() {
        let pacer = Pacer::new(0);
        let start = tokio::time::Instant::now();
        pacer.take(u64::MAX).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
