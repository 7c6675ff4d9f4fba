//! Heap held per idle WebSocket connection on the driver's thread (driver state, rustls, the
//! session task and its channels), measured with a per-thread counting allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

struct Counting;

thread_local! {
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn account(delta: i64) {
    let _ = NET.try_with(|net| net.set(net.get() + delta));
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as i64);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as i64));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

async fn server_heap(server: &common::Server) -> i64 {
    server
        .handle
        .spawn(async { NET.with(|net| net.get()) })
        .await
        .unwrap()
}

async fn open(server: &common::Server, clients: &mut Vec<common::Client>, n: usize) {
    for _ in 0..n {
        let mut ws = server.connect().await;
        ws.send(Message::binary(b"warm-up".to_vec())).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_data().as_ref(), b"warm-up");
        clients.push(ws);
    }
}

#[tokio::test]
async fn heap_per_idle_connection() {
    let server = common::start(|_| {});
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut clients = Vec::new();
        open(&server, &mut clients, 50).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = server_heap(&server).await;
        const N: usize = 400;
        open(&server, &mut clients, N).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = server_heap(&server).await;
        let per_connection = (after - before) / N as i64;
        eprintln!(
            "heap per idle TLS WebSocket connection (driver + rustls + session task): \
             {per_connection} bytes ({N} connections, {} total); \
             size_of::<rustls::ServerConnection>() = {}",
            after - before,
            std::mem::size_of::<rustls::ServerConnection>()
        );
        assert_eq!(common::Server::stat(&server, |s| &s.recv_buffers_held), 0);
        assert!(
            per_connection < 64 * 1024,
            "{per_connection} bytes per connection"
        );
    })
    .await
    .unwrap();
}
