//! How text becomes words, in one place for indexing, queries and snippets.
//!
//! FTS5's `unicode61` tokenizer (with `remove_diacritics 2`) does the matching: it folds case and
//! accents and splits on everything that is not a letter or digit, so emoji and punctuation are
//! never tokens. What it cannot do is split scripts written without spaces: a whole run of CJK
//! characters would be one token, and 東京 would never be found inside 東京都に行きます. So before
//! indexing, every CJK character is set apart by spaces (one token each), and a query word
//! containing CJK becomes a phrase of its characters, which FTS5 matches only when they are
//! adjacent: a substring search over CJK text.

use std::ops::Range;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Characters of scripts written without spaces between words, indexed one per token: Han
/// (with 々〆〇), Hiragana, Katakana (also half-width), Hangul syllables and jamo.
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF       // Hangul Jamo
        | 0x3005..=0x3007     // 々 〆 〇
        | 0x3040..=0x309F     // Hiragana
        | 0x30A0..=0x30FF     // Katakana
        | 0x3130..=0x318F     // Hangul Compatibility Jamo
        | 0x31F0..=0x31FF     // Katakana Phonetic Extensions
        | 0x3400..=0x4DBF     // CJK Extension A
        | 0x4E00..=0x9FFF     // CJK Unified Ideographs
        | 0xAC00..=0xD7AF     // Hangul Syllables
        | 0xF900..=0xFAFF     // CJK Compatibility Ideographs
        | 0xFF66..=0xFF9F     // Half-width Katakana
        | 0x20000..=0x3134F   // CJK Extensions B..G
    )
}

/// Starts a word: a letter or digit that is not a mark (`unicode61`'s token characters are
/// the categories L*, N* and Co). Spaces, punctuation, symbols and emoji separate words.
fn starts_word(c: char) -> bool {
    c.is_alphanumeric() && !is_combining_mark(c)
}

/// Continues a word: also combining marks, so that a decomposed "cafe\u{301}" is one word
/// here (highlighted whole) although `unicode61` ends its token before the mark. Queries are
/// NFC first, and their words are handed to FTS5 as quoted text that it tokenises itself, so
/// this only decides word boundaries for snippets and which query words are empty.
fn continues_word(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c)
}

/// The text as stored in the FTS table: NFC (so composed and decomposed accents index alike),
/// with spaces around every CJK character.
pub(crate) fn segment_for_index(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    for c in text.nfc() {
        if is_cjk(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// A word of the original text: its byte range there and whether it is one CJK character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Word {
    pub range: Range<usize>,
    pub cjk: bool,
}

/// The words of `text` as the index sees them (a CJK character is a word of its own), with
/// their byte ranges in `text` itself, so highlights land on the original, never on the
/// segmented form.
pub(crate) fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if is_cjk(c) {
            if let Some(s) = start.take() {
                out.push(Word {
                    range: s..i,
                    cjk: false,
                });
            }
            out.push(Word {
                range: i..i + c.len_utf8(),
                cjk: true,
            });
        } else if (start.is_some() && continues_word(c)) || starts_word(c) {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            out.push(Word {
                range: s..i,
                cjk: false,
            });
        }
    }
    if let Some(s) = start {
        out.push(Word {
            range: s..text.len(),
            cjk: false,
        });
    }
    out
}

/// A word folded the way `unicode61 remove_diacritics 2` compares it: accents removed, lower
/// case. "Café", "CAFE" and "cafe\u{301}" all fold to "cafe".
pub(crate) fn fold(word: &str) -> String {
    word.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word_texts(text: &str) -> Vec<&str> {
        words(text).into_iter().map(|w| &text[w.range]).collect()
    }

    #[test]
    fn cjk_characters_are_words_of_their_own() {
        assert_eq!(
            word_texts("東京都に行きます"),
            ["東", "京", "都", "に", "行", "き", "ま", "す"]
        );
        assert_eq!(
            word_texts("iPhone15を買った"),
            ["iPhone15", "を", "買", "っ", "た"]
        );
        assert_eq!(segment_for_index("東京x"), " 東  京 x");
    }

    #[test]
    fn emoji_and_punctuation_separate_words() {
        assert_eq!(
            word_texts("hi🎉there, \"x\"*-y:z"),
            ["hi", "there", "x", "y", "z"]
        );
        assert!(words("🎉🎉 👍🏽 ...").is_empty());
    }

    #[test]
    fn fold_removes_accents_and_case() {
        assert_eq!(fold("Café"), "cafe");
        assert_eq!(fold("cafe\u{301}"), "cafe");
        assert_eq!(fold("ÉCOLE"), "ecole");
        assert_eq!(fold("Straße"), "straße");
        assert_eq!(word_texts("cafe\u{301} noir"), ["cafe\u{301}", "noir"]);
    }

    #[test]
    fn nfc_before_indexing() {
        assert_eq!(segment_for_index("cafe\u{301}"), "café");
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_bytes("aé", 2), "a");
        assert_eq!(truncate_bytes("aé", 3), "aé");
        assert_eq!(truncate_bytes("東京", 4), "東");
    }
}
