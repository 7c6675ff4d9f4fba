//! The store conformance suite on the embedded (fjall) backend, plus what only real processes
//! can show: everything reported committed survives `kill -9`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tern_engine::store::conformance;
use tern_engine::store::embedded::{EmbeddedStore, MAX_HISTORY_LIMIT};
use tern_engine::store::{CommitBatch, CursorUpdate, HistoryQuery, Store, StoreError};
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::Message;

/// Upper bound for each async test, so a deadlock fails the run instead of hanging it.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

fn open(path: &Path) -> EmbeddedStore {
    EmbeddedStore::open(path)
        .unwrap_or_else(|e| panic!("opening the store at {}: {e}", path.display()))
}

fn tempdir() -> TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"))
}

async fn bounded<F: std::future::Future<Output = ()>>(what: &str, f: F) {
    if tokio::time::timeout(TEST_TIMEOUT, f).await.is_err() {
        panic!("{what} did not finish within {TEST_TIMEOUT:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_conformance() {
    // Each store gets its own directory; they are all removed when the test ends.
    let dirs = Arc::new(Mutex::new(Vec::<TempDir>::new()));
    let make = || {
        let dirs = Arc::clone(&dirs);
        async move {
            let dir = tempdir();
            let store = open(dir.path());
            dirs.lock().unwrap_or_else(|p| p.into_inner()).push(dir);
            store
        }
    };
    bounded("run_all", conformance::run_all(make)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_key_store_passes_conformance() {
    let dirs = Arc::new(Mutex::new(Vec::<(TempDir, EmbeddedStore)>::new()));
    let make = || {
        let dirs = Arc::clone(&dirs);
        async move {
            let dir = tempdir();
            let store = open(dir.path());
            let keys = tern_engine::store::embedded_keys::EmbeddedKeys::open(&store)
                .unwrap_or_else(|e| panic!("opening the key store: {e}"));
            dirs.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((dir, store));
            keys
        }
    };
    bounded("run_all_keys", conformance::run_all_keys(make)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_reopen() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    bounded(
        "check_reopen",
        conformance::check_reopen(|| {
            let path = path.clone();
            async move { open(&path) }
        }),
    )
    .await;
}

fn message(conversation: ConversationId, seq: u64) -> Message {
    Message {
        conversation,
        seq,
        message_id: MessageId(u128::from(seq)),
        sender_user: UserId(1),
        sender_device: DeviceId(2),
        client_msg_id: u128::from(seq),
        timestamp_ms: seq,
        content_type: "text".to_owned(),
        payload: seq.to_be_bytes().to_vec(),
        files: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_capped() {
    bounded("history_pages_are_capped", async {
        let dir = tempdir();
        let store = open(dir.path());
        let conv = ConversationId::random();
        let messages: Vec<Message> = (1..=1500).map(|s| message(conv, s)).collect();
        store
            .commit(CommitBatch {
                messages,
                cursors: Vec::new(),
            })
            .await
            .expect("commit");
        let cap = u64::from(MAX_HISTORY_LIMIT);
        let newest = store
            .history(HistoryQuery::before(conv, 0, u32::MAX))
            .await
            .expect("history");
        let want: Vec<u64> = (1500 - cap + 1..=1500).collect();
        assert_eq!(newest.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
        let oldest = store
            .history(HistoryQuery::after(conv, 10, 5000))
            .await
            .expect("history");
        let want: Vec<u64> = (11..=10 + cap).collect();
        assert_eq!(oldest.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
        let none = store
            .history(HistoryQuery::before(conv, 0, 0))
            .await
            .expect("history");
        assert!(none.is_empty(), "limit 0 returns an empty page");
    })
    .await;
}

#[test]
fn a_second_open_of_the_same_directory_fails_cleanly() {
    let dir = tempdir();
    let first = open(dir.path());
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Backend(_)) => {}
        other => panic!("a second open while the first store is alive must fail, got {other:?}"),
    }
    drop(first);
    // Once the first is dropped the directory is free again.
    drop(open(dir.path()));
}

// ---------------------------------------------------------------------------------------------
// kill -9

/// Set in the child's environment to the store directory; its presence turns `crash_child`
/// from a no-op into the writer.
const CHILD_DIR_ENV: &str = "TERN_STORE_CRASH_CHILD_DIR";
/// The child stops by itself after this long, in case the parent died without killing it.
const CHILD_MAX_LIFETIME: Duration = Duration::from_secs(60);
const CRASH_CONVERSATION: ConversationId = ConversationId(0x7e57_c0de);
const CRASH_DEVICE: DeviceId = DeviceId(0xde71ce);
const CURSOR_USER: UserId = UserId(0xc05);

/// Batches of varying size, a pure function of their first seq, so the parent knows every
/// batch boundary without hearing from the child.
fn crash_batch_len(first_seq: u64) -> u64 {
    1 + first_seq * 7 % 23
}

fn crash_batch(first_seq: u64) -> CommitBatch {
    let last = first_seq + crash_batch_len(first_seq) - 1;
    CommitBatch {
        messages: (first_seq..=last)
            .map(|s| message(CRASH_CONVERSATION, s))
            .collect(),
        cursors: vec![CursorUpdate {
            user: CURSOR_USER,
            device: CRASH_DEVICE,
            conversation: CRASH_CONVERSATION,
            seq: last,
        }],
    }
}

/// Child role of `committed_messages_survive_sigkill` (the same test re-run with
/// `CHILD_DIR_ENV` set): commits batches until killed, printing "committed N" (N = last seq of
/// the batch) only after `commit` returned.
fn crash_child(dir: std::ffi::OsString) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let store = open(Path::new(&dir));
        let started = Instant::now();
        let mut next = store.last_seq(CRASH_CONVERSATION).await.expect("last_seq") + 1;
        while started.elapsed() < CHILD_MAX_LIFETIME {
            let batch = crash_batch(next);
            next += batch.messages.len() as u64;
            store.commit(batch).await.expect("commit");
            let mut out = std::io::stdout().lock();
            // A write error means the parent is gone: stop.
            if writeln!(out, "committed {}", next - 1)
                .and_then(|()| out.flush())
                .is_err()
            {
                return;
            }
        }
    });
}

#[test]
fn committed_messages_survive_sigkill() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        return crash_child(dir);
    }
    let dir = tempdir();
    let exe = std::env::current_exe().expect("test binary path");
    // Every seq a fully applied batch can end on.
    let mut boundaries = std::collections::BTreeSet::from([0u64]);
    let mut s = 1;
    while s < 1_000_000 {
        s += crash_batch_len(s);
        boundaries.insert(s - 1);
    }

    let mut reported = 0u64;
    for round in 0..4u64 {
        let mut child = Command::new(&exe)
            .args([
                "committed_messages_survive_sigkill",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the child test process");
        let stdout = child.stdout.take().expect("child stdout");
        let mut stderr = child.stderr.take().expect("child stderr");
        let (tx, rx) = mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test committed_messages_... " on the same line first.
                if let Some(n) = line
                    .rsplit_once("committed ")
                    .and_then(|(_, n)| n.trim().parse().ok())
                    && tx.send(n).is_err()
                {
                    break;
                }
            }
        });
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });

        // Let the child get through a varying number of commits, then kill it at a point
        // that varies with the round: right after a report, or some microseconds into the
        // next commit.
        let wanted = 10 + round * 13;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(n) => {
                    assert!(
                        n > reported,
                        "child reported {n} after {reported}: seqs must grow"
                    );
                    reported = n;
                    seen += 1;
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err = stderr_reader.join().unwrap_or_default();
                    panic!(
                        "round {round}: child reported {seen} of {wanted} commits in time; its stderr:\n{err}"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_micros(round * 700));
        child.kill().expect("SIGKILL to the child");
        let status = child.wait().expect("waiting for the child");
        assert!(
            !status.success(),
            "the child must have died from the kill, not exited"
        );
        let _ = reader.join();
        let _ = stderr_reader.join();
        // Reports already in the pipe when the kill landed were acknowledged too.
        for n in rx.try_iter() {
            reported = reported.max(n);
        }

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(bounded("verifying after kill -9", async {
            let store = open(dir.path());
            let last = store.last_seq(CRASH_CONVERSATION).await.expect("last_seq");
            assert!(
                last >= reported,
                "round {round}: reported committed up to {reported}, but only {last} survived"
            );
            assert!(
                boundaries.contains(&last),
                "round {round}: last_seq {last} is not a batch boundary: a batch was torn"
            );
            // Page backwards from the newest.
            let mut before = last + 1;
            while before > 1 {
                let page = store
                    .history(HistoryQuery::before(CRASH_CONVERSATION, before, 1000))
                    .await
                    .expect("history");
                assert!(
                    !page.is_empty(),
                    "round {round}: history below {before} is empty, last_seq is {last}"
                );
                for m in page.iter().rev() {
                    before -= 1;
                    assert_eq!(
                        *m,
                        message(CRASH_CONVERSATION, before),
                        "round {round}: message {before} is wrong"
                    );
                }
            }
            let cursor = store
                .cursor(CRASH_DEVICE, CRASH_CONVERSATION)
                .await
                .expect("cursor");
            assert_eq!(
                cursor, last,
                "round {round}: the cursor committed with the last batch must survive with it"
            );
        }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_file_store_passes_conformance() {
    let dirs = Arc::new(Mutex::new(Vec::<(TempDir, EmbeddedStore)>::new()));
    let make = || {
        let dirs = Arc::clone(&dirs);
        async move {
            let dir = tempdir();
            let store = open(dir.path());
            let files = tern_engine::store::files_embedded::EmbeddedFiles::open(&store)
                .unwrap_or_else(|e| panic!("opening the file store: {e}"));
            dirs.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((dir, store));
            files
        }
    };
    bounded("run_all_files", conformance::run_all_files(make)).await;
}
