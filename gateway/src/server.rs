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
use tern_engine::driver::{EngineConfig, spawn_engine};
use tern_engine::metrics::EngineMetrics;
use tern_engine::store::Store;
use tern_engine::store::embedded::EmbeddedStore;
use tern_wire::Limits;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::Service as _;

use crate::config::Config;
use crate::http::{ApiState, ClientAddr};
use crate::metrics::{GatewayMetrics, Transport};
use crate::session::SessionContext;
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

pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::tls::install_default_provider();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store_dir = config.data_dir.join("store");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&store_dir)
            .with_context(|| format!("opening store in {}", store_dir.display()))?,
    );
    let certs = Certificates::load(config.certs.clone()).context("loading TLS certificate")?;

    let mut registry = Registry::default();
    let engine_metrics = Arc::new(EngineMetrics::new());
    engine_metrics.register(&mut registry);
    let gateway_metrics = Arc::new(GatewayMetrics::default());
    gateway_metrics.register(&mut registry);

    let mut engine_config = EngineConfig::default();
    engine_config.limits.max_payload_bytes = config.max_frame_bytes - ENVELOPE_HEADROOM_BYTES;
    let engine = spawn_engine(store.clone(), engine_config, engine_metrics.clone())?;
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

    let (tcp, endpoint) = bind_both(config.listen, &certs)?;
    let local = tcp.local_addr()?;
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let limits = Limits {
        max_frame_bytes: config.max_frame_bytes,
        ..Limits::default()
    };
    let sessions = Arc::new(SessionContext {
        accounts: accounts.clone(),
        conversations: conversations.clone(),
        engine: engine.clone(),
        store: store.clone(),
        limits,
        engine_metrics,
        metrics: gateway_metrics.clone(),
        idle_timeout: config.idle_timeout,
        send_queue_frames: config.send_queue_frames,
        shutdown,
    });
    let api = Arc::new(ApiState {
        accounts,
        conversations,
        engine,
        certs: certs.clone(),
        registry: Arc::new(registry),
        public_addr: local,
        max_frame_bytes: config.max_frame_bytes,
    });
    let router = crate::http::router(api, sessions.clone());

    tokio::spawn(crate::wt::accept_loop(endpoint, sessions));
    let acceptor = TlsAcceptor::from(Arc::new(certs.tcp_config()?));
    let gateway_metrics_for_shutdown = gateway_metrics.clone();
    tokio::spawn(tcp_accept_loop(tcp, acceptor, router, gateway_metrics));
    tokio::spawn(rotate_certificates(certs.clone()));

    print_banner(local, &certs);
    shutdown_signal().await;
    tracing::info!("shutting down: telling clients to reconnect later");
    let _ = shutdown_tx.send(true);
    // Give sessions a moment to deliver GoingAway and close cleanly.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while tokio::time::Instant::now() < deadline && open_sessions(&gateway_metrics_for_shutdown) > 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Binds TCP and UDP on the same port. With port 0 the kernel picks a TCP port, which may be
/// taken on UDP: then try again.
fn bind_both(
    requested: SocketAddr,
    certs: &Certificates,
) -> anyhow::Result<(
    TcpListener,
    wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>,
)> {
    let attempts = if requested.port() == 0 {
        PORT_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let std_listener = std::net::TcpListener::bind(requested)
            .with_context(|| format!("binding TCP {requested}"))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let wt_config = wtransport::ServerConfig::builder()
            .with_bind_address(addr)
            .with_custom_tls(certs.quic_config()?)
            .keep_alive_interval(Some(Duration::from_secs(15)))
            .build();
        match wtransport::Endpoint::server(wt_config) {
            Ok(endpoint) => return Ok((TcpListener::from_std(std_listener)?, endpoint)),
            Err(error) => last_error = Some(error),
        }
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
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            let mut router = router.clone();
            async move { router.call(request).await }
        });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
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
        .map(|t| metrics.connections.get_or_create(&t.labels()).get())
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
