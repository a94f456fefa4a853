//! Who may read what, and the filters.

mod common;

use chat_search::SearchQuery;
use chat_types::ids::UserId;
use common::{dm, group, msg, open, query};

fn seqs(hits: &[chat_search::SearchHit]) -> Vec<u64> {
    let mut s: Vec<u64> = hits.iter().map(|h| h.seq.0).collect();
    s.sort_unstable();
    s
}

#[test]
fn direct_messages_are_visible_to_their_two_members_only() {
    let t = open();
    t.put(vec![msg(dm(1, 2), 1, 1, 10, "secret plan")]);
    assert_eq!(t.hits(&query("secret", 1, &[])).len(), 1);
    assert_eq!(t.hits(&query("secret", 2, &[])).len(), 1);
    assert!(t.hits(&query("secret", 3, &[])).is_empty());
    // Listing a direct conversation as a "group" grants nothing.
    let mut sneaky = query("secret", 3, &[]);
    sneaky.groups = vec![dm(1, 2)];
    assert!(t.hits(&sneaky).is_empty());
    sneaky.conversation = Some(dm(1, 2));
    assert!(t.hits(&sneaky).is_empty());
}

#[test]
fn notes_to_self_are_visible_to_their_owner() {
    let t = open();
    t.put(vec![msg(dm(4, 4), 1, 4, 10, "my notes")]);
    assert_eq!(t.hits(&query("notes", 4, &[])).len(), 1);
    assert!(t.hits(&query("notes", 1, &[])).is_empty());
}

#[test]
fn group_messages_need_the_group_in_the_query() {
    let t = open();
    t.put(vec![
        msg(group(5), 1, 7, 10, "group news"),
        msg(group(6), 1, 7, 11, "other news"),
    ]);
    let hits = t.hits(&query("news", 9, &[5]));
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].conversation, group(5));
    assert!(t.hits(&query("news", 9, &[])).is_empty());
    assert!(
        t.hits(&query("news", 7, &[])).is_empty(),
        "the sender too needs the group"
    );
    assert_eq!(t.hits(&query("news", 9, &[5, 6])).len(), 2);
}

#[test]
fn filters_are_and_ed() {
    let t = open();
    t.put(vec![
        msg(dm(1, 2), 1, 1, 1_000, "lunch today"),
        msg(dm(1, 2), 2, 2, 2_000, "lunch tomorrow"),
        msg(group(3), 1, 2, 3_000, "lunch in the group"),
        msg(group(3), 2, 5, 4_000, "lunch again"),
        msg(dm(1, 5), 1, 5, 5_000, "lunch with five"),
    ]);
    let base = query("lunch", 1, &[3]);
    assert_eq!(t.hits(&base).len(), 5);

    let in_group = SearchQuery {
        conversation: Some(group(3)),
        ..base.clone()
    };
    assert_eq!(seqs(&t.hits(&in_group)), [1, 2]);

    let from_two = SearchQuery {
        sender: Some(UserId(2)),
        ..base.clone()
    };
    let hits = t.hits(&from_two);
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.sender == UserId(2)));

    let window = SearchQuery {
        from_ms: Some(2_000),
        to_ms: Some(4_000),
        ..base.clone()
    };
    let ts: Vec<u64> = t.hits(&window).iter().map(|h| h.ts_ms).collect();
    assert_eq!(
        ts,
        [3_000, 2_000],
        "from inclusive, to exclusive, newest first"
    );

    let since = SearchQuery {
        from_ms: Some(4_000),
        ..base.clone()
    };
    assert_eq!(t.hits(&since).len(), 2);

    let all = SearchQuery {
        conversation: Some(group(3)),
        sender: Some(UserId(2)),
        from_ms: Some(1),
        to_ms: Some(10_000),
        ..base.clone()
    };
    let hits = t.hits(&all);
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].conversation, hits[0].seq.0), (group(3), 1));

    let empty_window = SearchQuery {
        from_ms: Some(5_000),
        to_ms: Some(5_000),
        ..base
    };
    assert!(t.hits(&empty_window).is_empty());
}
