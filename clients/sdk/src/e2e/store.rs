//! Where a device's sealed crypto state lives on disk, and its pickle key.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tern_core::crypto::{CryptoError, CryptoStore};

use crate::error::{Error, Result};

/// Sealed crypto state in one file, replaced atomically.
pub struct FileCryptoStore {
    path: PathBuf,
}

impl FileCryptoStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl CryptoStore for FileCryptoStore {
    fn save(&mut self, sealed_state: &[u8]) -> std::result::Result<(), CryptoError> {
        let tmp = self.path.with_extension("tmp");
        let store = |e: std::io::Error| CryptoError::Store(format!("{}: {e}", tmp.display()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(store)?;
        file.write_all(sealed_state).map_err(store)?;
        file.sync_all().map_err(store)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(store)?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn load(&self) -> std::result::Result<Option<Vec<u8>>, CryptoError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CryptoError::Store(format!("{}: {e}", self.path.display()))),
        }
    }
}

/// Reads (or creates, 0600) a 32-byte pickle key file.
pub fn load_or_create_pickle_key(path: &Path) -> Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| Error::Config(format!("{}: not a 32-byte key", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| Error::Config(format!("random: {e}")))?;
            let mut store = FileCryptoStore::new(path);
            store
                .save(&key)
                .map_err(|e| Error::Config(format!("pickle key: {e}")))?;
            Ok(key)
        }
        Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
    }
}
