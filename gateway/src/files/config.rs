//! The `[files]` block of the configuration (issue 13): where file objects go and every limit
//! on uploads and downloads, each default with its reason.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The TOML form (`[files]`, or `files = { ... }` inline).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesToml {
    pub backend: Option<String>,
    pub dir: Option<std::path::PathBuf>,
    pub max_file_bytes: Option<u64>,
    pub allowed_types: Option<Vec<String>>,
    pub user_quota_bytes: Option<u64>,
    pub max_chunk_bytes: Option<u64>,
    pub url_ttl_secs: Option<u64>,
    pub upload_idle_secs: Option<u64>,
    pub unreferenced_secs: Option<u64>,
    pub max_open_uploads_per_user: Option<u32>,
    pub sweep_interval_secs: Option<u64>,
    pub s3_endpoint: Option<String>,
    pub s3_bucket: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key: Option<String>,
    pub s3_secret_key: Option<String>,
    pub s3_allow_http: Option<bool>,
    pub s3_part_bytes: Option<u64>,
    pub s3_parts_in_flight: Option<usize>,
    pub upload_bytes_per_sec: Option<u64>,
    pub download_bytes_per_sec: Option<u64>,
}

/// 256 MiB: a phone video of a few minutes or a large archive; larger files belong in a file
/// share. Bounded by `MAX_FILE_BYTES_CEILING`.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;
/// 1 TiB: a ceiling so that a typo cannot remove the limit.
pub const MAX_FILE_BYTES_CEILING: u64 = 1 << 40;
/// 4 GiB per user (declared sizes of open and finished uploads): 16 of the largest files, or
/// years of photos, while one account still cannot fill a disk.
pub const DEFAULT_USER_QUOTA_BYTES: u64 = 4 << 30;
/// 8 MiB per PATCH: a few seconds on a mobile uplink (so the body deadline holds), few enough
/// requests for a 256 MiB file (32), and what a dropped connection can cost at most.
pub const DEFAULT_MAX_CHUNK_BYTES: u64 = 8 << 20;
/// 64 MiB: a PATCH larger than this would need minutes on a slow link.
pub const MAX_CHUNK_BYTES_CEILING: u64 = 64 << 20;
/// 5 minutes (the default): long enough to start a download, short enough that a
/// leaked URL is soon useless.
pub const DEFAULT_URL_TTL_SECS: u64 = 300;
/// 1 hour without progress: an app sent to the background resumes within that; longer and
/// staging space is held for nothing.
pub const DEFAULT_UPLOAD_IDLE_SECS: u64 = 3_600;
/// 24 hours: a finished upload that no message names (the client crashed before sending) is
/// deleted after a day.
pub const DEFAULT_UNREFERENCED_SECS: u64 = 86_400;
/// 16 uploads in staging per user: a handful of devices each sending a few files at once.
pub const DEFAULT_MAX_OPEN_UPLOADS: u32 = 16;
/// 60 s between sweeps: idle limits are an hour and a day, a minute late is nothing.
pub const DEFAULT_SWEEP_INTERVAL_SECS: u64 = 60;
/// 8 MiB S3 parts: above S3's 5 MiB minimum, and memory per part in flight.
pub const DEFAULT_S3_PART_BYTES: u64 = 8 << 20;
/// 8 parts in flight over all uploads: at most 64 MiB of file bytes in memory whatever the
/// number of uploads finishing at once, and enough parallelism to fill a 1 Gbit/s link.
pub const DEFAULT_S3_PARTS_IN_FLIGHT: usize = 8;

/// 32 MiB/s for all uploads together (256 Mbit/s): unpaced, 20 uploads took 452 MB/s and a
/// chat's delivery p99 beside them went from 6.4 to 173 ms on 2 cores; paced, 7.1 to 41 ms
/// (RESULTS.md "Files"), and one person's upload still runs at LAN speed. Raise it with cores.
pub const DEFAULT_UPLOAD_BYTES_PER_SEC: u64 = 32 << 20;
/// 32 MiB/s for all downloads together, for the same reason (TLS and disk reads of the file).
pub const DEFAULT_DOWNLOAD_BYTES_PER_SEC: u64 = 32 << 20;
/// 100 GiB/s: a ceiling so a typo is caught (0 switches pacing off).
const MAX_BYTES_PER_SEC: u64 = 100 << 30;

