//! The halves handed to sessions, and the pump that bridges a connection to an HTTP server.
//!
//! Between the driver and a connection's owner:
//! - inbound: a bounded `mpsc` of [`WsEvent`]; when it is full the driver stops reading the
//!   socket and sets `paused`; the receiver sends `Resume` once it has drained half of it.
//! - outbound: commands on the driver's unbounded command channel, bounded per connection by
//!   `pending_out` (bytes queued and not yet written to the socket): `send` waits while it is
//!   above the budget, the driver lowers it when a send completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{Notify, mpsc};

use crate::WsEvent;

/// Slot and generation of a connection in its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

pub(crate) enum Out {
    /// One binary WebSocket message.
    Binary(Vec<u8>),
    /// Plaintext bytes (HTTP bridge).
    Raw(Vec<u8>),
    /// WebSocket close frame, then close_notify, then FIN.
    Close { code: u16, reason: String },
    /// close_notify, then FIN (HTTP bridge finished writing).
    Eof,
}

pub(crate) enum Cmd {
    Out(Key, Out),
    /// The session drained its inbound queue: read the socket again.
    Resume(Key),
    /// Every handle on the connection is gone.
    Dropped(Key),
}

/// State shared by the driver and the owner of one connection.
pub(crate) struct Shared {
    pub(crate) key: Key,
    pub(crate) cmd: mpsc::UnboundedSender<Cmd>,
    /// Bytes given to `send` and not yet written to the socket.
    pub(crate) pending_out: AtomicUsize,
    pub(crate) budget: usize,
    /// Set by the driver when the inbound queue was full and it stopped reading.
    pub(crate) paused: AtomicBool,
    /// No more sends are accepted (closing or closed).
    pub(crate) closed: AtomicBool,
    /// The socket is closed and the slot freed.
    pub(crate) gone: AtomicBool,
    /// Woken when `pending_out` drops, or `closed`/`gone` is set.
    pub(crate) notify: Notify,
    pub(crate) inbound_capacity: usize,
    pub(crate) close_timeout: Duration,
}

impl Shared {
    /// Called by the driver after it lowered `pending_out` or changed the flags.
    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
    }
}

/// Sends `Dropped` when the last half goes away.
struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.cmd.send(Cmd::Dropped(self.0.key));
    }
}

/// The send or receive side could not be used: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection closed")]
pub struct ConnectionClosed;

/// An upgraded WebSocket connection. Dropping both halves closes it.
pub struct WsConnection {
    pub receiver: WsReceiver,
    pub sender: WsSender,
}

pub struct WsReceiver {
    rx: mpsc::Receiver<WsEvent>,
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

pub struct WsSender {
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

pub(crate) fn connection(shared: Arc<Shared>, rx: mpsc::Receiver<WsEvent>) -> WsConnection {
    let guard = Arc::new(Guard(shared.clone()));
    WsConnection {
        receiver: WsReceiver {
            rx,
            shared: shared.clone(),
            _guard: guard.clone(),
        },
        sender: WsSender {
            shared,
            _guard: guard,
        },
    }
}

impl WsReceiver {
    /// The next event; after [`WsEvent::Closed`] every call returns `Closed`. Cancel-safe.
    pub async fn recv(&mut self) -> WsEvent {
        let event = self.rx.recv().await.unwrap_or(WsEvent::Closed);
        let shared = &self.shared;
        if shared.paused.load(Ordering::SeqCst)
            && self.rx.len() <= shared.inbound_capacity / 2
            && shared.paused.swap(false, Ordering::SeqCst)
        {
            let _ = shared.cmd.send(Cmd::Resume(shared.key));
        }
        event
    }
}

impl WsSender {
    /// Queues one binary message. Waits while this connection has more than the outbound
    /// budget queued and not yet written to its socket.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), ConnectionClosed> {
        send_out(&self.shared, Out::Binary(frame.to_vec()), frame.len()).await
    }

    /// Sends a close frame with this code (1000..=4999) and reason (cut to 120 bytes), then
    /// TLS close_notify, then closes the socket once flushed. Returns when the socket is
    /// closed, or after the close timeout.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let code = if (1000..=4999).contains(&code) {
            code
        } else {
            1008
        };
        let shared = &self.shared;
        let _ = shared.cmd.send(Cmd::Out(
            shared.key,
            Out::Close {
                code,
                reason: reason.to_owned(),
            },
        ));
        let _ = tokio::time::timeout(shared.close_timeout + Duration::from_secs(1), async {
            loop {
                let notified = shared.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shared.gone.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    /// Whether the connection no longer accepts messages.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

async fn send_out(shared: &Shared, out: Out, len: usize) -> Result<(), ConnectionClosed> {
    loop {
        let notified = shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.closed.load(Ordering::SeqCst) {
            return Err(ConnectionClosed);
        }
        if shared.pending_out.load(Ordering::SeqCst) <= shared.budget {
            break;
        }
        notified.await;
    }
    shared.pending_out.fetch_add(len, Ordering::SeqCst);
    shared
        .cmd
        .send(Cmd::Out(shared.key, out))
        .map_err(|_| ConnectionClosed)
}

/// Pumps plaintext between the connection (driver) and the HTTP server's end of a duplex.
pub(crate) async fn http_pump(io: DuplexStream, shared: Arc<Shared>, rx: mpsc::Receiver<WsEvent>) {
    let guard = Arc::new(Guard(shared.clone()));
    let mut receiver = WsReceiver {
        rx,
        shared: shared.clone(),
        _guard: guard.clone(),
    };
    let (mut read_half, mut write_half) = tokio::io::split(io);
    // Socket → HTTP server. A full duplex blocks here, the inbound queue fills, and the driver
    // stops reading the socket.
    let upstream = async move {
        while let WsEvent::Frame(bytes) = receiver.recv().await {
            if write_half.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = write_half.shutdown().await;
        drop(receiver);
    };
    let downstream = async move {
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if send_out(&shared, Out::Raw(buf[..n].to_vec()), n)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = shared.cmd.send(Cmd::Out(shared.key, Out::Eof));
    };
    tokio::join!(upstream, downstream);
    drop(guard);
}
