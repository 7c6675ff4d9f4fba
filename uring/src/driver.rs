//! The event loop of one driver: the ring, the connections, the turn.
//!
//! One turn: reap every completion (accepts, receives, sends), run every command the sessions
//! queued, expire deadlines, then build at most one `Send` per connection that has TLS output
//! and submit everything with a single `io_uring_enter`. Then wait (in tokio) for the eventfd
//! the ring signals completions on, a command, a deadline or shutdown.
//!
//! Connections live in a slab; `user_data` carries operation, slot and generation so that
//! completions for a freed slot are recognised. A connection is taken out of the slab while it
//! is being worked on and put back by [`Driver::put_back`], which also closes it for good once
//! it is dead and no operation of it is in flight (its send buffer must outlive the send).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc, watch};

use crate::bufring::{BGID, BufRing};
use crate::session::{self, Cmd, Key, Out, Shared};
use crate::ws::{self, Step, WsCodec};
use crate::{Handler, UringConfig, UringStats, WsEvent};

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_CANCEL: u64 = 4;
const GENERATION_MASK: u32 = 0x00ff_ffff;

fn user_data(op: u64, key: Key) -> u64 {
    (op << 56) | (((key.generation & GENERATION_MASK) as u64) << 32) | key.slot as u64
}

fn decode(data: u64) -> (u64, Key) {
    (
        data >> 56,
        Key {
            slot: data as u32,
            generation: ((data >> 32) as u32) & GENERATION_MASK,
        },
    )
}

/// The ring, movable between threads (the driver future is `Send`).
struct Ring(IoUring);

// SAFETY: `IoUring` owns its mappings and fd and is only used through `&mut self` of the
// driver; nothing ties it to the creating thread (the ring is not set up SINGLE_ISSUER).
unsafe impl Send for Ring {}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_cqsize(entries.saturating_mul(4))
        .setup_clamp()
        .build(entries)
}

fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned by the returned value.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn probe() -> Result<(), String> {
    let ring = build_ring(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::AsyncCancel::CODE, "async cancel"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    let bufs = BufRing::new(8, 64).map_err(|e| format!("mmap: {e}"))?;
    bufs.register(&ring.submitter())
        .map_err(|e| format!("IORING_REGISTER_PBUF_RING: {e}"))?;
    let efd = new_eventfd().map_err(|e| format!("eventfd: {e}"))?;
    ring.submitter()
        .register_eventfd(efd.as_raw_fd())
        .map_err(|e| format!("IORING_REGISTER_EVENTFD: {e}"))?;
    // Multishot accept/recv need 6.0+ (5.19 for accept); the opcodes above exist since 5.6, so
    // check the version too.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct.
    if unsafe { libc::uname(&mut uts) } == 0 {
        // SAFETY: release is NUL-terminated by the kernel.
        let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
        let release = release.to_string_lossy();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if major < 6 {
            return Err(format!(
                "kernel {release} is too old for multishot receive (6.0+)"
            ));
        }
    }
    drop(ring);
    drop(bufs);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Head,
    Ws,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Close frame / close_notify queued: waiting until everything is written.
    Flushing,
    /// FIN sent: waiting for the peer's EOF (reading and discarding) or the deadline.
    Draining,
    /// Socket shut down; freed once no operation is in flight.
    Dead,
}

struct Conn {
    key: Key,
    fd: RawFd,
    peer: SocketAddr,
    tls: rustls::ServerConnection,
    phase: Phase,
    closing: Closing,
    /// Plaintext received and not yet consumed; released when empty.
    plain_in: Vec<u8>,
    recv_armed: bool,
    cancel_sent: bool,
    /// The receive ended with ENOBUFS; re-armed when buffers come back.
    starved: bool,
    /// The session's queue is full: not reading until it resumes us.
    suspended: bool,
    /// The peer will send nothing more (EOF or close_notify).
    eof: bool,
    /// Nothing more is parsed; once `held` is delivered the inbound queue is closed.
    input_done: bool,
    send_buf: Option<Vec<u8>>,
    send_off: usize,
    /// Session bytes whose TLS records are in `send_buf`.
    inflight_plain: usize,
    /// Session bytes encrypted since the last send was built.
    out_accounted: usize,
    dirty: bool,
    shared: Option<Arc<Shared>>,
    up: Option<mpsc::Sender<WsEvent>>,
    held: Option<WsEvent>,
    ws: Option<WsCodec>,
    close_sent: bool,
    /// The handler's budget place, given back when this struct is dropped (slot freed).
    _admitted: crate::Admitted,
}

impl Conn {
    /// Feeds ciphertext to rustls and moves the plaintext to `plain_in`.
    fn ingest(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            match self.tls.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
            let state = self.tls.process_new_packets().map_err(|e| e.to_string())?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let old = self.plain_in.len();
                self.plain_in.resize(old + n, 0);
                self.tls
                    .reader()
                    .read_exact(&mut self.plain_in[old..])
                    .map_err(|e| e.to_string())?;
            }
            if state.peer_has_closed() {
                self.eof = true;
            }
        }
        Ok(())
    }

    fn release_plain_if_empty(&mut self) {
        if self.plain_in.is_empty() && self.plain_in.capacity() > 0 {
            self.plain_in = Vec::new();
        }
    }
}

