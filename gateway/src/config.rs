//! Configuration: command-line flags, `TERN_*` environment variables, and an optional TOML file,
//! in that order of precedence, over built-in defaults that need no set-up at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use tern_engine::limits::EngineLimits;
use tern_engine::rate::BucketConfig;

use crate::tls::CertSource;

#[derive(Debug, clap::Parser)]
#[command(
    name = "tern",
    version,
    about = "Tern: secure real-time messaging server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the server (embedded storage, self-signed TLS unless configured otherwise).
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Directory for the embedded store and the self-signed certificate [default: ./tern-data].
    #[arg(long, env = "TERN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TCP (HTTPS, secure WebSocket) and UDP (WebTransport) address; port 0 picks a free one
    /// [default: 127.0.0.1:4433].
    #[arg(long, env = "TERN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TOML file with the same settings (snake_case keys).
    #[arg(long, env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM certificate chain (production). Needs --tls-key.
    #[arg(long, env = "TERN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TERN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Largest accepted inbound frame in bytes [default: 65536].
    #[arg(long, env = "TERN_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Log format: "text" or "json" [default: text].
    #[arg(long, env = "TERN_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Shards: threads pinned to cores, each with its own listeners and engine shard
    /// [default: the cores this process may use].
    #[arg(long, env = "TERN_SHARDS")]
    pub shards: Option<usize>,
    /// TCP/WebSocket I/O driver: "epoll", "uring", or "auto" (uring when the kernel allows it,
    /// else epoll, logged) [default: epoll — io_uring saves memory per connection but costs
    /// more CPU per delivered message here; see RESULTS.md].
    #[arg(long, env = "TERN_IO")]
    pub io: Option<String>,
}

/// The TOML file form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_frame_bytes: Option<usize>,
    pub log_format: Option<String>,
    pub idle_timeout_secs: Option<u64>,
    pub send_queue_frames: Option<usize>,
    pub login_failures_per_username: Option<u32>,
    pub login_attempts_per_address: Option<u32>,
    pub shards: Option<usize>,
    pub io: Option<String>,
    pub resume_backlog_messages: Option<u64>,
    /// Presence: how long a user stays online after the last device disconnects.
    pub presence_grace_ms: Option<u64>,
    /// Typing indicators not refreshed for this long end on their own.
    pub typing_timeout_ms: Option<u64>,
    // ---- rate limits and quotas (issue 10: floods) ----
    pub device_send_burst: Option<u64>,
    pub device_sends_per_sec: Option<u64>,
    pub device_send_bytes_burst: Option<u64>,
    pub device_send_bytes_per_sec: Option<u64>,
    pub device_request_burst: Option<u64>,
    pub device_requests_per_sec: Option<u64>,
    pub user_send_burst: Option<u64>,
    pub user_sends_per_sec: Option<u64>,
    pub conversation_send_burst: Option<u64>,
    pub conversation_sends_per_sec: Option<u64>,
    pub storage_quota_bytes: Option<u64>,
    pub http_history_max_bytes: Option<u64>,
}

/// Which driver moves bytes for TCP (TLS, WebSocket, HTTPS) connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoChoice {
    /// io_uring when the kernel allows it, else epoll (logged).
    Auto,
    /// tokio's readiness driver (epoll on Linux): the portable path.
    Epoll,
    /// io_uring; refuses to start if the kernel does not allow it.
    Uring,
}

/// Messages replayed per conversation on resume unless configured otherwise.
pub const DEFAULT_RESUME_BACKLOG: u64 = 1_000;
/// A ceiling, so that a misconfiguration cannot make resume unbounded.
pub const MAX_RESUME_BACKLOG: u64 = 1_000_000;

/// Most shards a server runs (threads, rings, engine shards).
pub const MAX_SHARDS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub certs: CertSource,
    pub max_frame_bytes: usize,
    pub log_format: LogFormat,
    /// A connection that sends nothing (not even a ping) for this long is closed.
    pub idle_timeout: Duration,
    /// Frames queued to one connection before it counts as a slow consumer.
    pub send_queue_frames: usize,
    pub login_failures_per_username: u32,
    pub login_attempts_per_address: u32,
    pub shards: usize,
    pub io: IoChoice,
    /// Presence grace period and typing timeout.
    pub presence: crate::presence::PresenceConfig,
    /// Most messages replayed per conversation when a device resumes.
    pub resume_backlog_messages: u64,
    /// Rate limits and the storage quota.
    pub floods: FloodLimits,
}

/// Rate limits (token buckets: burst and sustained rate) and the storage quota.
#[derive(Debug, Clone, Copy)]
pub struct FloodLimits {
    pub device_sends: BucketConfig,
    pub device_send_bytes: BucketConfig,
    pub device_requests: BucketConfig,
    pub user_sends: BucketConfig,
    pub conversation_sends: BucketConfig,
    pub storage_quota_bytes: u64,
    /// Largest HTTPS history response (JSON bytes, estimated); pages are cut to fit.
    pub http_history_max_bytes: u64,
}

