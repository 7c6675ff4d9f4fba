//! User text → an FTS5 MATCH expression built only from quoted tokens.
//!
//! The user's text is never handed to FTS5 as syntax: it is split into words (see `text.rs`),
//! each word becomes a double-quoted phrase of its folded tokens (letters and digits only, so a
//! `"` cannot even occur inside; it is still escaped), and the phrases are ANDed. `*`, `NEAR`,
//! `-`, `:`, `^`, parentheses or quotes in the input are separators or plain words, never
//! operators.

use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

use crate::text::{fold, words};
use crate::{MAX_QUERY_CHARS, MAX_QUERY_WORDS, SearchError};

/// A last word shorter than this is matched whole, not as a prefix: a one- or two-letter
/// prefix matches most of the index, so it finds nothing useful, and the prefix index for
/// it would cost a third more index on disk (see `schema.rs`).
pub(crate) const MIN_PREFIX_CHARS: usize = 3;

/// One user word: its tokens, which must be adjacent in a message (a phrase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Phrase {
    /// As typed (NFC), for FTS5, which folds them itself.
    pub tokens: Vec<String>,
    /// Folded (see `text::fold`), to find the matches again for snippets.
    pub folded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedQuery {
    pub phrases: Vec<Phrase>,
    /// The last phrase's last token matches as a prefix.
    pub prefix_last: bool,
}

impl ParsedQuery {
    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// The MATCH expression: every phrase restricted to the `body` column, ANDed with the
    /// filter tokens of the `scope` column: `body : "tok" AND body : "t o k" AND body : "pre" *
    /// AND scope : "c<uuid>"`.
    pub fn to_match_expression(&self, scope: &[String]) -> String {
        let mut parts: Vec<String> = Vec::with_capacity(self.phrases.len() + scope.len());
        let last = self.phrases.len().saturating_sub(1);
        for (i, phrase) in self.phrases.iter().enumerate() {
            let star = if self.prefix_last && i == last {
                " *"
            } else {
                ""
            };
            parts.push(format!(
                "body : \"{}\"{star}",
                phrase.tokens.join(" ").replace('"', "\"\"")
            ));
        }
        parts.extend(scope.iter().map(|t| format!("scope : \"{t}\"")));
        parts.join(" AND ")
    }
}

/// The `scope` column's token for a conversation: indexed with every message so that FTS5
/// itself intersects a conversation filter with the words (no row lookups for matches in
/// other conversations). Letters and digits only: one `unicode61` token.
pub(crate) fn conversation_token(id: Uuid) -> String {
    format!("c{}", id.simple())
}

/// The `scope` column's token for a sender.
pub(crate) fn sender_token(id: Uuid) -> String {
    format!("s{}", id.simple())
}

/// Splits the user's text into phrases: whitespace separates words; inside a word, every run
/// of letters/digits is a token and every CJK character is one (so "e-mail" is the phrase
/// "e mail" and "東京" the phrase "東 京").
pub(crate) fn parse(text: &str) -> Result<ParsedQuery, SearchError> {
    let chars = text.chars().count();
    if chars > MAX_QUERY_CHARS {
        return Err(SearchError::QueryTooLong {
            chars,
            max: MAX_QUERY_CHARS,
        });
    }
    let mut phrases = Vec::new();
    // Whether the last whitespace-separated chunk is a word still being typed (not emoji).
    let mut open_word = false;
    for chunk in text.split_whitespace() {
        let chunk: String = chunk.nfc().collect();
        let ws = words(&chunk);
        open_word = ws.last().is_some_and(|w| !w.cjk);
        if ws.is_empty() {
            continue;
        }
        let tokens: Vec<String> = ws
            .iter()
            .map(|w| chunk[w.range.clone()].to_owned())
            .collect();
        let folded = tokens.iter().map(|t| fold(t)).collect();
        phrases.push(Phrase { tokens, folded });
    }
    if phrases.len() > MAX_QUERY_WORDS {
        return Err(SearchError::TooManyWords {
            words: phrases.len(),
            max: MAX_QUERY_WORDS,
        });
    }
    let ends_open = !text.ends_with(char::is_whitespace);
    let long_enough = phrases
        .last()
        .and_then(|p| p.folded.last())
        .is_some_and(|t| t.chars().count() >= MIN_PREFIX_CHARS);
    // A CJK token is one character: a prefix of it is itself.
    let prefix_last = ends_open && open_word && long_enough;
    Ok(ParsedQuery {
        phrases,
        prefix_last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expression without the `body : ` column filters, for readability.
    fn expr(text: &str) -> String {
        parse(text)
            .expect("parse")
            .to_match_expression(&[])
            .replace("body : ", "")
            .replace(" AND ", " ")
    }

    #[test]
    fn words_become_quoted_phrases_with_a_prefix_last() {
        assert_eq!(expr("Hello wor"), r#""Hello" "wor" *"#);
        assert_eq!(expr("hello world "), r#""hello" "world""#);
        assert_eq!(expr("Café"), r#""Café" *"#);
        assert_eq!(expr("cafe\u{301}"), r#""café" *"#, "NFC first");
        assert_eq!(expr("a"), r#""a""#);
    }

    #[test]
    fn cjk_words_become_character_phrases() {
        assert_eq!(expr("東京"), r#""東 京""#);
        assert_eq!(expr("東京 tower"), r#""東 京" "tower" *"#);
    }

    #[test]
    fn operators_in_user_text_are_not_syntax() {
        assert_eq!(expr(r#"a" OR "b"#), r#""a" "OR" "b""#);
        assert_eq!(
            expr("NEAR(x y) -z col:v ^w x*"),
            r#""NEAR x" "y" "z" "col v" "w" "x""#
        );
        assert_eq!(expr("e-mail"), r#""e mail" *"#);
    }

    #[test]
    fn words_without_letters_are_dropped() {
        assert!(parse("🎉 ... \"\" *").expect("parse").is_empty());
        assert_eq!(expr("party 🎉"), r#""party""#);
    }

    #[test]
    fn phrases_are_limited_to_the_body_and_filters_are_scope_tokens() {
        let q = parse("hi there").expect("parse");
        let c = Uuid::from_u128(0xabc);
        assert_eq!(
            q.to_match_expression(&[conversation_token(c), sender_token(c)]),
            r#"body : "hi" AND body : "there" * AND scope : "c00000000000000000000000000000abc" AND scope : "s00000000000000000000000000000abc""#
        );
    }

    #[test]
    fn limits_are_enforced() {
        let long = "x".repeat(MAX_QUERY_CHARS + 1);
        assert!(matches!(
            parse(&long),
            Err(SearchError::QueryTooLong { .. })
        ));
        let many = "w ".repeat(MAX_QUERY_WORDS + 1);
        assert!(matches!(
            parse(&many),
            Err(SearchError::TooManyWords { .. })
        ));
        assert!(parse(&"w ".repeat(MAX_QUERY_WORDS)).is_ok());
    }
}
