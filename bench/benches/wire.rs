//! The wire codec: building envelopes and verifying + decoding them with the default limits.
//!
//! Throughput is in envelope bytes. `encode` is what the driver does today for every `Reply`
//! and every fanned-out `Deliver` (a fresh 256-byte builder that grows as needed, then a copy
//! into a `Vec`); `encode_into` reuses one builder, as `tern_wire::encode_server_into` allows,
//! and still copies the result into an owned `Bytes`, so the two are comparable.

mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tern_bench::{FULL_PAYLOAD, TYPICAL_PAYLOAD, deliver_message, send_message};
use tern_wire::{FlatBufferBuilder, Limits};

fn wire(c: &mut Criterion) {
    let limits = Limits::default();
    let send = send_message(TYPICAL_PAYLOAD);
    let deliver = deliver_message(TYPICAL_PAYLOAD);
    let deliver_full = deliver_message(FULL_PAYLOAD);
    let send_bytes = tern_wire::encode_client(&send);
    let deliver_bytes = tern_wire::encode_server(&deliver);
    let deliver_full_bytes = tern_wire::encode_server(&deliver_full);

    let mut g = c.benchmark_group("wire/encode");
    g.throughput(Throughput::Bytes(send_bytes.len() as u64));
    g.bench_function("send_200B", |b| {
        b.iter(|| tern_wire::encode_client(black_box(&send)))
    });
    g.throughput(Throughput::Bytes(deliver_bytes.len() as u64));
    g.bench_function("deliver_200B", |b| {
        b.iter(|| tern_wire::encode_server(black_box(&deliver)))
    });
    g.throughput(Throughput::Bytes(deliver_full_bytes.len() as u64));
    g.bench_function("deliver_60KiB", |b| {
        b.iter(|| tern_wire::encode_server(black_box(&deliver_full)))
    });
    g.finish();

    let mut g = c.benchmark_group("wire/encode_into");
    let mut fbb = FlatBufferBuilder::with_capacity(1024);
    g.throughput(Throughput::Bytes(deliver_bytes.len() as u64));
    g.bench_function("deliver_200B", |b| {
        b.iter(|| {
            Bytes::copy_from_slice(tern_wire::encode_server_into(&mut fbb, black_box(&deliver)))
        })
    });
    g.throughput(Throughput::Bytes(deliver_full_bytes.len() as u64));
    g.bench_function("deliver_60KiB", |b| {
        b.iter(|| {
            Bytes::copy_from_slice(tern_wire::encode_server_into(
                &mut fbb,
                black_box(&deliver_full),
            ))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("wire/decode");
    g.throughput(Throughput::Bytes(send_bytes.len() as u64));
    g.bench_function("send_200B", |b| {
        b.iter(|| tern_wire::decode_client(black_box(&send_bytes), &limits).expect("valid"))
    });
    g.throughput(Throughput::Bytes(deliver_bytes.len() as u64));
    g.bench_function("deliver_200B", |b| {
        b.iter(|| tern_wire::decode_server(black_box(&deliver_bytes), &limits).expect("valid"))
    });
    g.throughput(Throughput::Bytes(deliver_full_bytes.len() as u64));
    g.bench_function("deliver_60KiB", |b| {
        b.iter(|| tern_wire::decode_server(black_box(&deliver_full_bytes), &limits).expect("valid"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = wire
}
criterion_main!(benches);
