//! Test harness: a driver on its own thread (like a shard), an echo handler, a TLS WebSocket
//! client trusting a self-signed certificate.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tern_uring::{Handler, UringConfig, UringStats, WsConnection, WsEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

pub const WS_PATH: &str = "/api/v1/ws";
pub const FRAME_LIMIT: usize = 1024 * 1024 + 1024;
pub const FLOOD_FRAME: usize = 64 * 1024;

pub type Client = WebSocketStream<TlsStream<TcpStream>>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub struct Server {
    pub addr: SocketAddr,
    pub stats: Arc<UringStats>,
    pub echo: Arc<EchoState>,
    pub shutdown: watch::Sender<bool>,
    pub handle: tokio::runtime::Handle,
    pub thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    cert: CertificateDer<'static>,
}

#[derive(Default)]
pub struct EchoState {
    /// Bytes the flooding session got accepted by `send`.
    pub flood_sent: AtomicU64,
    pub sessions_ended: AtomicU64,
}

struct Echo(Arc<EchoState>);

impl Handler for Echo {
    fn websocket(&self, _peer: SocketAddr, connection: WsConnection) {
        let state = self.0.clone();
        tokio::spawn(async move {
            let WsConnection {
                mut receiver,
                mut sender,
            } = connection;
            loop {
                match receiver.recv().await {
                    WsEvent::Frame(bytes) if bytes == b"close-me" => {
                        sender.close(4001, "bye now").await;
                        break;
                    }
                    WsEvent::Frame(bytes) if bytes == b"flood" => {
                        let chunk = vec![7u8; FLOOD_FRAME];
                        while sender.send(&chunk).await.is_ok() {
                            state
                                .flood_sent
                                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        }
                        break;
                    }
                    WsEvent::Frame(bytes) if bytes == b"stall" => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    WsEvent::Frame(bytes) if bytes == b"burst" => {
                        for i in 0u32..1000 {
                            if sender.send(&i.to_be_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                    WsEvent::Frame(bytes) => {
                        if sender.send(&bytes).await.is_err() {
                            break;
                        }
                    }
                    WsEvent::TooLarge { size } => {
                        let _ = sender.send(format!("toolarge {size}").as_bytes()).await;
                    }
                    WsEvent::Malformed(reason) => {
                        sender.close(1003, &format!("malformed: {reason}")).await;
                        break;
                    }
                    WsEvent::Closed => break,
                }
            }
            state.sessions_ended.fetch_add(1, Ordering::SeqCst);
        });
    }

    fn http(&self, _peer: SocketAddr, mut stream: tokio::io::DuplexStream) {
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let body = format!("you asked: {line}");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

pub fn start(configure: impl FnOnce(&mut UringConfig) + Send + 'static) -> Server {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], private)
        .unwrap();
    let mut config = UringConfig::new(Arc::new(tls), WS_PATH, FRAME_LIMIT);
    config.shutdown_grace = Duration::from_secs(2);
    configure(&mut config);
    let stats = config.stats.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = Arc::new(EchoState::default());
    let handler = Arc::new(Echo(echo.clone()));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        handle_tx.send(runtime.handle().clone()).unwrap();
        runtime.block_on(tern_uring::serve(listener, config, handler, shutdown_rx))
    });
    let handle = handle_rx.recv().unwrap();
    Server {
        addr,
        stats,
        echo,
        shutdown,
        handle,
        thread: Some(thread),
        cert,
    }
}

impl Server {
    pub fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    pub async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        self.connector()
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    pub async fn connect(&self) -> Client {
        let tls = self.tls().await;
        let url = format!("wss://localhost:{}{WS_PATH}", self.addr.port());
        let (ws, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        assert_eq!(response.status(), 101);
        ws
    }

    pub fn stat(&self, f: impl Fn(&UringStats) -> &AtomicU64) -> u64 {
        f(&self.stats).load(Ordering::SeqCst)
    }

    /// Flips shutdown and waits for `serve` to return.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown.send(true).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Polls `cond` every 20 ms for up to `secs`.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
