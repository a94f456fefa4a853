//! Snippets and highlight offsets (in characters).

mod common;

use chat_search::SearchHit;
use common::{dm, msg, open, query};

fn one_hit(body: &str, text: &str) -> SearchHit {
    let t = open();
    t.put(vec![msg(dm(1, 2), 1, 1, 10, body)]);
    let mut hits = t.hits(&query(text, 1, &[]));
    assert_eq!(hits.len(), 1, "{text:?} should find {body:?}");
    hits.remove(0)
}

/// The highlighted parts of the snippet, by character offsets.
fn marked(hit: &SearchHit) -> Vec<String> {
    let chars: Vec<char> = hit.snippet.chars().collect();
    hit.highlights
        .iter()
        .map(|&(from, to)| chars[from..to].iter().collect())
        .collect()
}

#[test]
fn short_bodies_are_the_whole_snippet() {
    let hit = one_hit("Hello, World!", "world");
    assert_eq!(hit.snippet, "Hello, World!");
    assert_eq!(hit.highlights, [(7, 12)]);
    assert_eq!(hit.body, "Hello, World!");
}

#[test]
fn offsets_count_characters_not_bytes() {
    let hit = one_hit("🎉🎉 un café noir", "cafe noir");
    assert_eq!(marked(&hit), ["café", "noir"]);
    assert_eq!(hit.highlights, [(6, 10), (11, 15)]);
}

#[test]
fn cjk_highlights_cover_the_matched_characters() {
    let hit = one_hit("我们明天去北京开会", "北京");
    assert_eq!(hit.highlights, [(5, 7)]);
    assert_eq!(marked(&hit), ["北京"]);

    let hit = one_hit("我们明天去北京开会", "明天去");
    assert_eq!(marked(&hit), ["明天去"]);

    let hit = one_hit("東京で会議があります", "会議");
    assert_eq!(marked(&hit), ["会議"]);

    let hit = one_hit("一只猫", "猫");
    assert_eq!(marked(&hit).len(), 1);
    assert!(marked(&hit)[0].contains('猫'));
}

#[test]
fn prefix_matches_are_highlighted_whole() {
    let hit = one_hit("the meeting is at noon", "meet");
    assert_eq!(marked(&hit), ["meeting"]);
}

#[test]
fn long_bodies_get_a_window_around_the_match() {
    let body = format!(
        "{} the needle is here {}",
        "filler ".repeat(100),
        "tail ".repeat(100)
    );
    let hit = one_hit(&body, "needle");
    let len = hit.snippet.chars().count();
    assert!(
        len < body.chars().count() && len <= 170,
        "snippet of {len} chars"
    );
    assert_eq!(marked(&hit), ["needle"]);

    let cjk = format!("{}北京开会{}", "好".repeat(300), "的".repeat(300));
    let hit = one_hit(&cjk, "开会");
    assert!(hit.snippet.chars().count() <= 170);
    assert_eq!(marked(&hit), ["开会"]);
}

#[test]
fn long_multibyte_bodies_keep_offsets_on_the_match() {
    let body = format!("{}needle{}", "größe ".repeat(60), " über".repeat(60));
    let hit = one_hit(&body, "needle");
    let len = hit.snippet.chars().count();
    assert!(
        len < body.chars().count() && len <= 170,
        "snippet of {len} chars"
    );
    assert_eq!(marked(&hit), ["needle"]);
}
