//! A seeded synthetic message corpus for the index benchmarks (shared by `benches/search.rs`
//! and `examples/index_bench.rs`): words from a fixed list plus generated pseudo-words, drawn
//! with a Zipf distribution (a few words very common, a long tail rare, as in chat), mixed
//! message lengths, some accented words, some CJK sentences and some emoji.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_search::IndexedMessage;
use uuid::Uuid;

const COMMON: &[&str] = &[
    "the",
    "to",
    "and",
    "a",
    "i",
    "you",
    "it",
    "is",
    "of",
    "in",
    "that",
    "we",
    "for",
    "on",
    "be",
    "this",
    "have",
    "are",
    "with",
    "just",
    "not",
    "at",
    "so",
    "can",
    "do",
    "will",
    "me",
    "but",
    "my",
    "what",
    "if",
    "was",
    "ok",
    "yes",
    "no",
    "all",
    "get",
    "like",
    "now",
    "know",
    "there",
    "they",
    "about",
    "think",
    "see",
    "going",
    "time",
    "good",
    "one",
    "out",
    "when",
    "up",
    "how",
    "today",
    "tomorrow",
    "meeting",
    "call",
    "later",
    "thanks",
    "sure",
    "please",
    "great",
    "need",
    "send",
    "file",
    "report",
    "project",
    "deploy",
    "release",
    "review",
    "lunch",
    "coffee",
    "weekend",
    "morning",
    "tonight",
    "ticket",
    "bug",
    "fix",
    "test",
    "build",
    "server",
    "client",
    "budget",
    "invoice",
    "flight",
    "hotel",
    "train",
    "station",
    "airport",
    "doctor",
    "birthday",
    "party",
    "dinner",
    "movie",
    "music",
    "photo",
    "video",
    "link",
    "password",
    "account",
    "team",
    "office",
    "remote",
    "holiday",
    "vacation",
    "schedule",
    "agenda",
    "deadline",
    "contract",
    "customer",
    "support",
    "issue",
    "update",
    "version",
    "feature",
    "design",
    "document",
    "spreadsheet",
    "slides",
    "presentation",
    "question",
    "answer",
    "problem",
    "solution",
    "idea",
    "plan",
    "week",
    "month",
    "year",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
];
const ACCENTED: &[&str] = &[
    "café",
    "crème",
    "brûlée",
    "naïve",
    "façade",
    "résumé",
    "jalapeño",
    "São",
    "Zürich",
    "Köln",
    "garçon",
    "piñata",
    "déjà",
    "fiancée",
    "Málaga",
    "Kraków",
    "Øresund",
    "smörgåsbord",
    "über",
    "crêpe",
    "Ångström",
    "señor",
    "élève",
    "château",
    "forêt",
];
const CJK: &[&str] = &[
    "東京",
    "大阪",
    "会議",
    "明日",
    "今日",
    "資料",
    "確認",
    "お願いします",
    "ありがとう",
    "北京",
    "上海",
    "项目",
    "报告",
    "时间",
    "电话",
    "서울",
    "회의",
    "감사합니다",
    "내일",
    "프로젝트",
    "新幹線",
    "予定",
    "送ります",
    "了解",
    "写真",
];
const EMOJI: &[&str] = &["🎉", "👍", "😂", "❤️", "🙏", "🔥", "👍🏽", "☕", "🚀", "🏳️‍🌈"];
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ten", "dra", "vo", "sel", "qui", "nor", "pa", "zu", "rix", "bel", "han",
    "tor", "ve", "gan", "sto", "fi", "mer", "plu", "shi", "wen", "dax",
];
/// Size of the vocabulary (fixed words first, the most common; then generated ones).
const VOCABULARY: usize = 40_000;
const CONVERSATIONS: u128 = 200;
const SENDERS: u128 = 50;
/// The corpus starts here (2025-01-01) and advances about 30 s per message.
const START_MS: u64 = 1_735_689_600_000;

pub struct Corpus {
    rng: ChaCha8Rng,
    vocabulary: Vec<String>,
    /// Cumulative Zipf weights over `vocabulary`.
    cumulative: Vec<f64>,
    next_seq: Vec<u64>,
    now_ms: u64,
}

impl Corpus {
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut vocabulary: Vec<String> = COMMON.iter().map(|w| (*w).to_owned()).collect();
        while vocabulary.len() < VOCABULARY {
            let n = rng.random_range(2..=4);
            let word: String = (0..n)
                .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                .collect();
            vocabulary.push(word);
        }
        let mut total = 0.0;
        let cumulative = (1..=vocabulary.len())
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Corpus {
            rng,
            vocabulary,
            cumulative,
            next_seq: vec![1; CONVERSATIONS as usize],
            now_ms: START_MS,
        }
    }

    /// A word drawn by frequency, with its rank (0 = most common).
    pub fn word(&mut self) -> (usize, &str) {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = self.rng.random_range(0.0..total);
        let rank = self
            .cumulative
            .partition_point(|c| *c < x)
            .min(self.vocabulary.len() - 1);
        (rank, &self.vocabulary[rank])
    }

    /// A word as people search for it: drawn by frequency but never one of the `skip` most
    /// common (nobody searches for "the").
    pub fn search_word(&mut self, skip: usize) -> String {
        loop {
            let (rank, w) = self.word();
            if rank >= skip {
                return w.to_owned();
            }
        }
    }

    pub fn common_word(&mut self, top: usize) -> String {
        let i = self.rng.random_range(0..top.min(self.vocabulary.len()));
        self.vocabulary[i].clone()
    }

    /// One of the corpus's conversations, uniformly.
    pub fn conversation(&mut self) -> Uuid {
        Uuid::from_u128(self.rng.random_range(0..CONVERSATIONS) + 1)
    }

    pub fn message(&mut self) -> IndexedMessage {
        let conversation = self.rng.random_range(0..CONVERSATIONS);
        let sender = self.rng.random_range(0..SENDERS);
        let seq = self.next_seq[conversation as usize];
        self.next_seq[conversation as usize] += 1;
        self.now_ms += self.rng.random_range(1..60_000);
        IndexedMessage {
            conversation: Uuid::from_u128(conversation + 1),
            seq,
            sender: Uuid::from_u128(0x1000 + sender),
            sender_name: format!("user{sender}"),
            sent_at_ms: self.now_ms,
            text: self.text(),
        }
    }

    fn text(&mut self) -> String {
        if self.rng.random_bool(0.05) {
            let n = self.rng.random_range(1..=4);
            return (0..n)
                .map(|_| CJK[self.rng.random_range(0..CJK.len())])
                .collect();
        }
        let len = match self.rng.random_range(0..100) {
            0..60 => self.rng.random_range(1..=8),
            60..90 => self.rng.random_range(9..=25),
            _ => self.rng.random_range(26..=80),
        };
        let mut out = String::new();
        for i in 0..len {
            if i > 0 {
                out.push(' ');
            }
            if self.rng.random_bool(0.02) {
                out.push_str(ACCENTED[self.rng.random_range(0..ACCENTED.len())]);
            } else {
                let (_, w) = self.word();
                let w = w.to_owned();
                out.push_str(&w);
            }
        }
        if self.rng.random_bool(0.05) {
            out.push(' ');
            out.push_str(EMOJI[self.rng.random_range(0..EMOJI.len())]);
        }
        out
    }
}
