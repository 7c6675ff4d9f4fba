//! AC-05, "a stored message is encrypted": messages with unique marker strings go through the
//! real CLI (`tern-cli chat`) and the SDK, the recipient reads them (decrypted on its device),
//! and then every file the server wrote (store, journals, logs, config) is scanned for the
//! markers. With end-to-end encryption no marker may appear; with the test-only plaintext
//! switch the same scan must find them, so the scan itself is shown to work.

mod common;

use std::path::PathBuf;

use common::cli::{Cli, cli_binary, files_containing};
use common::*;
use tern_core::crypto::CryptoConfig;
use tern_sdk::e2e::TEXT_CONTENT_TYPE;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId};
use tern_sdk::{Connection, E2e, Event, TransportPref};

/// Sends one SDK message from `bob` into `conversation` (encrypted unless `plaintext`).
async fn sdk_send(
    server: &TestServer,
    bob: &TestUser,
    conversation: ConversationId,
    text: &str,
    plaintext: bool,
) {
    let device = DeviceId::random();
    let mut conn = Connection::connect(
        &server.config(TransportPref::WebTransport),
        &bob.token,
        device,
        &[],
    )
    .await
    .expect("connect");
    let mut e2e = E2e::in_memory(bob.id, device, CryptoConfig::default()).expect("crypto");
    e2e.set_plaintext_for_tests(plaintext);
    e2e.publish_keys(&conn, conn.welcome().one_time_keys_left)
        .await
        .expect("publish");
    loop {
        match next(&mut conn).await {
            Event::SyncComplete => break,
            Event::Other(m) => {
                e2e.on_server_message(&m).expect("crypto event");
            }
            _ => {}
        }
    }
    let members = bob
        .http
        .conversations()
        .await
        .expect("conversations")
        .into_iter()
        .find(|c| c.conversation_id == conversation)
        .expect("bob is a member")
        .members
        .iter()
        .map(|m| m.user_id)
        .collect();
    e2e.set_members(conversation, members);
    let (content_type, payload) = e2e
        .encrypt_outgoing(&conn, conversation, TEXT_CONTENT_TYPE, text.as_bytes())
        .await
        .expect("encrypt");
    conn.send(conversation, DeviceId::random().0, &content_type, payload)
        .await
        .expect("send");
    for ack in e2e.take_inbox_ack() {
        let _ = conn.send_message(&ack).await;
    }
    conn.close().await;
}

/// One round: returns (files with the CLI marker, files with the SDK marker).
async fn round(plaintext: bool) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let bin = cli_binary();
    let mut server = TestServer::start().await;
    let alice_cli = Cli::new(&bin, &server).with_plaintext(plaintext);
    let bob_cli = Cli::new(&bin, &server).with_plaintext(plaintext);
    let tag = format!("{:08x}", rand_u32());
    let cli_marker = format!("MARKER-CLI-{tag}-never-stored-in-clear");
    let sdk_marker = format!("MARKER-SDK-{tag}-never-stored-in-clear");

    alice_cli.run(&["register", "alice"], "").await;
    let bob = user(&server, "bob").await;
    alice_cli.run(&["login", "alice"], "").await;
    bob_cli.run(&["login", "bob"], "").await;
    let conversation: ConversationId = alice_cli
        .run(&["dm", "bob"], "")
        .await
        .trim()
        .parse()
        .expect("conversation id");
    bob.http
        .accept_invitation(conversation)
        .await
        .expect("accept");
    // Bob's CLI device publishes its keys (any command that syncs keys does).
    bob_cli.run(&["history", "@alice"], "").await;

    let sent = alice_cli
        .run(&["chat", "@bob"], &format!("{cli_marker}\n/quit\n"))
        .await;
    assert!(
        sent.contains(&cli_marker),
        "the CLI echoed the sent line: {sent}"
    );
    sdk_send(&server, &bob, conversation, &sdk_marker, plaintext).await;

    // Both messages reach Alice's and Bob's CLI devices and decrypt there.
    let at_bob = bob_cli.run(&["history", "@alice"], "").await;
    assert!(
        at_bob.contains(&cli_marker),
        "bob reads alice's CLI message: {at_bob}"
    );
    let at_alice = alice_cli.run(&["history", "@bob"], "").await;
    assert!(
        at_alice.contains(&sdk_marker),
        "alice reads bob's SDK message: {at_alice}"
    );

    server.terminate().await;
    let root = server.data_dir.parent().expect("server dir").to_path_buf();
    (
        files_containing(&root, cli_marker.as_bytes()),
        files_containing(&root, sdk_marker.as_bytes()),
    )
}

fn rand_u32() -> u32 {
    (DeviceId::random().0 >> 96) as u32
}

#[tokio::test]
async fn no_marker_reaches_the_servers_disk_but_the_scan_finds_plaintext() {
    let (cli, sdk) = round(false).await;
    assert!(
        cli.is_empty(),
        "CLI plaintext found on the server's disk: {cli:?}"
    );
    assert!(
        sdk.is_empty(),
        "SDK plaintext found on the server's disk: {sdk:?}"
    );

    // The control: encryption switched off, the same scan must find both markers.
    let (cli, sdk) = round(true).await;
    assert!(
        !cli.is_empty(),
        "the scan must find the CLI marker when it is stored in clear"
    );
    assert!(
        !sdk.is_empty(),
        "the scan must find the SDK marker when it is stored in clear"
    );
}
