//! Reactions to messages: validate, check membership and the message, store (idempotently,
//! within limits), fan out `ServerMessage::Reaction` to every online device of every member,
//! and aggregate them for history pages.

use std::sync::Arc;

use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::{ErrorCode, Message, ReactionCount, ServerMessage};

use crate::core::Input;
use crate::driver::EngineHandle;
use crate::service::ServiceError;
use crate::store::reactions::{
    AddOutcome, MAX_REACTION_EMOJI_BYTES, ReactionKey, ReactionReadLimits, ReactionStore,
    ReactionWriteLimits,
};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct ReactionLimits {
    /// Distinct emoji on one message.
    pub max_emoji_per_message: usize,
    /// Distinct emoji one user may put on one message.
    pub max_per_user_per_message: usize,
    /// Users listed per `(seq, emoji)` in a history page (the count stays exact).
    pub max_users_listed_per_emoji: usize,
    /// Users listed over a whole history page (the counts stay exact).
    pub max_users_listed_per_page: usize,
}

impl Default for ReactionLimits {
    fn default() -> Self {
        ReactionLimits {
            max_emoji_per_message: 20,
            max_per_user_per_message: 10,
            max_users_listed_per_emoji: 32,
            max_users_listed_per_page: 2_000,
        }
    }
}

pub struct Reactions {
    store: Arc<dyn Store>,
    reactions: Arc<dyn ReactionStore>,
    engine: EngineHandle,
    limits: ReactionLimits,
}

fn internal(e: StoreError) -> ServiceError {
    tracing::error!(error = %e, "storage error");
    ServiceError::new(ErrorCode::Internal, "storage error")
}

impl Reactions {
    pub fn new(
        store: Arc<dyn Store>,
        reactions: Arc<dyn ReactionStore>,
        engine: EngineHandle,
        limits: ReactionLimits,
    ) -> Self {
        Reactions {
            store,
            reactions,
            engine,
            limits,
        }
    }

    /// Adds (`add`) or removes `me`'s reaction `emoji` to message `seq`. Idempotent: adding a
    /// present reaction or removing a missing one succeeds and changes (and announces) nothing.
    pub async fn react(
        &self,
        me: UserId,
        conversation: ConversationId,
        seq: u64,
        emoji: &str,
        add: bool,
    ) -> Result<(), ServiceError> {
        validate_emoji(emoji)?;
        // Non-members get the answer a missing conversation gets (as in `Conversations`); so
        // do the two users of a 1:1 one of them blocks (nothing is sent in it, see
        // `conversations::engine_members`).
        let active_member = match self
            .store
            .conversation(conversation)
            .await
            .map_err(internal)?
        {
            Some(record) => crate::conversations::engine_members(&*self.store, &record)
                .await
                .map_err(internal)?
                .contains(&me),
            None => false,
        };
        if !active_member {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                "no such conversation",
            ));
        }
        if seq == 0 || seq > self.store.last_seq(conversation).await.map_err(internal)? {
            return Err(ServiceError::new(ErrorCode::NotFound, "no such message"));
        }
        let key = ReactionKey {
            conversation,
            seq,
            user: me,
            emoji: emoji.to_owned(),
        };
        let changed = if add {
            let limits = ReactionWriteLimits {
                max_emoji_per_message: self.limits.max_emoji_per_message,
                max_per_user_per_message: self.limits.max_per_user_per_message,
            };
            match self
                .reactions
                .add_reaction(key, limits)
                .await
                .map_err(internal)?
            {
                AddOutcome::Added => true,
                AddOutcome::AlreadyPresent => false,
                AddOutcome::TooManyEmoji => {
                    return Err(ServiceError::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "a message has at most {} different reactions",
                            self.limits.max_emoji_per_message
                        ),
                    ));
                }
                AddOutcome::TooManyForUser => {
                    return Err(ServiceError::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "one person may add at most {} reactions to a message",
                            self.limits.max_per_user_per_message
                        ),
                    ));
                }
            }
        } else {
            self.reactions
                .remove_reaction(key)
                .await
                .map_err(internal)?
        };
        if changed {
            self.announce(me, conversation, seq, emoji, add).await?;
        }
        Ok(())
    }

    /// Sends the change to every online device of every member (the reacting user's included,
    /// so their other devices follow).
    async fn announce(
        &self,
        me: UserId,
        conversation: ConversationId,
        seq: u64,
        emoji: &str,
        add: bool,
    ) -> Result<(), ServiceError> {
        let users = self
            .store
            .members(conversation)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|m| m.user)
            .collect();
        let message = Arc::new(ServerMessage::Reaction {
            conversation,
            seq,
            user: me,
            emoji: emoji.to_owned(),
            add,
        });
        if self
            .engine
            .input(Input::Notify { users, message })
            .await
            .is_err()
        {
            // Stored already; devices see it in history.
            tracing::warn!("engine stopped: reaction announcement dropped");
        }
        Ok(())
    }

    /// Aggregated reactions to the messages of a history page (the caller has checked
    /// membership when it read the page).
    pub async fn for_page(
        &self,
        conversation: ConversationId,
        messages: &[Message],
    ) -> Result<Vec<ReactionCount>, ServiceError> {
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return Ok(Vec::new());
        };
        let limits = ReactionReadLimits {
            max_users_per_emoji: self.limits.max_users_listed_per_emoji,
            max_users_total: self.limits.max_users_listed_per_page,
        };
        let mut out = self
            .reactions
            .reactions(conversation, first.seq, last.seq, limits)
            .await
            .map_err(internal)?;
        // Pages are contiguous today; keep only seqs of the page should that change.
        out.retain(|r| messages.binary_search_by_key(&r.seq, |m| m.seq).is_ok());
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// emoji validation

