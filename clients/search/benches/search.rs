//! Criterion benchmarks of the search index: adding a batch to a large index, and the three
//! query kinds issue 14 names. The index (SQLCipher on disk, as clients use it) is built once
//! with `TERN_SEARCH_BENCH_MESSAGES` messages (default 1,000,000). Percentiles, build rate and
//! size come from `examples/index_bench.rs`.

#[path = "common/corpus.rs"]
#[allow(dead_code)] // common_word and conversation are the example's only
mod corpus;

use std::hint::black_box;

use corpus::Corpus;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tern_search::{SearchIndex, SearchQuery};

const SEED: u64 = 14;
const BATCH: usize = 1000;

fn messages() -> u64 {
    std::env::var("TERN_SEARCH_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn build(dir: &std::path::Path, n: u64, corpus: &mut Corpus) -> SearchIndex {
    let mut index = SearchIndex::open(&dir.join("bench.db"), &[7u8; 32]).expect("open");
    let mut done = 0;
    while done < n {
        let k = (n - done).min(BATCH as u64);
        let batch: Vec<_> = (0..k).map(|_| corpus.message()).collect();
        index.add(&batch).expect("add");
        done += k;
    }
    index.checkpoint_wal().expect("checkpoint");
    index
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut corpus = Corpus::new(SEED);
    let mut index = build(dir.path(), messages(), &mut corpus);

    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.bench_function("add_batch_of_1000", |b| {
        b.iter_batched(
            || (0..BATCH).map(|_| corpus.message()).collect::<Vec<_>>(),
            |batch| index.add(&batch).expect("add"),
            BatchSize::LargeInput,
        );
    });
    group.finish();

    let mut q = Corpus::new(SEED ^ 0x5eed);
    let kinds: [(&str, Vec<String>); 3] = [
        (
            "one_word",
            (0..200)
                .map(|_| format!("{} ", q.search_word(100)))
                .collect(),
        ),
        (
            "two_word",
            (0..200)
                .map(|_| format!("{} {} ", q.search_word(100), q.search_word(100)))
                .collect(),
        ),
        (
            "prefix",
            (0..200)
                .map(|_| q.search_word(100).chars().take(3).collect())
                .collect(),
        ),
    ];
    let mut group = c.benchmark_group("query");
    for (kind, texts) in &kinds {
        let mut i = 0;
        group.bench_function(*kind, |b| {
            b.iter(|| {
                i = (i + 1) % texts.len();
                black_box(
                    index
                        .search(&SearchQuery::text(texts[i].as_str(), 20))
                        .expect("search"),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
