//! Fan-out: the cost of one committed message delivered to K connected devices of one group.
//!
//! One iteration reports a one-message batch durable (the send that produced it is untimed).
//! - `fanout/core/K`: `EngineCore::handle(Committed)` alone: building the recipient list from
//!   the member list and the connection index, the `SendAck`, the `Deliver` action (then
//!   dropping them).
//! - `fanout/driver/K`: the same plus what the driver does with those actions: encode the
//!   `Deliver` once (`tern_wire::encode_server`), then per recipient look up its queue, clone
//!   the shared `Bytes` and `try_send` it into a bounded tokio channel (and count it); encode
//!   and queue the `SendAck` for the sender. Queues are drained (untimed) after each iteration,
//!   i.e. consumers keep up; nobody awaits them, so task wake-ups are not included.
//!
//! Throughput is in recipients, so the per-recipient cost is time / K.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tern_bench::{Rig, RigConfig, TYPICAL_PAYLOAD, Tally};
use tern_engine::core::{Action, ConnId};
use tern_engine::driver::{Outbound, Tracking};
use tern_wire::msg::ServerMessage;
use tokio::sync::mpsc;

const RECIPIENTS: [usize; 4] = [2, 50, 1000, 10_000];
/// The gateway's default per-connection send queue (`send_queue_frames`).
const QUEUE_FRAMES: usize = 1024;

/// Stand-in for the driver's connection table.
struct Sinks {
    senders: HashMap<ConnId, mpsc::Sender<Outbound>>,
    receivers: Vec<mpsc::Receiver<Outbound>>,
    pushed: AtomicU64,
}

impl Sinks {
    fn new(conns: impl Iterator<Item = ConnId>) -> Self {
        let mut senders = HashMap::new();
        let mut receivers = Vec::new();
        for conn in conns {
            let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
            senders.insert(conn, tx);
            receivers.push(rx);
        }
        Sinks {
            senders,
            receivers,
            pushed: AtomicU64::new(0),
        }
    }

    fn push(&self, conn: ConnId, frame: Outbound) {
        if let Some(tx) = self.senders.get(&conn) {
            tx.try_send(frame)
                .expect("queues are drained every iteration");
            self.pushed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What `driver::Engine::execute` does with `Deliver` and `Reply`.
    fn dispatch(&self, actions: &mut Vec<Action>) {
        for action in actions.drain(..) {
            match action {
                Action::Deliver { conns, message } => {
                    let bytes = Bytes::from(tern_wire::encode_server(&message));
                    let tracking = match &*message {
                        ServerMessage::Deliver { message } => {
                            Tracking::Deliver(message.conversation, message.seq)
                        }
                        _ => Tracking::None,
                    };
                    for conn in conns {
                        self.push(
                            conn,
                            Outbound {
                                bytes: bytes.clone(),
                                tracking,
                            },
                        );
                    }
                }
                Action::Reply { conn, message } => {
                    let tracking = match &message {
                        ServerMessage::SendAck {
                            conversation, seq, ..
                        } => Tracking::OwnSend(*conversation, *seq),
                        _ => Tracking::None,
                    };
                    let bytes = Bytes::from(tern_wire::encode_server(&message));
                    self.push(conn, Outbound { bytes, tracking });
                }
                other => panic!("unexpected action {other:?}"),
            }
        }
    }

    fn drain(&mut self) -> usize {
        let mut n = 0;
        for rx in &mut self.receivers {
            while let Ok(frame) = rx.try_recv() {
                black_box(frame);
                n += 1;
            }
        }
        n
    }
}

fn config(recipients: usize) -> RigConfig {
    RigConfig {
        conversations: 1,
        members: recipients + 1, // member 0 sends; every other member's device receives
        history: false,
        payload: TYPICAL_PAYLOAD,
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout/core");
    for k in RECIPIENTS {
        let mut rig = Rig::new(config(k));
        let mut out = Vec::new();
        // Sanity: one ack, one Deliver reaching exactly k devices.
        rig.send(&mut out);
        rig.commit(&mut out);
        let t = Tally::of(&out);
        assert_eq!((t.acks, t.delivers, t.recipients, t.other), (1, 1, k, 0));
        out.clear();
        g.throughput(Throughput::Elements(k as u64));
        g.bench_function(BenchmarkId::from_parameter(k), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rig.send(&mut out);
                    let started = Instant::now();
                    rig.commit(&mut out);
                    out.clear();
                    total += started.elapsed();
                }
                total
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("fanout/driver");
    for k in RECIPIENTS {
        let config = config(k);
        let mut rig = Rig::new(config);
        let mut sinks = Sinks::new((0..config.members).map(|m| Rig::conn_of(&config, 0, m)));
        let mut out = Vec::new();
        rig.send(&mut out);
        rig.commit(&mut out);
        sinks.dispatch(&mut out);
        assert_eq!(sinks.drain(), k + 1, "k Delivers and one SendAck");
        g.throughput(Throughput::Elements(k as u64));
        g.bench_function(BenchmarkId::from_parameter(k), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rig.send(&mut out);
                    let started = Instant::now();
                    rig.commit(&mut out);
                    sinks.dispatch(&mut out);
                    total += started.elapsed();
                    sinks.drain();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = fanout
}
criterion_main!(benches);
