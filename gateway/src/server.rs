//! Starts everything: store, engine, services, both TLS listeners on one port, certificate
//! rotation; prints where to connect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tern_engine::accounts::{AccountLimits, Accounts};
use tern_engine::conversations::{ConversationLimits, Conversations};
use tern_engine::driver::{EngineConfig, spawn_engine_shards};
use tern_engine::metrics::EngineMetrics;
use tern_engine::reactions::{ReactionLimits, Reactions};
use tern_engine::store::Store;
use tern_engine::store::embedded::EmbeddedStore;
use tern_engine::store::embedded_reactions::EmbeddedReactions;
use tern_engine::store::reactions::ReactionStore;
use tern_wire::Limits;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::Service as _;

use crate::config::{Config, IoChoice};
use crate::http::{ApiState, ClientAddr};
use crate::metrics::{GatewayMetrics, Transport};
use crate::session::SessionContext;
use crate::shard::ShardRuntime;
use crate::tls::{Certificates, unix_now};

/// A TLS handshake that has not finished in this time is dropped (slowloris).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for sessions to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
const ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// A Deliver carries more than the Send it came from (ids, timestamps); payloads are limited to
/// the frame size minus this, so every Deliver fits in the clients' frame limit too.
pub const ENVELOPE_HEADROOM_BYTES: usize = 4 * 1024;
/// Attempts to find a port free on both TCP and UDP when asked for port 0.
const PORT_ATTEMPTS: usize = 20;

