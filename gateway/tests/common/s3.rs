//! The S3-compatible server of the file tests (`tests/files_http.rs`, `tests/files.rs`): a fresh
//! bucket per test on the server `TERN_TEST_S3*` names (what `scripts/s3-server.sh start`
//! exports, as `scripts/test.sh` does), or on a server of the test's own started through that
//! script. Under `CI=true` a missing `TERN_TEST_S3` fails the test instead.

use std::path::{Path, PathBuf};

use tern_sdk::tern_wire::ids::MessageId;

/// A bucket of an S3 server, with the directory s3s-fs keeps it in.
pub struct S3Bucket {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// The directory s3s-fs keeps the bucket's objects in (what a scan reads).
    pub dir: PathBuf,
    /// The server this test started (stopped on drop), if it was not given.
    _own: Option<OwnS3>,
}

struct OwnS3 {
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-server.sh")
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn parse_exports(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A fresh bucket for one test: a directory beside the given server's bucket (s3s-fs maps
/// buckets to directories), or a whole server of its own started through the script.
pub fn s3_bucket() -> S3Bucket {
    let (vars, own) = match std::env::var("TERN_TEST_S3") {
        Ok(endpoint) => {
            let get = |k: &str| {
                std::env::var(k).unwrap_or_else(|_| panic!("TERN_TEST_S3 is set, {k} is not"))
            };
            let mut vars = std::collections::HashMap::new();
            vars.insert("TERN_TEST_S3".to_owned(), endpoint);
            for k in [
                "TERN_TEST_S3_ACCESS_KEY",
                "TERN_TEST_S3_SECRET_KEY",
                "TERN_TEST_S3_DIR",
            ] {
                vars.insert(k.to_owned(), get(k));
            }
            (vars, None)
        }
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "TERN_TEST_S3 is unset on CI: run eval \"$(bash scripts/s3-server.sh start DIR)\" \
                 before the tests"
            );
            let dir = tempfile::tempdir().expect("tempdir");
            let out = std::process::Command::new("bash")
                .arg(script())
                .arg("start")
                .arg(dir.path())
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run scripts/s3-server.sh");
            assert!(
                out.status.success(),
                "scripts/s3-server.sh start failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            let vars = parse_exports(&String::from_utf8_lossy(&out.stdout));
            (vars, Some(OwnS3 { dir }))
        }
    };
    let given = PathBuf::from(&vars["TERN_TEST_S3_DIR"]);
    let data = given
        .parent()
        .expect("the bucket dir has a parent")
        .to_path_buf();
    let bucket = format!("t{}", MessageId::random().as_u128() & 0xffff_ffff_ffff);
    let dir = data.join(&bucket);
    std::fs::create_dir_all(&dir).expect("create the bucket directory");
    S3Bucket {
        endpoint: vars["TERN_TEST_S3"].clone(),
        access_key: vars["TERN_TEST_S3_ACCESS_KEY"].clone(),
        secret_key: vars["TERN_TEST_S3_SECRET_KEY"].clone(),
        bucket,
        dir,
        _own: own,
    }
}
