//! The self-signed certificate's rotation as a pinned page sees it (issue 12, part 7):
//! `/api/v1/transport` lists the next certificate's hash (with its validity) before the server
//! switches to it, so a client that pinned every listed hash keeps connecting over both
//! transports after the switch without asking again. A short configured lifetime makes the
//! whole rotation happen within seconds (every step scales with it).

mod common;

use std::time::Duration;

use common::TestServer;
use tern_sdk::tern_wire::ids::DeviceId;
use tern_sdk::{Config, Connection, TransportPref, Trust};

/// Rotation at 3/14 of it before expiry (6 s), the next one published 1/14 before that (2 s).
const VALIDITY_SECS: u64 = 28;
/// Far beyond the lifetime: the steps above all happen within it.
const BOUND: Duration = Duration::from_secs(60);

fn pinned(server: &TestServer, hashes: &[[u8; 32]], transport: TransportPref) -> Config {
    let mut config = Config::new(
        &server.addr.to_string(),
        Trust::PinnedSha256(hashes.to_vec()),
    )
    .expect("config");
    config.transport = transport;
    config
}

fn https(config: &Config) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls((*config.tls().tcp).clone())
        .build()
        .expect("https client")
}

fn hash_of(hex_value: &serde_json::Value) -> [u8; 32] {
    let bytes = hex::decode(hex_value.as_str().expect("hex string")).expect("hex");
    <[u8; 32]>::try_from(bytes.as_slice()).expect("32 bytes")
}

async fn transport_info(server: &TestServer, client: &reqwest::Client) -> serde_json::Value {
    client
        .get(format!("https://{}/api/v1/transport", server.addr))
        .send()
        .await
        .expect("GET /api/v1/transport")
        .json()
        .await
        .expect("json")
}

/// Polls `/api/v1/transport` until `done` holds for its hash list, within [`BOUND`].
async fn wait_for(
    server: &TestServer,
    client: &reqwest::Client,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let info = transport_info(server, client).await;
        let hashes = info["certificate_hashes"].as_array().expect("list").clone();
        if done(&hashes) {
            return hashes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {BOUND:?}: {hashes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_next_certificate_is_published_before_the_switch_and_pinned_clients_follow_it() {
    let validity = format!("self_signed_validity_secs = {VALIDITY_SECS}");
    let server = TestServer::start_with(&[&validity]).await;
    let first = server.cert_hash;
    let user = common::user(&server, "pinner").await;

    // At first: the served certificate only, with its validity.
    let client = https(&pinned(&server, &[first], TransportPref::WebSocket));
    let info = transport_info(&server, &client).await;
    let hashes = info["certificate_hashes"].as_array().expect("list");
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    assert_eq!(hash_of(&hashes[0]["value"]), first);
    assert_eq!(hashes[0]["role"], "current");
    let not_before = hashes[0]["not_before_ms"].as_u64().expect("not_before_ms");
    let not_after = hashes[0]["not_after_ms"].as_u64().expect("not_after_ms");
    assert_eq!(not_after - not_before, VALIDITY_SECS * 1000);

    // Before the switch: the next one is listed beside the current one, not yet served.
    let hashes = wait_for(&server, &client, "the next hash is published", |h| {
        h.len() == 2
    })
    .await;
    assert_eq!(
        hash_of(&hashes[0]["value"]),
        first,
        "still served: {hashes:?}"
    );
    assert_eq!(hashes[1]["role"], "next");
    let next = hash_of(&hashes[1]["value"]);
    assert_ne!(next, first);
    assert!(hashes[1]["not_after_ms"].as_u64().expect("next expiry") > not_after);

    // A page pins everything it was told, connects now and after the switch.
    let both = [first, next];
    for transport in [TransportPref::WebSocket, TransportPref::WebTransport] {
        Connection::connect(
            &pinned(&server, &both, transport),
            &user.token,
            DeviceId::random(),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{transport:?} before the switch: {e}"));
    }
    let client = https(&pinned(&server, &both, TransportPref::WebSocket));
    let hashes = wait_for(&server, &client, "the switch", |h| {
        h.first().is_some_and(|c| hash_of(&c["value"]) == next)
    })
    .await;
    assert_eq!(hashes[0]["role"], "current");
    for transport in [TransportPref::WebSocket, TransportPref::WebTransport] {
        Connection::connect(
            &pinned(&server, &both, transport),
            &user.token,
            DeviceId::random(),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{transport:?} after the switch, pinned to both: {e}"));
        // The served certificate really changed, on TCP and on QUIC.
        let old_only = Connection::connect(
            &pinned(&server, &[first], transport),
            &user.token,
            DeviceId::random(),
            &[],
        )
        .await;
        assert!(
            old_only.is_err(),
            "{transport:?}: a client pinned to the old hash only no longer connects"
        );
    }
}