pub(crate) struct Driver {
    // Field order matters: the ring is dropped (buffer ring unregistered) before its memory.
    ring: Ring,
    bufs: BufRing,
    efd: Option<OwnedFd>,
    listener: Option<std::net::TcpListener>,
    listener_fd: RawFd,
    cfg: UringConfig,
    handler: Arc<dyn Handler>,
    stats: Arc<UringStats>,
    conns: Vec<Option<Box<Conn>>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    open: usize,
    dirty: Vec<Key>,
    starved: Vec<Key>,
    backlog: VecDeque<squeue::Entry>,
    handshake_deadlines: VecDeque<(Instant, Key)>,
    close_deadlines: VecDeque<(Instant, Key)>,
    accepting: bool,
    accept_armed: bool,
    accept_retry_at: Option<Instant>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    cmd_rx: Option<mpsc::UnboundedReceiver<Cmd>>,
    cqes: Vec<(u64, i32, u32)>,
}

const ACCEPT_KEY: Key = Key {
    slot: u32::MAX,
    generation: 0,
};

impl Driver {
    pub(crate) fn new(
        listener: std::net::TcpListener,
        cfg: UringConfig,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let ring = build_ring(cfg.ring_entries.max(8))?;
        let bufs = BufRing::new(cfg.recv_buffers, cfg.recv_buffer_bytes.max(512))?;
        bufs.register(&ring.submitter())?;
        let efd = new_eventfd()?;
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        tracing::debug!(
            entries = cfg.ring_entries,
            recv_buffers = bufs.entries(),
            recv_buffer_bytes = cfg.recv_buffer_bytes,
            "io_uring driver ready"
        );
        Ok(Self {
            ring: Ring(ring),
            bufs,
            efd: Some(efd),
            listener_fd: listener.as_raw_fd(),
            listener: Some(listener),
            stats: cfg.stats.clone(),
            cfg,
            handler,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            open: 0,
            dirty: Vec::new(),
            starved: Vec::new(),
            backlog: VecDeque::new(),
            handshake_deadlines: VecDeque::new(),
            close_deadlines: VecDeque::new(),
            accepting: true,
            accept_armed: false,
            accept_retry_at: None,
            cmd_tx,
            cmd_rx: Some(cmd_rx),
            cqes: Vec::with_capacity(256),
        })
    }

    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
        let efd = self.efd.take().expect("run once");
        // SAFETY: the OwnedFd keeps the eventfd open, unchanged, for the AsyncFd's lifetime.
        let efd = unsafe { AsyncFd::register_with_interest(efd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let mut cmd_rx = self.cmd_rx.take().expect("run once");
        let mut stopping: Option<Instant> = None;
        if *shutdown.borrow() {
            stopping = Some(Instant::now() + self.cfg.shutdown_grace);
            self.begin_stop();
        } else {
            self.arm_accept();
        }
        loop {
            self.reap();
            while let Ok(cmd) = cmd_rx.try_recv() {
                self.command(cmd);
            }
            let now = Instant::now();
            self.expire(now);
            if self.accept_retry_at.is_some_and(|at| now >= at) {
                self.accept_retry_at = None;
                self.arm_accept();
            }
            if stopping.is_some_and(|at| now >= at) {
                self.cut_all();
            }
            self.flush_sends();
            self.submit()?;
            if stopping.is_some() && self.open == 0 && !self.accept_armed {
                return Ok(());
            }
            if !self.ring.0.completion().is_empty() || !self.backlog.is_empty() {
                tokio::task::yield_now().await;
                continue;
            }
            let wake_at = self.next_deadline(stopping);
            tokio::select! {
                guard = efd.readable() => {
                    let mut guard = guard?;
                    let mut counter = [0u8; 8];
                    // SAFETY: reading 8 bytes into an 8-byte buffer from our eventfd.
                    while unsafe { libc::read(efd.as_raw_fd(), counter.as_mut_ptr().cast(), 8) } > 0 {}
                    guard.clear_ready();
                }
                cmd = cmd_rx.recv() => {
                    if let Some(cmd) = cmd {
                        self.command(cmd);
                    }
                }
                changed = shutdown.changed(), if stopping.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        stopping = Some(Instant::now() + self.cfg.shutdown_grace);
                        self.begin_stop();
                    }
                }
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }

    fn next_deadline(&self, stopping: Option<Instant>) -> Instant {
        let mut at = Instant::now() + Duration::from_secs(3600);
        for candidate in [
            self.handshake_deadlines.front().map(|d| d.0),
            self.close_deadlines.front().map(|d| d.0),
            self.accept_retry_at,
            stopping,
        ]
        .into_iter()
        .flatten()
        {
            at = at.min(candidate);
        }
        at
    }

    // ---- submission ----

    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: every buffer an entry points to (send buffers) is owned by its connection
        // until the completion arrives.
        if unsafe { self.ring.0.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            let queued = self.ring.0.submission().len();
            if queued == 0 {
                return Ok(());
            }
            match self.ring.0.submitter().submit() {
                Ok(_) => {
                    self.stats.submissions.fetch_add(1, Ordering::Relaxed);
                    self.stats.sqes.fetch_add(queued as u64, Ordering::Relaxed);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Completion queue overflowing: reap first, submit on the next turn.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if self.backlog.is_empty() {
                return Ok(());
            }
            let mut sq = self.ring.0.submission();
            while let Some(entry) = self.backlog.front() {
                // SAFETY: as in `push`.
                if unsafe { sq.push(entry) }.is_err() {
                    break;
                }
                self.backlog.pop_front();
            }
        }
    }

    fn arm_accept(&mut self) {
        if !self.accepting || self.accept_armed {
            return;
        }
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener_fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(OP_ACCEPT, ACCEPT_KEY));
        self.push(entry);
        self.accept_armed = true;
    }

    fn begin_stop(&mut self) {
        self.accepting = false;
        if self.accept_armed {
            let entry = opcode::AsyncCancel::new(user_data(OP_ACCEPT, ACCEPT_KEY))
                .build()
                .user_data(user_data(OP_CANCEL, ACCEPT_KEY));
            self.push(entry);
        } else {
            self.listener = None;
        }
        // Connections nobody owns yet are cut now; the others are closed by their owners.
        for slot in 0..self.conns.len() {
            let Some(mut conn) = self.conns[slot].take() else {
                continue;
            };
            if matches!(conn.phase, Phase::Handshake | Phase::Head) {
                self.hard_close(&mut conn);
            }
            self.put_back(conn);
        }
    }

    fn cut_all(&mut self) {
        for slot in 0..self.conns.len() {
            if let Some(mut conn) = self.conns[slot].take() {
                self.hard_close(&mut conn);
                self.put_back(conn);
            }
        }
    }

    // ---- slab ----

    fn take(&mut self, key: Key) -> Option<Box<Conn>> {
        let slot = self.conns.get_mut(key.slot as usize)?;
        if slot.as_ref()?.key != key {
            return None;
        }
        slot.take()
    }

    fn put_back(&mut self, mut conn: Box<Conn>) {
        if conn.closing == Closing::Flushing && conn.send_buf.is_none() && !conn.tls.wants_write() {
            // SAFETY: our socket.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
            conn.closing = Closing::Draining;
            if conn.eof {
                self.hard_close(&mut conn);
            }
        }
        if conn.closing != Closing::Dead {
            self.maybe_arm_recv(&mut conn);
            if conn.tls.wants_write() {
                self.mark_dirty(&mut conn);
            }
        }
        if conn.closing == Closing::Dead && !conn.recv_armed && conn.send_buf.is_none() {
            // SAFETY: our socket; no operation on it is in flight.
            unsafe { libc::close(conn.fd) };
            let slot = conn.key.slot as usize;
            self.generations[slot] = (self.generations[slot] + 1) & GENERATION_MASK;
            self.free.push(conn.key.slot);
            self.open -= 1;
            self.stats
                .connections_open
                .store(self.open as u64, Ordering::Relaxed);
            if let Some(shared) = &conn.shared {
                shared.closed.store(true, Ordering::SeqCst);
                shared.gone.store(true, Ordering::SeqCst);
                shared.wake();
            }
            return;
        }
        let slot = conn.key.slot as usize;
        self.conns[slot] = Some(conn);
    }

    fn mark_dirty(&mut self, conn: &mut Conn) {
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(conn.key);
        }
    }

