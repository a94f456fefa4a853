//! Ranking people (by username and display name) and conversation/group names. No index: the
//! caller passes the in-memory candidates; ranking is case-insensitive and ASCII-folded.

use chat_types::ids::UserId;
use serde::{Deserialize, Serialize};

use crate::distance::{self, Scratch};
use crate::fold::fold_into;
use crate::tokenizer::is_cjk;

/// A person as the directory knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
}

/// The folded query and what may be done with it.
struct Needle {
    chars: Vec<char>,
    has_cjk: bool,
    /// Largest edit distance still counted as a typo match; 0 turns typo matching off.
    max_typos: usize,
}

impl Needle {
    fn new(query: &str) -> Option<Needle> {
        let trimmed = query.trim();
        let trimmed = trimmed.strip_prefix('@').unwrap_or(trimmed);
        let mut chars = Vec::new();
        fold_into(trimmed, &mut chars);
        if chars.is_empty() {
            return None;
        }
        let has_cjk = chars.iter().any(|&c| is_cjk(c));
        let max_typos = match chars.len() {
            _ if has_cjk => 0,
            0..=2 => 0,
            3..=5 => 1,
            _ => 2,
        };
        Some(Needle {
            chars,
            has_cjk,
            max_typos,
        })
    }

    /// Within the typo bound of `target` as a whole or of its prefix of the query's length.
    fn typo_of(&self, target: &[char], scratch: &mut Scratch) -> bool {
        let q = &self.chars[..];
        if distance::within(q, target, self.max_typos, scratch).is_some() {
            return true;
        }
        target.len() > q.len()
            && distance::within(q, &target[..q.len()], self.max_typos, scratch).is_some()
    }
}

