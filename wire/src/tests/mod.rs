//! Cross-module tests: round trips, limits, the shared vectors and fuzzing.
//!
//! They live inside the crate (not in `tests/`) because crafting malformed envelopes needs the
//! private generated FlatBuffers API.

mod craft;
mod fuzz;
mod limits;
mod roundtrip;
mod vectors;

use crate::msg::{ClientMessage, ServerMessage};
use crate::samples;

/// One sample of either direction.
#[derive(Debug, Clone, PartialEq)]
enum Sample {
    Client(ClientMessage),
    Server(ServerMessage),
}

impl Sample {
    fn encode(&self) -> Vec<u8> {
        match self {
            Sample::Client(m) => crate::encode_client(m),
            Sample::Server(m) => crate::encode_server(m),
        }
    }
}

fn all_samples() -> Vec<(String, Sample)> {
    let client = samples::client_messages()
        .into_iter()
        .map(|(n, m)| (format!("client.{n}"), Sample::Client(m)));
    let server = samples::server_messages()
        .into_iter()
        .map(|(n, m)| (format!("server.{n}"), Sample::Server(m)));
    client.chain(server).collect()
}

/// A tiny deterministic PRNG (SplitMix64): reproducible failures without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}