/// Images, audio, video, PDF, text, office documents, archives and opaque bytes: what people
/// share in a chat. Executables and scripts by type are not listed (the bytes are encrypted
/// anyway; the list is the operator's policy, `"*"` allows everything).
pub const DEFAULT_ALLOWED_TYPES: &[&str] = &[
    "image/*",
    "audio/*",
    "video/*",
    "application/pdf",
    "text/plain",
    "text/markdown",
    "text/csv",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.*",
    "application/vnd.oasis.opendocument.*",
    "application/rtf",
    "application/zip",
    "application/gzip",
    "application/x-7z-compressed",
    "application/x-tar",
    "application/octet-stream",
];

#[derive(Clone)]
pub struct S3Config {
    /// `None`: AWS itself (the region picks the endpoint).
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Plain HTTP to the endpoint: only for a loopback test server.
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub enum Backend {
    /// `<data_dir>/files/objects`.
    Local,
    S3(S3Config),
}

#[derive(Debug, Clone)]
pub struct FilesConfig {
    pub backend: Backend,
    /// Staging files, local objects and the URL key; `None`: `<data_dir>/files`. Its own file
    /// system (another device) keeps the uploads' writes away from the store's fsyncs: beside
    /// 20 uploads the chat's delivery p99 rose by a median 24 % (up to 91 %) with one device,
    /// and by a median 1 % (up to 24 %) with the files elsewhere (RESULTS.md, "Files").
    pub dir: Option<std::path::PathBuf>,
    pub max_file_bytes: u64,
    /// Lowercase `type/subtype`, `prefix*` or `*`.
    pub allowed_types: Vec<String>,
    pub user_quota_bytes: u64,
    pub max_chunk_bytes: u64,
    pub url_ttl: Duration,
    pub upload_idle: Duration,
    pub unreferenced: Duration,
    pub max_open_uploads_per_user: u32,
    pub sweep_interval: Duration,
    pub s3_part_bytes: u64,
    pub s3_parts_in_flight: usize,
    /// All uploads together (0: unpaced); see `pace.rs`.
    pub upload_bytes_per_sec: u64,
    /// All downloads together (0: unpaced).
    pub download_bytes_per_sec: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        resolve(None).unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }
}

fn range(name: &str, v: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Invalid(format!(
            "files.{name} must be between {lo} and {hi}"
        )))
    }
}

