//! Embeds the built web app (`clients/web/dist`, made by `scripts/build-web.sh`) into the `tern`
//! binary when it exists at build time, so `tern serve` serves a chat at `/` with no other step.
//! Without it the binary embeds nothing and `/` explains how to build the app (`src/web.rs`).
//!
//! `TERN_WEB_DIST` points at another directory to embed (or at a missing one to embed nothing).
//! The generated `$OUT_DIR/web_assets.rs` is a table of `include_bytes!`, written only when it
//! changes, so an unchanged app never relinks the server.

use std::path::{Path, PathBuf};

/// Files larger than this are not embedded (the build fails loudly instead): the binary is
/// loaded whole, and a web app bigger than this is a build mistake, not an app.
const MAX_EMBEDDED_BYTES: u64 = 64 * 1024 * 1024;
/// Files embedded at most (a Vite build is a few dozen).
const MAX_EMBEDDED_FILES: usize = 10_000;

fn main() {
    println!("cargo:rerun-if-env-changed=TERN_WEB_DIST");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = std::env::var_os("TERN_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../clients/web/dist"));
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("web_assets.rs");

    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        // A directory is scanned recursively by cargo for changes.
        println!("cargo:rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files);
    } else {
        // Watch the nearest existing ancestor, so creating `dist` later triggers a rebuild
        // (a missing path would make cargo rerun this script, and relink, on every build).
        let mut watch = dist.parent().map(Path::to_path_buf);
        while let Some(dir) = &watch {
            if dir.is_dir() {
                break;
            }
            watch = dir.parent().map(Path::to_path_buf);
        }
        if let Some(dir) = watch {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    files.sort();
    assert!(
        files.len() <= MAX_EMBEDDED_FILES,
        "{} has more than {MAX_EMBEDDED_FILES} files",
        dist.display()
    );
    let mut code = String::from(
        "/// The web app embedded at build time: (path relative to the app's root, bytes).\n\
         pub static EMBEDDED: &[(&str, &[u8])] = &[\n",
    );
    for (relative, absolute) in &files {
        code.push_str(&format!(
            "    ({relative:?}, include_bytes!({:?})),\n",
            absolute.display().to_string()
        ));
    }
    code.push_str("];\n");
    if std::fs::read_to_string(&out).ok().as_deref() != Some(code.as_str()) {
        std::fs::write(&out, code).expect("write web_assets.rs");
    }
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            panic!("{}: file names must be UTF-8", path.display());
        };
        // Dot files (editor swap files, .DS_Store) are never part of the app.
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            collect(root, &path, files);
        } else if kind.is_file() {
            let size = entry.metadata().expect("metadata").len();
            assert!(
                size <= MAX_EMBEDDED_BYTES,
                "{} is {size} bytes, above {MAX_EMBEDDED_BYTES}",
                path.display()
            );
            let relative = path
                .strip_prefix(root)
                .expect("inside the root")
                .to_str()
                .expect("UTF-8")
                .replace('\\', "/");
            let absolute = path.canonicalize().expect("canonical path");
            files.push((relative, absolute));
        }
    }
}
