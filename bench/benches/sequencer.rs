//! The sans-IO engine core's send path, in messages per second:
//! `Send` → (`Lookup` → `LookedUp`) → `Commit` action → `Committed` → `SendAck` + `Deliver` actions.
//!
//! Steady state with a commit always in flight, as under load: one iteration sends `batch`
//! messages (round robin over the conversations; they queue behind the in-flight commit and form
//! the next group commit) and then reports the in-flight batch durable, which acknowledges and
//! delivers the previous `batch` messages and puts the new ones in flight. Every conversation
//! is a 1:1 (two members, one connected device each), so each message yields one `SendAck` and
//! one single-recipient `Deliver`; the actions are dropped, nothing is encoded.
//!
//! Two regimes (see `RigConfig::history`):
//! - `history`: conversations were loaded with messages already stored, as after any restart:
//!   the core asks the store about every new `client_msg_id` (answered at once here);
//! - `fresh`: conversations started empty and the dedupe window is not yet full, so memory
//!   answers every duplicate check (the rig is rebuilt, untimed, before any window fills).

mod common;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tern_bench::{Rig, RigConfig, TYPICAL_PAYLOAD};
use tern_engine::limits::EngineLimits;

const CONVERSATIONS: [usize; 2] = [1, 1000];
const BATCHES: [u64; 2] = [1, 64];

fn start(config: RigConfig) -> Rig {
    let mut rig = Rig::new(config);
    let mut out = Vec::new();
    rig.send(&mut out); // goes in flight at once: from now on sends queue behind a commit
    assert!(rig.committing() && out.is_empty());
    rig
}

/// Runs `iters` iterations of `batch` sends + one commit, timing only those.
fn steady(rig: &mut Option<Rig>, config: RigConfig, batch: u64, iters: u64) -> Duration {
    let window = EngineLimits::default().dedupe_window as u64;
    let mut out = Vec::with_capacity(2 * batch as usize + 2);
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let r = rig.get_or_insert_with(|| start(config));
        let chunk = if config.history {
            iters - done
        } else {
            // Iterations left before the busiest conversation's window could fill.
            let left = window.saturating_sub(r.busiest_conversation_messages() + 2);
            let chunk = (left * config.conversations as u64 / batch).min(iters - done);
            if chunk == 0 {
                *rig = None;
                continue;
            }
            chunk
        };
        let lookups = r.lookups;
        let started = Instant::now();
        for _ in 0..chunk {
            for _ in 0..batch {
                r.send(&mut out);
            }
            r.commit(&mut out);
            out.clear();
        }
        total += started.elapsed();
        done += chunk;
        if !config.history {
            assert_eq!(r.lookups, lookups, "fresh regime must not look anything up");
        }
    }
    total
}

fn sequencer(c: &mut Criterion) {
    for history in [true, false] {
        let regime = if history { "history" } else { "fresh" };
        let mut g = c.benchmark_group(format!("sequencer/{regime}"));
        for conversations in CONVERSATIONS {
            let config = RigConfig {
                conversations,
                members: 2,
                history,
                payload: TYPICAL_PAYLOAD,
            };
            for batch in BATCHES {
                g.throughput(Throughput::Elements(batch));
                let id = BenchmarkId::new(format!("{conversations}conv"), format!("batch{batch}"));
                let mut rig = None;
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| steady(&mut rig, config, batch, iters))
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = sequencer
}
criterion_main!(benches);
