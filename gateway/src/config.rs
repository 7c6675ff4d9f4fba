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
    /// Operations listener (TLS: /healthz, /metrics), "off" to disable
    /// [default: loopback, the client port + 1].
    #[arg(long, env = "TERN_OPS_LISTEN")]
    pub ops_listen: Option<String>,
    /// host[:port] clients use to reach this server, for the URLs in /api/v1/transport
    /// [default: the bound address].
    #[arg(long, env = "TERN_PUBLIC_AUTHORITY")]
    pub public_authority: Option<String>,
    // ---- web app (issue 12) ----
    /// Serve the web app at / from this directory (e.g. clients/web/dist), or "off"
    /// [default: the copy embedded at build time, else a page saying how to build it].
    #[arg(long, env = "TERN_WEB_DIR")]
    pub web_dir: Option<String>,
    /// Web origins (scheme://host[:port]) whose pages may use the API and open sockets,
    /// comma-separated [default: none: the server's own origin only].
    #[arg(long, env = "TERN_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
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
    pub shards: Option<usize>,
    pub io: Option<String>,
    pub resume_backlog_messages: Option<u64>,
    /// Presence: how long a user stays online after the last device disconnects.
    pub presence_grace_ms: Option<u64>,
    /// Typing indicators not refreshed for this long end on their own.
    pub typing_timeout_ms: Option<u64>,
    // ---- edge: connection admission, per-phase timeouts, operations listener (issue 10) ----
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub fd_reserve: Option<usize>,
    pub tls_handshake_timeout_ms: Option<u64>,
    pub http_head_timeout_ms: Option<u64>,
    pub http_body_timeout_ms: Option<u64>,
    pub http_write_timeout_ms: Option<u64>,
    pub http_refusal_delay_ms: Option<u64>,
    pub quic_connect_timeout_ms: Option<u64>,
    pub ops_listen: Option<String>,
    pub ops_max_connections: Option<usize>,
    pub public_authority: Option<String>,

    // ---- accounts: token lifetime, login and registration limits, hash queue (issue 10) ----
    /// Lifetime of a login token; live sockets are closed when it ends.
    pub token_ttl_secs: Option<u64>,
    /// Failed logins per (username, address prefix) per 60 s before that pair gets 429.
    pub login_failures_per_user_address: Option<u32>,
    /// Failed logins per username (all addresses) per 60 s past which each pair gets only one.
    pub login_failures_per_username: Option<u32>,
    /// Logins and registrations per address prefix (IPv4 /32, IPv6 /64) per 60 s.
    pub login_attempts_per_address: Option<u32>,
    /// Registrations per address prefix per registration window.
    pub registrations_per_address: Option<u32>,
    /// Registrations from all addresses together per registration window.
    pub registrations_per_window: Option<u32>,
    pub registration_window_secs: Option<u64>,
    /// Password-hash jobs waiting in all, and per address prefix (served round-robin).
    pub hash_queue: Option<usize>,
    pub hash_queue_per_client: Option<usize>,
    // ---- end-to-end keys: directory, device inbox, backup (issue 11) ----
    pub max_one_time_keys_per_device: Option<u32>,
    pub max_inbox_entries_per_device: Option<u64>,
    pub inbox_retention_days: Option<u64>,
    pub key_claims_per_target_per_minute: Option<u32>,
    pub max_backup_sessions_per_user: Option<u64>,
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
    // ---- web app (issue 12) ----
    /// Directory of the built web app served at `/`, or "off".
    pub web_dir: Option<String>,
    /// Origins (besides the server's own) whose pages may use the API and open sockets.
    pub cors_origins: Option<Vec<String>>,
    /// Lifetime of the self-signed certificate (at most 14 days, what browsers pin by hash);
    /// rotation and publication of the next one scale with it.
    pub self_signed_validity_secs: Option<u64>,
    // ---- file sharing (issue 13): the `[files]` table ----
    pub files: Option<crate::files::config::FilesToml>,
}