    fn maybe_arm_recv(&mut self, conn: &mut Conn) {
        if conn.recv_armed
            || conn.starved
            || conn.eof
            || (conn.suspended && conn.closing == Closing::Open)
        {
            return;
        }
        let entry = opcode::RecvMulti::new(types::Fd(conn.fd), BGID)
            .build()
            .user_data(user_data(OP_RECV, conn.key));
        self.push(entry);
        conn.recv_armed = true;
        conn.cancel_sent = false;
    }

    fn cancel_recv(&mut self, conn: &mut Conn) {
        if conn.recv_armed && !conn.cancel_sent {
            let entry = opcode::AsyncCancel::new(user_data(OP_RECV, conn.key))
                .build()
                .user_data(user_data(OP_CANCEL, conn.key));
            self.push(entry);
            conn.cancel_sent = true;
        }
    }

    /// Shuts the socket down now; the slot is freed once nothing is in flight.
    fn hard_close(&mut self, conn: &mut Conn) {
        if conn.closing == Closing::Dead {
            return;
        }
        conn.closing = Closing::Dead;
        // SAFETY: our socket. Wakes a pending receive (EOF) and fails a pending send.
        unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
        self.cancel_recv(conn);
        conn.up = None;
        conn.held = None;
        conn.plain_in = Vec::new();
        conn.ws = None;
        if let Some(shared) = &conn.shared {
            shared.closed.store(true, Ordering::SeqCst);
            shared.wake();
        }
    }