/// Per device: 1,000 messages at once (an outbox flushed after a day offline), 100 per second
/// sustained. A fast human types one message every few seconds and bots that relay traffic
/// rarely pass 10/s; the load generator's heaviest default (fan-out, one sender per group)
/// peaks at ~87/s per device. The flood was 10,900/s from one socket.
pub const DEFAULT_DEVICE_SENDS: BucketConfig = BucketConfig::new(1_000, 100);
/// Per device, payload bytes, in frames of `max_frame_bytes`: 256 at once, 32 per second
/// sustained; with the default 64 KiB frames 16 MiB and 2 MiB/s (chat text is ~100 bytes,
/// attachments travel as file references; the flood in the issue pushed 190 MB/s). Scaled with
/// the frame limit because an operator who raises it expects large messages.
pub const DEFAULT_DEVICE_SEND_BYTES_IN_FRAMES: BucketConfig = BucketConfig::new(256, 32);
/// Per device, every other request: 500 at once (opening the app fetches history of many
/// conversations), 50 per second sustained (a client pings every ~20 s and asks for history
/// as the user scrolls).
pub const DEFAULT_DEVICE_REQUESTS: BucketConfig = BucketConfig::new(500, 50);
/// 4 GiB of payload per user: ~10 years of a heavy user's text (1,000 messages of 1 KB a day)
/// while one account still cannot fill a disk. Attachments are file references, not payload.
pub const DEFAULT_STORAGE_QUOTA_BYTES: u64 = 4 << 30;
/// JSON per history response, in frames of `max_frame_bytes`: 16, so 1 MiB with the default
/// frames (a second on a slow mobile link, a dozen of the largest messages); scrolling further
/// asks for the next page.
pub const DEFAULT_HTTP_HISTORY_MAX_FRAMES: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Bounds that keep a misconfiguration from disabling a limit.
const MAX_FRAME_BYTES_CEILING: usize = 16 * 1024 * 1024;
/// Leaves room for a Deliver's envelope (ids, content type, file references) around a payload
/// that filled a Send frame; see `server::ENVELOPE_HEADROOM_BYTES`.
const MIN_FRAME_BYTES: usize = 8 * 1024;

impl Config {
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        // Before any field moves out of `file`.
        let frame_for_floods = args
            .max_frame_bytes
            .or(file.max_frame_bytes)
            .unwrap_or(64 * 1024);
        let floods = flood_limits(&file, frame_for_floods)?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("tern-data"));
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4433)));
        let certs = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => CertSource::Pem { cert, key },
            (None, None) => CertSource::SelfSigned {
                dir: data_dir.join("tls"),
            },
            _ => {
                return Err(ConfigError::Invalid(
                    "tls_cert and tls_key must be given together".into(),
                ));
            }
        };
        let max_frame_bytes = args
            .max_frame_bytes
            .or(file.max_frame_bytes)
            .unwrap_or(64 * 1024);
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES_CEILING).contains(&max_frame_bytes) {
            return Err(ConfigError::Invalid(format!(
                "max_frame_bytes must be between {MIN_FRAME_BYTES} and {MAX_FRAME_BYTES_CEILING}"
            )));
        }
        let log_format = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "unknown log format {other:?}"
                )));
            }
        };
        let shards = args
            .shards
            .or(file.shards)
            .unwrap_or_else(|| crate::shard::allowed_cpus().len());
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(ConfigError::Invalid(format!(
                "shards must be between 1 and {MAX_SHARDS}"
            )));
        }
        let io = match args.io.or(file.io).as_deref() {
            Some("auto") => IoChoice::Auto,
            None | Some("epoll") => IoChoice::Epoll,
            Some("uring") => IoChoice::Uring,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "unknown io driver {other:?} (auto, epoll or uring)"
                )));
            }
        };
        let idle_timeout = Duration::from_secs(file.idle_timeout_secs.unwrap_or(90).clamp(5, 3600));
        let send_queue_frames = file.send_queue_frames.unwrap_or(1024).clamp(16, 1 << 20);
        Ok(Config {
            data_dir,
            listen,
            certs,
            max_frame_bytes,
            log_format,
            idle_timeout,
            send_queue_frames,
            login_failures_per_username: file.login_failures_per_username.unwrap_or(5).max(1),
            login_attempts_per_address: file.login_attempts_per_address.unwrap_or(30).max(1),
            shards,
            io,
            presence: crate::presence::PresenceConfig {
                grace: Duration::from_millis(file.presence_grace_ms.unwrap_or(5_000).min(600_000)),
                typing_timeout: Duration::from_millis(
                    file.typing_timeout_ms.unwrap_or(5_000).clamp(100, 60_000),
                ),
            },
            resume_backlog_messages: file
                .resume_backlog_messages
                .unwrap_or(DEFAULT_RESUME_BACKLOG)
                .clamp(1, MAX_RESUME_BACKLOG),
            floods,
        })
    }
}

