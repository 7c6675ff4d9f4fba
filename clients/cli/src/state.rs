//! The CLI's small state file: the session token, this installation's device id and the
//! per-conversation cursors (what this device has already shown).
//!
//! Lives in `$TERN_CLI_HOME/state.json` (default `~/.tern-cli/state.json`), mode 0600 because it
//! holds a bearer token. Written atomically (temp file + rename); cursors are merged with what is
//! on disk so two `chat` processes on one home do not move each other's cursors backwards.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::tern_wire::msg::Cursor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub server: String,
    /// Pinned certificate hashes given at login (hex), reused by later commands.
    #[serde(default)]
    pub cert_hashes: Vec<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub username: String,
    pub user_id: UserId,
    pub token: String,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Chosen once per installation, stable across logins: the server keeps a cursor per device.
    #[serde(default)]
    pub device_id: Option<DeviceId>,
    #[serde(default)]
    pub session: Option<Session>,
    /// Whose cursors these are; they are dropped when another user logs in here.
    #[serde(default)]
    pub cursor_owner: Option<UserId>,
    #[serde(default)]
    pub cursors: BTreeMap<ConversationId, u64>,
}

impl State {
    pub fn dir(home: Option<&Path>) -> Result<PathBuf> {
        if let Some(h) = home {
            return Ok(h.to_path_buf());
        }
        let base = std::env::var_os("HOME")
            .context("HOME is not set; pass --home or set TERN_CLI_HOME")?;
        Ok(PathBuf::from(base).join(".tern-cli"))
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn load(dir: &Path) -> Result<State> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("corrupt state file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        create_private_dir(dir)?;
        let path = Self::path(dir);
        let tmp = dir.join(format!("state.json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self)?;
        {
            let mut f = private_file(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The device id, created on first use.
    pub fn device(&mut self) -> DeviceId {
        *self.device_id.get_or_insert_with(DeviceId::random)
    }

    pub fn cursor_list(&self) -> Vec<Cursor> {
        self.cursors
            .iter()
            .map(|(c, s)| Cursor {
                conversation: *c,
                seq: *s,
            })
            .collect()
    }

    /// Saves `cursors` for `owner`, merged (max) with what is on disk now.
    pub fn save_cursors(dir: &Path, owner: UserId, cursors: &[Cursor]) -> Result<()> {
        let mut st = Self::load(dir)?;
        if st.cursor_owner != Some(owner) {
            return Ok(()); // someone else logged in meanwhile; these cursors are not theirs
        }
        for c in cursors {
            let e = st.cursors.entry(c.conversation).or_insert(0);
            *e = (*e).max(c.seq);
        }
        st.save(dir)
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(unix)]
fn private_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_cursor_merge() {
        let dir = std::env::temp_dir().join(format!("tern-cli-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut st = State::default();
        let dev = st.device();
        let owner = UserId(42);
        st.cursor_owner = Some(owner);
        st.cursors.insert(ConversationId(1), 5);
        st.save(&dir).expect("save");
        State::save_cursors(
            &dir,
            owner,
            &[
                Cursor {
                    conversation: ConversationId(1),
                    seq: 3,
                },
                Cursor {
                    conversation: ConversationId(2),
                    seq: 7,
                },
            ],
        )
        .expect("merge");
        let back = State::load(&dir).expect("load");
        assert_eq!(back.device_id, Some(dev));
        assert_eq!(
            back.cursors.get(&ConversationId(1)),
            Some(&5),
            "never moves backwards"
        );
        assert_eq!(back.cursors.get(&ConversationId(2)), Some(&7));
        // Another owner's cursors are not written.
        State::save_cursors(
            &dir,
            UserId(1),
            &[Cursor {
                conversation: ConversationId(3),
                seq: 1,
            }],
        )
        .expect("skip");
        assert!(
            !State::load(&dir)
                .expect("load")
                .cursors
                .contains_key(&ConversationId(3))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(State::path(&dir))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
