//! Shared files in the CLI: `/file PATH` in chat, `tern-cli download`, and how a file message
//! is shown.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use tern_sdk::tern_core::files::FileBody;

use crate::render::sanitize;

/// A declared type from the file name's extension (the server's allow-list checks it; the
/// recipient's download is verified by hash whatever it says). Unknown: octet-stream.
pub fn mime_for(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" | "md" | "log" => "text/plain",
        "csv" => "text/csv",
        "zip" => "application/zip",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

/// `1.5 MB`-style sizes (decimal units, like file managers).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `[file] name (size)` plus the caption, all sanitized (they come from the sender).
pub fn summary(body: &FileBody) -> String {
    let mut line = format!(
        "[file] {} ({})",
        sanitize(&body.name),
        human_size(body.size)
    );
    if !body.caption.is_empty() {
        line.push(' ');
        line.push_str(&sanitize(&body.caption));
    }
    line
}

/// Where `tern-cli download` writes a file by default: its name in the current directory,
/// reduced to a plain file name (a sender cannot choose `../../.bashrc`).
pub fn default_destination(name: &str) -> PathBuf {
    let base = Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = sanitize(&base)
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\u{FFFD}') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let clean = clean.trim().trim_start_matches('.').to_string();
    if clean.is_empty() {
        PathBuf::from("download.bin")
    } else {
        PathBuf::from(clean)
    }
}

/// A progress callback printing `-- <what>: NN%` to stderr when the percentage changes.
pub fn progress_printer(what: String) -> impl FnMut(u64, u64) -> ControlFlow<()> + Send {
    let mut last = None;
    move |done, total| {
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        if last != Some(percent) {
            last = Some(percent);
            eprint!("\r-- {what}: {percent}%");
            if percent == 100 {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_plain_names_in_the_current_directory() {
        assert_eq!(
            default_destination("report.pdf"),
            PathBuf::from("report.pdf")
        );
        assert_eq!(
            default_destination("../../.bashrc"),
            PathBuf::from("bashrc")
        );
        assert_eq!(default_destination("/etc/passwd"), PathBuf::from("passwd"));
        assert_eq!(default_destination(".."), PathBuf::from("download.bin"));
        assert_eq!(default_destination(""), PathBuf::from("download.bin"));
        assert_eq!(default_destination("a\x1bb"), PathBuf::from("a_b"));
    }

    #[test]
    fn sizes_and_types() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(10_000_000), "10.0 MB");
        assert_eq!(mime_for(Path::new("x.PDF")), "application/pdf");
        assert_eq!(mime_for(Path::new("x")), "application/octet-stream");
    }
}