/// Limits and listeners at the edge: who may connect, how many, and how long each phase of a
/// connection may take before it is closed.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Global connection budget (TCP on either driver plus QUIC). `None`: the descriptor limit
    /// minus `fd_reserve`; a configured value is lowered to that too.
    pub max_connections: Option<usize>,
    /// Connections one IPv4 address or one IPv6 /64 may hold at once.
    pub per_address: usize,
    /// Descriptors kept out of the connection budget (store files, rings, listeners, ops).
    pub fd_reserve: usize,
    /// TCP accept → TLS handshake done.
    pub tls_handshake_timeout: Duration,
    /// TLS done (or the previous response sent, keep-alive) → a complete request head. This is
    /// also the keep-alive idle limit: hyper starts it when the connection goes idle.
    pub http_head_timeout: Duration,
    /// Waiting for the client's request body, in total from the head (so 1 byte per second
    /// cannot hold it); pauses of the server's own reading (pacing) are not counted.
    pub http_body_timeout: Duration,
    /// A response write without progress (the client stopped reading) → closed.
    pub http_write_timeout: Duration,
    /// A `429` answer is held back this long (0: sent at once): a flooder's connections each
    /// ask at most once per delay instead of as fast as the server can refuse.
    pub http_refusal_delay: Duration,
    /// QUIC connection attempt → the WebTransport CONNECT request (handshake included).
    pub quic_connect_timeout: Duration,
    /// The operations listener (`None`: off).
    pub ops_listen: Option<SocketAddr>,
    /// Connections the operations listener holds at once (its own budget, outside the client's).
    pub ops_max_connections: usize,
    /// host[:port] in the URLs of `/api/v1/transport` (`None`: the bound address).
    pub public_authority: Option<String>,
    /// Web origins besides the server's own that may use the API (CORS) and open WebSocket
    /// and WebTransport sessions (the `Origin` check). Empty: same-origin only.
    pub cors_origins: Vec<String>,
}

// ---- web app (issue 12) ----
/// Configured CORS origins at most: an allow-list is a handful of known front ends, and every
/// request's `Origin` is compared against it.
pub const MAX_CORS_ORIGINS: usize = 64;

/// Shortest self-signed validity: the rotation steps scaled to it stay above the check
/// interval's floor (200 ms) and a test can watch a whole rotation in seconds.
pub const MIN_SELF_SIGNED_VALIDITY_SECS: u64 = 20;

fn resolve_validity(secs: Option<u64>) -> Result<crate::tls::RotationSchedule, ConfigError> {
    let max = crate::tls::SELF_SIGNED_VALIDITY.as_secs();
    let secs = secs.unwrap_or(max);
    if !(MIN_SELF_SIGNED_VALIDITY_SECS..=max).contains(&secs) {
        return Err(ConfigError::Invalid(format!(
            "self_signed_validity_secs must be between {MIN_SELF_SIGNED_VALIDITY_SECS} and {max} \
             (browsers pin a certificate by hash only up to 14 days)"
        )));
    }
    Ok(crate::tls::RotationSchedule {
        validity: Duration::from_secs(secs),
    })
}

fn resolve_cors(origins: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let origins: Vec<String> = origins
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.len() > MAX_CORS_ORIGINS {
        return Err(ConfigError::Invalid(format!(
            "cors_origins: at most {MAX_CORS_ORIGINS} origins"
        )));
    }
    for origin in &origins {
        if !crate::headers::valid_origin(origin) {
            return Err(ConfigError::Invalid(format!(
                "cors_origins: {origin:?} is not scheme://host[:port] (https, or http for a \
                 development server; no path, no wildcard)"
            )));
        }
    }
    Ok(origins)
}

