//! Merging pages of hits from several nodes into one page.

use std::collections::HashSet;

use crate::cursor::SearchCursor;
use crate::hit::{SearchHit, SearchPage};
use crate::query::MAX_LIMIT;

/// Merges the pages several nodes returned for the same query (same `before`, same `limit`)
/// into one page in the page order. Replicas return the same message: only the first copy
/// of each (conversation, seq) is kept. `next` is set when hits were cut or any node's page
/// was full (it may hold more). `limit` is clamped to `1..=MAX_LIMIT` like in a search.
pub fn merge_pages(pages: Vec<Vec<SearchHit>>, limit: usize) -> SearchPage {
    merge_filtered(pages, limit, |_, _| true)
}

/// [`merge_pages`] keeping only the hits `keep(page index, hit)` accepts (e.g. only the
/// answer of one node per conversation, so that a replica whose index lags cannot show an
/// edited message's old text next to a fresher node's answer).
///
/// A full page only vouches for hits down to its last one: a node may hold more beyond it
/// that `keep` would accept in place of the ones it rejected. So the merged page stops at the
/// newest "last hit" of the full pages, and `next` continues from there.
pub fn merge_filtered(
    pages: Vec<Vec<SearchHit>>,
    limit: usize,
    mut keep: impl FnMut(usize, &SearchHit) -> bool,
) -> SearchPage {
    let limit = limit.clamp(1, MAX_LIMIT);
    // Where the full pages stop vouching: the smallest of their last keys in page order.
    let boundary = pages
        .iter()
        .filter(|page| page.len() >= limit)
        .filter_map(|page| page.last().map(SearchHit::order_key))
        .min();
    let mut all: Vec<SearchHit> = Vec::new();
    for (i, page) in pages.into_iter().enumerate() {
        all.extend(page.into_iter().filter(|hit| keep(i, hit)));
    }
    // Stable: among equal keys (copies of one message) the earlier page stays first.
    all.sort_by_cached_key(SearchHit::order_key);
    let mut seen = HashSet::new();
    all.retain(|hit| seen.insert((hit.conversation, hit.seq)));
    if let Some(b) = &boundary {
        all.retain(|hit| hit.order_key() <= *b);
    }
    let cut = all.len() > limit;
    all.truncate(limit);
    let next = if cut || boundary.is_some() {
        all.last().map(SearchCursor::of)
    } else {
        None
    };
    SearchPage { hits: all, next }
}

#[cfg(test)]
mod tests {
    use chat_types::ids::{ConversationId, GroupId, Seq, UserId};

    use super::*;

    fn hit(ts_ms: u64, group: u64, seq: u64, body: &str) -> SearchHit {
        SearchHit {
            conversation: ConversationId::group(GroupId(group)),
            seq: Seq(seq),
            sender: UserId(1),
            ts_ms,
            body: body.to_string(),
            snippet: body.to_string(),
            highlights: Vec::new(),
        }
    }

    fn keys(page: &SearchPage) -> Vec<(u64, u64, u64)> {
        page.hits
            .iter()
            .map(|h| {
                (
                    h.ts_ms,
                    h.conversation.group_id().map_or(0, |g| g.0),
                    h.seq.0,
                )
            })
            .collect()
    }

