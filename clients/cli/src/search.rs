//! `tern-cli search`: the local index of decrypted messages (issue 14), its backfill, and
//! ranked hits printed with the messages around them (like `grep -C`).
//!
//! The index lives in `$TERN_CLI_HOME/search/<user>.db`, encrypted at rest (SQLCipher) with a
//! random 32-byte key in `search/<user>.key` (0600, in a 0700 directory), beside the crypto
//! state. `chat` and `history` feed it what they show; `search` first backfills older history
//! (bounded by `--sync-pages`, progress on stderr) unless `--no-sync`; `logout` deletes both
//! files. Conversations no longer in the server's list (left, removed) are dropped from it
//! before every search.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use tern_sdk::search::backfill::{self, BackfillBudget, BackfillProgress, BackfillTarget};
use tern_sdk::search::tern_search::{MAX_SEARCH_LIMIT, SearchHit, SearchQuery, SnippetPart};
use tern_sdk::search::{IndexFiles, LocalIndex, user_uuid};
use tern_sdk::tern_wire::api::ConversationView;
use tern_sdk::tern_wire::ids::{ConversationId, UserId};
use tern_sdk::tern_wire::msg::Message;
use tern_sdk::{Connection, E2e, HistoryQuery};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, Time, UtcOffset, macros::format_description};

use crate::render::{self, Directory};

/// The most messages shown on either side of a hit (an around page of `2 * N + 1` stays far
/// below the server's page limit).
pub const MAX_CONTEXT: u32 = 20;
/// The most history pages one `search` may fetch to backfill before searching.
pub const MAX_SYNC_PAGES: usize = 10_000;

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Words to find; every word must appear, the last one also matches as a prefix.
    #[arg(required = true)]
    pub words: Vec<String>,
    /// Only in this conversation (id, @user or #group).
    #[arg(long = "in", value_name = "CONVERSATION")]
    pub conversation: Option<String>,
    /// Only messages from this user (name, @name, or "me").
    #[arg(long, value_name = "USER")]
    pub from: Option<String>,
    /// Only messages sent at or after DATE: YYYY-MM-DD (UTC midnight) or RFC 3339.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only messages sent at or before DATE: YYYY-MM-DD (up to the end of that UTC day) or
    /// RFC 3339.
    #[arg(long, value_name = "DATE")]
    pub until: Option<String>,
    /// Most hits shown, best first (1..=200).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Messages shown before and after each hit (0..=20), read from the server and decrypted
    /// here; 0 works offline with --no-sync.
    #[arg(long, short = 'C', default_value_t = 2)]
    pub context: u32,
    /// Search only what is already indexed: no backfill of older history first.
    #[arg(long)]
    pub no_sync: bool,
    /// History pages (200 messages each) the backfill may fetch before searching (1..=10000);
    /// what is left is fetched by the next search.
    #[arg(long, default_value_t = 50)]
    pub sync_pages: usize,
}

/// Everything `search` needs from the command line and the session.
pub struct SearchRun<'a> {
    pub args: &'a SearchArgs,
    pub conversations: &'a [ConversationView],
    /// `--in`, resolved.
    pub only: Option<ConversationId>,
    /// `--from`, resolved.
    pub sender: Option<UserId>,
    pub offset: UtcOffset,
}

/// The CLI's search directory.
pub fn dir(home: &Path) -> PathBuf {
    home.join("search")
}

/// Opens this user's index (created on first use).
pub fn open(home: &Path, user: UserId) -> Result<LocalIndex> {
    LocalIndex::open(&dir(home), user).context("opening the search index")
}

/// Logout: deletes the user's index and its key.
pub fn delete(home: &Path, user: UserId) -> Result<()> {
    IndexFiles::new(&dir(home), user)
        .delete()
        .context("deleting the search index")
}

/// Indexes what a command decrypted and showed. A failure is reported, never fatal: the
/// messages were shown, and the next backfill indexes them.
pub fn index_shown(index: &mut LocalIndex, names: &Directory, messages: &[Message]) {
    if let Err(e) = index.add_decrypted(messages, &|u| names.plain_user(u)) {
        eprintln!("-- could not index these messages for search: {e}");
    }
}

