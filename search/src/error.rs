//! The one error type of the crate.

/// Why a search-side call failed. Messages never contain user content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// The index (tantivy or its directory) failed.
    #[error("search index error: {0}")]
    Index(String),
    /// The query cannot be run (e.g. it has no searchable words).
    #[error("bad search query: {0}")]
    BadQuery(String),
    /// A paging cursor that no build of ours produced.
    #[error("bad search cursor")]
    BadCursor,
}

impl SearchError {
    /// A stable machine-readable code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            SearchError::Index(_) => "index",
            SearchError::BadQuery(_) => "bad_query",
            SearchError::BadCursor => "bad_cursor",
        }
    }
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchError::Index(e.to_string())
    }
}

impl From<tantivy::directory::error::OpenDirectoryError> for SearchError {
    fn from(e: tantivy::directory::error::OpenDirectoryError) -> Self {
        SearchError::Index(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(SearchError::Index("x".into()).code(), "index");
        assert_eq!(SearchError::BadQuery("x".into()).code(), "bad_query");
        assert_eq!(SearchError::BadCursor.code(), "bad_cursor");
    }
}
