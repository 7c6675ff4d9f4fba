// Search index measurement in Chromium (issue 14: "browser: p95 < 200 ms on 100,000 messages"):
// N generated messages go through the page's search service into the worker's index (SQLite +
// FTS5 in wasm over OPFS, encrypted at rest) in batches, then one-word, two-word and prefix
// queries are timed from the page's call to the hits it gets back (the worker round trip the
// search box waits for). Prints one JSON line (`search-bench {...}`) and writes it to
// test-results/search-bench.json. Every query is also checked: the planted words are found.
//
//   CI (small): npx playwright test search-bench.spec.ts
//   By hand:    TERN_SEARCH_BENCH_MESSAGES=100000 npx playwright test search-bench.spec.ts

import { mkdirSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { expect, test } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import { register } from './app';

const MESSAGES = Number(process.env.TERN_SEARCH_BENCH_MESSAGES ?? 2_000);
const QUERIES = Number(process.env.TERN_SEARCH_BENCH_QUERIES ?? 100);
const BATCH = 1_000;

const env = useServerAndBrowser();

test('search index: build rate, size and query latency', async () => {
  test.setTimeout(Math.max(120_000, MESSAGES * 10));
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const page = alice.page;
  await expect
    .poll(() =>
      page.evaluate(
        () => (window as unknown as { tern: { search: { state: string } } }).tern.search.state,
      ),
    )
    .toBe('ready');

  const result = await page.evaluate(
    async ({ total, queries, batch }) => {
      interface Hit {
        seq: number;
      }
      const search = (
        window as unknown as {
          tern: {
            search: {
              add(m: unknown[]): void;
              flush(): Promise<void>;
              search(q: unknown): Promise<Hit[]>;
              stats(): Promise<{ messages: number }>;
            };
          };
        }
      ).tern.search;
      // Deterministic text: a 2,000-word vocabulary drawn with a skew (common words common),
      // 6-20 words a message, accents and CJK mixed in, and one planted word per 1,000.
      let seed = 42;
      const rnd = () => {
        seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
        return seed / 2_147_483_648;
      };
      const syll = ['ka', 'lo', 'mi', 'ré', 'tu', 'sé', 'na', 'vo', 'pi', 'ü', 'be', 'do'];
      const vocab: string[] = [];
      for (let i = 0; i < 2_000; i++) {
        let w = '';
        for (let k = 0; k < 2 + (i % 3); k++) w += syll[(i * 7 + k * 13 + k * i) % syll.length];
        vocab.push(i % 97 === 0 ? `東京${w}` : `${w}${i}`);
      }
      const word = () => vocab[Math.floor(vocab.length * rnd() ** 3)] ?? 'ka';
      const conversations = Array.from({ length: 20 }, () => crypto.randomUUID());
      const sender = crypto.randomUUID();
      const planted: Record<string, number> = {};
      const t0 = performance.now();
      for (let start = 1; start <= total; start += batch) {
        const msgs = [];
        for (let seq = start; seq < start + batch && seq <= total; seq++) {
          const n = 6 + Math.floor(rnd() * 15);
          const words = Array.from({ length: n }, word);
          if (seq % 1_000 === 1) {
            const p = `planted${seq}x`;
            planted[p] = seq;
            words.push(p);
          }
          msgs.push({
            conversation: conversations[seq % conversations.length],
            seq,
            sender,
            sender_name: 'bench',
            sent_at_ms: 1_700_000_000_000 + seq * 1_000,
            text: words.join(' '),
          });
        }
        search.add(msgs);
        await search.flush();
      }
      const buildMs = performance.now() - t0;
      const stats = await search.stats();

      const pct = (xs: number[], p: number) => {
        const s = [...xs].sort((a, b) => a - b);
        return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
      };
      const time = async (make: (i: number) => string) => {
        const ms: number[] = [];
        let found = 0;
        for (let i = 0; i < queries; i++) {
          const t = performance.now();
          const hits = await search.search({ text: make(i), limit: 50 });
          ms.push(performance.now() - t);
          found += hits.length;
        }
        return {
          p50_ms: pct(ms, 50),
          p95_ms: pct(ms, 95),
          p99_ms: pct(ms, 99),
          mean_hits: found / queries,
        };
      };
      const pick = (i: number) => vocab[(i * 37) % 400] ?? 'ka';
      const one = await time((i) => pick(i));
      const two = await time((i) => `${pick(i)} ${pick(i + 1)}`);
      const prefix = await time((i) => pick(i).slice(0, 3));
      const checks: { word: string; seq: number; found: number[] }[] = [];
      for (const [w, seq] of Object.entries(planted).slice(0, 5)) {
        checks.push({
          word: w,
          seq,
          found: (await search.search({ text: w, limit: 5 })).map((h) => h.seq),
        });
      }
      // The index's size: its OPFS files, read once the worker has let go of them.
      const w = window as unknown as {
        tern: { stopSearch(): Promise<void>; startSearch(): void };
      };
      await w.tern.stopSearch();
      let opfsBytes = 0;
      const walk = async (dir: FileSystemDirectoryHandle): Promise<void> => {
        for await (const [, h] of (
          dir as unknown as { entries(): AsyncIterable<[string, FileSystemHandle]> }
        ).entries()) {
          if (h.kind === 'directory') await walk(h as FileSystemDirectoryHandle);
          else opfsBytes += (await (h as FileSystemFileHandle).getFile()).size;
        }
      };
      await walk(await (await navigator.storage.getDirectory()).getDirectoryHandle('tern-search'));
      w.tern.startSearch();
      return {
        messages: total,
        index_opfs_bytes: opfsBytes,
        indexed: stats.messages,
        build_ms: buildMs,
        build_rate_per_s: (total / buildMs) * 1000,
        queries_each: queries,
        one_word: one,
        two_words: two,
        prefix,
        checks,
        user_agent: navigator.userAgent,
      };
    },
    { total: MESSAGES, queries: QUERIES, batch: BATCH },
  );

  expect(result.indexed).toBe(MESSAGES);
  for (const c of result.checks) expect(c.found).toEqual([c.seq]);
  const line = JSON.stringify({ ...result, date: new Date().toISOString() });
  console.log(`search-bench ${line}`);
  const out = resolve(import.meta.dirname, '../../test-results');
  mkdirSync(out, { recursive: true });
  writeFileSync(resolve(out, 'search-bench.json'), line + '\n');
  await alice.context.close();
});
