//! Queries from clients that try to break things.

mod common;

use chat_search::SearchError;
use common::{dm, group, msg, open, query};

#[test]
fn hostile_queries_never_fail_except_when_they_have_no_words() {
    let t = open();
    t.put(vec![
        msg(dm(1, 2), 1, 1, 10, "AND OR NOT field value body:secret"),
        msg(group(1), 1, 2, 11, "北京 hello *** world"),
    ]);
    let long_latin = "a".repeat(10_000);
    let long_cjk = "北".repeat(10_000);
    let long_words = "word ".repeat(2_000);
    let long_mixed: String = "ab北🎉,\"*: ".repeat(1_000);
    let searchable = [
        "AND OR NOT",
        "field:value",
        "body:secret",
        "title:(a OR b)^3",
        "a.*",
        "北.*",
        "(((((hello",
        "hello~2",
        "\"unterminated phrase",
        "\\u0000 \\\\ //",
        "-world +hello",
        "[1 TO 9]",
        "\u{202E}secret\u{202C}",
        long_latin.as_str(),
        long_cjk.as_str(),
        long_words.as_str(),
        long_mixed.as_str(),
    ];
    for text in searchable {
        let result = t.index.search(&query(text, 1, &[1]));
        assert!(
            result.is_ok(),
            "{:?}: {result:?}",
            &text[..text.len().min(40)]
        );
    }
    let no_words = [
        "",
        "   ",
        "***",
        "\"",
        "\"\"",
        "🎉🎉🎉",
        "👨‍👩‍👧‍👦",
        "\u{0}\u{1}\u{7f}",
        "\u{301}\u{301}",
        "— … · ·",
        "*:*",
    ];
    for text in no_words {
        match t.index.search(&query(text, 1, &[1])) {
            Err(e @ SearchError::BadQuery(_)) => assert_eq!(e.code(), "bad_query"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // Syntax is just words: "field:value" is the phrase "field value".
    assert_eq!(t.hits(&query("field:value", 1, &[])).len(), 1);
    assert_eq!(t.hits(&query("body:secret", 2, &[])).len(), 1);
    assert_eq!(t.hits(&query("AND OR NOT", 2, &[])).len(), 1);
    // Nothing widens access: user 3 reads neither conversation.
    assert!(t.hits(&query("hello world", 3, &[])).is_empty());
    assert!(t.hits(&query("secret", 3, &[])).is_empty());
}