    /// Close frame (WebSocket), close_notify, then FIN once flushed; bounded by the deadline.
    fn begin_close(&mut self, conn: &mut Conn, ws_close: Option<(u16, &str)>) {
        if conn.closing != Closing::Open {
            return;
        }
        if conn.phase == Phase::Ws && !conn.close_sent {
            let (code, reason) = ws_close.unwrap_or((1000, ""));
            let _ = conn.tls.writer().write_all(&ws::close(code, reason));
            conn.close_sent = true;
        }
        conn.tls.send_close_notify();
        conn.closing = Closing::Flushing;
        conn.suspended = false;
        conn.held = None;
        conn.up = None;
        conn.plain_in = Vec::new();
        if let Some(shared) = &conn.shared {
            shared.closed.store(true, Ordering::SeqCst);
            shared.wake();
        }
        self.close_deadlines
            .push_back((Instant::now() + self.cfg.close_timeout, conn.key));
        self.mark_dirty(conn);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.handshake_deadlines.front() {
            if at > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            if let Some(mut conn) = self.take(key) {
                if matches!(conn.phase, Phase::Handshake | Phase::Head)
                    && conn.closing == Closing::Open
                {
                    self.stats
                        .handshake_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    self.hard_close(&mut conn);
                }
                self.put_back(conn);
            }
        }
        while let Some(&(at, key)) = self.close_deadlines.front() {
            if at > now {
                break;
            }
            self.close_deadlines.pop_front();
            if let Some(mut conn) = self.take(key) {
                self.hard_close(&mut conn);
                self.put_back(conn);
            }
        }
    }

    // ---- completions ----

