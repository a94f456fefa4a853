//! What a client may ask ([`SearchQuery`]) and its translation into a tantivy query.
//!
//! The query text never reaches tantivy's query parser: it is split on whitespace and each
//! word is tokenized with the index's own tokenizer, so no text can inject query syntax.

use std::ops::Bound;

use chat_types::ids::{ConversationId, UserId};
use tantivy::query::{
    BooleanQuery, Occur, PhraseQuery, Query, RangeQuery, RegexQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TokenStream;
use tantivy::Term;

use crate::cursor::SearchCursor;
use crate::error::SearchError;
use crate::schema::Fields;
use crate::tokenizer::{chat_analyzer, is_cjk};

/// Most hits one page returns; `limit` is clamped to `1..=MAX_LIMIT`.
pub const MAX_LIMIT: usize = 100;
/// Words of the query text beyond this many are ignored.
const MAX_WORDS: usize = 32;
/// Tokens of one word beyond this many are ignored (a very long CJK run).
const MAX_TOKENS_PER_WORD: usize = 32;
/// The last word is also matched as a prefix from this many characters on.
const MIN_PREFIX_LEN: usize = 2;

/// A message search on one node's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    /// Free text: every whitespace-separated word must match.
    pub text: String,
    /// Who is searching: direct conversations are visible to their two members.
    pub reader: UserId,
    /// The group conversations the reader may read (decided by the caller). Direct
    /// conversations listed here are ignored.
    pub groups: Vec<ConversationId>,
    /// Only this conversation.
    pub conversation: Option<ConversationId>,
    /// Only messages from this sender.
    pub sender: Option<UserId>,
    /// Only messages with `ts_ms >= from_ms`.
    pub from_ms: Option<u64>,
    /// Only messages with `ts_ms < to_ms` (exclusive).
    pub to_ms: Option<u64>,
    /// Only hits after this cursor in the page order (exclusive); `None` for the first page.
    pub before: Option<SearchCursor>,
    /// Hits per page, clamped to `1..=MAX_LIMIT`.
    pub limit: usize,
}

impl SearchQuery {
    /// A first-page query for `text` by `reader` with no filters and `MAX_LIMIT` hits.
    pub fn new(text: impl Into<String>, reader: UserId) -> SearchQuery {
        SearchQuery {
            text: text.into(),
            reader,
            groups: Vec::new(),
            conversation: None,
            sender: None,
            from_ms: None,
            to_ms: None,
            before: None,
            limit: MAX_LIMIT,
        }
    }

    pub(crate) fn clamped_limit(&self) -> usize {
        self.limit.clamp(1, MAX_LIMIT)
    }
}

/// One word of the query text, after tokenization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Word {
    /// One token.
    Exact(String),
    /// Several adjacent tokens (CJK bigrams, or "e-mail" → e, mail).
    Phrase(Vec<String>),
    /// The last word of a Latin query, also matched as a prefix (search as you type).
    Prefix(String),
    /// A lone CJK character: matches it anywhere in a CJK run (inside bigrams too).
    CjkChar(String),
}

/// Splits and tokenizes the query text. No token at all is [`SearchError::BadQuery`].
pub(crate) fn parse_text(text: &str) -> Result<Vec<Word>, SearchError> {
    let mut analyzer = chat_analyzer();
    let mut words: Vec<Word> = Vec::new();
    let mut raw_words = text.split_whitespace().peekable();
    let mut last_is_prefixable = false;
    while let Some(raw) = raw_words.next() {
        if words.len() >= MAX_WORDS {
            last_is_prefixable = false;
            break;
        }
        let mut tokens = Vec::new();
        let mut stream = analyzer.token_stream(raw);
        while tokens.len() < MAX_TOKENS_PER_WORD && stream.advance() {
            tokens.push(stream.token().text.clone());
        }
        let word = match tokens.len() {
            0 => continue,
            1 => {
                let token = tokens.remove(0);
                let mut chars = token.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if is_cjk(c) => Word::CjkChar(token),
                    _ => Word::Exact(token),
                }
            }
            _ => Word::Phrase(tokens),
        };
        let is_new = !words.contains(&word);
        last_is_prefixable = is_new
            && raw_words.peek().is_none()
            && matches!(&word, Word::Exact(t)
                if t.len() >= MIN_PREFIX_LEN && t.bytes().all(|b| b.is_ascii_alphanumeric()));
        if is_new {
            words.push(word);
        }
    }
    if last_is_prefixable && !text.ends_with(char::is_whitespace) {
        if let Some(Word::Exact(t)) = words.pop() {
            words.push(Word::Prefix(t));
        }
    }
    if words.is_empty() {
        return Err(SearchError::BadQuery(
            "the query has no searchable words".to_string(),
        ));
    }
    Ok(words)
}

fn text_term(field: Field, text: &str) -> Term {
    Term::from_field_text(field, text)
}

