//! Paging cursors: a position in the page order, opaque to clients.

use std::str::FromStr;

use chat_types::ids::{ConversationId, Seq};
use serde::{Deserialize, Serialize};

use crate::error::SearchError;
use crate::hit::SearchHit;

/// A position in the page order (`ts_ms` desc, conversation asc, seq desc). As `before` it is
/// exclusive: the next page starts right after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SearchCursor {
    pub ts_ms: u64,
    pub conversation: ConversationId,
    pub seq: Seq,
}

/// Longer than any cursor we produce ("<u64>.<u64>.dm:<u64>:<u64>").
const MAX_ENCODED_LEN: usize = 100;

impl SearchCursor {
    /// The cursor just past `hit`.
    pub fn of(hit: &SearchHit) -> SearchCursor {
        SearchCursor {
            ts_ms: hit.ts_ms,
            conversation: hit.conversation,
            seq: hit.seq,
        }
    }

    /// URL-safe text form: `<ts_ms>.<seq>.<conversation>`, e.g. `1700000000000.42.g:7`.
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.ts_ms, self.seq.0, self.conversation)
    }

    /// Parses [`SearchCursor::encode`]'s form; anything else is [`SearchError::BadCursor`].
    pub fn parse(s: &str) -> Result<SearchCursor, SearchError> {
        if s.len() > MAX_ENCODED_LEN {
            return Err(SearchError::BadCursor);
        }
        let mut parts = s.splitn(3, '.');
        let ts_ms = number(parts.next())?;
        let seq = number(parts.next())?;
        let conversation = parts
            .next()
            .and_then(|c| ConversationId::from_str(c).ok())
            .ok_or(SearchError::BadCursor)?;
        Ok(SearchCursor {
            ts_ms,
            conversation,
            seq: Seq(seq),
        })
    }
}

/// Plain decimal digits only (no sign, no spaces), fitting a u64.
fn number(part: Option<&str>) -> Result<u64, SearchError> {
    match part {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse().map_err(|_| SearchError::BadCursor)
        }
        _ => Err(SearchError::BadCursor),
    }
}

#[cfg(test)]
mod tests {
    use chat_types::ids::{GroupId, UserId};

    use super::*;

    #[test]
    fn encodes_and_parses() {
        let c = SearchCursor {
            ts_ms: 1_700_000_000_000,
            conversation: ConversationId::group(GroupId(7)),
            seq: Seq(42),
        };
        assert_eq!(c.encode(), "1700000000000.42.g:7");
        assert_eq!(SearchCursor::parse(&c.encode()), Ok(c));
        let dm = SearchCursor {
            ts_ms: u64::MAX,
            conversation: ConversationId::direct(UserId(u64::MAX), UserId(1)),
            seq: Seq(u64::MAX),
        };
        assert_eq!(SearchCursor::parse(&dm.encode()), Ok(dm));
        assert!(dm.encode().len() <= MAX_ENCODED_LEN);
        assert!(dm
            .encode()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b':'));
    }

    #[test]
    fn rejects_anything_else() {
        let long = "9".repeat(10_000);
        for bad in [
            "",
            ".",
            "..",
            "1.2",
            "1.2.",
            "1.2.g:",
            "1.2.g:0",
            "1.2.dm:2:1",
            "1.2.x:7",
            "+1.2.g:7",
            "1.-2.g:7",
            " 1.2.g:7",
            "1.2.g:7 ",
            "1.2.g:7.8",
            "18446744073709551616.1.g:7",
            "a.b.g:7",
            "１.2.g:7",
            "1.2.g:7\u{0}",
            long.as_str(),
        ] {
            assert_eq!(
                SearchCursor::parse(bad),
                Err(SearchError::BadCursor),
                "{bad:?}"
            );
        }
    }
}
