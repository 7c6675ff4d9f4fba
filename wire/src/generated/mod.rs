//! FlatBuffers code generated from `wire/schema/tern.fbs` by `scripts/gen-wire.sh` (flatc
//! 25.12.19). Do not edit anything in this directory: change the schema and re-run the
//! script. CI runs `scripts/gen-wire.sh --check` and fails on any difference.
//!
//! Read buffers only through `crate::codec`, which size-checks and verifies them with Tern's
//! limits first; the generated `root_as_envelope` uses FlatBuffers' permissive default limits.

// Generated code is not held to the crate's lint and style rules: it is reproduced verbatim
// from flatc, so fixing it by hand would be undone by the next generation.
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    dead_code,
    deprecated,
    mismatched_lifetime_syntaxes,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unsafe_op_in_unsafe_fn,
    unused_imports,
    unused_unsafe
)]

#[rustfmt::skip]
mod tern_generated;

pub use self::tern_generated::tern::wire::*;
