//! Issue 14 end to end through the real CLI over real TLS: `tern-cli search` finds what this
//! device decrypted (AC-13), never what the user may not read (AC-14), filters by sender and
//! date, handles accents and CJK, prints hits with the messages around them, keeps its index
//! across processes (encrypted on disk) and deletes it at logout.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cli::{Cli, cli_binary, files_containing};
use common::*;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId};
use tern_sdk::tern_wire::msg::{ClientMessage, ServerMessage};
use tern_sdk::{Connection, TransportPref};
use time::format_description::well_known::Rfc3339;
use time::{Duration as TimeDuration, OffsetDateTime, macros::format_description};

/// Registers and logs in `name` with its own CLI home.
async fn cli_user(bin: &Path, server: &TestServer, name: &str) -> Cli {
    let cli = Cli::new(bin, server);
    cli.run(&["register", name], "").await;
    cli.run(&["login", name], "").await;
    cli
}

/// Sends each line in a `chat` session with `conversation`.
async fn say(cli: &Cli, conversation: &str, lines: &[&str]) {
    let mut input = lines.join("\n");
    input.push_str("\n/quit\n");
    let out = cli.run(&["chat", conversation], &input).await;
    for line in lines {
        assert!(out.contains(line), "chat echoed {line:?}: {out}");
    }
}

/// `tern-cli search ARGS`: (stdout, stderr), failing the test on a non-zero exit.
async fn search(cli: &Cli, args: &[&str]) -> (String, String) {
    let mut all = vec!["search"];
    all.extend_from_slice(args);
    let out = cli.output(&all, "").await;
    assert!(
        out.success,
        "search {args:?} failed\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    (out.stdout, out.stderr)
}

/// The hit lines (`> #seq ...`) of a search's output.
fn hits(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("> #")).collect()
}

fn rand_tag() -> String {
    format!("{:08x}", (DeviceId::random().0 >> 96) as u32)
}

fn utc_day(t: OffsetDateTime) -> String {
    t.format(format_description!("[year]-[month]-[day]"))
        .expect("format day")
}

