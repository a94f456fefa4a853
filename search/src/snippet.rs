//! Snippets and highlight offsets for hits, from tantivy's `SnippetGenerator`.

use std::collections::BTreeMap;
use std::ops::Range;

use tantivy::schema::Field;
use tantivy::snippet::{collapse_overlapped_ranges, SnippetGenerator};
use tantivy::tokenizer::{TextAnalyzer, TokenStream};
use tantivy::{Score, Searcher, Term};

use crate::error::SearchError;
use crate::query::Word;
use crate::tokenizer::chat_analyzer;

/// About this many characters of context.
pub(crate) const SNIPPET_CHARS: usize = 160;

/// Builds the snippet of each hit of one query.
pub(crate) struct Highlighter {
    /// Exact tokens of the query, weighted rarer-is-better like tantivy does.
    terms: BTreeMap<String, Score>,
    /// Prefix words: any body token starting with one of these is highlighted too.
    prefixes: Vec<String>,
    /// Lone CJK characters: any body token containing one is highlighted too.
    cjk_chars: Vec<String>,
    analyzer: TextAnalyzer,
    field: Field,
}

impl Highlighter {
    pub(crate) fn new(
        searcher: &Searcher,
        words: &[Word],
        field: Field,
    ) -> Result<Highlighter, SearchError> {
        let mut terms = BTreeMap::new();
        let mut prefixes = Vec::new();
        let mut cjk_chars = Vec::new();
        let mut add = |token: &str| -> Result<(), SearchError> {
            let doc_freq = searcher.doc_freq(&Term::from_field_text(field, token))?;
            terms.insert(token.to_string(), 1.0 / (1.0 + doc_freq as Score));
            Ok(())
        };
        for word in words {
            match word {
                Word::Exact(t) => add(t)?,
                Word::Phrase(tokens) => {
                    for t in tokens {
                        add(t)?;
                    }
                }
                Word::Prefix(p) => prefixes.push(p.clone()),
                Word::CjkChar(c) => cjk_chars.push(c.clone()),
            }
        }
        Ok(Highlighter {
            terms,
            prefixes,
            cjk_chars,
            analyzer: chat_analyzer(),
            field,
        })
    }

    /// The snippet of `body` and the highlighted CHARACTER ranges in it.
    pub(crate) fn snippet(&self, body: &str) -> (String, Vec<(usize, usize)>) {
        let mut terms = self.terms.clone();
        if !self.prefixes.is_empty() || !self.cjk_chars.is_empty() {
            let mut analyzer = self.analyzer.clone();
            let mut stream = analyzer.token_stream(body);
            while stream.advance() {
                let text = &stream.token().text;
                let hit = self.prefixes.iter().any(|p| text.starts_with(p.as_str()))
                    || self.cjk_chars.iter().any(|c| text.contains(c.as_str()));
                if hit && !terms.contains_key(text) {
                    terms.insert(text.clone(), 0.5);
                }
            }
        }
        let body_chars = body.chars().count();
        // The generator counts bytes; scale to about SNIPPET_CHARS characters.
        let bytes_per_char = (body.len() / body_chars.max(1)).max(1);
        let generator = SnippetGenerator::new(
            terms,
            self.analyzer.clone(),
            self.field,
            SNIPPET_CHARS * bytes_per_char,
        );
        let snippet = generator.snippet(body);
        if snippet.fragment().is_empty() || snippet.highlighted().is_empty() {
            return (body.chars().take(SNIPPET_CHARS).collect(), Vec::new());
        }
        if body_chars <= SNIPPET_CHARS {
            // Short enough to show whole: shift the ranges from the fragment to the body.
            let start = snippet.fragment_range().start;
            let ranges: Vec<Range<usize>> = snippet
                .highlighted()
                .iter()
                .map(|r| r.start + start..r.end + start)
                .collect();
            return (body.to_string(), char_ranges(body, &ranges));
        }
        let fragment = snippet.fragment();
        (
            fragment.to_string(),
            char_ranges(fragment, snippet.highlighted()),
        )
    }
}

/// Byte ranges into `text` → sorted, non-overlapping, half-open character ranges. Ranges that
/// are out of bounds or not on character boundaries are dropped.
pub(crate) fn char_ranges(text: &str, byte_ranges: &[Range<usize>]) -> Vec<(usize, usize)> {
    let valid: Vec<Range<usize>> = byte_ranges
        .iter()
        .filter(|r| {
            r.start < r.end
                && r.end <= text.len()
                && text.is_char_boundary(r.start)
                && text.is_char_boundary(r.end)
        })
        .cloned()
        .collect();
    let mut out = Vec::new();
    let (mut byte, mut chars) = (0usize, 0usize);
    for r in collapse_overlapped_ranges(&valid) {
        // Ranges are sorted, so counting continues from the previous end.
        chars += text[byte..r.start].chars().count();
        let start = chars;
        chars += text[r.start..r.end].chars().count();
        byte = r.end;
        out.push((start, chars));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_become_character_ranges() {
        let text = "café 北京开会 ok";
        let bj = text.find("北京").unwrap_or(0);
        let ok = text.find("ok").unwrap_or(0);
        assert_eq!(
            char_ranges(text, &[ok..ok + 2, bj..bj + 6, 0..5]),
            [(0, 4), (5, 7), (10, 12)]
        );
        // Overlapping bigrams merge: 北京 + 京开 → 北京开.
        assert_eq!(char_ranges(text, &[bj..bj + 6, bj + 3..bj + 9]), [(5, 8)]);
        // Bad ranges are dropped, never panic.
        assert_eq!(
            char_ranges(text, &[1..2, 4..100, 7..7, bj + 1..bj + 3]),
            [(1, 2)]
        );
    }
}