/// A bucket from two keys; both must be positive (0 would refuse everything forever).
fn bucket(
    burst: Option<u64>,
    per_sec: Option<u64>,
    default: BucketConfig,
    name: &str,
) -> Result<BucketConfig, ConfigError> {
    let config = BucketConfig::new(
        burst.unwrap_or(default.capacity),
        per_sec.unwrap_or(default.refill_per_sec),
    );
    if !config.is_valid() {
        return Err(ConfigError::Invalid(format!(
            "{name}_burst and {name}s_per_sec must be positive"
        )));
    }
    Ok(config)
}

fn flood_limits(file: &FileConfig, max_frame_bytes: usize) -> Result<FloodLimits, ConfigError> {
    let engine = EngineLimits::default();
    let frame = max_frame_bytes as u64;
    let device_send_bytes = BucketConfig::new(
        file.device_send_bytes_burst
            .unwrap_or(DEFAULT_DEVICE_SEND_BYTES_IN_FRAMES.capacity * frame),
        file.device_send_bytes_per_sec
            .unwrap_or(DEFAULT_DEVICE_SEND_BYTES_IN_FRAMES.refill_per_sec * frame),
    );
    // A burst smaller than one frame would make every large message wait for a full bucket.
    if device_send_bytes.capacity < max_frame_bytes as u64 || device_send_bytes.refill_per_sec == 0
    {
        return Err(ConfigError::Invalid(
            "device_send_bytes_burst must be at least max_frame_bytes and \
             device_send_bytes_per_sec positive"
                .into(),
        ));
    }
    let storage_quota_bytes = file
        .storage_quota_bytes
        .unwrap_or(DEFAULT_STORAGE_QUOTA_BYTES);
    if storage_quota_bytes == 0 {
        return Err(ConfigError::Invalid(
            "storage_quota_bytes must be positive".into(),
        ));
    }
    let http_history_max_bytes = file
        .http_history_max_bytes
        .unwrap_or(DEFAULT_HTTP_HISTORY_MAX_FRAMES * frame);
    // At least one message of the largest size fits (JSON is ~4/3 of the frame).
    let min_http = 2 * max_frame_bytes as u64;
    if !(min_http..=(256 << 20)).contains(&http_history_max_bytes) {
        return Err(ConfigError::Invalid(format!(
            "http_history_max_bytes must be between {min_http} (twice max_frame_bytes) and 256 MiB"
        )));
    }
    Ok(FloodLimits {
        device_sends: bucket(
            file.device_send_burst,
            file.device_sends_per_sec,
            DEFAULT_DEVICE_SENDS,
            "device_send",
        )?,
        device_send_bytes,
        device_requests: bucket(
            file.device_request_burst,
            file.device_requests_per_sec,
            DEFAULT_DEVICE_REQUESTS,
            "device_request",
        )?,
        user_sends: bucket(
            file.user_send_burst,
            file.user_sends_per_sec,
            engine.user_sends,
            "user_send",
        )?,
        conversation_sends: bucket(
            file.conversation_send_burst,
            file.conversation_sends_per_sec,
            engine.conversation_sends,
            "conversation_send",
        )?,
        storage_quota_bytes,
        http_history_max_bytes,
    })
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let config = Config::resolve(ServeArgs::default()).expect("defaults resolve");
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 4433)));
        assert_eq!(config.max_frame_bytes, 65536);
        assert!(matches!(config.certs, CertSource::SelfSigned { .. }));
        assert_eq!(config.floods.device_sends, DEFAULT_DEVICE_SENDS);
        assert_eq!(config.floods.storage_quota_bytes, 4 << 30);
        assert_eq!(
            config.floods.device_send_bytes,
            BucketConfig::new(16 << 20, 2 << 20)
        );
        assert_eq!(config.floods.http_history_max_bytes, 1 << 20);
    }

    #[test]
    fn flood_limits_are_configurable_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tern.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Config::resolve(ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
        };
        let config = resolve(
            "device_send_burst = 5\ndevice_sends_per_sec = 2\nstorage_quota_bytes = 1000\n\
             user_sends_per_sec = 7\nhttp_history_max_bytes = 200000\n",
        )
        .expect("resolve");
        assert_eq!(config.floods.device_sends, BucketConfig::new(5, 2));
        assert_eq!(config.floods.user_sends.refill_per_sec, 7);
        assert_eq!(config.floods.storage_quota_bytes, 1000);
        assert_eq!(config.floods.http_history_max_bytes, 200_000);
        for bad in [
            "device_sends_per_sec = 0",
            "conversation_send_burst = 0",
            "storage_quota_bytes = 0",
            "device_send_bytes_burst = 100",
            "http_history_max_bytes = 10",
        ] {
            assert!(resolve(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn flags_override_the_file_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tern.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nmax_frame_bytes = 2048\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path.clone()),
            max_frame_bytes: Some(16384),
            ..ServeArgs::default()
        };
        let config = Config::resolve(args).expect("resolve");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.max_frame_bytes, 16384);
        let too_small = ServeArgs {
            max_frame_bytes: Some(10),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(too_small).is_err());
        std::fs::write(&path, "no_such_key = 1\n").expect("write");
        assert!(
            Config::resolve(ServeArgs {
                config: Some(path),
                ..ServeArgs::default()
            })
            .is_err()
        );
    }
}
