//! In-progress uploads: one staging file per upload under `<data_dir>/files/staging`, never
//! visible to anyone. A PATCH body is written frame by frame as it arrives (through a small
//! buffer, never a whole body in memory) and fsynced before its new offset is recorded, so the
//! recorded offset is always durable and the file is never shorter than it.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tern_wire::ids::MessageId;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Write buffer per running PATCH: few system calls, bounded memory.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Writeback of the staging file is started after every this many bytes (`sync_file_range`,
/// without waiting), so dirty pages of an upload never pile up: a PATCH's closing fsync has
/// little left to write, and neither has the next journal commit the engine's group-commit
/// fsync may wait for (ext4 orders data before the metadata that names it).
const WRITEBACK_EVERY_BYTES: u64 = 1024 * 1024;

pub struct Staging {
    dir: PathBuf,
}

/// How an append ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// The whole body is on disk; the new offset.
    Done { offset: u64 },
    /// The body broke off (connection dropped, body deadline): what arrived is on disk.
    Interrupted { offset: u64 },
    /// The body would pass the declared size: the caller deletes the upload.
    Overflow,
    /// The body is longer than one PATCH may be: its first `max_chunk` bytes are kept.
    ChunkTooLarge { offset: u64 },
}

impl Staging {
    pub fn open(dir: PathBuf) -> std::io::Result<Staging> {
        std::fs::create_dir_all(&dir)?;
        Ok(Staging { dir })
    }

    pub fn path(&self, id: MessageId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Up to `limit` ids that have a staging file.
    pub async fn ids(&self, limit: usize) -> std::io::Result<Vec<MessageId>> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.dir).await?;
        while out.len() < limit
            && let Some(entry) = dir.next_entry().await?
        {
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Removes the staging file; a missing one is no error.
    pub async fn remove(&self, id: MessageId) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Writes `body` at `offset`: at most `room` bytes (the rest of the declared size) and at
    /// most `max_chunk` bytes in this call. Bytes past the recorded offset (written before a
    /// crash, never recorded) are cut first.
    pub async fn append<S, E>(
        &self,
        id: MessageId,
        offset: u64,
        mut body: S,
        room: u64,
        max_chunk: u64,
    ) -> std::io::Result<Appended>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.path(id);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await?;
        let len = file.metadata().await?.len();
        if len < offset {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "staging file {} has {len} bytes, {offset} were recorded",
                    path.display()
                ),
            ));
        }
        file.set_len(offset).await?;
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        let mut written = 0u64;
        let mut started_writeback = 0u64;
        let end = loop {
            match body.next().await {
                None => break None,
                Some(Err(e)) => {
                    tracing::debug!(file = %id, error = %e, written, "upload body broke off");
                    break Some(Appended::Interrupted {
                        offset: offset + written,
                    });
                }
                Some(Ok(frame)) => {
                    let n = frame.len() as u64;
                    if written + n > room {
                        return Ok(Appended::Overflow);
                    }
                    if written + n > max_chunk {
                        let keep = (max_chunk - written) as usize;
                        out.write_all(&frame[..keep]).await?;
                        written += keep as u64;
                        break Some(Appended::ChunkTooLarge {
                            offset: offset + written,
                        });
                    }
                    out.write_all(&frame).await?;
                    written += n;
                    if written - started_writeback >= WRITEBACK_EVERY_BYTES {
                        out.flush().await?;
                        start_writeback(
                            out.get_ref(),
                            offset + started_writeback,
                            written - started_writeback,
                        )
                        .await;
                        started_writeback = written;
                    }
                }
            }
        };
        out.flush().await?;
        out.get_mut().sync_data().await?;
        Ok(end.unwrap_or(Appended::Done {
            offset: offset + written,
        }))
    }
}

/// Asks the kernel to start writing `len` bytes from `from` to disk now, without waiting for
/// them (best effort: a failure only means the closing fsync has more to do).
async fn start_writeback(file: &tokio::fs::File, from: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let fd = file.as_raw_fd();
        let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
            return;
        };
        // May block while the device queue is full: off the shard thread. The file outlives
        // the call (it is borrowed until the task is awaited).
        let _ = tokio::task::spawn_blocking(move || {
            // SAFETY: `fd` is an open descriptor for the duration of this call (see above);
            // sync_file_range reads no memory of ours.
            unsafe { libc::sync_file_range(fd, from, len, libc::SYNC_FILE_RANGE_WRITE) }
        })
        .await;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn append_resume_overflow_and_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Staging::open(dir.path().join("staging")).expect("open");
        let id = MessageId(1);
        let got = s
            .append(id, 0, frames(&[b"abc", b"def"]), 10, 100)
            .await
            .expect("append");
        assert_eq!(got, Appended::Done { offset: 6 });
        // Unrecorded bytes past the offset are cut before the next append.
        let got = s
            .append(id, 4, frames(&[b"XY"]), 6, 100)
            .await
            .expect("append");
        assert_eq!(got, Appended::Done { offset: 6 });
        assert_eq!(std::fs::read(s.path(id)).expect("read"), b"abcdXY");
        let got = s
            .append(id, 6, frames(&[b"1234", b"5"]), 4, 100)
            .await
            .expect("append");
        assert_eq!(got, Appended::Overflow);
        let got = s
            .append(id, 6, frames(&[b"12", b"34"]), 100, 3)
            .await
            .expect("append");
        assert_eq!(got, Appended::ChunkTooLarge { offset: 9 });
        assert_eq!(std::fs::read(s.path(id)).expect("read"), b"abcdXY123");
        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"z")),
            Err("dropped".to_string()),
        ]);
        let got = s.append(id, 9, broken, 100, 100).await.expect("append");
        assert_eq!(got, Appended::Interrupted { offset: 10 });
        assert!(s.append(id, 11, frames(&[]), 100, 100).await.is_err());
        s.remove(id).await.expect("remove");
        s.remove(id).await.expect("remove twice");
    }
}
