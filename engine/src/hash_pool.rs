//! A small, fixed pool of threads for password hashing, fed fairly per client.
//!
//! argon2id needs 19 MiB per hash. Run on tokio's blocking pool, every one of its (up to
//! hundreds of) threads ends up holding a malloc arena with such a block: 40 concurrent
//! registrations measured 615 MB of RSS that never came back. A fixed pool of one thread per
//! core bounds both the memory (threads × 19 MiB) and the CPU argon2 can take from everything
//! else, and its bounded queue turns a registration or login flood into `RateLimited` answers
//! instead of an ever-growing backlog.
//!
//! The queue is a [`FairQueue`] keyed by client (address prefix, see `client_addr`): with one
//! global FIFO, 300 concurrent bogus logins from one address filled it and the real owner's
//! logins failed 10 times out of 12. Now a client has at most `per_client` jobs waiting, and the
//! threads take one job from each waiting client in turn.

use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};

use tern_wire::msg::ErrorCode;
use tokio::sync::oneshot;

use crate::fair_queue::FairQueue;
use crate::service::ServiceError;

/// A queued hash: called with `true` to run it, `false` to refuse it (evicted from a full
/// queue to make room for a client with fewer jobs waiting).
type Job = Box<dyn FnOnce(bool) + Send + 'static>;

fn queue_full() -> ServiceError {
    ServiceError::rate_limited(std::time::Duration::from_secs(1))
}

struct Shared {
    queue: Mutex<State>,
    ready: Condvar,
}

struct State {
    jobs: FairQueue<IpAddr, Job>,
    /// Set when the pool is dropped: threads finish what is queued and exit.
    closed: bool,
}

pub struct HashPool {
    shared: Arc<Shared>,
}

impl HashPool {
    /// `threads` workers and at most `queue` jobs waiting for one, of which at most
    /// `per_client` from one client.
    pub fn new(threads: usize, queue: usize, per_client: usize) -> Result<Self, ServiceError> {
        assert!(threads > 0, "a hash pool needs at least one thread");
        let shared = Arc::new(Shared {
            queue: Mutex::new(State {
                jobs: FairQueue::new(per_client.max(1), queue.max(1)),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("tern-argon2-{i}"))
                .spawn(move || {
                    yield_to_message_path();
                    worker(&shared)
                })
                .map_err(|_| {
                    ServiceError::new(ErrorCode::Internal, "cannot start hashing threads")
                })?;
        }
        Ok(HashPool { shared })
    }

    /// Runs `f` on a pool thread, in `client`'s turn. A full queue (this client's share or
    /// the whole) is answered at once with `RateLimited`.
    pub async fn run<T: Send + 'static>(
        &self,
        client: IpAddr,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |run| {
            let _ = done.send(if run { Ok(f()) } else { Err(queue_full()) });
        });
        let evicted = {
            let mut state = self
                .shared
                .queue
                .lock()
                .map_err(|_| ServiceError::poisoned())?;
            state.jobs.push(client, job).map_err(|_| queue_full())?
        };
        match evicted {
            // Refused outside the lock; the queue's length is unchanged, no worker to wake.
            Some(evicted) => evicted(false),
            None => self.shared.ready.notify_one(),
        }
        result
            .await
            .map_err(|_| ServiceError::new(ErrorCode::Internal, "hashing failed"))?
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.queue.lock() {
            state.closed = true;
        }
        self.shared.ready.notify_all();
    }
}

/// How much lower than the shard threads a hashing thread runs (nice value). A hash is ~50–100
/// ms of CPU; at equal priority a login on a 2-core machine took a pinned shard's core for that
/// long and a bystander's delivery p99 rose from ~8 ms to ~145 ms with one login every 3 s
/// (bench/results/2026-12-01-abuse/login-stall). Niced, the scheduler hands the core back to a
/// shard as soon as it has work; hashing only gets slower when the shards keep every core busy,
/// which is when logins should wait.
const HASH_THREAD_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority (Linux: the nice value is per thread).
fn yield_to_message_path() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; a failure leaves the priority as is.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, HASH_THREAD_NICE)
        };
        if result != 0 {
            tracing::debug!("could not lower the hashing thread's priority");
        }
    }
}