/// 64 per address: a household or office behind one NAT address with a few dozen devices, each
/// holding one session and an HTTPS connection, fits; one attacker address cannot hold more
/// than that. Operators behind carrier-grade NAT raise it.
pub const DEFAULT_CONNECTIONS_PER_ADDRESS: usize = 64;
/// fjall caches up to 900 open segment files by default; the rest covers listeners, rings,
/// eventfds, the journal and the operations listener.
pub const DEFAULT_FD_RESERVE: usize = 1_024;
/// A TLS handshake is two round trips; 10 s covers a bad mobile link.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// A request head is one packet for every real client; 20 s also bounds keep-alive idle, which
/// clients handle by reconnecting (their pools already expect servers to close idle ones).
pub const DEFAULT_HTTP_HEAD_TIMEOUT_MS: u64 = 20_000;
/// The largest body is 1 MiB (JSON limit): 30 s means at least ~35 KB/s, far below any link
/// that can use the service.
pub const DEFAULT_HTTP_BODY_TIMEOUT_MS: u64 = 30_000;
/// The same as the session's write timeout: a client that reads nothing for 30 s is gone.
pub const DEFAULT_HTTP_WRITE_TIMEOUT_MS: u64 = 30_000;
/// One second: a keep-alive flooder's connection gets one refusal a second instead of tens of
/// thousands; a real client was told to wait longer (Retry-After) anyway.
pub const DEFAULT_HTTP_REFUSAL_DELAY_MS: u64 = 1_000;
/// QUIC handshake plus the CONNECT request: the same budget as TLS over TCP.
pub const DEFAULT_QUIC_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Health checks and scrapes are a few at a time.
pub const DEFAULT_OPS_MAX_CONNECTIONS: usize = 16;

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
    /// Token lifetime, login/registration limits and the password-hash queue.
    pub accounts: tern_engine::accounts::AccountLimits,
    pub shards: usize,
    pub io: IoChoice,
    /// Presence grace period and typing timeout.
    pub presence: crate::presence::PresenceConfig,
    /// Most messages replayed per conversation when a device resumes.
    pub resume_backlog_messages: u64,
    pub edge: EdgeConfig,
    /// Rate limits and the storage quota.
    pub floods: FloodLimits,
    /// End-to-end key directory, inbox and backup limits.
    pub keys: tern_engine::keys::KeyLimits,
    // ---- web app (issue 12) ----
    /// Where the app served at `/` comes from.
    pub web: crate::web::WebSource,
    // ---- file sharing (issue 13) ----
    /// Object storage and every upload/download limit (`[files]`).
    pub files: crate::files::config::FilesConfig,
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
        let mut file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        // ---- file sharing (issue 13) ----
        let files = crate::files::config::resolve(file.files.take())?;
        let accounts = account_limits(&file)?;
        // Before any field moves out of `file`.
        let frame_for_floods = args
            .max_frame_bytes
            .or(file.max_frame_bytes)
            .unwrap_or(64 * 1024);
        let floods = flood_limits(&file, frame_for_floods)?;
        let data_dir = args
            .data_dir
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("tern-data"));
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4433)));
        let certs = match (
            args.tls_cert.or(file.tls_cert.clone()),
            args.tls_key.or(file.tls_key.clone()),
        ) {
            (Some(cert), Some(key)) => CertSource::Pem { cert, key },
            (None, None) => CertSource::SelfSigned {
                dir: data_dir.join("tls"),
                schedule: resolve_validity(file.self_signed_validity_secs)?,
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
        let log_format = match args.log_format.or(file.log_format.clone()).as_deref() {
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
        let io = match args.io.or(file.io.clone()).as_deref() {
            Some("auto") => IoChoice::Auto,
            None | Some("epoll") => IoChoice::Epoll,
            Some("uring") => IoChoice::Uring,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "unknown io driver {other:?} (auto, epoll or uring)"
                )));
            }
        };
        let mut edge = resolve_edge(
            &file,
            args.ops_listen.or(file.ops_listen.clone()),
            args.public_authority.or(file.public_authority.clone()),
            listen,
        )?;
        edge.cors_origins = resolve_cors(args.cors_origins.or(file.cors_origins.clone()))?;
        let web = resolve_web(args.web_dir.or(file.web_dir.clone()))?;
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
            accounts,
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
            edge,
            floods,
            keys: resolve_keys(&file)?,
            web,
            files,
        })
    }
}

// ---- web app (issue 12) ----
/// `web_dir`: absent = the embedded app (or the build instructions), "off" = none, else a
/// directory (checked for an index.html when the server starts).
fn resolve_web(value: Option<String>) -> Result<crate::web::WebSource, ConfigError> {
    use crate::web::WebSource;
    match value.as_deref().map(str::trim) {
        None => Ok(WebSource::Auto),
        Some("off") => Ok(WebSource::Off),
        Some("") => Err(ConfigError::Invalid(
            "web_dir must be a directory or \"off\"".into(),
        )),
        Some(dir) => Ok(WebSource::Dir(PathBuf::from(dir))),
    }
}