const ZWJ: char = '\u{200D}';
const VS15: char = '\u{FE0E}';
const VS16: char = '\u{FE0F}';
const KEYCAP: char = '\u{20E3}';
const CANCEL_TAG: char = '\u{E007F}';
/// Most elements joined by ZWJ in one sequence (the longest RGI sequences have 4 people).
const MAX_ZWJ_ELEMENTS: usize = 8;

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

fn is_skin_tone(c: char) -> bool {
    ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
}

fn is_tag(c: char) -> bool {
    ('\u{E0020}'..='\u{E007E}').contains(&c)
}

fn is_keycap_base(c: char) -> bool {
    c.is_ascii_digit() || c == '#' || c == '*'
}

/// Code points that are (or can be presented as) a pictographic emoji: an approximation of
/// Unicode's `Extended_Pictographic` property, plus the skin-tone swatches on their own. Regional
/// indicators are handled as pairs, keycap bases only before U+20E3.
fn is_pictographic(c: char) -> bool {
    matches!(c as u32,
        0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139
        | 0x2194..=0x2199 | 0x21A9..=0x21AA | 0x231A..=0x231B | 0x2328 | 0x2388 | 0x23CF
        | 0x23E9..=0x23F3 | 0x23F8..=0x23FA | 0x24C2 | 0x25AA..=0x25AB | 0x25B6 | 0x25C0
        | 0x25FB..=0x25FE | 0x2600..=0x27BF | 0x2934..=0x2935 | 0x2B05..=0x2B07
        | 0x2B1B..=0x2B1C | 0x2B50 | 0x2B55 | 0x3030 | 0x303D | 0x3297 | 0x3299
        | 0x1F000..=0x1F1E5 | 0x1F200..=0x1FAFF | 0x1FC00..=0x1FFFD)
}

fn refuse(why: &str) -> ServiceError {
    ServiceError::invalid(format!("reaction must be a single emoji: {why}"))
}