/// Runs the server until SIGINT/SIGTERM: shared services on the calling thread, one pinned
/// thread per shard for connections and engine shards.
pub fn run(config: Config) -> anyhow::Result<()> {
    crate::tls::install_default_provider();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store_dir = config.data_dir.join("store");
    let embedded = EmbeddedStore::open(&store_dir)
        .with_context(|| format!("opening store in {}", store_dir.display()))?;
    let reaction_store: Arc<dyn ReactionStore> =
        Arc::new(EmbeddedReactions::open(&embedded).context("opening the reaction store")?);
    let store: Arc<dyn Store> = Arc::new(embedded);
    let certs = Certificates::load(config.certs.clone()).context("loading TLS certificate")?;
    let io = resolve_io(config.io)?;

    let mut registry = Registry::default();
    let engine_metrics = Arc::new(EngineMetrics::new());
    engine_metrics.register(&mut registry);
    let gateway_metrics = Arc::new(GatewayMetrics::default());
    gateway_metrics.register(&mut registry);

    let shards = (0..config.shards)
        .map(ShardRuntime::build)
        .collect::<Result<Vec<_>, _>>()
        .context("building shard runtimes")?;
    let handles: Vec<_> = shards.iter().map(|s| s.handle.clone()).collect();

    let mut engine_config = EngineConfig::default();
    engine_config.limits.max_payload_bytes = config.max_frame_bytes - ENVELOPE_HEADROOM_BYTES;
    let engine = spawn_engine_shards(
        store.clone(),
        engine_config,
        engine_metrics.clone(),
        &handles,
    )?;
    let account_limits = AccountLimits {
        failures_per_username: config.login_failures_per_username,
        attempts_per_address: config.login_attempts_per_address,
        ..AccountLimits::default()
    };
    let accounts = Arc::new(Accounts::new(store.clone(), account_limits)?);
    let conversations = Arc::new(Conversations::new(
        store.clone(),
        engine.clone(),
        ConversationLimits::default(),
    ));
    let reactions = Arc::new(Reactions::new(
        store.clone(),
        reaction_store,
        engine.clone(),
        ReactionLimits::default(),
    ));

    let sockets = bind_shards(config.listen, config.shards)?;
    let local = sockets[0].0.local_addr()?;
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let limits = Limits {
        max_frame_bytes: config.max_frame_bytes,
        ..Limits::default()
    };
    let presence = crate::presence::PresenceService::spawn(
        store.clone(),
        config.presence,
        gateway_metrics.clone(),
        &handles[0],
    );
    let sessions = Arc::new(SessionContext {
        presence,
        accounts: accounts.clone(),
        conversations: conversations.clone(),
        reactions: reactions.clone(),
        engine: engine.clone(),
        store: store.clone(),
        limits,
        engine_metrics,
        metrics: gateway_metrics.clone(),
        idle_timeout: config.idle_timeout,
        send_queue_frames: config.send_queue_frames,
        resume_backlog: config.resume_backlog_messages,
        shutdown: shutdown.clone(),
    });
    let api = Arc::new(ApiState {
        accounts,
        conversations,
        reactions,
        engine,
        certs: certs.clone(),
        registry: Arc::new(registry),
        public_addr: local,
        max_frame_bytes: config.max_frame_bytes,
        presence: sessions.presence.clone(),
    });
    let router = crate::http::router(api, sessions.clone());
    let tcp_tls = Arc::new(certs.tcp_config()?);
    let quic_tls = certs.quic_config()?;
    let quic_reset_key =
        crate::tls::quic_reset_key(&config.data_dir).context("loading the QUIC reset key")?;

    let cpus = crate::shard::allowed_cpus();
    // Pinning only helps when every shard gets a core of its own.
    let pin = config.shards <= cpus.len();
    let mut threads = Vec::with_capacity(shards.len());
    for (shard, (tcp, udp)) in shards.into_iter().zip(sockets) {
        let cpu = pin.then(|| cpus[shard.index % cpus.len()]);
        let index = shard.index;
        let quic_tls = quic_tls.clone();
        let sessions = sessions.clone();
        let router = router.clone();
        let tcp_tls = tcp_tls.clone();
        let metrics = gateway_metrics.clone();
        let mut shutdown = shutdown.clone();
        let thread = shard.start(cpu, move || async move {
            let mut wt_config = wtransport::ServerConfig::builder()
                .with_bind_socket(udp)
                .with_custom_tls(quic_tls)
                .keep_alive_interval(Some(Duration::from_secs(15)))
                .build();
            let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &quic_reset_key);
            let mut endpoint_config = wtransport::quinn::EndpointConfig::new(Arc::new(reset_key));
            // quinn's default generator signs connection ids with a key random per endpoint and
            // silently drops packets whose ids it did not sign: a restarted server (or another
            // shard) would never answer with the reset. Random ids are recognised everywhere;
            // resets stay rate-limited and smaller than the packet that caused them.
            endpoint_config.cid_generator(|| Box::new(crate::tls::RandomCids));
            *wt_config.quic_endpoint_config_mut() = endpoint_config;
            match wtransport::Endpoint::server(wt_config) {
                Ok(endpoint) => {
                    tokio::spawn(crate::wt::accept_loop(endpoint, sessions.clone()));
                }
                Err(error) => {
                    tracing::error!(shard = index, %error, "starting the QUIC endpoint failed");
                }
            }
            match io {
                Io::Epoll => match TcpListener::from_std(tcp) {
                    Ok(listener) => {
                        let acceptor = TlsAcceptor::from(tcp_tls);
                        tokio::spawn(tcp_accept_loop(listener, acceptor, router, metrics));
                    }
                    Err(error) => tracing::error!(shard = index, %error, "TCP listener failed"),
                },
                #[cfg(target_os = "linux")]
                Io::Uring => crate::uring_path::start(
                    tcp,
                    tcp_tls,
                    sessions.clone(),
                    router,
                    metrics,
                    shutdown.clone(),
                ),
            }
            // Runs (and with it every task on this shard) until shutdown, plus the grace period
            // in which sessions say goodbye.
            let _ = shutdown.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        })?;
        threads.push(thread);
    }
    tracing::info!(shards = config.shards, io = ?io, pinned = pin, "shards started");

    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    control.block_on(async {
        tokio::spawn(rotate_certificates(certs.clone()));
        print_banner(local, &certs);
        shutdown_signal().await;
        tracing::info!("shutting down: telling clients to reconnect later");
        let _ = shutdown_tx.send(true);
        // Give sessions a moment to deliver GoingAway and close cleanly.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while tokio::time::Instant::now() < deadline && open_sessions(&gateway_metrics) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Shard threads end with their grace period; returning ends the process either way.
    Ok(())
}

/// The I/O driver actually used for TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    Epoll,
    #[cfg(target_os = "linux")]
    Uring,
}