/// The search query the arguments describe (validated before anything is fetched).
pub fn query(run: &SearchRun<'_>) -> Result<SearchQuery> {
    let a = run.args;
    if a.limit == 0 || a.limit > MAX_SEARCH_LIMIT {
        bail!("--limit {} is outside 1..={MAX_SEARCH_LIMIT}", a.limit);
    }
    if a.context > MAX_CONTEXT {
        bail!(
            "--context {} is above the maximum of {MAX_CONTEXT}",
            a.context
        );
    }
    if a.sync_pages == 0 || a.sync_pages > MAX_SYNC_PAGES {
        bail!(
            "--sync-pages {} is outside 1..={MAX_SYNC_PAGES}",
            a.sync_pages
        );
    }
    let since_ms = a
        .since
        .as_deref()
        .map(|s| parse_date(s, false))
        .transpose()?;
    let until_ms = a
        .until
        .as_deref()
        .map(|s| parse_date(s, true))
        .transpose()?;
    if let (Some(s), Some(u)) = (since_ms, until_ms)
        && s > u
    {
        bail!("--since is after --until: nothing can match");
    }
    Ok(SearchQuery {
        text: a.words.join(" "),
        conversation: run.only.map(tern_sdk::search::conversation_uuid),
        sender: run.sender.map(user_uuid),
        since_ms,
        until_ms,
        limit: a.limit,
    })
}

/// Parses `YYYY-MM-DD` (UTC; the day's first millisecond, or its last when `end_of_day`) or
/// an RFC 3339 date-time, into Unix milliseconds.
pub fn parse_date(s: &str, end_of_day: bool) -> Result<u64> {
    let s = s.trim();
    let at = if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        t
    } else if let Ok(d) = Date::parse(s, format_description!("[year]-[month]-[day]")) {
        let time = if end_of_day {
            Time::from_hms_milli(23, 59, 59, 999).context("end of day")?
        } else {
            Time::MIDNIGHT
        };
        d.with_time(time).assume_utc()
    } else {
        bail!("{s:?} is not a date: use YYYY-MM-DD (UTC) or RFC 3339 (2026-12-02T08:30:00Z)");
    };
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).with_context(|| format!("{s:?} is before 1970"))
}

/// Backfills the conversations searched (all, or `--in`'s), printing progress on stderr.
pub async fn sync(
    run: &SearchRun<'_>,
    index: &mut LocalIndex,
    e2e: &mut E2e,
    conn: &Connection,
    names: &Directory,
) -> Result<BackfillProgress> {
    let targets: Vec<BackfillTarget> = run
        .conversations
        .iter()
        .filter(|c| run.only.is_none_or(|o| o == c.conversation_id))
        .map(|c| BackfillTarget {
            conversation: c.conversation_id,
            newest_seq: c.last_seq,
        })
        .collect();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let mut show = |p: &BackfillProgress| {
        // A terminal gets a line rewritten in place; a log gets a line every few seconds.
        if tty {
            eprint!(
                "\r-- indexing older messages: {} fetched, {} indexed",
                p.fetched, p.indexed
            );
        } else if last_line.elapsed().as_secs() >= 2 {
            eprintln!(
                "-- indexing older messages: {} fetched, {} indexed",
                p.fetched, p.indexed
            );
            last_line = std::time::Instant::now();
        }
    };
    let report = backfill::run(
        index,
        e2e,
        conn,
        &targets,
        &|u| names.plain_user(u),
        BackfillBudget {
            max_pages: run.args.sync_pages,
        },
        &mut show,
    )
    .await
    .context("indexing older messages")?;
    if tty && report.pages > 0 {
        eprintln!();
    }
    if report.pages > 0 || !report.complete {
        eprintln!(
            "-- indexed {} of {} messages fetched{}{}",
            report.indexed,
            report.fetched,
            if report.undecryptable > 0 {
                format!(" ({} could not be decrypted)", report.undecryptable)
            } else {
                String::new()
            },
            if report.complete {
                ""
            } else {
                "; older history is not indexed yet (search again, or raise --sync-pages)"
            }
        );
    }
    Ok(report)
}

/// How a hit's highlighted words are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marks {
    /// Bold (ANSI), for a terminal.
    Bold,
    /// `[word]`, for pipes and files.
    Brackets,
}

impl Marks {
    pub fn for_stdout() -> Marks {
        if std::io::stdout().is_terminal() {
            Marks::Bold
        } else {
            Marks::Brackets
        }
    }
}

/// A snippet on one line: every part sanitized, the highlighted ones marked.
pub fn snippet_line(parts: &[SnippetPart], marks: Marks) -> String {
    parts
        .iter()
        .map(|p| {
            let text = render::sanitize(&p.text);
            match (p.highlight, marks) {
                (false, _) => text,
                (true, Marks::Bold) => format!("\x1b[1m{text}\x1b[0m"),
                (true, Marks::Brackets) => format!("[{text}]"),
            }
        })
        .collect()
}

/// The header line of a hit.
pub fn hit_header(hit: &SearchHit, names: &Directory, offset: UtcOffset) -> String {
    let conversation = ConversationId(hit.conversation.as_u128());
    format!(
        "{}  {}  {}  #{}",
        names.conversation(conversation),
        render::date_time(hit.sent_at_ms, offset),
        render::sanitize(&hit.sender_name),
        hit.seq
    )
}