/// Checks and completes the `[files]` block. S3 keys may also come from the environment
/// (`TERN_FILES_S3_ACCESS_KEY`, `TERN_FILES_S3_SECRET_KEY`), so secrets stay out of the file.
pub fn resolve(toml: Option<FilesToml>) -> Result<FilesConfig, ConfigError> {
    let t = toml.unwrap_or_default();
    let max_file_bytes = range(
        "max_file_bytes",
        t.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES),
        1,
        MAX_FILE_BYTES_CEILING,
    )?;
    let user_quota_bytes = range(
        "user_quota_bytes",
        t.user_quota_bytes.unwrap_or(DEFAULT_USER_QUOTA_BYTES),
        1,
        u64::MAX / 2,
    )?;
    let max_chunk_bytes = range(
        "max_chunk_bytes",
        t.max_chunk_bytes.unwrap_or(DEFAULT_MAX_CHUNK_BYTES),
        64 * 1024,
        MAX_CHUNK_BYTES_CEILING,
    )?;
    let secs = |name: &str, v: Option<u64>, default: u64, hi: u64| {
        range(name, v.unwrap_or(default), 1, hi).map(Duration::from_secs)
    };
    let url_ttl = secs(
        "url_ttl_secs",
        t.url_ttl_secs,
        DEFAULT_URL_TTL_SECS,
        7 * 86_400,
    )?;
    let upload_idle = secs(
        "upload_idle_secs",
        t.upload_idle_secs,
        DEFAULT_UPLOAD_IDLE_SECS,
        30 * 86_400,
    )?;
    let unreferenced = secs(
        "unreferenced_secs",
        t.unreferenced_secs,
        DEFAULT_UNREFERENCED_SECS,
        365 * 86_400,
    )?;
    let sweep_interval = secs(
        "sweep_interval_secs",
        t.sweep_interval_secs,
        DEFAULT_SWEEP_INTERVAL_SECS,
        86_400,
    )?;
    let max_open = range(
        "max_open_uploads_per_user",
        u64::from(
            t.max_open_uploads_per_user
                .unwrap_or(DEFAULT_MAX_OPEN_UPLOADS),
        ),
        1,
        10_000,
    )? as u32;
    let s3_part_bytes = range(
        "s3_part_bytes",
        t.s3_part_bytes.unwrap_or(DEFAULT_S3_PART_BYTES),
        5 << 20,
        512 << 20,
    )?;
    let s3_parts_in_flight = range(
        "s3_parts_in_flight",
        t.s3_parts_in_flight.unwrap_or(DEFAULT_S3_PARTS_IN_FLIGHT) as u64,
        1,
        1_024,
    )? as usize;
    let upload_bytes_per_sec = range(
        "upload_bytes_per_sec",
        t.upload_bytes_per_sec
            .unwrap_or(DEFAULT_UPLOAD_BYTES_PER_SEC),
        0,
        MAX_BYTES_PER_SEC,
    )?;
    let download_bytes_per_sec = range(
        "download_bytes_per_sec",
        t.download_bytes_per_sec
            .unwrap_or(DEFAULT_DOWNLOAD_BYTES_PER_SEC),
        0,
        MAX_BYTES_PER_SEC,
    )?;
    let allowed_types = match t.allowed_types {
        None => DEFAULT_ALLOWED_TYPES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        Some(list) => {
            if list.is_empty() || list.len() > 1_000 {
                return Err(ConfigError::Invalid(
                    "files.allowed_types must list 1 to 1000 types (\"*\" allows all)".into(),
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for entry in list {
                let e = entry.trim().to_ascii_lowercase();
                let valid = e == "*"
                    || crate::files::policy::valid_content_type(&e)
                    || e.strip_suffix('*')
                        .is_some_and(|p| p.contains('/') && !p.contains('*'));
                if !valid {
                    return Err(ConfigError::Invalid(format!(
                        "files.allowed_types: {entry:?} is not type/subtype, a prefix ending \
                         in *, or *"
                    )));
                }
                out.push(e);
            }
            out
        }
    };
    let backend = match t.backend.as_deref().map(str::trim) {
        None | Some("local") => Backend::Local,
        Some("s3") => {
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let need = |name: &str, v: Option<String>| {
                v.filter(|v| !v.is_empty()).ok_or_else(|| {
                    ConfigError::Invalid(format!("files.{name} is required with backend = \"s3\""))
                })
            };
            let endpoint = t.s3_endpoint.filter(|e| !e.is_empty());
            let allow_http = t.s3_allow_http.unwrap_or(false);
            check_endpoint(endpoint.as_deref(), allow_http)?;
            Backend::S3(S3Config {
                endpoint,
                bucket: need("s3_bucket", t.s3_bucket)?,
                region: t.s3_region.unwrap_or_else(|| "us-east-1".into()),
                access_key: need(
                    "s3_access_key",
                    env("TERN_FILES_S3_ACCESS_KEY").or(t.s3_access_key),
                )?,
                secret_key: need(
                    "s3_secret_key",
                    env("TERN_FILES_S3_SECRET_KEY").or(t.s3_secret_key),
                )?,
                allow_http,
            })
        }
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "files.backend {other:?}: \"local\" or \"s3\""
            )));
        }
    };
    if let Some(dir) = &t.dir
        && !dir.is_absolute()
    {
        return Err(ConfigError::Invalid(format!(
            "files.dir must be an absolute path, not {}",
            dir.display()
        )));
    }
    Ok(FilesConfig {
        backend,
        dir: t.dir,
        max_file_bytes,
        allowed_types,
        user_quota_bytes,
        max_chunk_bytes,
        url_ttl,
        upload_idle,
        unreferenced,
        max_open_uploads_per_user: max_open,
        sweep_interval,
        s3_part_bytes,
        s3_parts_in_flight,
        upload_bytes_per_sec,
        download_bytes_per_sec,
    })
}

