//! The facade as the worker drives it, natively (same code as in the browser, minus OPFS): JSON
//! in and out, limits, the backfill loop from the planner's request to the stored checkpoint.

use serde_json::{Value, json};
use tern_search_wasm::SearchIndex;

const CONV: &str = "0190e0a0-0000-7000-8000-000000000001";
const OTHER: &str = "0190e0a0-0000-7000-8000-000000000002";
const ALICE: &str = "0190e0a0-0000-7000-8000-0000000000a1";

fn msg(conversation: &str, seq: u64, text: &str) -> Value {
    json!({
        "conversation": conversation, "seq": seq, "sender": ALICE, "sender_name": "alice",
        "sent_at_ms": 1_700_000_000_000u64 + seq, "text": text,
    })
}

fn search(index: &SearchIndex, text: &str) -> Vec<Value> {
    let q = json!({ "text": text, "limit": 10 }).to_string();
    serde_json::from_str(&index.search(&q).expect("search")).expect("hits json")
}

#[test]
fn add_search_remove_round_trip_in_json() {
    let mut index = SearchIndex::open_in_memory().expect("open");
    let batch = json!([
        msg(CONV, 1, "Rendez-vous au Café de Flore"),
        msg(CONV, 2, "東京タワーで会いましょう"),
        msg(OTHER, 1, "another café"),
    ]);
    index.add(&batch.to_string()).expect("add");
    assert_eq!(index.count().expect("count"), 3.0);

    let hits = search(&index, "caf");
    assert_eq!(hits.len(), 2);
    let first = &hits[0];
    assert!(
        first["snippet"]
            .as_array()
            .expect("parts")
            .iter()
            .any(|p| p["highlight"] == true)
    );
    assert_eq!(search(&index, "東京").len(), 1);

    let filtered = json!({ "text": "cafe", "conversation": OTHER, "limit": 10 }).to_string();
    let only: Vec<Value> =
        serde_json::from_str(&index.search(&filtered).expect("search")).expect("json");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["conversation"], OTHER);

    assert_eq!(index.remove_conversation(CONV).expect("remove"), 2.0);
    assert_eq!(search(&index, "東京").len(), 0);
    assert_eq!(index.count().expect("count"), 1.0);
}

#[test]
fn malformed_input_is_an_error_that_does_not_quote_it() {
    let mut index = SearchIndex::open_in_memory().expect("open");
    let bad = json!([{ "conversation": CONV, "seq": "secret words", "text": "x" }]).to_string();
    let e = index.add(&bad).expect_err("refused");
    assert!(e.0.starts_with("invalid messages"), "{}", e.0);
    assert!(
        !e.0.contains("secret"),
        "the error quotes the input: {}",
        e.0
    );
    assert!(index.search("{").is_err());
    assert!(index.remove_conversation("not-a-uuid").is_err());
    assert!(index.backfill_failed(CONV, -1.0).is_err());
    assert!(SearchIndex::open(":memory:", &[0u8; 31]).is_err());
}

#[test]
fn backfill_walks_down_to_the_first_message_and_stops() {
    let mut index = SearchIndex::open_in_memory().expect("open");
    let convs = json!([{ "conversation": CONV, "newest_seq": 150 }]).to_string();
    let mut pages = 0;
    while let Some(request) = index.backfill_next(&convs).expect("next") {
        let request: Value = serde_json::from_str(&request).expect("request json");
        assert_eq!(request["conversation"], CONV);
        let before = request["before_seq"].as_u64().expect("before");
        let limit = request["limit"].as_u64().expect("limit");
        let lo = before.saturating_sub(limit).max(1);
        let messages: Vec<Value> = (lo..before)
            .map(|s| msg(CONV, s, &format!("page word{s}")))
            .collect();
        let page = json!({
            "conversation": CONV, "before_seq": before, "lowest_seq": lo,
            "has_more": lo > 1, "messages": messages,
        });
        index.backfill_page(&page.to_string()).expect("page");
        pages += 1;
        assert!(pages <= 3, "the walk does not end");
    }
    assert_eq!(pages, 2);
    assert_eq!(index.count().expect("count"), 150.0);
    // A trailing space: the word exactly (no prefix: word10.. would match too).
    assert_eq!(search(&index, "word1 ").len(), 1);
    // A page nobody asked for is refused.
    let stray = json!({ "conversation": CONV, "before_seq": 7, "lowest_seq": 1, "has_more": false, "messages": [] });
    assert!(index.backfill_page(&stray.to_string()).is_err());
}

#[test]
fn a_failed_page_is_asked_for_again() {
    let mut index = SearchIndex::open_in_memory().expect("open");
    let convs = json!([{ "conversation": CONV, "newest_seq": 10 }]).to_string();
    let first = index.backfill_next(&convs).expect("next").expect("a page");
    // In flight: nothing more until it is answered or failed.
    assert!(index.backfill_next(&convs).expect("next").is_none());
    let before = serde_json::from_str::<Value>(&first).expect("json")["before_seq"]
        .as_f64()
        .expect("seq");
    index.backfill_failed(CONV, before).expect("failed");
    assert_eq!(index.backfill_next(&convs).expect("next"), Some(first));
}
