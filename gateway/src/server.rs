//! Starts everything: store, engine, services, both TLS listeners on one port, certificate
//! rotation; prints where to connect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tern_engine::accounts::Accounts;
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

use crate::config::{Config, IoChoice};
use crate::edge::{Admission, AdmissionLimits, AdmissionMetrics};
use crate::http::ApiState;
use crate::http_serve::{HttpLimits, serve_http};
use crate::metrics::{GatewayMetrics, Transport};
use crate::session::SessionContext;
use crate::shard::ShardRuntime;
use crate::tls::{Certificates, unix_now};

/// Operations connections from one address (health checkers and scrapers are few).
const OPS_PER_ADDRESS: usize = 8;
/// How long shutdown waits for sessions to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// A Deliver carries more than the Send it came from (ids, timestamps); payloads are limited to
/// the frame size minus this, so every Deliver fits in the clients' frame limit too.
pub const ENVELOPE_HEADROOM_BYTES: usize = 4 * 1024;
/// Attempts to find a port free on both TCP and UDP when asked for port 0.
const PORT_ATTEMPTS: usize = 20;

/// Runs the server until SIGINT/SIGTERM: shared services on the calling thread, one pinned
/// thread per shard for connections and engine shards.
pub fn run(config: Config) -> anyhow::Result<()> {
    crate::tls::install_default_provider();
    // Before the first file is created: everything in the data directory is private.
    crate::edge::restrict_file_modes();
    crate::edge::private_dir(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let fd_limit = crate::edge::raise_fd_limit();
    let max_connections = crate::edge::global_budget(
        config.edge.max_connections,
        fd_limit,
        config.edge.fd_reserve,
    );
    if config
        .edge
        .max_connections
        .is_some_and(|wanted| wanted > max_connections)
    {
        tracing::warn!(
            fd_limit,
            max_connections,
            "max_connections lowered to what the descriptor limit allows"
        );
    }
    let store_dir = config.data_dir.join("store");
    let embedded = EmbeddedStore::open(&store_dir)
        .with_context(|| format!("opening store in {}", store_dir.display()))?;
    let reaction_store: Arc<dyn ReactionStore> =
        Arc::new(EmbeddedReactions::open(&embedded).context("opening the reaction store")?);
    let key_store: Arc<dyn tern_engine::store::keys::KeyStore> = Arc::new(
        tern_engine::store::embedded_keys::EmbeddedKeys::open(&embedded)
            .context("opening the key store")?,
    );
    // ---- file sharing (issue 13) ----
    let file_store: Arc<dyn tern_engine::store::files::FileStore> = Arc::new(
        tern_engine::store::files_embedded::EmbeddedFiles::open(&embedded)
            .context("opening the file store")?,
    );
    let store: Arc<dyn Store> = Arc::new(embedded);
    let certs = Certificates::load(config.certs.clone()).context("loading TLS certificate")?;
    let web = crate::web::WebApp::new(&config.web).context("loading the web app")?;
    let io = resolve_io(config.io)?;

    let mut registry = Registry::default();
    let engine_metrics = Arc::new(EngineMetrics::new());
    engine_metrics.register(&mut registry);
    let gateway_metrics = Arc::new(GatewayMetrics::default());
    gateway_metrics.register(&mut registry);
    let admission_metrics = AdmissionMetrics::default();
    admission_metrics.register(&mut registry);
    let admission_metrics = Arc::new(admission_metrics);
    let client_admission = Admission::new(
        "client",
        AdmissionLimits {
            max_connections,
            per_address: config.edge.per_address,
        },
        &admission_metrics,
    );
    let ops_admission = Admission::new(
        "ops",
        AdmissionLimits {
            max_connections: config.edge.ops_max_connections,
            per_address: OPS_PER_ADDRESS.min(config.edge.ops_max_connections),
        },
        &admission_metrics,
    );
    tracing::info!(
        fd_limit,
        max_connections,
        per_address = config.edge.per_address,
        "connection budget"
    );
    let http_limits = HttpLimits {
        head_timeout: config.edge.http_head_timeout,
        body_timeout: config.edge.http_body_timeout,
        write_timeout: config.edge.http_write_timeout,
        metrics: admission_metrics.clone(),
    };

    let shards = (0..config.shards)
        .map(ShardRuntime::build)
        .collect::<Result<Vec<_>, _>>()
        .context("building shard runtimes")?;
    let handles: Vec<_> = shards.iter().map(|s| s.handle.clone()).collect();

    let mut engine_config = EngineConfig::default();
    engine_config.limits.max_payload_bytes = config.max_frame_bytes - ENVELOPE_HEADROOM_BYTES;
    engine_config.limits.user_sends = config.floods.user_sends;
    engine_config.limits.conversation_sends = config.floods.conversation_sends;
    let engine = spawn_engine_shards(
        store.clone(),
        engine_config,
        engine_metrics.clone(),
        &handles,
    )?;
    let accounts = Arc::new(Accounts::new(store.clone(), config.accounts.clone())?);
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

    let keys = Arc::new(tern_engine::keys::Keys::new(
        store.clone(),
        key_store,
        engine.clone(),
        config.keys.clone(),
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
    let public_authority = config
        .edge
        .public_authority
        .clone()
        .unwrap_or_else(|| local.to_string());
    let loopback_port = (config.edge.public_authority.is_none() && local.ip().is_loopback())
        .then_some(local.port());
    let origins = Arc::new(crate::headers::OriginPolicy::new(
        &public_authority,
        loopback_port,
        &config.edge.cors_origins,
    ));
    // ---- file sharing (issue 13) ----
    let files = Arc::new(crate::files::FileService::open(
        config.files.clone(),
        &config.data_dir,
        file_store,
        store.clone(),
        config.floods.device_requests,
    )?);
    files.metrics.register(&mut registry);
    handles[0].spawn(crate::files::sweeper::run(files.clone()));
    let sessions = Arc::new(SessionContext {
        files: files.clone(),
        presence,
        accounts: accounts.clone(),
        conversations: conversations.clone(),
        reactions: reactions.clone(),
        keys: keys.clone(),
        engine: engine.clone(),
        store: store.clone(),
        limits,
        engine_metrics,
        metrics: gateway_metrics.clone(),
        idle_timeout: config.idle_timeout,
        send_queue_frames: config.send_queue_frames,
        resume_backlog: config.resume_backlog_messages,
        shutdown: shutdown.clone(),
        device_limits: crate::session::limits::DeviceLimits {
            sends: config.floods.device_sends,
            send_bytes: config.floods.device_send_bytes,
            requests: config.floods.device_requests,
            storage_quota_bytes: config.floods.storage_quota_bytes,
        },
        origins: origins.clone(),
    });
    let responses = Arc::new(crate::headers::ResponsePolicy {
        origins: origins.clone(),
        app_csp: axum::http::HeaderValue::from_str(&crate::headers::app_csp(&public_authority))
            .context("the public authority makes an invalid CSP header")?,
    });
    let api = Arc::new(ApiState {
        web: web.clone(),
        responses,
        accounts,
        conversations,
        reactions,
        keys,
        engine,
        certs: certs.clone(),
        registry: Arc::new(registry),
        public_authority: public_authority.clone(),
        max_frame_bytes: config.max_frame_bytes,
        http_history_max_bytes: config.floods.http_history_max_bytes,
        refusal_delay: config.edge.http_refusal_delay,
        presence: sessions.presence.clone(),
        files,
    });
    if config.edge.public_authority.is_none() && local.ip().is_unspecified() {
        tracing::warn!(
            %local,
            "listening on an unspecified address without public_authority: /api/v1/transport \
             will name {local}, which clients cannot reach; set public_authority"
        );
    }
    let ops_router = crate::http::ops_router(api.clone());
    let router = crate::http::router(api, sessions.clone());
    let ops_listener = match config.edge.ops_listen {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the operations listener {addr}"))?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
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
        let admission = client_admission.clone();
        let http_limits = http_limits.clone();
        let edge = config.edge.clone();
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
                    tokio::spawn(crate::wt::accept_loop(
                        endpoint,
                        sessions.clone(),
                        admission.clone(),
                        edge.quic_connect_timeout,
                    ));
                }
                Err(error) => {
                    tracing::error!(shard = index, %error, "starting the QUIC endpoint failed");
                }
            }
            match io {
                Io::Epoll => match TcpListener::from_std(tcp) {
                    Ok(listener) => {
                        let acceptor = TlsAcceptor::from(tcp_tls);
                        tokio::spawn(tcp_accept_loop(
                            listener,
                            TcpEdge {
                                acceptor,
                                router,
                                metrics,
                                admission,
                                tls_timeout: edge.tls_handshake_timeout,
                                http: http_limits,
                            },
                        ));
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
                    crate::uring_path::UringEdge {
                        admission,
                        http: http_limits,
                        // The driver times TLS and the first request head as one phase.
                        handshake_timeout: edge.tls_handshake_timeout + edge.http_head_timeout,
                    },
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
        let mut ops_addr = None;
        if let Some(listener) = ops_listener {
            ops_addr = listener.local_addr().ok();
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(tcp_accept_loop(
                        listener,
                        TcpEdge {
                            acceptor: TlsAcceptor::from(tcp_tls.clone()),
                            router: ops_router,
                            metrics: gateway_metrics.clone(),
                            admission: ops_admission,
                            tls_timeout: config.edge.tls_handshake_timeout,
                            http: http_limits.clone(),
                        },
                    ));
                }
                Err(error) => tracing::error!(%error, "operations listener failed"),
            }
        }
        print_banner(local, ops_addr, &certs, &public_authority, &web);
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

/// What the epoll path needs for every connection of one listener.
#[derive(Clone)]
struct TcpEdge {
    acceptor: TlsAcceptor,
    router: axum::Router,
    metrics: Arc<GatewayMetrics>,
    admission: Arc<Admission>,
    tls_timeout: Duration,
    http: HttpLimits,
}

async fn tcp_accept_loop(listener: TcpListener, edge: TcpEdge) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // The budget keeps us below the descriptor limit, so this is rare; back off
                // instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over budget: closed right here (dropping the stream), before any TLS work.
        let Ok(admitted) = edge.admission.admit(peer.ip()) else {
            continue;
        };
        let edge = edge.clone();
        tokio::spawn(async move {
            serve_tcp(stream, peer, edge).await;
            drop(admitted);
        });
    }
}

async fn serve_tcp(stream: TcpStream, peer: SocketAddr, edge: TcpEdge) {
    let _ = stream.set_nodelay(true);
    // No plaintext: anything that is not a TLS handshake (a plain HTTP request included) fails
    // here and the socket is closed without an HTTP answer.
    let tls = match tokio::time::timeout(edge.tls_timeout, edge.acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            edge.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            edge.metrics.tls_handshake_failures.inc();
            edge.http.metrics.timeout("tls_handshake");
            return;
        }
    };
    serve_http(TokioIo::new(tls), peer, edge.router, edge.http).await;
}

async fn rotate_certificates(certs: Arc<Certificates>) {
    let mut interval = tokio::time::interval(certs.check_interval());
    loop {
        interval.tick().await;
        match certs.rotate_if_due(unix_now()) {
            Ok(crate::tls::Rotation::Rotated) => {
                let hash = hex::encode(certs.active().sha256);
                tracing::info!(sha256 = %hash, "rotated the self-signed certificate");
            }
            Ok(crate::tls::Rotation::NextPublished) => {
                let hash = certs
                    .next()
                    .map(|n| hex::encode(n.sha256))
                    .unwrap_or_default();
                tracing::info!(sha256 = %hash, "published the next self-signed certificate");
            }
            Ok(crate::tls::Rotation::Nothing) => {}
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

fn print_banner(
    addr: SocketAddr,
    ops: Option<SocketAddr>,
    certs: &Certificates,
    authority: &str,
    web: &crate::web::WebApp,
) {
    let active = certs.active();
    let hash = hex::encode(active.sha256);
    // Plain stdout lines: people read them, and tests parse "listening on" and "operations:".
    println!("tern listening on {addr}");
    println!(
        "  web app:       https://{authority}/  ({})",
        web.describe()
    );
    println!("  https api:     https://{addr}/api/v1");
    println!("  websocket:     wss://{addr}/api/v1/ws");
    println!("  webtransport:  https://{addr}{}", crate::wt::WT_PATH);
    if let Some(ops) = ops {
        println!("  operations:    https://{ops} (/healthz, /metrics)");
    }
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
