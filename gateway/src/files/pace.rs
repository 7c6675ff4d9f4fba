//! Byte pacing of file transfers: one token bucket per direction for the whole server, so that
//! uploads and downloads share what the chat leaves over instead of taking the CPU (TLS) and the
//! disk (staging writes and their fsyncs) the chat needs. Measured on the 2-core machine
//! (RESULTS.md, "Files"): beside 20 unpaced 100 MB uploads (452 MB/s together) a chat's delivery
//! p99 went from 6.4 to 173 ms; paced at 32 MiB/s, from 7.1 to 41 ms.
//!
//! A transfer waits for tokens before it reads (upload) or writes (download) each piece, so a
//! paced upload is slowed by TCP flow control, never buffered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The bucket's clock (monotonic).
    origin: Instant,
}

impl Pacer {
    pub fn new(bytes_per_sec: u64) -> Pacer {
        if bytes_per_sec == 0 {
            return Pacer {
                bucket: None,
                capacity: 0,
                origin: Instant::now(),
            };
        }
        let capacity = (bytes_per_sec / 4).max(MIN_BURST_BYTES);
        let config = BucketConfig::new(capacity, bytes_per_sec);
        Pacer {
            bucket: Some(Mutex::new(TokenBucket::new(config, 0))),
            capacity,
            origin: Instant::now(),
        }
    }

    /// Waits until `bytes` may move (in pieces of at most one bucket).
    pub async fn take(&self, bytes: u64) {
        let mut left = bytes;
        while left > 0 {
            match self.try_take(self.now_ms(), left) {
                Ok(taken) => left -= taken,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// One step of [`Pacer::take`] at `now_ms`: the bytes that may move now (at most one
    /// bucket of `left`), or how long to wait before asking again. Free of the clock, so the
    /// tests drive it with simulated time.
    fn try_take(&self, now_ms: u64, left: u64) -> Result<u64, Duration> {
        let Some(bucket) = &self.bucket else {
            return Ok(left);
        };
        let piece = left.min(self.capacity);
        bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(now_ms, piece)
            .map(|()| piece)
            .map_err(|retry| Duration::from_millis(u64::from(retry.ms)))
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

    /// What [`Pacer::take`] does, on a simulated clock: the milliseconds `bytes` take from
    /// `now_ms` on.
    fn simulated_take(pacer: &Pacer, now_ms: &mut u64, bytes: u64) {
        let mut left = bytes;
        let mut steps = 0;
        while left > 0 {
            steps += 1;
            assert!(steps < 10_000, "the pacer never lets {left} bytes pass");
            match pacer.try_take(*now_ms, left) {
                Ok(taken) => {
                    assert!(taken > 0 && taken <= left);
                    left -= taken;
                }
                Err(wait) => {
                    assert!(wait > Duration::ZERO, "a wait of zero would spin");
                    *now_ms += u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                }
            }
        }
    }

    #[test]
    fn paces_to_the_rate_after_the_burst() {
        // 4 MiB/s: a 1 MiB burst, then 4 MiB per second.
        let pacer = Pacer::new(4 << 20);
        let mut now_ms = 0;
        simulated_take(&pacer, &mut now_ms, 1 << 20);
        assert_eq!(now_ms, 0, "the burst passes at once");
        // 8 MiB more take 2 s at 4 MiB/s.
        for _ in 0..8 {
            simulated_take(&pacer, &mut now_ms, 1 << 20);
        }
        assert!((1_950..=2_050).contains(&now_ms), "took {now_ms} ms");
        // A piece larger than the bucket passes in bucket-sized parts at the same rate.
        let before = now_ms;
        simulated_take(&pacer, &mut now_ms, 4 << 20);
        assert!(
            (950..=1_050).contains(&(now_ms - before)),
            "took {} ms",
            now_ms - before
        );
    }

    #[test]
    fn unpaced_never_waits() {
        let pacer = Pacer::new(0);
        assert_eq!(pacer.try_take(0, u64::MAX), Ok(u64::MAX));
    }

    #[tokio::test]
    async fn take_returns_at_once_within_the_burst() {
        let pacer = Pacer::new(4 << 20);
        tokio::time::timeout(Duration::from_secs(5), pacer.take(1 << 20))
            .await
            .expect("a burst-sized take does not sleep");
    }
}