/// Accepts exactly one emoji sequence:
///
/// ```text
/// sequence := element (ZWJ element){0,7}
/// element  := RI RI                                  (flag)
///           | [0-9#*] VS16? U+20E3                   (keycap)
///           | pictographic modifiers tags?
/// modifiers:= at most one skin tone (U+1F3FB..FF) and at most one VS15/VS16, either order
/// tags     := TAG{1,..} U+E007F                      (subdivision flags)
/// ```
///
/// and at most [`MAX_REACTION_EMOJI_BYTES`] bytes. Plain text ("a", "hello", "1"), two emoji
/// side by side without ZWJ, lone regional indicators or joiners are refused.
pub fn validate_emoji(emoji: &str) -> Result<(), ServiceError> {
    if emoji.is_empty() {
        return Err(refuse("empty"));
    }
    if emoji.len() > MAX_REACTION_EMOJI_BYTES {
        return Err(refuse(&format!(
            "longer than {MAX_REACTION_EMOJI_BYTES} bytes"
        )));
    }
    let mut chars = emoji.chars().peekable();
    let mut elements = 0;
    loop {
        elements += 1;
        if elements > MAX_ZWJ_ELEMENTS {
            return Err(refuse("too many joined elements"));
        }
        let Some(c) = chars.next() else {
            return Err(refuse("ends with a joiner"));
        };
        if is_regional_indicator(c) {
            match chars.next() {
                Some(d) if is_regional_indicator(d) => {}
                _ => return Err(refuse("a flag is a pair of regional indicators")),
            }
        } else if is_keycap_base(c) {
            if chars.peek() == Some(&VS16) {
                chars.next();
            }
            if chars.next() != Some(KEYCAP) {
                return Err(refuse("plain text"));
            }
        } else if is_pictographic(c) {
            let (mut tone, mut selector) = (false, false);
            while let Some(&m) = chars.peek() {
                if is_skin_tone(m) && !tone {
                    tone = true;
                } else if (m == VS15 || m == VS16) && !selector {
                    selector = true;
                } else {
                    break;
                }
                chars.next();
            }
            if chars.peek().is_some_and(|t| is_tag(*t)) {
                while chars.peek().is_some_and(|t| is_tag(*t)) {
                    chars.next();
                }
                if chars.next() != Some(CANCEL_TAG) {
                    return Err(refuse("unterminated tag sequence"));
                }
            }
        } else {
            return Err(refuse("not an emoji"));
        }
        match chars.next() {
            None => return Ok(()),
            Some(ZWJ) => {}
            Some(_) => return Err(refuse("more than one emoji")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_emoji;

    #[test]
    fn accepts_emoji_sequences() {
        for ok in [
            "👍",
            "❤️",
            "❤",
            "😀",
            "👨‍👩‍👧‍👦", // ZWJ family
            "👩🏽‍💻", // skin tone + ZWJ
            "👍🏿", // skin tone
            "🇫🇷", // flag
            "🇺🇳",
            "#️⃣", // keycap
            "1⃣",
            "🏴󠁧󠁢󠁳󠁣󠁴󠁿", // tag sequence (Scotland)
            "🏳️‍🌈", // VS16 + ZWJ
            "👩🏻‍❤️‍💋‍👨🏼", // long ZWJ with tones
            "©️",
            "🫠",
        ] {
            assert!(validate_emoji(ok).is_ok(), "{ok:?} should be accepted");
        }
    }

    #[test]
    fn refuses_text_and_malformed_sequences() {
        let long = "😀".repeat(25);
        let hundred = "a".repeat(100);
        for bad in [
            "",
            "a",
            "hello",
            "1",
            "#",
            " ",
            "👍 ",
            " 👍",
            "👍👍", // two emoji, no joiner
            "🇫",    // lone regional indicator
            "🇫🇷🇩",
            "\u{200D}",
            "👍\u{200D}", // trailing joiner
            "\u{200D}👍",
            "👍\u{FE0F}\u{FE0F}",
            "👍🏻🏻",
            "🏴\u{E0067}\u{E0062}", // tags without cancel
            "\u{E007F}",
            "a\u{20E3}",
            &long,
            &hundred,
            "e\u{301}",
            "中",
        ] {
            assert!(validate_emoji(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
