//! Counters of the file API, served at `/metrics` with the rest (for throughput measurements
//! and to see refusals and the sweeper at work).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct FileMetrics {
    pub uploads_created: Counter,
    pub uploads_finished: Counter,
    /// Bytes made durable in staging files (PATCH bodies).
    pub upload_bytes: Counter,
    /// Bytes of objects sent to downloaders (response lengths).
    pub download_bytes: Counter,
    /// Uploads refused or deleted for their size: declared too large, quota, or more bytes
    /// than declared.
    pub size_refusals: Counter,
    pub type_refusals: Counter,
    /// Sends refused because of the files they name.
    pub send_refusals: Counter,
    /// Uploads the sweeper deleted.
    pub swept: Counter,
}

impl FileMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let series = [
            (
                "tern_file_uploads_created",
                "Uploads started",
                &self.uploads_created,
            ),
            (
                "tern_file_uploads_finished",
                "Uploads finished (objects stored)",
                &self.uploads_finished,
            ),
            (
                "tern_file_upload_bytes",
                "Upload bytes made durable in staging",
                &self.upload_bytes,
            ),
            (
                "tern_file_download_bytes",
                "Object bytes sent to downloaders",
                &self.download_bytes,
            ),
            (
                "tern_file_size_refusals",
                "Uploads refused or deleted for their size or the quota",
                &self.size_refusals,
            ),
            (
                "tern_file_type_refusals",
                "Uploads refused for their declared type",
                &self.type_refusals,
            ),
            (
                "tern_file_send_refusals",
                "Sends refused for the files they name",
                &self.send_refusals,
            ),
            (
                "tern_file_swept",
                "Idle or unreferenced uploads the sweeper deleted",
                &self.swept,
            ),
        ];
        for (name, help, counter) in series {
            registry.register(name, help, counter.clone());
        }
    }
}