/// Plain HTTP carries the S3 credentials' signatures and every file in the clear: allowed
/// only to a loopback endpoint (a test server), and only when asked for.
fn check_endpoint(endpoint: Option<&str>, allow_http: bool) -> Result<(), ConfigError> {
    let Some(endpoint) = endpoint else {
        return if allow_http {
            Err(ConfigError::Invalid(
                "files.s3_allow_http needs a loopback s3_endpoint".into(),
            ))
        } else {
            Ok(())
        };
    };
    let uri: axum::http::Uri = endpoint.parse().map_err(|_| {
        ConfigError::Invalid(format!("files.s3_endpoint {endpoint:?} is not a URL"))
    })?;
    let loopback = uri.host().is_some_and(|h| {
        h == "localhost"
            || h.trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_http && loopback => Ok(()),
        Some("http") => Err(ConfigError::Invalid(format!(
            "files.s3_endpoint {endpoint:?}: plain http only to a loopback test server with \
             s3_allow_http = true"
        ))),
        _ => Err(ConfigError::Invalid(format!(
            "files.s3_endpoint {endpoint:?} must be https://host[:port]"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let d = FilesConfig::default();
        assert!(matches!(d.backend, Backend::Local));
        assert_eq!(d.max_file_bytes, DEFAULT_MAX_FILE_BYTES);
        assert_eq!(d.url_ttl, Duration::from_secs(300));
        let bad = |t: FilesToml| resolve(Some(t)).is_err();
        assert!(bad(FilesToml {
            max_chunk_bytes: Some(1),
            ..Default::default()
        }));
        assert!(bad(FilesToml {
            url_ttl_secs: Some(0),
            ..Default::default()
        }));
        assert!(bad(FilesToml {
            backend: Some("s3".into()),
            ..Default::default()
        }));
        assert!(bad(FilesToml {
            allowed_types: Some(vec!["not a type".into()]),
            ..Default::default()
        }));
        assert!(bad(FilesToml {
            backend: Some("ftp".into()),
            ..Default::default()
        }));
        assert_eq!(d.dir, None, "under the data dir by default");
        assert!(bad(FilesToml {
            dir: Some("relative/files".into()),
            ..Default::default()
        }));
        let elsewhere = resolve(Some(FilesToml {
            dir: Some("/mnt/uploads".into()),
            ..Default::default()
        }))
        .expect("an absolute dir");
        assert_eq!(
            elsewhere.dir.as_deref(),
            Some(std::path::Path::new("/mnt/uploads"))
        );
        let s3 = |endpoint: &str, allow_http: bool| FilesToml {
            backend: Some("s3".into()),
            s3_endpoint: Some(endpoint.into()),
            s3_bucket: Some("b".into()),
            s3_access_key: Some("a".into()),
            s3_secret_key: Some("s".into()),
            s3_allow_http: Some(allow_http),
            ..Default::default()
        };
        assert!(resolve(Some(s3("https://s3.example.com", false))).is_ok());
        assert!(resolve(Some(s3("http://127.0.0.1:9000", true))).is_ok());
        assert!(bad(s3("http://127.0.0.1:9000", false)));
        assert!(bad(s3("http://s3.example.com", true)));
        assert!(bad(s3("ftp://s3.example.com", false)));
    }
}
