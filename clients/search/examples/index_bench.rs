//! Builds an index of N synthetic messages on disk (SQLCipher, as clients use it) and prints
//! one JSON object: build rate, size on disk, and query latency percentiles per query kind.
//! Criterion reports means; this reports the tail.
//!
//!     cargo run --release -p tern-search --example index_bench -- --messages 1000000
//!
//! Options: --messages N (default 1,000,000), --queries N per kind (default 500), --seed N,
//! --batch N (messages per add, default 1,000), --dir PATH (default: a temporary directory,
//! removed afterwards), --optimize (merge the FTS index before querying and report both sizes).

#[path = "../benches/common/corpus.rs"]
mod corpus;

use std::time::{Duration, Instant};

use corpus::Corpus;
use serde_json::{Value, json};
use tern_search::{SearchIndex, SearchQuery};

struct Args {
    messages: u64,
    queries: usize,
    seed: u64,
    batch: usize,
    dir: Option<std::path::PathBuf>,
    optimize: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        messages: 1_000_000,
        queries: 500,
        seed: 14,
        batch: 1000,
        dir: None,
        optimize: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => {
                args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--queries" => {
                args.queries = value()?.parse().map_err(|e| format!("--queries: {e}"))?
            }
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--batch" => args.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--dir" => args.dir = Some(value()?.into()),
            "--optimize" => args.optimize = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.batch == 0 || args.batch > tern_search::MAX_ADD_BATCH || args.queries == 0 {
        return Err("--batch must be 1..=10000 and --queries at least 1".into());
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("index_bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("index_bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("index_bench.db");
    tern_search::delete_index_files(&path)?;
    let key = [0x42u8; 32];
    let mut index = SearchIndex::open(&path, &key)?;
    let mut corpus = Corpus::new(args.seed);

    let started = Instant::now();
    let mut text_bytes = 0u64;
    let mut done = 0u64;
    while done < args.messages {
        let n = (args.messages - done).min(args.batch as u64);
        let batch: Vec<_> = (0..n).map(|_| corpus.message()).collect();
        text_bytes += batch.iter().map(|m| m.text.len() as u64).sum::<u64>();
        index.add(&batch)?;
        done += n;
    }
    let build = started.elapsed();
    index.checkpoint_wal()?;
    let size = size_on_disk(&path);
    let size_optimized = if args.optimize {
        index.optimize()?;
        Some(size_on_disk(&path))
    } else {
        None
    };

    // Query words drawn from the corpus's own distribution, skipping the 100 most common
    // (what people search for); "common" is the worst case on purpose.
    let mut q = Corpus::new(args.seed ^ 0x5eed);
    let kinds: Vec<(&str, Vec<String>)> = vec![
        (
            "one_word",
            (0..args.queries)
                .map(|_| format!("{} ", q.search_word(100)))
                .collect(),
        ),
        (
            "two_word",
            (0..args.queries)
                .map(|_| format!("{} {} ", q.search_word(100), q.search_word(100)))
                .collect(),
        ),
        (
            "prefix",
            (0..args.queries)
                .map(|_| q.search_word(100).chars().take(3).collect::<String>())
                .collect(),
        ),
        (
            "one_word_common",
            (0..args.queries)
                .map(|_| format!("{} ", q.common_word(100)))
                .collect(),
        ),
    ];
    let mut kinds: Vec<(&str, Vec<SearchQuery>)> = kinds
        .into_iter()
        .map(|(k, texts)| {
            (
                k,
                texts
                    .into_iter()
                    .map(|t| SearchQuery::text(t, 20))
                    .collect(),
            )
        })
        .collect();
    // Search inside one conversation (of 200) for a common word: the filter must not cost a
    // row lookup per match elsewhere.
    kinds.push((
        "one_word_common_in_conversation",
        (0..args.queries)
            .map(|_| SearchQuery {
                conversation: Some(q.conversation()),
                ..SearchQuery::text(format!("{} ", q.common_word(100)), 20)
            })
            .collect(),
    ));
    let mut queries = serde_json::Map::new();
    for (kind, list) in &kinds {
        queries.insert((*kind).to_owned(), measure(&index, list)?);
    }

    let report = json!({
        "messages": args.messages,
        "seed": args.seed,
        "batch": args.batch,
        "text_bytes": text_bytes,
        "build_seconds": build.as_secs_f64(),
        "build_messages_per_second": args.messages as f64 / build.as_secs_f64(),
        "size_bytes": size,
        "size_bytes_per_message": size as f64 / args.messages.max(1) as f64,
        "size_bytes_optimized": size_optimized,
        "query_limit": 20,
        "query_note": "one_word/two_word: whole words (trailing space); prefix: the first 3 characters of a word; words drawn by corpus frequency without the 100 most common; one_word_common: one of the 100 most common (worst case); one_word_common_in_conversation: the same inside one of the 200 conversations; limit 20",
        "queries": queries,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(index);
    if args.dir.is_none() {
        tern_search::delete_index_files(&path)?;
    }
    Ok(())
}

fn size_on_disk(path: &std::path::Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path.to_owned(), wal.into()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn measure(
    index: &SearchIndex,
    queries: &[SearchQuery],
) -> Result<Value, tern_search::SearchError> {
    let mut times: Vec<Duration> = Vec::with_capacity(queries.len());
    let mut hits = 0usize;
    for query in queries {
        let started = Instant::now();
        hits += index.search(query)?.len();
        times.push(started.elapsed());
    }
    times.sort_unstable();
    let ms = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)].as_secs_f64() * 1e3;
    Ok(json!({
        "queries": queries.len(),
        "mean_hits": hits as f64 / queries.len() as f64,
        "p50_ms": ms(50),
        "p95_ms": ms(95),
        "p99_ms": ms(99),
        "max_ms": times.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    }))
}