    #[test]
    fn a_filtered_full_page_only_vouches_down_to_its_last_hit() {
        // Node 0's page is full (limit 3) but only group 1 is its to give; node 1 answers
        // for group 2 and returned everything it has. Node 0 may hold more of group 1 below
        // ts 70, so the merged page stops there and continues from it.
        let pages = || {
            vec![
                vec![hit(90, 1, 9, "a"), hit(80, 2, 8, "a"), hit(70, 2, 7, "a")],
                vec![hit(80, 2, 8, "b"), hit(70, 2, 7, "b"), hit(60, 2, 6, "b")],
            ]
        };
        let page = merge_filtered(pages(), 3, |i, h| {
            let group = h.conversation.group_id().map_or(0, |g| g.0);
            (i == 0 && group == 1) || (i == 1 && group == 2)
        });
        assert_eq!(keys(&page), [(90, 1, 9), (80, 2, 8), (70, 2, 7)]);
        assert_eq!(page.hits[1].body, "b", "group 2 comes from node 1");
        assert_eq!(page.next.expect("more may follow").ts_ms, 70);
        // Node 1's page is not full here: node 0's (full) page is the boundary.
        let pages = vec![
            vec![hit(90, 1, 9, "a"), hit(80, 2, 8, "a"), hit(70, 2, 7, "a")],
            vec![hit(80, 2, 8, "b"), hit(60, 2, 6, "b")],
        ];
        let page = merge_filtered(pages, 3, |i, h| {
            let group = h.conversation.group_id().map_or(0, |g| g.0);
            (i == 0 && group == 1) || (i == 1 && group == 2)
        });
        assert_eq!(keys(&page), [(90, 1, 9), (80, 2, 8)], "nothing past ts 70");
        assert_eq!(page.next.expect("more may follow").ts_ms, 80);
    }

    #[test]
    fn merges_in_page_order() {
        let a = vec![hit(30, 1, 3, "a"), hit(10, 1, 1, "a")];
        let b = vec![hit(20, 2, 9, "b"), hit(10, 2, 5, "b"), hit(10, 10, 4, "b")];
        let page = merge_pages(vec![a, b], 10);
        // ts desc; at ts 10: "g:1" < "g:10" < "g:2" as strings.
        assert_eq!(
            keys(&page),
            [(30, 1, 3), (20, 2, 9), (10, 1, 1), (10, 10, 4), (10, 2, 5)]
        );
        assert_eq!(page.next, None);
    }

    #[test]
    fn seq_breaks_ties_descending() {
        let page = merge_pages(vec![vec![hit(5, 1, 1, "x")], vec![hit(5, 1, 2, "y")]], 10);
        assert_eq!(keys(&page), [(5, 1, 2), (5, 1, 1)]);
    }

    #[test]
    fn drops_replica_copies_keeping_the_first() {
        let a = vec![hit(30, 1, 3, "first"), hit(20, 1, 2, "first")];
        let b = vec![hit(30, 1, 3, "second"), hit(25, 2, 1, "second")];
        let page = merge_pages(vec![a, b], 10);
        assert_eq!(keys(&page), [(30, 1, 3), (25, 2, 1), (20, 1, 2)]);
        assert_eq!(page.hits[0].body, "first");
        assert_eq!(page.next, None);
    }

    #[test]
    fn truncates_and_points_next_at_the_last_kept_hit() {
        let a = vec![hit(9, 1, 9, "a"), hit(7, 1, 7, "a")];
        let b = vec![hit(8, 2, 8, "b"), hit(6, 2, 6, "b")];
        let page = merge_pages(vec![a, b], 3);
        assert_eq!(keys(&page), [(9, 1, 9), (8, 2, 8), (7, 1, 7)]);
        assert_eq!(page.next, Some(SearchCursor::of(&page.hits[2])));
    }

    #[test]
    fn a_full_page_means_more_may_follow() {
        let a = vec![hit(9, 1, 9, "a"), hit(7, 1, 7, "a")];
        let page = merge_pages(vec![a, Vec::new()], 2);
        assert_eq!(page.hits.len(), 2);
        assert_eq!(page.next, Some(SearchCursor::of(&page.hits[1])));

        // Full only because of duplicates still counts: that node may hold more.
        let a = vec![hit(9, 1, 9, "a"), hit(7, 1, 7, "a")];
        let b = vec![hit(9, 1, 9, "b")];
        let page = merge_pages(vec![a, b], 2);
        assert!(page.next.is_some());
    }

    #[test]
    fn empty_pages_merge_to_nothing() {
        let page = merge_pages(vec![Vec::new(), Vec::new()], 5);
        assert!(page.hits.is_empty());
        assert_eq!(page.next, None);
        assert_eq!(merge_pages(Vec::new(), 0), SearchPage::default());
    }
}
