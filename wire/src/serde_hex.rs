//! Hex forms for byte strings and 128-bit client ids in the serde (JSON) representation of
//! messages.
//!
//! JSON is how the shared test vectors carry the *meaning* of a frame to clients in other
//! languages. Hex keeps that readable, unambiguous (no base64 alphabet/padding variants) and
//! exact: a `u128` does not fit a JSON number in most parsers, so `client_msg_id` is a fixed
//! 32-digit lowercase hex string. Decoding accepts either letter case.
//!
//! Written by hand (a few lines) rather than pulling in a hex crate as a runtime dependency.

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serializer};

const DIGITS: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes an even-length hex string; `None` on odd length or a non-hex character.
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

/// `Vec<u8>` as a hex string.
pub(crate) mod bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&s).ok_or_else(|| D::Error::invalid_value(Unexpected::Str(&s), &"a hex string"))
    }
}

/// `Vec<Vec<u8>>` as an array of hex strings.
pub(crate) mod bytes_vec {
    use super::*;
    use serde::ser::SerializeSeq;

    pub(crate) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(&encode(b))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let strings = <Vec<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        strings
            .iter()
            .map(|s| {
                decode(s)
                    .ok_or_else(|| D::Error::invalid_value(Unexpected::Str(s), &"a hex string"))
            })
            .collect()
    }
}

/// `u128` as exactly 32 hex digits (big-endian, zero-padded).
pub(crate) mod u128 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:032x}"))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = decode(&s)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .ok_or_else(|| {
                D::Error::invalid_value(Unexpected::Str(&s), &"exactly 32 hex digits")
            })?;
        Ok(u128::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).as_deref(), Some(&all[..]));
        assert_eq!(decode("ABcd"), Some(vec![0xab, 0xcd]));
        assert_eq!(decode(""), Some(vec![]));
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode("é"), None);
    }
}
