//! The real `tern-cli` binary, run as a user would: one home directory per user, the test
//! server's address and pinned certificate hash, stdin piped in, stdout and stderr captured.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;

use super::{PASSWORD, TestServer, WAIT};

/// The CLI binary of this workspace, built (or confirmed up to date) by cargo.
pub fn cli_binary() -> PathBuf {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo.args([
        "build", "--locked", "-q", "-p", "tern-cli", "--bin", "tern-cli",
    ]);
    // What cargo sets for this test process (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, OUT_DIR, ...)
    // must not reach the nested cargo: ring's build script reruns when any of them changes, so
    // the nested build rebuilt ring and the 18 crates above it, and the next cargo in the
    // shell rebuilt them back (two minutes of every CI run).
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if is_set_by_cargo_for_tests(key) {
            cargo.env_remove(key);
        }
    }
    let status = cargo.status().expect("run cargo build for tern-cli");
    assert!(status.success(), "building tern-cli failed");
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_tern")).with_file_name("tern-cli");
    assert!(cli.exists(), "{} exists", cli.display());
    cli
}

/// Environment variables cargo gives a test process (not the ones the person's shell set, such
/// as CARGO_HOME or CARGO_TARGET_DIR).
fn is_set_by_cargo_for_tests(key: &str) -> bool {
    const PREFIXES: [&str; 5] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_EXE_",
        "CARGO_CFG_",
    ];
    const NAMES: [&str; 4] = [
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p)) || NAMES.contains(&key)
}

/// What one CLI run printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// One user's CLI installation.
pub struct Cli {
    bin: PathBuf,
    home: tempfile::TempDir,
    server: String,
    cert_hash: String,
    /// `TERN_TEST_PLAINTEXT=1` (debug builds only): the at-rest test's control run.
    plaintext: bool,
}

impl Cli {
    pub fn new(bin: &Path, server: &TestServer) -> Cli {
        Cli {
            bin: bin.to_path_buf(),
            home: tempfile::tempdir().expect("cli home"),
            server: server.addr.to_string(),
            cert_hash: hex::encode(server.cert_hash),
            plaintext: false,
        }
    }

    /// The same installation with end-to-end encryption switched off when `plaintext`.
    pub fn with_plaintext(self, plaintext: bool) -> Cli {
        Cli { plaintext, ..self }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Runs `tern-cli ARGS` with `stdin`, whatever its exit status.
    pub async fn output(&self, args: &[&str], stdin: &str) -> Output {
        self.output_in(args, stdin, None).await
    }

    /// Runs `tern-cli ARGS` with `stdin` in `cwd` (default: the test's), whatever its exit status.
    pub async fn output_in(&self, args: &[&str], stdin: &str, cwd: Option<&Path>) -> Output {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--server")
            .arg(&self.server)
            .arg("--cert-hash")
            .arg(&self.cert_hash)
            .arg("--home")
            .arg(self.home.path())
            .arg("--transport")
            .arg("ws")
            .args(args)
            .env("TERN_PASSWORD", PASSWORD)
            .env_remove("TERN_TEST_PLAINTEXT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.plaintext {
            cmd.env("TERN_TEST_PLAINTEXT", "1");
        }
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().expect("spawn tern-cli");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("write stdin");
        drop(input);
        // Generous: a chat that sends a file or a search that backfills takes a while.
        let out = tokio::time::timeout(WAIT * 4, child.wait_with_output())
            .await
            .expect("tern-cli finished in time")
            .expect("tern-cli output");
        Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `tern-cli ARGS` with `stdin`, returns stdout; fails the test on a non-zero exit.
    pub async fn run(&self, args: &[&str], stdin: &str) -> String {
        self.run_in(args, stdin, None).await
    }

    /// [`Cli::run`] in `cwd`.
    pub async fn run_in(&self, args: &[&str], stdin: &str, cwd: Option<&Path>) -> String {
        let out = self.output_in(args, stdin, cwd).await;
        assert!(
            out.success,
            "tern-cli {args:?} failed\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        out.stdout
    }
}

/// Every file under `dir`, recursively, that contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(path);
            }
        }
    }
    hits
}
