//! The shared test vectors in `wire/vectors/`.
//!
//! `TERN_UPDATE_VECTORS=1 cargo test -p tern-wire vectors` rewrites the files from
//! `crate::samples` and `craft::invalid_inputs`; otherwise the files must match what would be
//! written, byte for byte, and every entry is checked the way a client in another language
//! would check it: decode(hex) == message, encode(message) == hex, invalid → expected error.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::craft::{self, Direction, ErrorKind};
use super::{Sample, all_samples};
use crate::msg::{ClientMessage, ServerMessage};
use crate::serde_hex;
use crate::{Limits, PROTOCOL_VERSION, decode_client, decode_server};

const UPDATE_ENV: &str = "TERN_UPDATE_VECTORS";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

#[derive(Serialize)]
#[serde(untagged)]
enum AnyMessage<'a> {
    Client(&'a ClientMessage),
    Server(&'a ServerMessage),
}

#[derive(Serialize)]
struct VectorsOut<'a> {
    comment: &'static str,
    file_identifier: &'static str,
    protocol_version: u16,
    vectors: Vec<VectorOut<'a>>,
}

#[derive(Serialize)]
struct VectorOut<'a> {
    name: &'a str,
    direction: &'static str,
    hex: String,
    message: AnyMessage<'a>,
}

#[derive(Serialize)]
struct InvalidsOut {
    comment: &'static str,
    vectors: Vec<InvalidOut>,
}

#[derive(Serialize)]
struct InvalidOut {
    name: &'static str,
    direction: &'static str,
    hex: String,
    max_frame_bytes: usize,
    error: &'static str,
    reason: &'static str,
}

#[derive(Deserialize)]
struct VectorsIn {
    file_identifier: String,
    protocol_version: u16,
    vectors: Vec<VectorIn>,
}

#[derive(Deserialize)]
struct VectorIn {
    name: String,
    direction: String,
    hex: String,
    message: serde_json::Value,
}

#[derive(Deserialize)]
struct InvalidsIn {
    vectors: Vec<InvalidIn>,
}

#[derive(Deserialize)]
struct InvalidIn {
    name: String,
    direction: String,
    hex: String,
    max_frame_bytes: usize,
    error: String,
}

fn render_vectors(samples: &[(String, Sample)]) -> String {
    let vectors = samples
        .iter()
        .map(|(name, s)| VectorOut {
            name,
            direction: match s {
                Sample::Client(_) => "client",
                Sample::Server(_) => "server",
            },
            hex: serde_hex::encode(&s.encode()),
            message: match s {
                Sample::Client(m) => AnyMessage::Client(m),
                Sample::Server(m) => AnyMessage::Server(m),
            },
        })
        .collect();
    let doc = VectorsOut {
        comment: "Tern wire test vectors: one valid envelope per message variant. See README.md.",
        file_identifier: "TERN",
        protocol_version: PROTOCOL_VERSION,
        vectors,
    };
    serde_json::to_string_pretty(&doc).expect("serializable") + "\n"
}

fn render_invalid() -> String {
    let default_max = Limits::default().max_frame_bytes;
    let vectors = craft::invalid_inputs()
        .into_iter()
        .map(|i| InvalidOut {
            name: i.name,
            direction: i.direction.as_str(),
            hex: serde_hex::encode(&i.bytes),
            max_frame_bytes: i.max_frame_bytes.unwrap_or(default_max),
            error: i.error.as_str(),
            reason: i.reason,
        })
        .collect();
    let doc = InvalidsOut {
        comment: "Tern wire test vectors: inputs every decoder must reject, with the error kind. See README.md.",
        vectors,
    };
    serde_json::to_string_pretty(&doc).expect("serializable") + "\n"
}

/// Compares a committed file with its regenerated content, or rewrites it in update mode.
fn check_or_update(file: &str, expected: &str) -> String {
    let path = dir().join(file);
    if std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1") {
        std::fs::create_dir_all(dir()).expect("create vectors dir");
        std::fs::write(&path, expected).expect("write vectors");
        eprintln!("{UPDATE_ENV}=1: rewrote {}", path.display());
        return expected.to_owned();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `{UPDATE_ENV}=1 cargo test -p tern-wire vectors`",
            path.display()
        )
    });
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .map_or(0, |i| i + 1);
        panic!(
            "{} is stale (first difference near line {line}); if the change is intended, run \
             `{UPDATE_ENV}=1 cargo test -p tern-wire vectors` and review the diff",
            path.display()
        );
    }
    actual
}

fn hex(s: &str) -> Vec<u8> {
    serde_hex::decode(s).expect("hex in vectors")
}

#[test]
fn valid_vectors() {
    let samples = all_samples();
    let text = check_or_update("vectors.json", &render_vectors(&samples));

    // Check the file as an independent client would: only from its contents.
    let doc: VectorsIn = serde_json::from_str(&text).expect("vectors.json parses");
    assert_eq!(doc.file_identifier, "TERN");
    assert_eq!(doc.protocol_version, PROTOCOL_VERSION);
    assert_eq!(doc.vectors.len(), samples.len(), "one vector per sample");
    let limits = Limits::default();
    for v in &doc.vectors {
        let bytes = hex(&v.hex);
        match v.direction.as_str() {
            "client" => {
                let m: ClientMessage = serde_json::from_value(v.message.clone()).expect(&v.name);
                assert_eq!(
                    decode_client(&bytes, &limits).as_ref(),
                    Ok(&m),
                    "{}: decode",
                    v.name
                );
                assert_eq!(crate::encode_client(&m), bytes, "{}: encode", v.name);
            }
            "server" => {
                let m: ServerMessage = serde_json::from_value(v.message.clone()).expect(&v.name);
                assert_eq!(
                    decode_server(&bytes, &limits).as_ref(),
                    Ok(&m),
                    "{}: decode",
                    v.name
                );
                assert_eq!(crate::encode_server(&m), bytes, "{}: encode", v.name);
            }
            other => panic!("{}: bad direction {other}", v.name),
        }
    }
}

#[test]
fn invalid_vectors() {
    let text = check_or_update("invalid.json", &render_invalid());
    let doc: InvalidsIn = serde_json::from_str(&text).expect("invalid.json parses");
    assert!(doc.vectors.len() >= 20);
    for v in &doc.vectors {
        let bytes = hex(&v.hex);
        let limits = Limits {
            max_frame_bytes: v.max_frame_bytes,
            ..Limits::default()
        };
        let err = match v.direction.as_str() {
            "client" => decode_client(&bytes, &limits).map(|_| ()),
            "server" => decode_server(&bytes, &limits).map(|_| ()),
            other => panic!("{}: bad direction {other}", v.name),
        }
        .expect_err(&v.name);
        assert_eq!(
            ErrorKind::of(&err).as_str(),
            v.error,
            "{}: got {err}",
            v.name
        );
    }
    // Every error kind and both directions are exercised.
    for kind in [
        ErrorKind::FrameTooLarge,
        ErrorKind::Malformed,
        ErrorKind::WrongDirection,
    ] {
        assert!(
            doc.vectors.iter().any(|v| v.error == kind.as_str()),
            "{kind:?}"
        );
    }
    for d in [Direction::Client, Direction::Server] {
        assert!(
            doc.vectors.iter().any(|v| v.direction == d.as_str()),
            "{d:?}"
        );
    }
}
