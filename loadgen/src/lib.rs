//! `tern-loadgen`: the load generator for Tern and its peers.
//!
//! * [`run`]: the coordinator (setup, workers, phases, /proc sampling, report).
//! * [`worker`]: what a worker does with its users; in-process or as a `worker` child process.
//! * [`target`]: the systems under test behind one interface (Tern via the SDK, Socket.IO,
//!   Centrifugo).
//! * [`payload`], [`accounting`], [`schedule`], [`population`]: message header, exact
//!   loss/duplicate/order accounting, open-loop schedules, who talks to whom.
//! * [`phase_stats`]: a worker's traffic statistics split into warm-up and measured.
//! * [`history`]: `--verify-history`, the stored history checked against the acknowledgements.
//! * [`histo`], [`report`], [`plot`], [`sysstat`]: measurements and their presentation.
//! * [`cli`]: flags and scenario files.
//! * [`rotation`]: `tern-loadgen rotation`, the cost of an e2e key rotation burst in one group.
//! * [`history_bench`]: `tern-loadgen history-bench`, history page latency on a long
//!   conversation (filled through the server) under other load.
//! * [`attack`]: `tern-loadgen attack ...`, hostile-client measurements (loopback only).

pub mod accounting;
pub mod attack;
pub mod cli;
pub mod histo;
pub mod history;
pub mod history_bench;
pub mod payload;
pub mod phase_stats;
pub mod plot;
pub mod population;
pub mod protocol;
pub mod report;
pub mod rotation;
pub mod run;
pub mod schedule;
pub mod sysstat;
pub mod target;
pub mod util;
pub mod worker;
pub mod worker_process;