/// The words of a folded text: maximal runs of letters and digits.
fn words(text: &[char]) -> impl Iterator<Item = &[char]> {
    text.split(|c| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

fn contains(haystack: &[char], needle: &[char]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Tiers of [`rank_people`]; smaller is better.
const EXACT_USERNAME: u8 = 0;
const USERNAME_PREFIX: u8 = 1;
const DISPLAY_NAME_PREFIX: u8 = 2;
const DISPLAY_NAME_CJK_SUBSTRING: u8 = 3;
const TYPO: u8 = 4;

/// Folding buffers reused across candidates.
#[derive(Default)]
struct Buffers {
    a: Vec<char>,
    b: Vec<char>,
    scratch: Scratch,
}

fn person_tier(q: &Needle, person: &Person, buf: &mut Buffers) -> Option<u8> {
    let needle = &q.chars[..];
    buf.a.clear();
    fold_into(&person.username, &mut buf.a);
    let user = &buf.a[..];
    if user == needle {
        return Some(EXACT_USERNAME);
    }
    if user.starts_with(needle) {
        return Some(USERNAME_PREFIX);
    }
    buf.b.clear();
    fold_into(&person.display_name, &mut buf.b);
    let name = &buf.b[..];
    if name.starts_with(needle) || words(name).any(|w| w.starts_with(needle)) {
        return Some(DISPLAY_NAME_PREFIX);
    }
    if q.has_cjk && contains(name, needle) {
        return Some(DISPLAY_NAME_CJK_SUBSTRING);
    }
    if q.max_typos > 0 {
        let scratch = &mut buf.scratch;
        if q.typo_of(user, scratch)
            || words(name).any(|w| q.typo_of(w, scratch))
            || (needle.contains(&' ') && q.typo_of(name, scratch))
        {
            return Some(TYPO);
        }
    }
    None
}

/// The best `limit` people for `query`, best first.
///
/// Tiers: exact username, then username prefix, then display-name (or any of its words)
/// prefix, then (for CJK queries) display-name substring, then typos (Damerau–Levenshtein
/// distance ≤ 1 for queries of 3–5 characters, ≤ 2 for 6+, against the username, each
/// display-name word and their prefixes of the query's length). Ties go to the smaller user id.
/// A leading `@` is ignored; a blank query matches nobody.
pub fn rank_people<'a>(
    query: &str,
    people: impl IntoIterator<Item = &'a Person>,
    limit: usize,
) -> Vec<Person> {
    let Some(q) = Needle::new(query) else {
        return Vec::new();
    };
    if limit == 0 {
        return Vec::new();
    }
    let mut buf = Buffers::default();
    let mut found: Vec<(u8, UserId, &Person)> = people
        .into_iter()
        .filter_map(|p| person_tier(&q, p, &mut buf).map(|tier| (tier, p.user_id, p)))
        .collect();
    found.sort_unstable_by_key(|&(tier, id, _)| (tier, id));
    found.truncate(limit);
    found.into_iter().map(|(_, _, p)| p.clone()).collect()
}

/// Tiers of [`rank_names`]; smaller is better.
const NAME_EXACT: u8 = 0;
const NAME_PREFIX: u8 = 1;
const NAME_WORD_PREFIX: u8 = 2;
const NAME_SUBSTRING: u8 = 3;
const NAME_TYPO: u8 = 4;

fn name_tier(q: &Needle, name: &[char], scratch: &mut Scratch) -> Option<u8> {
    let needle = &q.chars[..];
    if name == needle {
        Some(NAME_EXACT)
    } else if name.starts_with(needle) {
        Some(NAME_PREFIX)
    } else if words(name).any(|w| w.starts_with(needle)) {
        Some(NAME_WORD_PREFIX)
    } else if contains(name, needle) {
        Some(NAME_SUBSTRING)
    } else if q.max_typos > 0
        && (q.typo_of(name, scratch) || words(name).any(|w| q.typo_of(w, scratch)))
    {
        Some(NAME_TYPO)
    } else {
        None
    }
}

/// The best `limit` items for `query` by their names (conversation or group names), best
/// first: exact, then prefix, then prefix of any word, then substring, then typos (as in
/// [`rank_people`]). Ties keep the input order, so pass the most relevant (e.g. most recent)
/// first. A blank query matches nothing.
pub fn rank_names<'a, T: Clone + 'a>(
    query: &str,
    items: impl IntoIterator<Item = (&'a T, &'a str)>,
    limit: usize,
) -> Vec<T> {
    let Some(q) = Needle::new(query) else {
        return Vec::new();
    };
    if limit == 0 {
        return Vec::new();
    }
    let mut name = Vec::new();
    let mut scratch = Scratch::default();
    let mut found: Vec<(u8, usize, &T)> = Vec::new();
    for (i, (item, raw)) in items.into_iter().enumerate() {
        name.clear();
        fold_into(raw, &mut name);
        if let Some(tier) = name_tier(&q, &name, &mut scratch) {
            found.push((tier, i, item));
        }
    }
    found.sort_unstable_by_key(|&(tier, i, _)| (tier, i));
    found.truncate(limit);
    found.into_iter().map(|(_, _, item)| item.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: u64, username: &str, display_name: &str) -> Person {
        Person {
            user_id: UserId(id),
            username: username.to_string(),
            display_name: display_name.to_string(),
        }
    }

    fn ids(found: &[Person]) -> Vec<u64> {
        found.iter().map(|p| p.user_id.0).collect()
    }

    fn sample() -> Vec<Person> {
        vec![
            person(1, "alicewonder", "Wonder Woman"),
            person(2, "alice", "Alice Liddell"),
            person(3, "bob", "Alice Cooper"),
            person(4, "carol", "Carol Danvers"),
            person(5, "zoe", "Zoë Ångström"),
            person(6, "wang", "王小明"),
            person(7, "malice", "Mal"),
            person(8, "Alice2", "Someone"),
        ]
    }

    #[test]
    fn tiers_exact_then_username_prefix_then_display_name() {
        let people = sample();
        let got = rank_people("alice", &people, 10);
        // exact (2), username prefixes by id (1, 8), display-name word (3), typo ("malice").
        assert_eq!(ids(&got), [2, 1, 8, 3, 7]);
        assert_eq!(ids(&rank_people("ALICE", &people, 2)), [2, 1]);
        assert_eq!(ids(&rank_people("@alice", &people, 1)), [2]);
    }

    #[test]
    fn display_name_words_and_folding() {
        let people = sample();
        assert_eq!(ids(&rank_people("cooper", &people, 10)), [3]);
        assert_eq!(ids(&rank_people("angstrom", &people, 10)), [5]);
        assert_eq!(ids(&rank_people("Zoe", &people, 10)), [5]);
        assert_eq!(ids(&rank_people("alice cooper", &people, 10)), [3]);
    }

    #[test]
    fn typos_are_tolerated_by_length() {
        let people = sample();
        // The username, a display-name word, or a username prefix of the query's length.
        assert_eq!(ids(&rank_people("alcie", &people, 10)), [1, 2, 3, 8]);
        assert_eq!(ids(&rank_people("cooprr", &people, 10)), [3]);
        // Too short for typos.
        assert!(rank_people("bb", &people, 10).is_empty());
        assert_eq!(ids(&rank_people("caorl", &people, 10)), [4]);
        // Two edits on a 5-char query is too many.
        assert!(rank_people("cxxol", &people, 10).is_empty());
    }

    #[test]
    fn cjk_display_names_match_by_substring() {
        let people = sample();
        assert_eq!(ids(&rank_people("小明", &people, 10)), [6]);
        assert_eq!(ids(&rank_people("王", &people, 10)), [6]);
        assert!(rank_people("小红", &people, 10).is_empty());
    }

    #[test]
    fn blank_queries_and_zero_limits_match_nobody() {
        let people = sample();
        assert!(rank_people("", &people, 10).is_empty());
        assert!(rank_people("   ", &people, 10).is_empty());
        assert!(rank_people("@", &people, 10).is_empty());
        assert!(rank_people("alice", &people, 0).is_empty());
    }

    #[test]
    fn a_hundred_thousand_people() {
        let mut people: Vec<Person> = (1..=100_000u64)
            .map(|i| person(i, &format!("user{i:06}"), &format!("Person Number{i}")))
            .collect();
        people.push(person(200_000, "alice", "Alice Liddell"));
        people.push(person(200_001, "alicia", "Alicia Keys"));
        people.push(person(200_002, "xavier", "Professor Alice"));

        assert_eq!(
            ids(&rank_people("alice", &people, 5)),
            [200_000, 200_002, 200_001]
        );
        assert_eq!(ids(&rank_people("alcie", &people, 5)), [200_000, 200_002]);
        assert_eq!(ids(&rank_people("user042000", &people, 1)), [42_000]);
        assert_eq!(
            ids(&rank_people("user04200", &people, 3)),
            [42_000, 42_001, 42_002]
        );
        assert_eq!(ids(&rank_people("number99999", &people, 1)), [99_999]);
        // Typo tier, ties by id: "number9999" (one deletion) comes before "number99998".
        let typos = rank_people("numbr99999", &people, 3);
        assert_eq!(ids(&typos), [9_999, 19_999, 29_999]);
        assert_eq!(rank_people("person", &people, 20).len(), 20);
    }

    #[test]
    fn names_rank_exact_prefix_word_substring_typo() {
        let items = [
            (10u32, "Project Rust".to_string()),
            (11, "rustaceans".to_string()),
            (12, "Trust fund".to_string()),
            (13, "Rust".to_string()),
            (14, "Rusty Nails".to_string()),
            (15, "Cooking".to_string()),
            (16, "Rsut club".to_string()),
        ];
        let refs = items.iter().map(|(id, name)| (id, name.as_str()));
        let got = rank_names("rust", refs, 10);
        assert_eq!(got, [13, 11, 14, 10, 12, 16]);

        let refs = items.iter().map(|(id, name)| (id, name.as_str()));
        assert_eq!(rank_names("COOK", refs, 10), [15]);
        let refs = items.iter().map(|(id, name)| (id, name.as_str()));
        assert!(rank_names(" ", refs, 10).is_empty());

        let cjk = [(1u8, "北京开会群"), (2, "上海")];
        let refs = cjk.iter().map(|(id, name)| (id, *name));
        assert_eq!(rank_names("开会", refs, 10), [1]);
    }
}
