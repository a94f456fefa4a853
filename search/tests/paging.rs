//! Page order and cursors.

mod common;

use std::collections::HashSet;

use chat_search::{SearchCursor, SearchError, SearchHit, SearchQuery};
use common::{dm, group, msg, open, query};

/// The documented order: ts_ms desc, conversation (string) asc, seq desc.
fn in_order(a: &SearchHit, b: &SearchHit) -> bool {
    let ka = (
        std::cmp::Reverse(a.ts_ms),
        a.conversation.to_string(),
        std::cmp::Reverse(a.seq),
    );
    let kb = (
        std::cmp::Reverse(b.ts_ms),
        b.conversation.to_string(),
        std::cmp::Reverse(b.seq),
    );
    ka < kb
}

#[test]
fn paging_250_hits_by_40_returns_each_once_newest_first() {
    let t = open();
    let conversations = [dm(1, 2), dm(1, 3), group(1), group(10), group(2)];
    let mut next_seq = [0u64; 5];
    let mut expected = HashSet::new();
    // Five commits (several segments), heavy timestamp ties, noise that must not match or
    // that user 1 may not read.
    for batch in 0..5u64 {
        let mut ops = Vec::new();
        for i in 0..50u64 {
            let n = batch * 50 + i;
            let c = (n * 7 % 5) as usize;
            next_seq[c] += 1;
            let ts = 1_000 + n / 9;
            ops.push(msg(
                conversations[c],
                next_seq[c],
                1,
                ts,
                &format!("report number {n}"),
            ));
            expected.insert((conversations[c].to_string(), next_seq[c]));
            ops.push(msg(
                conversations[c],
                10_000 + n,
                1,
                ts,
                "unrelated chatter",
            ));
            ops.push(msg(dm(2, 3), n + 1, 2, ts, "report for others"));
        }
        t.put(ops);
    }
    assert_eq!(expected.len(), 250);

    let mut q = query("report", 1, &[1, 2, 10]);
    q.limit = 40;
    let mut all: Vec<SearchHit> = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = t.index.search(&q).expect("search");
        sizes.push(page.hits.len());
        all.extend(page.hits);
        match page.next {
            Some(cursor) => {
                // Cursors survive their text form.
                let text = cursor.encode();
                q.before = Some(SearchCursor::parse(&text).expect("parse cursor"));
            }
            None => break,
        }
        assert!(sizes.len() < 20, "paging does not end");
    }
    assert_eq!(sizes, [40, 40, 40, 40, 40, 40, 10]);
    let got: HashSet<(String, u64)> = all
        .iter()
        .map(|h| (h.conversation.to_string(), h.seq.0))
        .collect();
    assert_eq!(got.len(), 250, "no duplicates");
    assert_eq!(got, expected);
    assert!(all.windows(2).all(|w| in_order(&w[0], &w[1])));
}

#[test]
fn a_page_that_ends_exactly_has_no_next() {
    let t = open();
    t.put(
        (1..=3)
            .map(|i| msg(group(1), i, 1, i, "exact fit"))
            .collect(),
    );
    let mut q = query("fit", 1, &[1]);
    q.limit = 3;
    let page = t.index.search(&q).expect("search");
    assert_eq!(page.hits.len(), 3);
    assert_eq!(page.next, None);
    q.limit = 2;
    let page = t.index.search(&q).expect("search");
    assert_eq!(page.next, Some(SearchCursor::of(&page.hits[1])));
}

#[test]
fn limit_is_clamped() {
    let t = open();
    t.put(
        (1..=150)
            .map(|i| msg(group(1), i, 1, i, "many many"))
            .collect(),
    );
    let mut q = query("many", 1, &[1]);
    q.limit = 0;
    assert_eq!(t.hits(&q).len(), 1);
    q.limit = 1_000_000;
    assert_eq!(t.hits(&q).len(), 100);
}

#[test]
fn cursor_from_the_future_or_past_is_harmless() {
    let t = open();
    t.put(vec![msg(group(1), 1, 1, 50, "hello")]);
    let mut q: SearchQuery = query("hello", 1, &[1]);
    q.before = Some(SearchCursor {
        ts_ms: u64::MAX,
        conversation: group(1),
        seq: chat_types::ids::Seq(0),
    });
    assert_eq!(t.hits(&q).len(), 1);
    q.before = Some(SearchCursor {
        ts_ms: 0,
        conversation: dm(1, 2),
        seq: chat_types::ids::Seq(u64::MAX),
    });
    assert!(t.hits(&q).is_empty());
}

#[test]
fn bad_cursors_are_refused() {
    for bad in [
        "",
        "abc",
        "1.2",
        "1.2.g:0",
        "1.2.dm:9:3",
        "-1.2.g:7",
        "1.2.g:7;drop",
        "🎉.1.g:7",
        "99999999999999999999.1.g:7",
    ] {
        let err = SearchCursor::parse(bad).expect_err(bad);
        assert_eq!(err, SearchError::BadCursor);
        assert_eq!(err.code(), "bad_cursor");
    }
}