fn term_query(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

fn all_of(clauses: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    Box::new(BooleanQuery::new(
        clauses.into_iter().map(|q| (Occur::Must, q)).collect(),
    ))
}

fn any_of(clauses: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    Box::new(BooleanQuery::new(
        clauses.into_iter().map(|q| (Occur::Should, q)).collect(),
    ))
}

fn word_query(word: &Word, body: Field) -> Box<dyn Query> {
    match word {
        Word::Exact(t) => term_query(text_term(body, t)),
        Word::Phrase(tokens) => Box::new(PhraseQuery::new(
            tokens.iter().map(|t| text_term(body, t)).collect(),
        )),
        Word::Prefix(p) => {
            // ASCII alphanumerics only (checked in `parse_text`), so bumping the last byte
            // stays ASCII and bounds exactly the terms starting with `p`.
            let mut upper = p.clone().into_bytes();
            if let Some(last) = upper.last_mut() {
                *last += 1;
            }
            let upper = String::from_utf8(upper).unwrap_or_default();
            Box::new(RangeQuery::new(
                Bound::Included(text_term(body, p)),
                Bound::Excluded(text_term(body, &upper)),
            ))
        }
        Word::CjkChar(c) => {
            // The character alone, first in a bigram, or second in a bigram. CJK characters
            // are never regex syntax.
            let pattern = format!("{c}|{c}.|.{c}");
            match RegexQuery::from_pattern(&pattern, body) {
                Ok(q) => Box::new(q),
                Err(_) => term_query(text_term(body, c)),
            }
        }
    }
}

/// Readable by `q.reader`: a direct conversation of theirs, or one of `q.groups`.
fn membership(q: &SearchQuery, f: &Fields) -> Box<dyn Query> {
    let mut any: Vec<Box<dyn Query>> =
        vec![term_query(Term::from_field_u64(f.readers, q.reader.0))];
    let groups: Vec<Term> = q
        .groups
        .iter()
        .filter(|c| c.group_id().is_some())
        .map(|c| text_term(f.conversation, &c.to_string()))
        .collect();
    if !groups.is_empty() {
        any.push(Box::new(TermSetQuery::new(groups)));
    }
    any_of(any)
}

/// Strictly after `c` in the page order (ts desc, conversation asc, seq desc).
fn after_cursor(c: &SearchCursor, f: &Fields) -> Box<dyn Query> {
    let ts = |v| Term::from_field_u64(f.ts_ms, v);
    let conversation = text_term(f.conversation, &c.conversation.to_string());
    any_of(vec![
        Box::new(RangeQuery::new(
            Bound::Unbounded,
            Bound::Excluded(ts(c.ts_ms)),
        )),
        all_of(vec![
            term_query(ts(c.ts_ms)),
            Box::new(RangeQuery::new(
                Bound::Excluded(conversation.clone()),
                Bound::Unbounded,
            )),
        ]),
        all_of(vec![
            term_query(ts(c.ts_ms)),
            term_query(conversation),
            Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_u64(f.seq, c.seq.0)),
            )),
        ]),
    ])
}

/// The whole tantivy query: every word, readable by the reader, every filter.
pub(crate) fn build(q: &SearchQuery, words: &[Word], f: &Fields) -> Box<dyn Query> {
    let mut must: Vec<Box<dyn Query>> = words.iter().map(|w| word_query(w, f.body)).collect();
    must.push(membership(q, f));
    if let Some(c) = &q.conversation {
        must.push(term_query(text_term(f.conversation, &c.to_string())));
    }
    if let Some(sender) = q.sender {
        must.push(term_query(Term::from_field_u64(f.sender, sender.0)));
    }
    if q.from_ms.is_some() || q.to_ms.is_some() {
        let ts = |v| Term::from_field_u64(f.ts_ms, v);
        must.push(Box::new(RangeQuery::new(
            q.from_ms
                .map_or(Bound::Unbounded, |v| Bound::Included(ts(v))),
            q.to_ms.map_or(Bound::Unbounded, |v| Bound::Excluded(ts(v))),
        )));
    }
    if let Some(c) = &q.before {
        must.push(after_cursor(c, f));
    }
    all_of(must)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Word> {
        parse_text(text).unwrap_or_default()
    }

    #[test]
    fn words_become_terms_phrases_prefixes() {
        use Word::*;
        assert_eq!(
            words("Hello WORLD"),
            [Exact("hello".into()), Prefix("world".into())]
        );
        assert_eq!(
            words("Hello WORLD "),
            [Exact("hello".into()), Exact("world".into())]
        );
        assert_eq!(
            words("明天去 北京"),
            [
                Phrase(vec!["明天".into(), "天去".into()]),
                Exact("北京".into())
            ]
        );
        assert_eq!(words("京"), [CjkChar("京".into())]);
        assert_eq!(words("a"), [Exact("a".into())]);
        assert_eq!(words("go go"), [Exact("go".into())]);
        assert_eq!(
            words("rust go rust"),
            [Exact("rust".into()), Exact("go".into())]
        );
        assert_eq!(
            words("field:value"),
            [Phrase(vec!["field".into(), "value".into()])]
        );
    }

    #[test]
    fn no_tokens_is_a_bad_query() {
        for text in ["", "   ", "***", "\"", "🎉🎉", "(-:", "\u{0}"] {
            assert!(
                matches!(parse_text(text), Err(SearchError::BadQuery(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn huge_queries_are_capped() {
        let many = "word ".repeat(5_000) + &(0..100).map(|i| format!("w{i} ")).collect::<String>();
        let got = parse_text(&many).unwrap_or_default();
        assert!(!got.is_empty() && got.len() <= MAX_WORDS);
        let cjk = "北".repeat(10_000);
        match parse_text(&cjk).unwrap_or_default().as_slice() {
            [Word::Phrase(tokens)] => assert_eq!(tokens.len(), MAX_TOKENS_PER_WORD),
            other => panic!("unexpected {other:?}"),
        }
    }
}
