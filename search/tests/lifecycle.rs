//! Replacing, deleting, checkpoints and clearing.

mod common;

use chat_search::{IndexOp, MessageIndex};
use chat_types::ids::Seq;
use common::{dm, group, msg, open};

#[test]
fn a_new_index_is_empty_at_checkpoint_zero() {
    let t = open();
    assert_eq!(t.index.checkpoint(), 0);
    assert_eq!(t.index.doc_count(), 0);
    assert!(t.found("anything").is_empty());
}

#[test]
fn applied_messages_are_searchable_at_once() {
    let t = open();
    t.index
        .apply(vec![msg(dm(1, 2), 1, 1, 10, "fresh message")], 7)
        .expect("apply");
    assert_eq!(t.found("fresh"), [("dm:1:2".to_string(), 1)]);
    assert_eq!(t.index.checkpoint(), 7);
    assert_eq!(t.index.doc_count(), 1);
}

#[test]
fn put_of_the_same_message_replaces_it() {
    let t = open();
    t.put(vec![msg(dm(1, 2), 1, 1, 10, "see you at noon")]);
    t.put(vec![msg(dm(1, 2), 1, 1, 10, "see you at midnight")]);
    assert!(t.found("noon").is_empty());
    assert_eq!(t.found("midnight"), [("dm:1:2".to_string(), 1)]);
    assert_eq!(t.index.doc_count(), 1);

    // Within one batch the later put wins too.
    t.put(vec![
        msg(dm(1, 2), 2, 1, 11, "first draft"),
        msg(dm(1, 2), 2, 1, 11, "second draft"),
    ]);
    assert!(t.found("first").is_empty());
    assert_eq!(t.found("draft"), [("dm:1:2".to_string(), 2)]);
    // The same seq in another conversation is another message.
    t.put(vec![msg(group(1), 2, 1, 12, "draft in a group")]);
    assert_eq!(t.found("draft").len(), 2);
}

#[test]
fn delete_and_delete_conversation() {
    let t = open();
    t.put(vec![
        msg(dm(1, 2), 1, 1, 10, "apple one"),
        msg(dm(1, 2), 2, 1, 11, "apple two"),
        msg(group(3), 1, 1, 12, "apple three"),
        msg(group(3), 2, 1, 13, "apple four"),
        msg(group(4), 1, 1, 14, "apple five"),
    ]);
    assert_eq!(t.found("apple").len(), 5);

    t.put(vec![IndexOp::Delete {
        conversation: dm(1, 2),
        seq: Seq(1),
    }]);
    let found = t.found("apple");
    assert_eq!(found.len(), 4);
    assert!(!found.contains(&("dm:1:2".to_string(), 1)));

    t.put(vec![IndexOp::DeleteConversation {
        conversation: group(3),
    }]);
    let mut found = t.found("apple");
    found.sort();
    assert_eq!(found, [("dm:1:2".to_string(), 2), ("g:4".to_string(), 1)]);
    assert_eq!(t.index.doc_count(), 2);

    // A delete before a put in the same batch does not remove the put.
    t.put(vec![
        IndexOp::DeleteConversation {
            conversation: group(4),
        },
        msg(group(4), 2, 1, 15, "apple six"),
    ]);
    assert_eq!(t.found("apple").len(), 2);
    assert_eq!(t.found("six").len(), 1);
}

#[test]
fn checkpoint_survives_reopening_and_empty_batches_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let index = MessageIndex::open(dir.path()).expect("open");
        index
            .apply(vec![msg(dm(1, 2), 1, 1, 10, "durable words")], 41)
            .expect("apply");
        index.apply(Vec::new(), 42).expect("empty apply");
        assert_eq!(index.checkpoint(), 42);
    }
    let index = MessageIndex::open(dir.path()).expect("reopen");
    assert_eq!(index.checkpoint(), 42);
    assert_eq!(index.doc_count(), 1);
    let hits = index
        .search(&common::query("durable", 2, &[]))
        .expect("search")
        .hits;
    assert_eq!(hits.len(), 1);
}

#[test]
fn clear_removes_everything_and_resets_the_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let index = MessageIndex::open(dir.path()).expect("open");
        index
            .apply(
                vec![
                    msg(dm(1, 2), 1, 1, 10, "old stuff"),
                    msg(group(1), 1, 1, 11, "old group stuff"),
                ],
                9,
            )
            .expect("apply");
        index.clear().expect("clear");
        assert_eq!(index.checkpoint(), 0);
        assert_eq!(index.doc_count(), 0);
        assert!(index
            .search(&common::query("stuff", 1, &[1]))
            .expect("search")
            .hits
            .is_empty());
        // Rebuilding works after a clear.
        index
            .apply(vec![msg(dm(1, 2), 1, 1, 10, "new stuff")], 3)
            .expect("apply after clear");
    }
    let index = MessageIndex::open(dir.path()).expect("reopen");
    assert_eq!(index.checkpoint(), 3);
    assert_eq!(index.doc_count(), 1);
}

#[test]
fn the_index_can_be_shared_between_threads() {
    let t = open();
    let index = std::sync::Arc::new(t.index);
    let writer = {
        let index = index.clone();
        std::thread::spawn(move || {
            for i in 1..=20u64 {
                index
                    .apply(vec![msg(dm(1, 2), i, 1, i, "threaded hello")], i)
                    .expect("apply");
            }
        })
    };
    let reader = {
        let index = index.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                index
                    .search(&common::query("hello", 1, &[]))
                    .expect("search");
            }
        })
    };
    writer.join().expect("writer thread");
    reader.join().expect("reader thread");
    let page = index
        .search(&common::query("threaded", 2, &[]))
        .expect("search");
    assert_eq!(page.hits.len(), 20);
    assert_eq!(index.checkpoint(), 20);
}
