//! Shards: one OS thread per core, pinned to it, each running a current-thread tokio runtime
//! (QUIC round trips measured ~8x slower on a multi-thread runtime here).
//!
//! Every shard accepts its own TCP connections and owns its own QUIC endpoint, both bound to the
//! same port with `SO_REUSEPORT`: the kernel spreads new connections over the shards by a hash
//! of the 4-tuple. A connection then lives on its shard for good. For QUIC this means
//! connection migration (a client whose address or port changes, e.g. Wi-Fi to cellular) lands
//! on whichever shard the new 4-tuple hashes to (1 in N it is the same one). A shard that does
//! not know the connection answers with a QUIC stateless reset, which the client recognises
//! because every shard (and every restart) derives reset tokens from the same persisted secret
//! (`tls::quic_reset_key`): the client reconnects at once and resumes from its cursors — nothing
//! is lost, but the session is new. Steering by connection id (an eBPF
//! `SO_ATTACH_REUSEPORT_EBPF` program reading the QUIC DCID) would keep migrating connections on
//! their shard; not done yet. TCP has no migration: a new address is a new connection anyway.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

thread_local! {
    static CURRENT_SHARD: Cell<usize> = const { Cell::new(0) };
}

/// The shard the calling thread belongs to (0 outside shard threads).
pub fn current() -> usize {
    CURRENT_SHARD.with(Cell::get)
}

/// The CPUs this process may run on, in order (what `taskset`/cgroups allow).
pub fn allowed_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } == 0;
        if ok {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, usize::from)).collect()
}

/// Pins the calling thread to one CPU. Failure is logged, not fatal (containers may forbid it).
fn pin_to(cpu: usize) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as above; the set names one CPU the process is allowed on.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if rc != 0 {
            tracing::warn!(cpu, error = %io::Error::last_os_error(), "could not pin shard thread");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
}

/// A shard's runtime before its thread starts: other parts (engine shards) spawn tasks onto it
/// through `handle` first.
pub struct ShardRuntime {
    pub index: usize,
    pub handle: tokio::runtime::Handle,
    runtime: tokio::runtime::Runtime,
}

impl ShardRuntime {
    pub fn build(index: usize) -> io::Result<ShardRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(ShardRuntime {
            index,
            handle: runtime.handle().clone(),
            runtime,
        })
    }

    /// Starts the shard's thread, pinned to `cpu`, running `main` (and every task spawned onto
    /// the runtime) until `main` returns.
    pub fn start<F, Fut>(self, cpu: Option<usize>, main: F) -> io::Result<JoinHandle<()>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("tern-shard-{index}"))
            .spawn(move || {
                CURRENT_SHARD.with(|c| c.set(index));
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                // A LocalSet so that drivers owning !Send state (an io_uring ring) can run here
                // with spawn_local; everything else is spawned normally.
                tokio::task::LocalSet::new().block_on(&self.runtime, main());
            })
    }
}

/// A TCP listener that shares its port with the other shards (`SO_REUSEPORT`).
pub fn reuseport_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A UDP socket that shares its port with the other shards (`SO_REUSEPORT`).
pub fn reuseport_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // QUIC from many clients: larger kernel buffers absorb bursts between shard turns.
    let _ = socket.set_recv_buffer_size(4 * 1024 * 1024);
    let _ = socket.set_send_buffer_size(4 * 1024 * 1024);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