#[tokio::test]
async fn search_finds_filters_shows_context_and_keeps_its_index_private() {
    let bin = cli_binary();
    let server = TestServer::start().await;
    let alice = cli_user(&bin, &server, "alice").await;
    let bob = cli_user(&bin, &server, "bob").await;
    alice.run(&["dm", "bob"], "").await;
    bob.run(&["accept", "@alice"], "").await;
    // Both devices publish their keys (any command that syncs keys does).
    bob.run(&["history", "@alice"], "").await;
    alice.run(&["history", "@bob"], "").await;

    let marker = format!("MARKER{}", rand_tag());
    let zebra = format!("the quarterly zebra report {marker}");
    say(
        &alice,
        "@bob",
        &[
            &zebra,
            "lunch at noon?",
            "my resume is attached",
            "ibis early",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cut = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(30)).await;
    say(&alice, "@bob", &["ibis late"]).await;
    // `history` indexes what it decrypted (Bob has not run anything else since).
    bob.run(&["history", "@alice"], "").await;
    let (out, _) = search(&bob, &["zebra", "--no-sync", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 1, "{out}");
    let mut context: Vec<String> = (1..=9).map(|i| format!("ctx-0{i} filler")).collect();
    context[4] = "ctx-05 the giraffe arrives".into();
    let mut lines = vec![
        "Rendez-vous au Café Zürich demain",
        "明天我们在北京开会",
        "lunch tomorrow then",
    ];
    lines.extend(context.iter().map(String::as_str));
    say(&bob, "@alice", &lines).await;

    // `chat` indexed what Alice sent; --no-sync fetches nothing, so Bob's words are not there.
    let (out, _) = search(&alice, &["zebra", "--no-sync", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 1, "{out}");
    assert!(
        out.contains("[zebra]"),
        "highlighted in brackets off a tty: {out}"
    );
    let (out, err) = search(&alice, &["cafe", "--no-sync", "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "not indexed before a sync: {out}");
    assert!(err.contains("no messages match"), "{err}");
    // Without --no-sync the search backfills older history first (progress on stderr).
    let (out, err) = search(&alice, &["cafe", "zurich", "-C", "0"]).await;
    assert!(
        err.contains("indexed"),
        "backfill progress on stderr: {err}"
    );
    assert_eq!(hits(&out).len(), 1, "accents folded: {out}");
    assert!(
        out.contains("[Café]") && out.contains("[Zürich]"),
        "the original words are highlighted: {out}"
    );
    let (out, _) = search(&alice, &["résumé", "--no-sync", "-C", "0"]).await;
    assert!(
        out.contains("[resume]"),
        "accents folded the other way: {out}"
    );
    let (out, _) = search(&alice, &["北京", "--no-sync", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 1, "a CJK word inside a run: {out}");
    assert!(out.contains("[北京]"), "{out}");
    let (out, _) = search(&alice, &["上海", "--no-sync", "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "{out}");

    // Sender filter.
    let (out, _) = search(&alice, &["lunch", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 2, "{out}");
    let (out, _) = search(&alice, &["lunch", "--from", "bob", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 1, "{out}");
    assert!(out.contains("tomorrow") && !out.contains("noon"), "{out}");
    let (out, _) = search(&alice, &["lunch", "--from", "me", "-C", "0"]).await;
    assert!(out.contains("noon") && !out.contains("tomorrow"), "{out}");
    let (out, _) = search(
        &alice,
        &["lunch", "--in", "@bob", "--from", "@alice", "-C", "0"],
    )
    .await;
    assert_eq!(hits(&out).len(), 1, "{out}");

    // Date filters: RFC 3339 instants and UTC days.
    let cut = cut.format(&Rfc3339).expect("rfc3339");
    let (out, _) = search(&alice, &["ibis", "--since", &cut, "-C", "0"]).await;
    assert!(out.contains("late") && !out.contains("early"), "{out}");
    let (out, _) = search(&alice, &["ibis", "--until", &cut, "-C", "0"]).await;
    assert!(out.contains("early") && !out.contains("late"), "{out}");
    let today = OffsetDateTime::now_utc();
    let (out, _) = search(&alice, &["ibis", "--since", &utc_day(today), "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 2, "{out}");
    let tomorrow = utc_day(today + TimeDuration::days(1));
    let (out, _) = search(&alice, &["ibis", "--since", &tomorrow, "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "{out}");
    let (out, _) = search(&alice, &["ibis", "--until", "2000-01-01", "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "{out}");
    let bad = alice
        .output(&["search", "ibis", "--since", "yesterday"], "")
        .await;
    assert!(!bad.success && bad.stderr.contains("not a date"), "{bad:?}");

    // A hit with two messages before and after it, like grep -C 2.
    let (out, _) = search(&alice, &["giraffe", "--context", "2"]).await;
    let lines: Vec<&str> = out.lines().collect();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let hit = at("[giraffe]").unwrap_or_else(|| panic!("hit shown: {out}"));
    assert!(lines[hit].starts_with("> #"), "{out}");
    assert_eq!(at("ctx-03"), Some(hit - 2), "{out}");
    assert_eq!(at("ctx-04"), Some(hit - 1), "{out}");
    assert_eq!(at("ctx-06"), Some(hit + 1), "{out}");
    assert_eq!(at("ctx-07"), Some(hit + 2), "{out}");
    assert_eq!(at("ctx-02"), None, "{out}");
    assert_eq!(at("ctx-08"), None, "{out}");

    // A new message is not in the index until a search syncs; what is indexed is found by a
    // new process without any sync.
    say(&bob, "@alice", &["a fresh okapi"]).await;
    let (out, _) = search(&alice, &["okapi", "--no-sync", "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "--no-sync fetched nothing: {out}");
    let (out, _) = search(&alice, &[marker.as_str(), "--no-sync", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 1, "the index survived the process: {out}");
    let (out, _) = search(&alice, &["okapi", "-C", "0"]).await;
    assert_eq!(
        hits(&out).len(),
        1,
        "the sync picked up the new message: {out}"
    );

    // On disk: the index is encrypted (no SQLite header, no marker anywhere in the home).
    let search_dir = alice.home().join("search");
    let db = std::fs::read_dir(&search_dir)
        .expect("search dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "db"))
        .expect("index file");
    let bytes = std::fs::read(&db).expect("read index");
    assert!(bytes.len() > 4096, "the index holds pages: {}", bytes.len());
    assert!(
        !bytes.starts_with(b"SQLite format 3"),
        "the header is encrypted"
    );
    let found = files_containing(alice.home(), marker.as_bytes());
    assert!(found.is_empty(), "plaintext marker on disk: {found:?}");

    // Logout deletes the index and its key; a new login starts with an empty index.
    alice.run(&["logout"], "").await;
    let left: Vec<_> = std::fs::read_dir(&search_dir)
        .expect("search dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "index files left after logout: {left:?}");
    alice.run(&["login", "alice"], "").await;
    let (out, _) = search(&alice, &[marker.as_str(), "--no-sync", "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "{out}");
}

/// A second session of `name` over the SDK (the CLI has no command to remove a member).
async fn sdk_session(server: &TestServer, name: &str) -> (Connection, tern_sdk::HttpApi) {
    let mut http = server.http();
    let login = http.login(name, PASSWORD).await.expect("login");
    let conn = Connection::connect(
        &server.config(TransportPref::WebSocket),
        &login.token,
        DeviceId::random(),
        &[],
    )
    .await
    .expect("connect");
    (conn, http)
}

#[tokio::test]
async fn search_never_finds_what_the_user_may_not_read() {
    let bin = cli_binary();
    let server = TestServer::start().await;
    let alice = cli_user(&bin, &server, "alice").await;
    let bob = cli_user(&bin, &server, "bob").await;
    let carol = cli_user(&bin, &server, "carol").await;
    let dave = cli_user(&bin, &server, "dave").await;
    let group: ConversationId = carol
        .run(&["group", "ops", "--members", "alice,bob"], "")
        .await
        .trim()
        .parse()
        .expect("group id");
    alice.run(&["accept", "#ops"], "").await;
    bob.run(&["accept", "#ops"], "").await;
    dave.run(&["dm", "carol"], "").await;
    carol.run(&["accept", "@dave"], "").await;
    alice.run(&["history", "#ops"], "").await;
    bob.run(&["history", "#ops"], "").await;
    dave.run(&["history", "@carol"], "").await;

    say(&carol, "@dave", &["the platypus plans"]).await;
    say(&carol, "#ops", &["a walrus before the removal"]).await;
    let (out, _) = search(&alice, &["walrus", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 1, "a member finds it: {out}");
    let (out, _) = search(&alice, &["platypus", "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "not in that conversation: {out}");
    let (out, _) = search(&dave, &["platypus", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 1, "its member does: {out}");

    // Carol removes Alice, then writes again.
    let (conn, http) = sdk_session(&server, "carol").await;
    let alice_id = http.user_by_name("alice").await.expect("alice").user_id;
    let reply = conn
        .request(|request_id| ClientMessage::RemoveMember {
            request_id,
            conversation: group,
            user: alice_id,
        })
        .await
        .expect("remove alice");
    assert!(
        !matches!(reply, ServerMessage::Error { .. }),
        "removed: {reply:?}"
    );
    conn.close().await;
    say(&carol, "#ops", &["a narwhal after the removal"]).await;

    let (out, _) = search(&bob, &["narwhal", "-C", "0"]).await;
    assert_eq!(hits(&out).len(), 1, "a remaining member finds it: {out}");
    let (out, _) = search(&alice, &["narwhal", "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "sent after alice's removal: {out}");
    let (out, _) = search(&alice, &["walrus", "-C", "0"]).await;
    assert!(
        hits(&out).is_empty(),
        "a left conversation is dropped from the index: {out}"
    );
    let (out, _) = search(&alice, &["walrus", "--no-sync", "-C", "0"]).await;
    assert!(hits(&out).is_empty(), "{out}");
}
