//! The HTTPS API's JSON bodies: every request body the gateway deserializes (the handlers use
//! axum's `Json`, i.e. `serde_json::from_slice`) followed by the pure validation the handler
//! runs on it, and every answer body the SDK deserializes.
//!
//! Input layout: byte 0 picks the type, the rest is the body.
//!
//! Properties: nothing panics; whatever parses serializes and parses back to the same JSON;
//! what validation accepts satisfies the documented rules (usernames 3-32 of `[A-Za-z0-9_.-]`,
//! passwords 8-256 bytes, names and descriptions trimmed, within their length, without control
//! characters other than newline).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_engine::accounts::{
    Accounts, MAX_PASSWORD_BYTES, MAX_USERNAME_CHARS, MIN_PASSWORD_BYTES, MIN_USERNAME_CHARS,
};
use tern_engine::conversations::{ConversationLimits, group_name_key, validate_text};
use tern_wire::api::*;

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 12 {
        // Request bodies, then what the handler checks.
        0 => {
            if let Some(c) = parse::<Credentials>(body) {
                check_username(&c.username);
                check_password(&c.password);
            }
        }
        1 => {
            if let Some(d) = parse::<CreateDirect>(body) {
                check_username(&d.peer);
            }
        }
        2 => {
            if let Some(g) = parse::<CreateGroup>(body) {
                let limits = ConversationLimits::default();
                check_text("name", &g.name, limits.max_name_chars, false, false);
                check_text(
                    "description",
                    &g.description,
                    limits.max_description_chars,
                    true,
                    true,
                );
                let _ = group_name_key(&g.name);
                for member in &g.members {
                    check_username(member);
                }
            }
        }
        3 => {
            if let Some(u) = parse::<UserRef>(body) {
                check_username(&u.username);
            }
        }
        // Answer bodies the SDK parses.
        4 => drop(parse::<UserView>(body)),
        5 => drop(parse::<LoginResponse>(body)),
        6 => drop(parse::<ConversationView>(body)),
        7 => drop(parse::<ConversationList>(body)),
        8 => drop(parse::<HistoryPageView>(body)),
        9 => drop(parse::<TransportInfo>(body)),
        10 => drop(parse::<ApiError>(body)),
        _ => drop(parse::<InvitationList>(body)),
    }
});

/// Parses like axum's `Json` and checks the value survives a serialize/parse round trip.
fn parse<T: Serialize + DeserializeOwned>(body: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(body).ok()?;
    let json = serde_json::to_vec(&value).expect("an API type always serializes");
    let again: T = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("own output does not parse back: {e}: {json:?}"));
    let json_again = serde_json::to_vec(&again).expect("serializes");
    assert_eq!(json, json_again, "round trip changed the value");
    Some(value)
}

fn check_username(username: &str) {
    if Accounts::validate_username(username).is_ok() {
        let chars = username.chars().count();
        assert!((MIN_USERNAME_CHARS..=MAX_USERNAME_CHARS).contains(&chars));
        assert!(
            username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        );
    }
}

fn check_password(password: &str) {
    let accepted = Accounts::validate_new_password(password).is_ok();
    assert_eq!(
        accepted,
        (MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len())
    );
}

fn check_text(what: &str, value: &str, max_chars: usize, allow_empty: bool, allow_newline: bool) {
    if let Ok(clean) = validate_text(what, value, max_chars, allow_empty, allow_newline) {
        assert_eq!(clean, clean.trim(), "accepted text is trimmed");
        assert!(allow_empty || !clean.is_empty());
        assert!(clean.chars().count() <= max_chars);
        assert!(
            !clean
                .chars()
                .any(|c| c.is_control() && !(allow_newline && c == '\n'))
        );
        // Names and descriptions never carry bidi overrides, zero-width or separator characters.
        assert!(!clean.chars().any(|c| matches!(
            c,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}'..='\u{200F}'
                | '\u{2028}' | '\u{2029}' | '\u{FEFF}'
        )));
        // Validation is stable: the cleaned text is accepted as it is.
        assert_eq!(
            validate_text(what, &clean, max_chars, allow_empty, allow_newline).ok(),
            Some(clean)
        );
    }
}