fn worker(shared: &Shared) {
    loop {
        // The lock is held only while taking a job, never while running it.
        let job = {
            let Ok(mut state) = shared.queue.lock() else {
                return;
            };
            loop {
                if let Some(job) = state.jobs.pop() {
                    break job;
                }
                if state.closed {
                    return;
                }
                state = match shared.ready.wait(state) {
                    Ok(state) => state,
                    Err(_) => return,
                };
            }
        };
        job(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    /// Occupies the pool's only thread until the returned sender is used.
    async fn block(
        pool: &Arc<HashPool>,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        let blocking_pool = pool.clone();
        let blocker = tokio::spawn(async move {
            let _ = blocking_pool
                .run(B, move || {
                    let _ = started_tx.send(());
                    let _ = wait.recv();
                })
                .await;
        });
        started.await.expect("the blocking job started");
        (release, blocker)
    }

    #[tokio::test]
    async fn runs_jobs_and_refuses_past_its_queue() {
        let pool = Arc::new(HashPool::new(1, 1, 1).expect("pool"));
        assert_eq!(pool.run(A, || 41 + 1).await.expect("runs"), 42);
        let (release, blocker) = block(&pool).await;
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(A, || ()).await })
        };
        while pool.shared.queue.lock().expect("lock").jobs.is_empty() {
            tokio::task::yield_now().await;
        }
        let refused = pool.run(B, || ()).await;
        assert_eq!(refused.map_err(|e| e.code), Err(ErrorCode::RateLimited));
        release.send(()).expect("release");
        blocker.await.expect("join");
        assert!(waiting.await.expect("join").is_ok());
    }

    #[tokio::test]
    async fn a_flooding_client_is_refused_and_others_are_served_first() {
        let pool = Arc::new(HashPool::new(1, 100, 3).expect("pool"));
        let (release, blocker) = block(&pool).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut flood = Vec::new();
        for i in 0..3 {
            let (pool, order) = (pool.clone(), order.clone());
            flood.push(tokio::spawn(async move {
                pool.run(A, move || order.lock().expect("lock").push(("A", i)))
                    .await
            }));
        }
        while pool.shared.queue.lock().expect("lock").jobs.len() < 3 {
            tokio::task::yield_now().await;
        }
        let refused = pool.run(A, || ()).await;
        assert_eq!(
            refused.map_err(|e| e.code),
            Err(ErrorCode::RateLimited),
            "past its own share the flooding client is refused"
        );
        let owner = {
            let (pool, order) = (pool.clone(), order.clone());
            tokio::spawn(async move {
                pool.run(B, move || order.lock().expect("lock").push(("B", 0)))
                    .await
            })
        };
        while pool.shared.queue.lock().expect("lock").jobs.len() < 4 {
            tokio::task::yield_now().await;
        }
        release.send(()).expect("release");
        blocker.await.expect("join");
        assert!(
            owner.await.expect("join").is_ok(),
            "the other client got in"
        );
        for f in flood {
            assert!(f.await.expect("join").is_ok());
        }
        let order = order.lock().expect("lock").clone();
        assert_eq!(
            order,
            vec![("A", 0), ("B", 0), ("A", 1), ("A", 2)],
            "the other client waited for one flood job, not three"
        );
    }

    #[tokio::test]
    async fn a_full_queue_makes_room_for_a_client_with_less_waiting() {
        let pool = Arc::new(HashPool::new(1, 2, 2).expect("pool"));
        let (release, blocker) = block(&pool).await;
        let mut flood = Vec::new();
        for i in 0..2 {
            let flooder = pool.clone();
            flood.push(tokio::spawn(async move { flooder.run(A, move || i).await }));
            while pool.shared.queue.lock().expect("lock").jobs.len() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        let owner = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(B, || "owner").await })
        };
        let newest = flood.pop().expect("two").await.expect("join");
        assert_eq!(
            newest.map_err(|e| e.code),
            Err(ErrorCode::RateLimited),
            "the flooding client's newest job gave way"
        );
        release.send(()).expect("release");
        blocker.await.expect("join");
        assert_eq!(owner.await.expect("join").expect("runs"), "owner");
        assert_eq!(
            flood
                .pop()
                .expect("one")
                .await
                .expect("join")
                .expect("runs"),
            0
        );
    }
}
