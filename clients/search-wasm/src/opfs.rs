//! The index's storage in the browser: SQLite's OPFS "sync access handle pool" VFS
//! (`sqlite-wasm-vfs`'s sahpool, ported from SQLite's own opfs-sahpool), installed once per
//! worker as SQLite's default VFS, so `rusqlite::Connection::open(name)` in tern-search opens a
//! file of the pool. Sync access handles exist only in dedicated workers (and need a secure
//! context); one connection per database.

use std::cell::RefCell;

use sqlite_wasm_rs::WasmOsCallback;
use sqlite_wasm_rs::vfs::VfsFilesManager;
use sqlite_wasm_vfs::sahpool::{OpfsSAHError, OpfsSAHPoolCfgBuilder, OpfsSAHPoolUtil, install};
use wasm_bindgen::prelude::*;

use crate::js::{JsResult, err, fail};

/** The VFS's name inside SQLite. */
const VFS_NAME: &str = "tern-opfs";
/// Slots taken on first install: the database, its rollback journal and temp files, with room.
const INITIAL_CAPACITY: usize = 6;

thread_local! {
    /// The installed pool (a worker is single-threaded; the pool lives as long as the worker).
    static POOL: RefCell<Option<OpfsSAHPoolUtil>> = const { RefCell::new(None) };
}

/// Installs the pool at `directory` (relative to the OPFS root) as SQLite's default VFS.
/// `false` when this context has no OPFS sync access handles (not a dedicated worker, not a
/// secure context, or a browser without them): the caller keeps the index in memory.
#[wasm_bindgen(js_name = installOpfs)]
pub async fn install_opfs(directory: String) -> JsResult<bool> {
    if POOL.with(|p| p.borrow().is_some()) {
        return Err(fail("the OPFS pool is already installed in this worker"));
    }
    let cfg = OpfsSAHPoolCfgBuilder::new()
        .vfs_name(VFS_NAME)
        .directory(&directory)
        .initial_capacity(INITIAL_CAPACITY)
        .build();
    match install::<WasmOsCallback>(&cfg, true).await {
        Ok(util) => {
            POOL.with(|p| *p.borrow_mut() = Some(util));
            Ok(true)
        }
        Err(OpfsSAHError::NotSupported) => Ok(false),
        Err(e) => Err(err(e)),
    }
}

/// Deletes `name` and its journal from the pool (an index that cannot be opened any more).
#[wasm_bindgen(js_name = removeDatabase)]
pub fn remove_database(name: &str) -> JsResult<()> {
    with_pool(|util| {
        for file in [name.to_owned(), format!("{name}-journal")] {
            util.remove(&file).map_err(err)?;
        }
        Ok(())
    })
}

/// Releases the pool's OPFS access handles (the index closed first), so another worker (a tab
/// taking over) can open the files at once instead of waiting for this worker to be gone.
#[wasm_bindgen(js_name = pauseOpfs)]
pub fn pause_opfs() -> JsResult<()> {
    with_pool(|util| util.pause().map_err(err))
}

/// Logout: every file of the pool is deleted and the pool uninstalled (its access handles
/// closed), so the page can remove the directory itself. The index must be closed first.
#[wasm_bindgen(js_name = wipeOpfs)]
pub fn wipe_opfs() -> JsResult<()> {
    let util = POOL.with(|p| p.borrow_mut().take());
    let Some(util) = util else { return Ok(()) };
    util.clear().map_err(err)?;
    // SAFETY: no connection of this pool is open (the worker freed the index first), which is
    // what `uninstall` requires of its caller.
    unsafe { util.uninstall() }.map_err(err)
}

fn with_pool<T>(f: impl FnOnce(&OpfsSAHPoolUtil) -> JsResult<T>) -> JsResult<T> {
    POOL.with(|p| match p.borrow().as_ref() {
        Some(util) => f(util),
        None => Err(fail("the OPFS pool is not installed")),
    })
}
