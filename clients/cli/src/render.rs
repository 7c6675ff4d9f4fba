//! Turning messages into terminal lines.
//!
//! Everything shown comes from other people, so it is rendered as inert text: control
//! characters (escape sequences could rewrite the screen, set the window title or fake other
//! lines) and bidirectional overrides (which can make text read differently than it is) are
//! replaced before printing.

use std::collections::HashMap;

use tern_sdk::tern_wire::api::ConversationView;
use tern_sdk::tern_wire::ids::{ConversationId, UserId};
use tern_sdk::tern_wire::msg::Message;
use time::{OffsetDateTime, UtcOffset, macros::format_description};

/// Makes untrusted text safe to print on a terminal, on one line.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' => {
                '\u{FFFD}'
            }
            c => c,
        })
        .collect()
}

pub fn clock(ms: u64, offset: UtcOffset) -> String {
    let fmt = format_description!("[hour]:[minute]:[second]");
    to_local(ms, offset)
        .format(&fmt)
        .unwrap_or_else(|_| "??:??:??".into())
}

pub fn date_time(ms: u64, offset: UtcOffset) -> String {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    to_local(ms, offset)
        .format(&fmt)
        .unwrap_or_else(|_| "????-??-?? ??:??:??".into())
}

fn to_local(ms: u64, offset: UtcOffset) -> OffsetDateTime {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset)
}

/// The message body as text: UTF-8 text messages as-is (sanitized), a file as `[file] name
/// (size)`, anything else as a summary.
pub fn body(m: &Message) -> String {
    if let Some(file) = tern_sdk::file_body_of(m) {
        return crate::files::summary(&file);
    }
    if m.content_type == "text" {
        match std::str::from_utf8(&m.payload) {
            Ok(t) => sanitize(t),
            Err(_) => format!("<invalid UTF-8, {} bytes>", m.payload.len()),
        }
    } else {
        format!("<{}, {} bytes>", sanitize(&m.content_type), m.payload.len())
    }
}

/// Names of users and conversations, learned from the API and from conversation updates.
#[derive(Debug, Default)]
pub struct Directory {
    pub users: HashMap<UserId, String>,
    pub conversations: HashMap<ConversationId, String>,
}

impl Directory {
    pub fn learn(&mut self, me: UserId, conv: &ConversationView) {
        for m in &conv.members {
            self.users.insert(m.user_id, m.username.clone());
        }
        self.conversations
            .insert(conv.conversation_id, conversation_label(me, conv));
    }

    pub fn user(&self, id: UserId) -> String {
        match self.users.get(&id) {
            Some(name) => sanitize(name),
            None => {
                let s = id.to_string();
                format!("user-{}", &s[..8.min(s.len())])
            }
        }
    }

    /// The user's name as the server gave it (not sanitized: for storing, e.g. in the search
    /// index, which sanitizes nothing; printing goes through [`Directory::user`]).
    pub fn plain_user(&self, id: UserId) -> String {
        match self.users.get(&id) {
            Some(name) => name.clone(),
            None => {
                let s = id.to_string();
                format!("user-{}", &s[..8.min(s.len())])
            }
        }
    }

    pub fn conversation(&self, id: ConversationId) -> String {
        match self.conversations.get(&id) {
            Some(name) => name.clone(),
            None => {
                let s = id.to_string();
                format!("#{}", &s[..8.min(s.len())])
            }
        }
    }
}

/// `#group` or `@peer` (for a direct conversation, the other member).
pub fn conversation_label(me: UserId, conv: &ConversationView) -> String {
    if conv.kind == "direct" {
        let peer = conv
            .members
            .iter()
            .find(|m| m.user_id != me)
            .map_or("(yourself)", |m| m.username.as_str());
        format!("@{}", sanitize(peer))
    } else {
        format!("#{}", sanitize(&conv.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_neutralizes_terminal_tricks() {
        assert_eq!(sanitize("hi\x1b[2Jthere"), "hi\u{FFFD}[2Jthere");
        assert_eq!(sanitize("a\r\nb"), "a\u{FFFD}\u{FFFD}b");
        assert_eq!(sanitize("x\u{202E}y"), "x\u{FFFD}y");
        assert_eq!(sanitize("héllo\tw"), "héllo w");
    }

    #[test]
    fn clock_formats_with_offset() {
        assert_eq!(clock(3_723_000, UtcOffset::UTC), "01:02:03");
        let plus2 = UtcOffset::from_hms(2, 0, 0).expect("offset");
        assert_eq!(clock(3_723_000, plus2), "03:02:03");
        assert_eq!(date_time(0, UtcOffset::UTC), "1970-01-01 00:00:00");
    }
}