/// End-to-end key limits (defaults and their reasons: `tern_engine::keys::KeyLimits`).
fn resolve_keys(file: &FileConfig) -> Result<tern_engine::keys::KeyLimits, ConfigError> {
    let d = tern_engine::keys::KeyLimits::default();
    let range = |name: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError::Invalid(format!(
                "{name} must be between {lo} and {hi}"
            )))
        }
    };
    let otks = file
        .max_one_time_keys_per_device
        .unwrap_or(d.max_one_time_keys_per_device);
    // A publish carries at most this many (the decoder's bound), so a larger store limit
    // could never be reached in one publish anyway; 1,000 bounds a directory entry.
    range("max_one_time_keys_per_device", u64::from(otks), 1, 1_000)?;
    let inbox = file
        .max_inbox_entries_per_device
        .unwrap_or(d.max_inbox_entries_per_device);
    range("max_inbox_entries_per_device", inbox, 1, 1_000_000)?;
    let days = file.inbox_retention_days.unwrap_or(30);
    range("inbox_retention_days", days, 1, 3_650)?;
    let claims = file
        .key_claims_per_target_per_minute
        .unwrap_or(d.claims_per_target_per_minute);
    range(
        "key_claims_per_target_per_minute",
        u64::from(claims),
        1,
        100_000,
    )?;
    let backup = file
        .max_backup_sessions_per_user
        .unwrap_or(d.max_backup_sessions_per_user);
    range("max_backup_sessions_per_user", backup, 1, 10_000_000)?;
    Ok(tern_engine::keys::KeyLimits {
        max_one_time_keys_per_device: otks,
        max_inbox_entries_per_device: inbox,
        inbox_retention: Duration::from_secs(days * 24 * 3600),
        claims_per_target_per_minute: claims,
        max_backup_sessions_per_user: backup,
        ..d
    })
}

fn millis(value: Option<u64>, default: u64, name: &str) -> Result<Duration, ConfigError> {
    let ms = value.unwrap_or(default);
    // Never 0 (no limit) and never above 10 minutes: a limit that can be switched off is none.
    if !(50..=600_000).contains(&ms) {
        return Err(ConfigError::Invalid(format!(
            "{name} must be between 50 and 600000"
        )));
    }
    Ok(Duration::from_millis(ms))
}

fn resolve_edge(
    file: &FileConfig,
    ops_listen: Option<String>,
    public_authority: Option<String>,
    listen: SocketAddr,
) -> Result<EdgeConfig, ConfigError> {
    let ops_listen = match ops_listen.as_deref().map(str::trim) {
        Some("off") => None,
        Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|e| {
            ConfigError::Invalid(format!("ops_listen {addr:?}: {e} (an address or \"off\")"))
        })?),
        // Loopback only by default: metrics are for the operator, not the internet.
        None => {
            let ip: std::net::IpAddr = if listen.is_ipv6() {
                std::net::Ipv6Addr::LOCALHOST.into()
            } else {
                std::net::Ipv4Addr::LOCALHOST.into()
            };
            let port = if listen.port() == 0 {
                0
            } else {
                listen.port().checked_add(1).ok_or_else(|| {
                    ConfigError::Invalid("ops_listen: set it, the client port has no +1".into())
                })?
            };
            Some(SocketAddr::new(ip, port))
        }
    };
    if let Some(authority) = &public_authority
        && (authority.parse::<axum::http::uri::Authority>().is_err() || authority.contains('@'))
    {
        return Err(ConfigError::Invalid(format!(
            "public_authority {authority:?} is not host[:port]"
        )));
    }
    let per_address = file
        .max_connections_per_address
        .unwrap_or(DEFAULT_CONNECTIONS_PER_ADDRESS);
    if per_address == 0 || file.max_connections == Some(0) {
        return Err(ConfigError::Invalid(
            "max_connections and max_connections_per_address must be at least 1".into(),
        ));
    }
    Ok(EdgeConfig {
        max_connections: file.max_connections,
        per_address,
        fd_reserve: file.fd_reserve.unwrap_or(DEFAULT_FD_RESERVE).min(1 << 20),
        tls_handshake_timeout: millis(
            file.tls_handshake_timeout_ms,
            DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
            "tls_handshake_timeout_ms",
        )?,
        http_head_timeout: millis(
            file.http_head_timeout_ms,
            DEFAULT_HTTP_HEAD_TIMEOUT_MS,
            "http_head_timeout_ms",
        )?,
        http_body_timeout: millis(
            file.http_body_timeout_ms,
            DEFAULT_HTTP_BODY_TIMEOUT_MS,
            "http_body_timeout_ms",
        )?,
        http_write_timeout: millis(
            file.http_write_timeout_ms,
            DEFAULT_HTTP_WRITE_TIMEOUT_MS,
            "http_write_timeout_ms",
        )?,
        http_refusal_delay: {
            let ms = file
                .http_refusal_delay_ms
                .unwrap_or(DEFAULT_HTTP_REFUSAL_DELAY_MS);
            if ms > 10_000 {
                return Err(ConfigError::Invalid(
                    "http_refusal_delay_ms must be between 0 and 10000".into(),
                ));
            }
            Duration::from_millis(ms)
        },
        quic_connect_timeout: millis(
            file.quic_connect_timeout_ms,
            DEFAULT_QUIC_CONNECT_TIMEOUT_MS,
            "quic_connect_timeout_ms",
        )?,
        ops_listen,
        ops_max_connections: file
            .ops_max_connections
            .unwrap_or(DEFAULT_OPS_MAX_CONNECTIONS)
            .clamp(1, 1_024),
        public_authority,
        cors_origins: Vec::new(),
    })
}

