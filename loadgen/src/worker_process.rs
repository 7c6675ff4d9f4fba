//! The hidden `worker` subcommand: a worker in its own process, talking JSON lines with the
//! coordinator (commands on stdin, results on stdout; logs go to stderr).

use std::path::Path;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;

use crate::protocol::{FromWorker, ToWorker, WorkerPlan};

#[derive(Debug, thiserror::Error)]
pub enum WorkerProcessError {
    #[error("cannot read the plan {0}: {1}")]
    Plan(String, String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs one worker to completion on a current-thread runtime (a multi-thread runtime measured
/// ~8x worse QUIC round trips here).
pub fn main(plan_path: &Path) -> Result<(), WorkerProcessError> {
    let bytes = std::fs::read(plan_path)
        .map_err(|e| WorkerProcessError::Plan(plan_path.display().to_string(), e.to_string()))?;
    let plan: WorkerPlan = serde_json::from_slice(&bytes)
        .map_err(|e| WorkerProcessError::Plan(plan_path.display().to_string(), e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WorkerProcessError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let (to_tx, to_rx) = mpsc::unbounded_channel::<ToWorker>();
        let (from_tx, mut from_rx) = mpsc::unbounded_channel::<FromWorker>();
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ToWorker>(&line) {
                    Ok(cmd) => {
                        if to_tx.send(cmd).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "unreadable command from the coordinator");
                        break;
                    }
                }
            }
            // stdin closed (the coordinator is gone): the worker's command channel closes
            // with it, which makes the worker shut down.
        });
        let writer = tokio::task::spawn_local(async move {
            let mut out = tokio::io::stdout();
            while let Some(m) = from_rx.recv().await {
                let Ok(mut line) = serde_json::to_vec(&m) else {
                    continue;
                };
                line.push(b'\n');
                if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                    break;
                }
                // Bye is the last message; leftover tasks may still hold a sender.
                if matches!(m, FromWorker::Bye) {
                    break;
                }
            }
        });
        crate::worker::run(plan, to_rx, from_tx).await;
        let _ = writer.await;
    });
    // Not a plain drop: that would wait for the blocking thread parked in a stdin read.
    rt.shutdown_background();
    Ok(())
}
