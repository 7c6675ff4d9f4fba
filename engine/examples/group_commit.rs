//! Measures what group commit buys on this disk: one commit of 1,000 messages against 1,000
//! one-message commits (each its own fsync).
//!
//! `cargo run --release -p tern-engine --example group_commit` (set TMPDIR to measure another
//! disk). The numbers go to RESULTS.md with the machine they ran on.

use std::time::Instant;

use tern_engine::store::embedded::EmbeddedStore;
use tern_engine::store::{CommitBatch, Store};
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::Message;

fn message(conversation: ConversationId, seq: u64) -> Message {
    Message {
        conversation,
        seq,
        message_id: MessageId(u128::from(seq)),
        sender_user: UserId(1),
        sender_device: DeviceId(2),
        client_msg_id: u128::from(seq),
        timestamp_ms: 1_700_000_000_000 + seq,
        content_type: "text".into(),
        payload: vec![0xab; 200],
        files: Vec::new(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path())?;
        let (grouped, single) = (ConversationId(1), ConversationId(2));
        let started = Instant::now();
        let messages = (1..=1000).map(|s| message(grouped, s)).collect();
        store.commit(CommitBatch { messages, cursors: Vec::new() }).await?;
        let one_batch = started.elapsed();
        let started = Instant::now();
        for s in 1..=1000 {
            store.commit(CommitBatch { messages: vec![message(single, s)], cursors: Vec::new() }).await?;
        }
        let thousand = started.elapsed();
        println!(
            "1 commit of 1,000 messages: {one_batch:?}; 1,000 commits of 1 message: {thousand:?} ({:?} each)",
            thousand / 1000
        );
        Ok(())
    })
}