/// Bounds of the account settings: a misconfiguration may loosen a limit, never remove it.
const MAX_TOKEN_TTL_SECS: u64 = 365 * 24 * 3600;
const MAX_REGISTRATION_WINDOW_SECS: u64 = 24 * 3600;
const MAX_HASH_QUEUE: usize = 65_536;

fn account_limits(file: &FileConfig) -> Result<tern_engine::accounts::AccountLimits, ConfigError> {
    use tern_engine::accounts::AccountLimits;
    let d = AccountLimits::default();
    let positive = |name: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(ConfigError::Invalid(format!("{name} must be at least 1"))),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let token_ttl_secs = file.token_ttl_secs.unwrap_or(d.token_ttl.as_secs());
    if !(1..=MAX_TOKEN_TTL_SECS).contains(&token_ttl_secs) {
        return Err(ConfigError::Invalid(format!(
            "token_ttl_secs must be between 1 and {MAX_TOKEN_TTL_SECS}"
        )));
    }
    let registration_window_secs = file
        .registration_window_secs
        .unwrap_or(d.registration_window.as_secs());
    if !(1..=MAX_REGISTRATION_WINDOW_SECS).contains(&registration_window_secs) {
        return Err(ConfigError::Invalid(format!(
            "registration_window_secs must be between 1 and {MAX_REGISTRATION_WINDOW_SECS}"
        )));
    }
    let hash_queue = file.hash_queue.unwrap_or(d.hash_queue);
    if !(1..=MAX_HASH_QUEUE).contains(&hash_queue) {
        return Err(ConfigError::Invalid(format!(
            "hash_queue must be between 1 and {MAX_HASH_QUEUE}"
        )));
    }
    let hash_queue_per_client = file
        .hash_queue_per_client
        .unwrap_or(d.hash_queue_per_client);
    if !(1..=hash_queue).contains(&hash_queue_per_client) {
        return Err(ConfigError::Invalid(
            "hash_queue_per_client must be between 1 and hash_queue".into(),
        ));
    }
    Ok(AccountLimits {
        token_ttl: Duration::from_secs(token_ttl_secs),
        failures_per_user_address: positive(
            "login_failures_per_user_address",
            file.login_failures_per_user_address,
            d.failures_per_user_address,
        )?,
        failures_per_username: positive(
            "login_failures_per_username",
            file.login_failures_per_username,
            d.failures_per_username,
        )?,
        attempts_per_address: positive(
            "login_attempts_per_address",
            file.login_attempts_per_address,
            d.attempts_per_address,
        )?,
        registrations_per_address: positive(
            "registrations_per_address",
            file.registrations_per_address,
            d.registrations_per_address,
        )?,
        registrations_per_window: positive(
            "registrations_per_window",
            file.registrations_per_window,
            d.registrations_per_window,
        )?,
        registration_window: Duration::from_secs(registration_window_secs),
        hash_queue,
        hash_queue_per_client,
        ..d
    })
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
        assert_eq!(config.accounts.failures_per_user_address, 5);
        assert_eq!(config.accounts.registrations_per_address, 30);
        assert_eq!(config.floods.device_sends, DEFAULT_DEVICE_SENDS);
        assert_eq!(config.floods.storage_quota_bytes, 4 << 30);
        assert_eq!(
            config.floods.device_send_bytes,
            BucketConfig::new(16 << 20, 2 << 20)
        );
        assert_eq!(config.floods.http_history_max_bytes, 1 << 20);
    }

    #[test]
    fn account_limits_are_read_and_bounded() {
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
            "token_ttl_secs = 3\nregistrations_per_address = 7\nhash_queue_per_client = 2\n",
        )
        .expect("resolve");
        assert_eq!(config.accounts.token_ttl, Duration::from_secs(3));
        assert_eq!(config.accounts.registrations_per_address, 7);
        assert_eq!(config.accounts.hash_queue_per_client, 2);
        assert!(resolve("token_ttl_secs = 0\n").is_err());
        assert!(resolve("login_failures_per_user_address = 0\n").is_err());
        assert!(resolve("hash_queue = 4\nhash_queue_per_client = 5\n").is_err());
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

    #[test]
    fn edge_defaults_bounds_and_the_example_file() {
        let config = Config::resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(config.edge.per_address, DEFAULT_CONNECTIONS_PER_ADDRESS);
        assert_eq!(
            config.edge.ops_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 4434))),
            "operations on loopback, next port"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tern.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Config::resolve(ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
        };
        for bad in [
            "http_head_timeout_ms = 0",
            "http_body_timeout_ms = 100000000",
            "max_connections_per_address = 0",
            "max_connections = 0",
            "ops_listen = \"nowhere\"",
            "public_authority = \"user@evil:1\"",
        ] {
            assert!(resolve(bad).is_err(), "{bad} is refused");
        }
        let off = resolve("ops_listen = \"off\"").expect("off");
        assert_eq!(off.edge.ops_listen, None);
        // Every key of the operator's example is one we know, with a valid value.
        let example = include_str!("../../ops/tern.example.toml");
        let example = resolve(example).expect("the example configuration resolves");
        assert_eq!(example.edge.http_head_timeout, Duration::from_secs(20));
    }

    // ---- web app (issue 12) ----
    #[test]
    fn web_dir_is_a_directory_or_off() {
        use crate::web::WebSource;
        let config = Config::resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(config.web, WebSource::Auto);
        let flag = Config::resolve(ServeArgs {
            web_dir: Some("clients/web/dist".into()),
            ..ServeArgs::default()
        })
        .expect("flag");
        assert_eq!(flag.web, WebSource::Dir(PathBuf::from("clients/web/dist")));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tern.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Config::resolve(ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
        };
        assert_eq!(
            resolve("web_dir = \"off\"").expect("off").web,
            WebSource::Off
        );
        assert!(resolve("web_dir = \"\"").is_err());
        let cors =
            resolve("cors_origins = [\"https://app.example.com\", \"http://localhost:5173\"]")
                .expect("cors");
        assert_eq!(cors.edge.cors_origins.len(), 2);
        assert!(resolve("cors_origins = [\"*\"]").is_err());
        assert!(resolve("cors_origins = [\"https://a.example/path\"]").is_err());
    }

    #[test]
    fn key_limits_defaults_and_bounds() {
        let config = Config::resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(config.keys.max_one_time_keys_per_device, 100);
        assert_eq!(config.keys.max_inbox_entries_per_device, 10_000);
        assert_eq!(
            config.keys.inbox_retention,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(config.keys.claims_per_target_per_minute, 50);
        assert_eq!(config.keys.max_backup_sessions_per_user, 200_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tern.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Config::resolve(ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
        };
        for bad in [
            "max_one_time_keys_per_device = 0",
            "max_one_time_keys_per_device = 1001",
            "max_inbox_entries_per_device = 0",
            "inbox_retention_days = 0",
            "key_claims_per_target_per_minute = 0",
            "max_backup_sessions_per_user = 0",
        ] {
            assert!(resolve(bad).is_err(), "{bad} is refused");
        }
        let set =
            resolve("max_inbox_entries_per_device = 7\ninbox_retention_days = 2").expect("set");
        assert_eq!(set.keys.max_inbox_entries_per_device, 7);
        assert_eq!(set.keys.inbox_retention, Duration::from_secs(2 * 86_400));
    }
}
