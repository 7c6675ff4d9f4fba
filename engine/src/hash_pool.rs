//! A small, fixed pool of threads for password hashing.
//!
//! argon2id needs 19 MiB per hash. Run on tokio's blocking pool, every one of its (up to
//! hundreds of) threads ends up holding a malloc arena with such a block: 40 concurrent
//! registrations measured 615 MB of RSS that never came back. A fixed pool of one thread per
//! core bounds both the memory (threads × 19 MiB) and the CPU argon2 can take from everything
//! else, and its bounded queue turns a registration or login flood into `RateLimited` answers
//! instead of an ever-growing backlog.

use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use tern_wire::msg::ErrorCode;
use tokio::sync::oneshot;

use crate::service::ServiceError;

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct HashPool {
    jobs: SyncSender<Job>,
}

impl HashPool {
    /// `threads` workers and at most `queue` jobs waiting for one.
    pub fn new(threads: usize, queue: usize) -> Result<Self, ServiceError> {
        assert!(threads > 0, "a hash pool needs at least one thread");
        let (jobs, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("tern-argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking a job, never while running it.
                        let job = match receiver.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the pool was dropped
                        }
                    }
                })
                .map_err(|_| {
                    ServiceError::new(ErrorCode::Internal, "cannot start hashing threads")
                })?;
        }
        Ok(HashPool { jobs })
    }

    /// Runs `f` on a pool thread. A full queue is answered at once with `RateLimited`.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ServiceError::rate_limited(std::time::Duration::from_secs(
                    1,
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServiceError::new(
                    ErrorCode::Internal,
                    "hashing threads stopped",
                ));
            }
        }
        result
            .await
            .map_err(|_| ServiceError::new(ErrorCode::Internal, "hashing failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_refuses_past_its_queue() {
        let pool = Arc::new(HashPool::new(1, 1).expect("pool"));
        assert_eq!(pool.run(|| 41 + 1).await.expect("runs"), 42);
        // Block the only thread, fill the one queue slot, then the next job is refused.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        let blocking_pool = pool.clone();
        let blocker = tokio::spawn(async move {
            blocking_pool
                .run(move || {
                    let _ = started_tx.send(());
                    let _ = wait.recv();
                })
                .await
        });
        started.await.expect("the blocking job started");
        assert!(
            pool.jobs.try_send(Box::new(|| {})).is_ok(),
            "one job may wait"
        );
        let refused = pool.run(|| ()).await;
        assert_eq!(refused.map_err(|e| e.code), Err(ErrorCode::RateLimited));
        release.send(()).expect("release");
        assert!(blocker.await.expect("join").is_ok());
    }
}