    fn reap(&mut self) {
        loop {
            let mut batch = std::mem::take(&mut self.cqes);
            batch.clear();
            {
                let mut cq = self.ring.0.completion();
                cq.sync();
                for cqe in &mut cq {
                    batch.push((cqe.user_data(), cqe.result(), cqe.flags()));
                    if batch.len() == batch.capacity() {
                        break;
                    }
                }
            }
            if batch.is_empty() {
                self.cqes = batch;
                break;
            }
            self.stats
                .cqes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for &(data, result, flags) in &batch {
                let (op, key) = decode(data);
                match op {
                    OP_ACCEPT => self.on_accept(result, flags),
                    OP_RECV => self.on_recv(key, result, flags),
                    OP_SEND => self.on_send(key, result),
                    _ => {}
                }
            }
            self.cqes = batch;
        }
        self.bufs.publish();
        // Buffers are back in the ring: re-arm the receives that ran dry.
        for key in std::mem::take(&mut self.starved) {
            if let Some(mut conn) = self.take(key) {
                conn.starved = false;
                self.put_back(conn);
            }
        }
    }

    fn on_accept(&mut self, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
            if !self.accepting {
                self.listener = None;
            } else if result < 0 {
                self.accept_retry_at = Some(Instant::now() + Duration::from_millis(50));
            } else {
                self.arm_accept();
            }
        }
        if result < 0 {
            if result != -libc::ECANCELED {
                tracing::warn!(error = %io::Error::from_raw_os_error(-result), "accept failed");
            }
            return;
        }
        // SAFETY: the kernel gave us this new fd.
        let socket = unsafe { OwnedFd::from_raw_fd(result) };
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        if !self.accepting || self.open >= self.cfg.max_connections {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_tcp_nodelay(true);
        let peer = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        // Over the handler's budget: the socket is closed right here, before any TLS work.
        let Some(admitted) = self.handler.admit(peer) else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut tls = match rustls::ServerConnection::new(self.cfg.tls.clone()) {
            Ok(tls) => tls,
            Err(error) => {
                tracing::warn!(%error, "rustls connection setup failed");
                return;
            }
        };
        // The outbound budget bounds what sessions queue; rustls must take all of it.
        tls.set_buffer_limit(None);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let key = Key {
            slot,
            generation: self.generations[slot as usize],
        };
        let conn = Box::new(Conn {
            key,
            fd: std::os::fd::IntoRawFd::into_raw_fd(socket),
            peer,
            tls,
            phase: Phase::Handshake,
            closing: Closing::Open,
            plain_in: Vec::new(),
            recv_armed: false,
            cancel_sent: false,
            starved: false,
            suspended: false,
            eof: false,
            input_done: false,
            send_buf: None,
            send_off: 0,
            inflight_plain: 0,
            out_accounted: 0,
            dirty: false,
            shared: None,
            up: None,
            held: None,
            ws: None,
            close_sent: false,
            _admitted: admitted,
        });
        self.open += 1;
        self.stats
            .connections_open
            .store(self.open as u64, Ordering::Relaxed);
        self.handshake_deadlines
            .push_back((Instant::now() + self.cfg.handshake_timeout, key));
        self.put_back(conn);
    }

    fn on_recv(&mut self, key: Key, result: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let Some(mut conn) = self.take(key) else {
            if let Some(bid) = bid {
                self.bufs.push(bid);
            }
            return;
        };
        if !cqueue::more(flags) {
            conn.recv_armed = false;
            conn.cancel_sent = false;
        }
        if result > 0 && bid.is_none() {
            // The kernel always selects a buffer for data; if it ever does not, drop this
            // connection rather than the whole driver.
            tracing::error!(peer = %conn.peer, "receive completed without a provided buffer");
            self.hard_close(&mut conn);
        } else if let (true, Some(bid)) = (result > 0, bid) {
            self.stats
                .bytes_received
                .fetch_add(result as u64, Ordering::Relaxed);
            self.stats.recv_buffers_held.fetch_add(1, Ordering::Relaxed);
            let outcome = if conn.closing == Closing::Open {
                conn.ingest(self.bufs.get(bid, result as usize))
            } else {
                Ok(()) // closing: input is discarded
            };
            self.bufs.push(bid);
            self.stats.recv_buffers_held.fetch_sub(1, Ordering::Relaxed);
            if let Err(error) = outcome {
                tracing::debug!(peer = %conn.peer, %error, "TLS failed");
                self.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                self.hard_close(&mut conn);
            }
        } else if result == 0 {
            conn.eof = true;
        } else if result == -libc::ENOBUFS {
            self.stats
                .recv_buffer_exhausted
                .fetch_add(1, Ordering::Relaxed);
            if !conn.recv_armed {
                conn.starved = true;
                self.starved.push(key);
            }
        } else if result != -libc::ECANCELED {
            conn.eof = true;
            self.hard_close(&mut conn);
        }
        if conn.eof && conn.closing == Closing::Draining {
            self.hard_close(&mut conn);
        }
        self.advance(&mut conn);
        self.put_back(conn);
    }

