//! Text matching across scripts, on a real index.

mod common;

use common::{dm, msg, open, TestIndex};

fn index_with(bodies: &[&str]) -> TestIndex {
    let t = open();
    t.put(
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| msg(dm(1, 2), i as u64 + 1, 2, 1_000 + i as u64, body))
            .collect(),
    );
    t
}

fn seqs(t: &TestIndex, text: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = t.found(text).into_iter().map(|(_, seq)| seq).collect();
    seqs.sort_unstable();
    seqs
}

#[test]
fn english_is_case_insensitive_and_ignores_punctuation() {
    let t = index_with(&["Hello, World!", "hello there", "goodbye"]);
    assert_eq!(seqs(&t, "hello"), [1, 2]);
    assert_eq!(seqs(&t, "WORLD"), [1]);
    assert_eq!(seqs(&t, "world!!!"), [1]);
    assert!(seqs(&t, "planet").is_empty());
}

#[test]
fn accents_fold() {
    let t = index_with(&["un café crème", "Straße", "naïve résumé"]);
    assert_eq!(seqs(&t, "cafe"), [1]);
    assert_eq!(seqs(&t, "CAFÉ"), [1]);
    assert_eq!(seqs(&t, "strasse"), [2]);
    assert_eq!(seqs(&t, "resume naive"), [3]);
}

#[test]
fn every_word_must_match() {
    let t = index_with(&["red apple", "green apple", "red car"]);
    assert_eq!(seqs(&t, "apple"), [1, 2]);
    assert_eq!(seqs(&t, "red apple"), [1]);
    assert_eq!(seqs(&t, "apple red"), [1]);
    assert!(seqs(&t, "red bike").is_empty());
}

#[test]
fn last_latin_word_matches_as_a_prefix() {
    let t = index_with(&["meeting tomorrow", "meet me", "tomography"]);
    assert_eq!(seqs(&t, "meet"), [1, 2]);
    assert_eq!(seqs(&t, "tomo"), [1, 3]);
    // Only the last word is a prefix; a trailing space ends it.
    assert!(seqs(&t, "tomo meeting").is_empty());
    assert_eq!(seqs(&t, "meet "), [2]);
}

#[test]
fn chinese_matches_bigrams_in_order() {
    let t = index_with(&["我们明天去北京开会", "北京烤鸭", "京北公司"]);
    assert_eq!(seqs(&t, "北京"), [1, 2]);
    assert_eq!(seqs(&t, "明天去"), [1]);
    assert_eq!(seqs(&t, "北京开会"), [1]);
    assert_eq!(seqs(&t, "京北"), [3]);
    assert!(seqs(&t, "去开会").is_empty());
    // The order of the characters matters.
    assert!(seqs(&t, "天明").is_empty());
}

#[test]
fn reversed_bigram_does_not_match() {
    let t = index_with(&["我们明天去北京开会"]);
    assert!(seqs(&t, "京北").is_empty());
}

#[test]
fn a_lone_cjk_character_matches_inside_runs() {
    let t = index_with(&["我们明天去北京开会", "猫", "一只猫", "猫咪"]);
    assert_eq!(seqs(&t, "京"), [1]);
    assert_eq!(seqs(&t, "猫"), [2, 3, 4]);
    assert!(seqs(&t, "狗").is_empty());
}

#[test]
fn japanese() {
    let t = index_with(&["東京で会議があります", "大阪に行きます"]);
    assert_eq!(seqs(&t, "会議"), [1]);
    assert_eq!(seqs(&t, "東京"), [1]);
    assert_eq!(seqs(&t, "行きます"), [2]);
    assert!(seqs(&t, "京都").is_empty());
}

#[test]
fn korean() {
    let t = index_with(&["안녕하세요 여러분", "감사합니다"]);
    assert_eq!(seqs(&t, "안녕"), [1]);
    assert_eq!(seqs(&t, "여러분"), [1]);
    assert!(seqs(&t, "안녕히").is_empty());
}

#[test]
fn mixed_scripts_split_at_the_change() {
    let t = index_with(&["Rust编程语言", "rustacean"]);
    assert_eq!(seqs(&t, "rust "), [1]);
    assert_eq!(seqs(&t, "编程"), [1]);
    assert_eq!(seqs(&t, "Rust编程"), [1]);
    assert_eq!(seqs(&t, "RUST 语言"), [1]);
}

#[test]
fn cyrillic_and_greek() {
    let t = index_with(&["Привет, мир", "Καλημέρα κόσμε"]);
    assert_eq!(seqs(&t, "ПРИВЕТ"), [1]);
    assert_eq!(seqs(&t, "καλημέρα"), [2]);
}