/// One message line of a hit's context: the message, or why it cannot be read.
fn around_line(
    r: &std::result::Result<Message, tern_sdk::UndecryptableMessage>,
    names: &Directory,
    offset: UtcOffset,
) -> String {
    let (m, text) = match r {
        Ok(m) => (m, render::body(m)),
        Err(u) => (u.message.as_ref(), crate::keys::why(u)),
    };
    format!(
        "  #{} [{}] {}: {}",
        m.seq,
        render::date_time(m.timestamp_ms, offset),
        names.user(m.sender_user),
        text,
    )
}

/// The hit itself (`>`), its matched words highlighted.
fn hit_line(hit: &SearchHit, marks: Marks, offset: UtcOffset) -> String {
    format!(
        "> #{} [{}] {}: {}",
        hit.seq,
        render::date_time(hit.sent_at_ms, offset),
        render::sanitize(&hit.sender_name),
        snippet_line(&hit.snippet, marks)
    )
}

/// The messages around a hit, decrypted here (and indexed: they were decrypted anyway).
/// Messages that cannot be decrypted are shown with the reason.
async fn context_of(
    hit: &SearchHit,
    n: u32,
    conn: &Connection,
    e2e: &mut E2e,
    index: &mut LocalIndex,
    names: &Directory,
) -> Result<Vec<std::result::Result<Message, tern_sdk::UndecryptableMessage>>> {
    let conversation = ConversationId(hit.conversation.as_u128());
    let page = conn
        .history_query(conversation, HistoryQuery::around(hit.seq, 2 * n + 1))
        .await
        .with_context(|| format!("reading the messages around #{}", hit.seq))?;
    let shown = e2e.decrypt_history(conn, page.messages).await?;
    let plain: Vec<Message> = shown
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    index_shown(index, names, &plain);
    Ok(shown)
}

/// Prints every hit, with `--context` messages around it when a connection is open.
pub async fn print_hits(
    run: &SearchRun<'_>,
    hits: &[SearchHit],
    mut online: Option<(&Connection, &mut E2e)>,
    index: &mut LocalIndex,
    names: &Directory,
) -> Result<()> {
    let marks = Marks::for_stdout();
    let n = run.args.context;
    for (i, hit) in hits.iter().enumerate() {
        if i > 0 {
            println!("--");
        }
        println!("{}", hit_header(hit, names, run.offset));
        let around = match (&mut online, n) {
            (Some((conn, e2e)), 1..) => Some(context_of(hit, n, conn, e2e, index, names).await?),
            _ => None,
        };
        let Some(around) = around else {
            println!("{}", hit_line(hit, marks, run.offset));
            continue;
        };
        let seq_of = |r: &std::result::Result<Message, tern_sdk::UndecryptableMessage>| match r {
            Ok(m) => m.seq,
            Err(u) => u.message.seq,
        };
        let before: Vec<_> = around.iter().filter(|r| seq_of(r) < hit.seq).collect();
        let after = around.iter().filter(|r| seq_of(r) > hit.seq);
        let n = n as usize;
        for r in before.iter().skip(before.len().saturating_sub(n)) {
            println!("{}", around_line(r, names, run.offset));
        }
        println!("{}", hit_line(hit, marks, run.offset));
        for r in after.take(n) {
            println!("{}", around_line(r, names, run.offset));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_as_utc_days_or_rfc3339() {
        assert_eq!(parse_date("1970-01-02", false).expect("date"), 86_400_000);
        assert_eq!(
            parse_date("1970-01-01", true).expect("date"),
            86_400_000 - 1,
            "until a day includes all of it"
        );
        assert_eq!(
            parse_date("1970-01-01T00:00:01Z", false).expect("rfc3339"),
            1_000
        );
        assert_eq!(
            parse_date("1970-01-01T01:00:00+01:00", true).expect("offset"),
            0
        );
        assert!(parse_date("yesterday", false).is_err());
        assert!(parse_date("2026-13-01", false).is_err());
        assert!(parse_date("1969-12-31", false).is_err());
    }

    #[test]
    fn snippets_mark_highlights_and_stay_inert() {
        let parts = [
            SnippetPart {
                text: "the ".into(),
                highlight: false,
            },
            SnippetPart {
                text: "zebra".into(),
                highlight: true,
            },
            SnippetPart {
                text: " \x1b[2J".into(),
                highlight: false,
            },
        ];
        assert_eq!(
            snippet_line(&parts, Marks::Brackets),
            "the [zebra] \u{FFFD}[2J"
        );
        assert_eq!(
            snippet_line(&parts, Marks::Bold),
            "the \x1b[1mzebra\x1b[0m \u{FFFD}[2J"
        );
    }
}