fn resolve_io(choice: IoChoice) -> anyhow::Result<Io> {
    #[cfg(target_os = "linux")]
    {
        match choice {
            IoChoice::Epoll => Ok(Io::Epoll),
            IoChoice::Uring => {
                tern_uring::probe().context("--io uring: this kernel does not allow it")?;
                Ok(Io::Uring)
            }
            IoChoice::Auto => match tern_uring::probe() {
                Ok(()) => Ok(Io::Uring),
                Err(why) => {
                    tracing::warn!(%why, "io_uring unavailable: falling back to epoll");
                    Ok(Io::Epoll)
                }
            },
        }
    }
    #[cfg(not(target_os = "linux"))]
    match choice {
        IoChoice::Uring => anyhow::bail!("--io uring needs Linux"),
        IoChoice::Auto | IoChoice::Epoll => Ok(Io::Epoll),
    }
}

/// Binds, for every shard, a TCP listener and a UDP socket on one shared port (`SO_REUSEPORT`).
/// With port 0 the kernel picks a TCP port, which may be taken on UDP: then try again.
fn bind_shards(
    requested: SocketAddr,
    shards: usize,
) -> anyhow::Result<Vec<(std::net::TcpListener, std::net::UdpSocket)>> {
    let attempts = if requested.port() == 0 {
        PORT_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let first_tcp = crate::shard::reuseport_tcp(requested)
            .with_context(|| format!("binding TCP {requested}"))?;
        let addr = first_tcp.local_addr()?;
        let first_udp = match crate::shard::reuseport_udp(addr) {
            Ok(udp) => udp,
            Err(error) => {
                last_error = Some(error);
                continue;
            }
        };
        let mut sockets = vec![(first_tcp, first_udp)];
        for _ in 1..shards {
            let tcp = crate::shard::reuseport_tcp(addr)
                .with_context(|| format!("binding TCP {addr} for another shard"))?;
            let udp = crate::shard::reuseport_udp(addr)
                .with_context(|| format!("binding UDP {addr} for another shard"))?;
            sockets.push((tcp, udp));
        }
        return Ok(sockets);
    }
    Err(anyhow::anyhow!(
        "binding UDP on {requested}: {:?}",
        last_error
    ))
}

async fn tcp_accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    metrics: Arc<GatewayMetrics>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move { serve_tcp(stream, peer, acceptor, router, metrics).await });
    }
}

async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: axum::Router,
    metrics: Arc<GatewayMetrics>,
) {
    let _ = stream.set_nodelay(true);
    // No plaintext: anything that is not a TLS handshake (a plain HTTP request included) fails
    // here and the socket is closed without an HTTP answer.
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.tls_handshake_failures.inc();
            return;
        }
    };
    serve_http(TokioIo::new(tls), peer, router).await;
}

/// Serves HTTP/1.1 (API, metrics, WebSocket upgrades) on a TLS-decrypted stream; both I/O
/// drivers end here for everything that is not their own WebSocket data path.
pub(crate) async fn serve_http<IO>(io: IO, peer: SocketAddr, router: axum::Router)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            let mut router = router.clone();
            async move { router.call(request).await }
        });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

async fn rotate_certificates(certs: Arc<Certificates>) {
    let mut interval = tokio::time::interval(ROTATION_CHECK_INTERVAL);
    loop {
        interval.tick().await;
        match certs.rotate_if_due(unix_now()) {
            Ok(true) => {
                let hash = hex::encode(certs.active().sha256);
                tracing::info!(sha256 = %hash, "rotated the self-signed certificate");
            }
            Ok(false) => {}
            Err(error) => tracing::error!(%error, "certificate rotation failed"),
        }
    }
}

fn open_sessions(metrics: &GatewayMetrics) -> i64 {
    [Transport::WebSocket, Transport::WebTransport]
        .iter()
        .map(|t| metrics.of(*t).connections.get())
        .sum()
}

fn print_banner(addr: SocketAddr, certs: &Certificates) {
    let active = certs.active();
    let hash = hex::encode(active.sha256);
    // Plain stdout lines: people read them, and tests parse "listening on".
    println!("tern listening on {addr}");
    println!("  https api:     https://{addr}/api/v1");
    println!("  websocket:     wss://{addr}/api/v1/ws");
    println!("  webtransport:  https://{addr}{}", crate::wt::WT_PATH);
    println!("  certificate sha-256: {hash}");
    if let Some(not_after) = active.not_after {
        println!("  self-signed, valid until unix time {not_after}; clients pin the hash above");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
