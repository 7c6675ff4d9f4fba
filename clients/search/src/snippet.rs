//! Snippets: a window of the original message text around the first match, cut into parts
//! with the matched words flagged.
//!
//! FTS5's own `highlight()` would work on the stored (segmented, NFC) text, and the table is
//! contentless anyway, so matches are found again here on the original text with the same
//! word rules and folding as the index (see `text.rs`): offsets are always the original's.

use std::ops::Range;

use crate::SnippetPart;
use crate::query::ParsedQuery;
use crate::text::{fold, words};

/// The window's length in characters (about two lines of a results list).
pub(crate) const SNIPPET_CHARS: usize = 160;
/// How much text before the first match the window shows, in characters.
const CONTEXT_BEFORE_CHARS: usize = 40;
const ELLIPSIS: &str = "…";

pub(crate) fn snippet(text: &str, query: &ParsedQuery) -> Vec<SnippetPart> {
    let highlights = match_ranges(text, query);
    let window = window(text, highlights.first().map(|r| r.start));
    let mut parts = Vec::new();
    let mut at = window.start;
    for hl in &highlights {
        let start = hl.start.max(window.start);
        let end = hl.end.min(window.end);
        if start >= end {
            continue;
        }
        push(&mut parts, &text[at..start], false);
        push(&mut parts, &text[start..end], true);
        at = end;
    }
    push(&mut parts, &text[at..window.end], false);
    if window.start > 0 {
        prepend_plain(&mut parts, ELLIPSIS);
    }
    if window.end < text.len() {
        push(&mut parts, ELLIPSIS, false);
    }
    parts
}

/// Byte ranges of the original text that match a query phrase, sorted and merged. A phrase
/// of several tokens (a CJK word, "e-mail") is highlighted as one range, separators included.
fn match_ranges(text: &str, query: &ParsedQuery) -> Vec<Range<usize>> {
    let ws = words(text);
    let folded: Vec<String> = ws.iter().map(|w| fold(&text[w.range.clone()])).collect();
    let last = query.phrases.len().saturating_sub(1);
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for i in 0..ws.len() {
        for (p, phrase) in query.phrases.iter().enumerate() {
            let prefix = query.prefix_last && p == last;
            let n = phrase.folded.len();
            if n == 0 || i + n > ws.len() {
                continue;
            }
            let matched = phrase.folded.iter().enumerate().all(|(k, tok)| {
                let word = &folded[i + k];
                if prefix && k == n - 1 {
                    word.starts_with(tok.as_str())
                } else {
                    word == tok
                }
            });
            if matched {
                ranges.push(ws[i].range.start..ws[i + n - 1].range.end);
            }
        }
    }
    ranges.sort_by_key(|r| r.start);
    merge(ranges)
}

fn merge(ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if r.start <= prev.end => prev.end = prev.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The byte range shown: the whole text if short, else from a little before the first match
/// (or the start) for [`SNIPPET_CHARS`] characters, both ends on character boundaries and
/// moved off the middle of a word.
fn window(text: &str, first_match: Option<usize>) -> Range<usize> {
    if text.chars().count() <= SNIPPET_CHARS {
        return 0..text.len();
    }
    let anchor = first_match.unwrap_or(0);
    let before: Vec<usize> = text[..anchor].char_indices().map(|(i, _)| i).collect();
    let mut start = before
        .len()
        .checked_sub(CONTEXT_BEFORE_CHARS)
        .map_or(0, |k| before[k]);
    // Start at a word boundary: skip the rest of a word cut in two.
    if start > 0 {
        start = text[start..anchor]
            .char_indices()
            .find(|(_, c)| c.is_whitespace())
            .map_or(start, |(i, c)| start + i + c.len_utf8());
    }
    let end = text[start..]
        .char_indices()
        .nth(SNIPPET_CHARS)
        .map_or(text.len(), |(i, _)| start + i);
    // End before a word cut in two, unless that would leave nothing.
    let end = if end < text.len() {
        text[start..end]
            .rfind(char::is_whitespace)
            .map_or(end, |i| start + i)
    } else {
        end
    };
    start..end
}

fn push(parts: &mut Vec<SnippetPart>, text: &str, highlight: bool) {
    if text.is_empty() {
        return;
    }
    match parts.last_mut() {
        Some(last) if last.highlight == highlight => last.text.push_str(text),
        _ => parts.push(SnippetPart {
            text: text.to_owned(),
            highlight,
        }),
    }
}

fn prepend_plain(parts: &mut Vec<SnippetPart>, text: &str) {
    match parts.first_mut() {
        Some(first) if !first.highlight => first.text.insert_str(0, text),
        _ => parts.insert(
            0,
            SnippetPart {
                text: text.to_owned(),
                highlight: false,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse;

    /// The snippet as a string with highlights in brackets.
    fn show(text: &str, query: &str) -> String {
        let parts = snippet(text, &parse(query).expect("parse"));
        parts
            .iter()
            .map(|p| {
                if p.highlight {
                    format!("[{}]", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    #[test]
    fn highlights_words_in_the_original_text() {
        assert_eq!(
            show("Meet at the Café tonight", "cafe "),
            "Meet at the [Café] tonight"
        );
        assert_eq!(show("meet at the cafe", "CAFÉ "), "meet at the [cafe]");
        assert_eq!(show("Lunch lunchbox", "lunch"), "[Lunch] [lunchbox]");
        assert_eq!(
            show("send an e-mail now", "e-mail "),
            "send an [e-mail] now"
        );
    }

    #[test]
    fn highlights_cjk_words_as_one_part() {
        assert_eq!(
            show("明日東京都に行きます", "東京"),
            "明日[東京]都に行きます"
        );
        assert_eq!(show("京東 東京", "東京"), "京東 [東京]");
    }

    #[test]
    fn emoji_stay_in_the_text() {
        assert_eq!(show("🎉 party time 🎉", "party "), "🎉 [party] time 🎉");
    }

    #[test]
    fn long_text_is_cut_around_the_first_match() {
        let text = format!("{} needle {}", "word ".repeat(100), "tail ".repeat(100));
        let parts = snippet(&text, &parse("needle ").expect("parse"));
        let joined: String = parts.iter().map(|p| p.text.as_str()).collect();
        assert!(
            joined.starts_with(ELLIPSIS) && joined.ends_with(ELLIPSIS),
            "{joined}"
        );
        assert!(joined.chars().count() <= SNIPPET_CHARS + 2, "{joined}");
        assert_eq!(parts.iter().filter(|p| p.highlight).count(), 1);
        assert!(parts.iter().any(|p| p.highlight && p.text == "needle"));
        // Cut at word boundaries only.
        assert!(
            joined.contains(" needle ") && !joined.contains("wor…") && !joined.contains("…ord")
        );
    }

    #[test]
    fn no_match_still_gives_the_start_of_the_text() {
        let parts = snippet("nothing here", &parse("absent ").expect("parse"));
        assert_eq!(
            parts,
            vec![SnippetPart {
                text: "nothing here".into(),
                highlight: false
            }]
        );
    }
}