    fn on_send(&mut self, key: Key, result: i32) {
        let Some(mut conn) = self.take(key) else {
            return;
        };
        let len = conn.send_buf.as_ref().map_or(0, Vec::len);
        if result <= 0 {
            conn.send_buf = None;
            self.hard_close(&mut conn);
        } else {
            self.stats
                .bytes_sent
                .fetch_add(result as u64, Ordering::Relaxed);
            conn.send_off += result as usize;
            if conn.send_off < len && conn.closing != Closing::Dead {
                self.push_send(&mut conn);
            } else {
                conn.send_buf = None;
                if let Some(shared) = &conn.shared {
                    shared
                        .pending_out
                        .fetch_sub(conn.inflight_plain, Ordering::SeqCst);
                    shared.wake();
                }
                conn.inflight_plain = 0;
            }
        }
        self.put_back(conn);
    }

    fn push_send(&mut self, conn: &mut Conn) {
        let buf = conn.send_buf.as_ref().expect("send buffer");
        let rest = &buf[conn.send_off..];
        let entry = opcode::Send::new(types::Fd(conn.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(OP_SEND, conn.key));
        self.push(entry);
        self.stats.sends.fetch_add(1, Ordering::Relaxed);
    }

    /// One send per connection with TLS output and none in flight.
    fn flush_sends(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(mut conn) = self.take(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.closing != Closing::Dead && conn.send_buf.is_none() && conn.tls.wants_write() {
                let mut buf = Vec::new();
                while conn.tls.wants_write() {
                    if conn.tls.write_tls(&mut buf).is_err() {
                        break;
                    }
                }
                conn.inflight_plain = conn.out_accounted;
                conn.out_accounted = 0;
                conn.send_buf = Some(buf);
                conn.send_off = 0;
                self.push_send(&mut conn);
            }
            self.put_back(conn);
        }
    }

    // ---- commands from sessions ----

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Out(key, out) => {
                let Some(mut conn) = self.take(key) else {
                    return;
                };
                self.out(&mut conn, out);
                self.put_back(conn);
            }
            Cmd::Resume(key) => {
                let Some(mut conn) = self.take(key) else {
                    return;
                };
                if conn.suspended && conn.closing == Closing::Open {
                    conn.suspended = false;
                    if let Some(event) = conn.held.take() {
                        self.deliver(&mut conn, event);
                    }
                    if !conn.suspended {
                        self.advance(&mut conn);
                    }
                }
                self.put_back(conn);
            }
            Cmd::Dropped(key) => {
                let Some(mut conn) = self.take(key) else {
                    return;
                };
                self.begin_close(&mut conn, None);
                self.put_back(conn);
            }
        }
    }

    fn out(&mut self, conn: &mut Conn, out: Out) {
        match out {
            Out::Binary(bytes) | Out::Raw(bytes)
                if conn.closing != Closing::Open || conn.close_sent =>
            {
                if let Some(shared) = &conn.shared {
                    shared.pending_out.fetch_sub(bytes.len(), Ordering::SeqCst);
                    shared.wake();
                }
            }
            Out::Binary(bytes) => {
                let (header, n) = ws::binary_header(bytes.len());
                let mut writer = conn.tls.writer();
                let _ = writer.write_all(&header[..n]);
                let _ = writer.write_all(&bytes);
                conn.out_accounted += bytes.len();
                self.mark_dirty(conn);
            }
            Out::Raw(bytes) => {
                let _ = conn.tls.writer().write_all(&bytes);
                conn.out_accounted += bytes.len();
                self.mark_dirty(conn);
            }
            Out::Close { code, reason } => self.begin_close(conn, Some((code, &reason))),
            Out::Eof => self.begin_close(conn, None),
        }
    }

    // ---- plaintext ----

    /// Hands an event to the session; when its queue is full, keeps it and stops reading.
    fn deliver(&mut self, conn: &mut Conn, event: WsEvent) {
        let Some(up) = &conn.up else {
            return;
        };
        let event = match up.try_send(event) {
            Err(mpsc::error::TrySendError::Full(event)) => event,
            _ => return,
        };
        let shared = conn.shared.as_ref().expect("a session");
        shared.paused.store(true, Ordering::SeqCst);
        // The session may have drained the queue before it could see `paused`: retry once.
        match up.try_send(event) {
            Err(mpsc::error::TrySendError::Full(event)) => {
                conn.held = Some(event);
                conn.suspended = true;
                self.stats.read_pauses.fetch_add(1, Ordering::Relaxed);
                self.cancel_recv(conn);
            }
            _ => shared.paused.store(false, Ordering::SeqCst),
        }
    }

    fn advance(&mut self, conn: &mut Conn) {
        if conn.closing != Closing::Open {
            conn.plain_in = Vec::new();
            return;
        }
        if conn.phase == Phase::Handshake && !conn.tls.is_handshaking() {
            conn.phase = Phase::Head;
        }
        if conn.phase == Phase::Head && !conn.plain_in.is_empty() {
            self.read_head(conn);
        }
        match conn.phase {
            Phase::Ws => self.ws_input(conn),
            Phase::Http => {
                if !conn.suspended && !conn.plain_in.is_empty() {
                    let chunk = std::mem::take(&mut conn.plain_in);
                    self.deliver(conn, WsEvent::Frame(chunk));
                }
            }
            Phase::Handshake | Phase::Head => {
                if conn.eof && conn.closing == Closing::Open {
                    self.hard_close(conn);
                }
            }
        }
        if conn.eof && !conn.suspended {
            conn.input_done = true;
        }
        if conn.input_done && conn.held.is_none() {
            conn.up = None;
        }
        conn.release_plain_if_empty();
    }

    fn ws_input(&mut self, conn: &mut Conn) {
        // Consumed bytes are dropped once at the end, not after every frame: a receive full of
        // tiny frames (6-byte pongs) would otherwise cost a copy of the rest per frame.
        let mut consumed = 0;
        while !conn.suspended && !conn.input_done && conn.closing == Closing::Open {
            let Some(codec) = conn.ws.as_mut() else {
                break;
            };
            let (used, step) = codec.step(&conn.plain_in[consumed..]);
            consumed += used;
            debug_assert!(
                consumed <= conn.plain_in.len(),
                "the codec consumed past its input"
            );
            match step {
                Step::NeedMore => break,
                Step::Nothing => {}
                Step::Event(event) => self.deliver(conn, event),
                Step::Ping(payload) => {
                    if !conn.close_sent {
                        let _ = conn.tls.writer().write_all(&ws::pong(payload));
                    }
                }
                Step::Close(code) => {
                    conn.input_done = true;
                    // Echo the peer's code (RFC 6455 5.5.1); the session sees Closed. 1005, 1006
                    // and 1015 must never be sent (7.4.1): answer those, and nonsense, with 1000.
                    let code = code
                        .filter(|c| (1000..=4999).contains(c) && ![1005, 1006, 1015].contains(c))
                        .unwrap_or(1000);
                    self.begin_close(conn, Some((code, "")));
                }
                Step::Fatal(event, _code) => {
                    // The session decides how to close (it knows the application's codes).
                    conn.input_done = true;
                    self.deliver(conn, event);
                }
            }
        }
        // A close inside the loop already dropped the whole buffer.
        let consumed = consumed.min(conn.plain_in.len());
        conn.plain_in.drain(..consumed);
    }

    fn read_head(&mut self, conn: &mut Conn) {
        enum Decision {
            Partial,
            Reject(&'static str),
            /// Head length, accept key, whether the Host is localhost.
            Upgrade(usize, String, bool),
            Bridge,
        }
        let max = self.cfg.max_head_bytes;
        let decision = {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&conn.plain_in) {
                Ok(httparse::Status::Partial) if conn.plain_in.len() > max => {
                    Decision::Reject("431 Request Header Fields Too Large")
                }
                Ok(httparse::Status::Partial) => Decision::Partial,
                Err(httparse::Error::TooManyHeaders) => {
                    Decision::Reject("431 Request Header Fields Too Large")
                }
                Err(_) => Decision::Reject("400 Bad Request"),
                Ok(httparse::Status::Complete(n)) if n > max => {
                    Decision::Reject("431 Request Header Fields Too Large")
                }
                Ok(httparse::Status::Complete(n)) => {
                    let origin = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("origin"))
                        .map(|h| std::str::from_utf8(h.value).unwrap_or("(not text)").trim());
                    match websocket_key(&request, &self.cfg.ws_path) {
                        Some(key) if self.handler.websocket_origin_allowed(origin) => {
                            Decision::Upgrade(
                                n,
                                tungstenite::handshake::derive_accept_key(key.as_bytes()),
                                request
                                    .headers
                                    .iter()
                                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                                    .and_then(|h| std::str::from_utf8(h.value).ok())
                                    .is_some_and(is_localhost),
                            )
                        }
                        // Not an upgrade, or one from a refused origin: the router answers.
                        _ => Decision::Bridge,
                    }
                }
            }
        };
        match decision {
            Decision::Partial => {}
            Decision::Reject(status) => {
                let response = format!(
                    "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n{}{}\r\n",
                    self.cfg.extra_response_headers, self.cfg.not_for_localhost_header
                );
                let _ = conn.tls.writer().write_all(response.as_bytes());
                self.begin_close(conn, None);
            }
            Decision::Upgrade(n, accept, localhost) => {
                let host_bound = if localhost {
                    ""
                } else {
                    self.cfg.not_for_localhost_header.as_str()
                };
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{}{host_bound}\r\n",
                    self.cfg.extra_response_headers
                );
                let _ = conn.tls.writer().write_all(response.as_bytes());
                conn.plain_in.drain(..n);
                let (shared, rx) = self.attach(conn);
                conn.phase = Phase::Ws;
                conn.ws = Some(WsCodec::new(
                    self.cfg.frame_limit,
                    self.cfg.max_message_bytes,
                ));
                self.stats
                    .websocket_upgrades
                    .fetch_add(1, Ordering::Relaxed);
                self.handler
                    .websocket(conn.peer, session::connection(shared, rx));
            }
            Decision::Bridge => {
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                let (shared, rx) = self.attach(conn);
                conn.phase = Phase::Http;
                self.stats.http_bridged.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(session::http_pump(ours, shared, rx));
                self.handler.http(conn.peer, theirs);
            }
        }
    }

    fn attach(&mut self, conn: &mut Conn) -> (Arc<Shared>, mpsc::Receiver<WsEvent>) {
        let capacity = self.cfg.inbound_queue.max(2);
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            key: conn.key,
            cmd: self.cmd_tx.clone(),
            pending_out: AtomicUsize::new(0),
            budget: self.cfg.outbound_budget,
            paused: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            notify: Notify::new(),
            inbound_capacity: capacity,
            close_timeout: self.cfg.close_timeout,
        });
        conn.up = Some(tx);
        conn.shared = Some(shared.clone());
        (shared, rx)
    }
}

/// Whether a `Host` header names `localhost` or a `*.localhost` name (any port).
fn is_localhost(host: &str) -> bool {
    if host.trim_start().starts_with('[') {
        return false;
    }
    let name = host.trim().split(':').next().unwrap_or_default();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The `Sec-WebSocket-Key` of a valid upgrade request for `path`.
fn websocket_key<'a>(request: &httparse::Request<'_, 'a>, path: &str) -> Option<&'a str> {
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let target = request.path?;
    if target.split('?').next() != Some(path) {
        return None;
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let upgrade = header("upgrade")?;
    if !upgrade
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
    {
        return None;
    }
    let connection_has_upgrade = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_has_upgrade || header("sec-websocket-version") != Some("13") {
        return None;
    }
    header("sec-websocket-key").filter(|k| !k.is_empty())
}

impl Drop for Driver {
    fn drop(&mut self) {
        for conn in self.conns.iter().flatten() {
            // SAFETY: our sockets.
            unsafe { libc::close(conn.fd) };
        }
    }
}
