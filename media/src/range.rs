//! HTTP `Range` requests (RFC 9110 §14) and `multipart/byteranges` framing.

use crate::error::MediaError;

/// Most ranges served in one response; more (after coalescing) are answered in full.
pub const MAX_RANGES: usize = 16;

/// Range specs parsed at most; a longer header is ignored (answered in full).
const MAX_RANGE_SPECS: usize = 256;

/// An inclusive byte range `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range (0 if `end < start`).
    pub fn len(&self) -> u64 {
        if self.end < self.start {
            0
        } else {
            (self.end - self.start).saturating_add(1)
        }
    }

    /// True only for a malformed range with `end < start`.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

/// What to send for a `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// 200 with the whole content (no header, an ignored header, or size 0).
    Full,
    /// 206 with these ranges (one range: a single body; several: `multipart/byteranges`).
    Partial(Vec<ByteRange>),
}

/// Digits only (no sign, no spaces); saturates at `u64::MAX`.
fn parse_pos(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

enum Spec {
    Satisfiable(ByteRange),
    Unsatisfiable,
}

fn parse_spec(spec: &str, size: u64) -> Option<Spec> {
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let last_index = size - 1;
    if first.is_empty() {
        // suffix-range: the last N bytes
        let n = parse_pos(last)?;
        if n == 0 {
            return Some(Spec::Unsatisfiable);
        }
        return Some(Spec::Satisfiable(ByteRange {
            start: size.saturating_sub(n),
            end: last_index,
        }));
    }
    let start = parse_pos(first)?;
    let end = if last.is_empty() {
        last_index
    } else {
        let end = parse_pos(last)?;
        if end < start {
            return None; // invalid range-spec: the whole header is invalid
        }
        end.min(last_index)
    };
    if start >= size {
        return Some(Spec::Unsatisfiable);
    }
    Some(Spec::Satisfiable(ByteRange { start, end }))
}

/// Parses a `Range` header value for content of `size` bytes.
///
/// Supports `bytes=0-99`, `bytes=100-`, `bytes=-500` and comma-separated lists. Ranges are
/// clipped to the content; ranges starting at or after the end are dropped and if none
/// remain the result is `RangeNotSatisfiable` (416). A malformed header or another unit is
/// ignored (`Full`). Overlapping or adjacent ranges, or more than [`MAX_RANGES`], are sorted
/// and coalesced; if still more than [`MAX_RANGES`] remain the answer is `Full`.
pub fn parse_range(header: &str, size: u64) -> Result<RangeRequest, MediaError> {
    if size == 0 {
        return Ok(RangeRequest::Full);
    }
    let Some((unit, set)) = header.trim().split_once('=') else {
        return Ok(RangeRequest::Full);
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(RangeRequest::Full);
    }
    let mut ranges = Vec::new();
    let mut specs = 0usize;
    for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        specs += 1;
        if specs > MAX_RANGE_SPECS {
            return Ok(RangeRequest::Full);
        }
        match parse_spec(spec, size) {
            None => return Ok(RangeRequest::Full),
            Some(Spec::Unsatisfiable) => {}
            Some(Spec::Satisfiable(r)) => ranges.push(r),
        }
    }
    if specs == 0 {
        return Ok(RangeRequest::Full);
    }
    if ranges.is_empty() {
        return Err(MediaError::RangeNotSatisfiable);
    }
    if ranges.len() > MAX_RANGES || has_overlap(&ranges) {
        ranges = coalesce(ranges);
        if ranges.len() > MAX_RANGES {
            return Ok(RangeRequest::Full);
        }
    }
    Ok(RangeRequest::Partial(ranges))
}

fn has_overlap(ranges: &[ByteRange]) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[1].start <= w[0].end)
}

/// Sorts and merges overlapping or adjacent ranges.
fn coalesce(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    ranges.sort_unstable();
    let mut out: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

/// The `Content-Range` value for a range: `bytes start-end/size`.
pub fn content_range(r: &ByteRange, size: u64) -> String {
    format!("bytes {}-{}/{}", r.start, r.end, size)
}

/// The `Content-Range` value for a 416 response: `bytes */size`.
pub fn content_range_unsatisfied(size: u64) -> String {
    format!("bytes */{size}")
}

/// One part of a `multipart/byteranges` body: its header bytes, then the range's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartPart {
    pub range: ByteRange,
    /// `\r\n--boundary\r\nContent-Type: …\r\nContent-Range: bytes s-e/size\r\n\r\n`
    pub header: Vec<u8>,
}

/// The exact framing of a `multipart/byteranges` body: for each part write `header` then
/// the range's bytes, then write `closing`. `content_length` is the body's exact length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartLayout {
    pub parts: Vec<MultipartPart>,
    /// `\r\n--boundary--\r\n`
    pub closing: Vec<u8>,
    pub content_length: u64,
    /// The response's `Content-Type`: `multipart/byteranges; boundary=…`.
    pub content_type: String,
}

/// Keeps a header fragment on one line: control characters are dropped.
fn header_safe(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Lays out a `multipart/byteranges` body for `ranges` of content of `size` bytes and
/// type `mime`, separated by `boundary` (see [`new_boundary`]).
pub fn multipart_layout(
    ranges: &[ByteRange],
    size: u64,
    mime: &str,
    boundary: &str,
) -> MultipartLayout {
    let mime = header_safe(mime);
    let boundary = header_safe(boundary);
    let mut content_length = 0u64;
    let parts: Vec<MultipartPart> = ranges
        .iter()
        .map(|r| {
            let header = format!(
                "\r\n--{boundary}\r\nContent-Type: {mime}\r\nContent-Range: {}\r\n\r\n",
                content_range(r, size)
            )
            .into_bytes();
            content_length = content_length
                .saturating_add(header.len() as u64)
                .saturating_add(r.len());
            MultipartPart { range: *r, header }
        })
        .collect();
    let closing = format!("\r\n--{boundary}--\r\n").into_bytes();
    content_length = content_length.saturating_add(closing.len() as u64);
    MultipartLayout {
        parts,
        closing,
        content_length,
        content_type: format!("multipart/byteranges; boundary={boundary}"),
    }
}

/// A random multipart boundary (safe as an unquoted parameter value).
pub fn new_boundary() -> String {
    format!("chatmedia-{}", hex::encode(rand::random::<[u8; 16]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    fn partial(header: &str, size: u64) -> Vec<ByteRange> {
        match parse_range(header, size) {
            Ok(RangeRequest::Partial(v)) => v,
            other => panic!("{header}: expected Partial, got {other:?}"),
        }
    }

    fn full(header: &str, size: u64) -> bool {
        matches!(parse_range(header, size), Ok(RangeRequest::Full))
    }

    fn unsatisfiable(header: &str, size: u64) -> bool {
        matches!(
            parse_range(header, size),
            Err(MediaError::RangeNotSatisfiable)
        )
    }

    #[test]
    fn single_forms() {
        assert_eq!(partial("bytes=0-99", 1000), vec![r(0, 99)]);
        assert_eq!(partial("bytes=100-", 1000), vec![r(100, 999)]);
        assert_eq!(partial("bytes=-500", 1000), vec![r(500, 999)]);
        assert_eq!(partial("bytes=0-0", 1000), vec![r(0, 0)]);
        assert_eq!(partial("bytes=999-999", 1000), vec![r(999, 999)]);
        assert_eq!(partial("Bytes = 5-9 ", 1000), vec![r(5, 9)]);
        assert_eq!(r(0, 99).len(), 100);
        assert_eq!(r(5, 5).len(), 1);
        assert!(!r(5, 5).is_empty());
    }

    #[test]
    fn clipping() {
        assert_eq!(partial("bytes=900-5000", 1000), vec![r(900, 999)]);
        assert_eq!(partial("bytes=-5000", 1000), vec![r(0, 999)]);
        assert_eq!(
            partial("bytes=0-99999999999999999999999999", 10),
            vec![r(0, 9)]
        );
        assert_eq!(
            partial("bytes=-99999999999999999999999999", 10),
            vec![r(0, 9)]
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert!(unsatisfiable("bytes=1000-", 1000));
        assert!(unsatisfiable("bytes=1000-2000", 1000));
        assert!(unsatisfiable("bytes=-0", 1000));
        assert!(unsatisfiable("bytes=5000-6000, 7000-", 1000));
        assert!(unsatisfiable("bytes=99999999999999999999999-", 1000));
        // unsatisfiable ones are dropped when others remain
        assert_eq!(partial("bytes=2000-3000, 0-1", 1000), vec![r(0, 1)]);
    }

    #[test]
    fn malformed_is_full() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=abc",
            "bytes=5",
            "bytes=-",
            "bytes=10-5",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=0x10-20",
            "bytes=0-1,garbage",
            "items=0-10",
            "bytes 0-10",
            "bytes=1 2-3",
            "bytes=--5",
            "bytes=é-1",
        ] {
            assert!(full(h, 1000), "{h:?}");
        }
        // size 0: ranges never apply
        assert!(full("bytes=0-10", 0));
        assert!(full("bytes=-1", 0));
    }

    #[test]
    fn multiple_ranges() {
        assert_eq!(
            partial("bytes=0-9, 20-29,-5", 100),
            vec![r(0, 9), r(20, 29), r(95, 99)]
        );
        // non-overlapping ranges keep the requested order
        assert_eq!(partial("bytes=50-59,0-9", 100), vec![r(50, 59), r(0, 9)]);
        // empty list elements are tolerated
        assert_eq!(partial("bytes=0-1,,4-5", 100), vec![r(0, 1), r(4, 5)]);
    }

    #[test]
    fn coalescing() {
        // overlapping: sorted and merged
        assert_eq!(
            partial("bytes=50-59,0-20,10-30", 100),
            vec![r(0, 30), r(50, 59)]
        );
        // adjacent ones are merged together with overlapping ones
        assert_eq!(partial("bytes=0-9,10-19,5-6", 100), vec![r(0, 19)]);
        // more than 16 ranges that coalesce into few
        let many: Vec<String> = (0..40)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 9))
            .collect();
        assert_eq!(
            partial(&format!("bytes={}", many.join(",")), 1000),
            vec![r(0, 399)]
        );
        // 17 disjoint ranges: too many, serve in full
        let disjoint: Vec<String> = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        assert!(full(&format!("bytes={}", disjoint.join(",")), 1000));
        // exactly 16 disjoint ranges are fine
        let sixteen: Vec<String> = (0..16)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        assert_eq!(
            partial(&format!("bytes={}", sixteen.join(",")), 1000).len(),
            16
        );
        // an absurd number of specs is ignored
        let huge = vec!["0-0"; 1000].join(",");
        assert!(full(&format!("bytes={huge}"), 1000));
    }

    #[test]
    fn content_range_format() {
        assert_eq!(content_range(&r(0, 99), 1000), "bytes 0-99/1000");
        assert_eq!(content_range_unsatisfied(1000), "bytes */1000");
    }

    #[test]
    fn multipart_length_matches_assembled_body() {
        let content: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let size = content.len() as u64;
        let ranges = partial("bytes=0-0,10-19,-7,500-599", size);
        let boundary = new_boundary();
        let layout = multipart_layout(&ranges, size, "image/png", &boundary);
        let mut body = Vec::new();
        for part in &layout.parts {
            body.extend_from_slice(&part.header);
            body.extend_from_slice(&content[part.range.start as usize..=part.range.end as usize]);
        }
        body.extend_from_slice(&layout.closing);
        assert_eq!(layout.content_length, body.len() as u64);
        assert_eq!(layout.parts.len(), 4);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!(
            "\r\n--{boundary}\r\nContent-Type: image/png\r\nContent-Range: bytes 0-0/1000\r\n\r\n"
        )));
        assert!(text.contains("Content-Range: bytes 993-999/1000\r\n\r\n"));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
        assert_eq!(
            layout.content_type,
            format!("multipart/byteranges; boundary={boundary}")
        );
        // the boundary must not occur inside the content
        assert_eq!(text.matches(&format!("--{boundary}")).count(), 5);
    }

    #[test]
    fn multipart_header_injection_is_neutralised() {
        let layout = multipart_layout(&[r(0, 1)], 2, "text/plain\r\nX-Evil: 1", "b\r\nX: y");
        let header = String::from_utf8(layout.parts[0].header.clone()).expect("ascii");
        assert!(!header.contains("\r\nX-Evil"));
        assert!(!header.contains("\r\nX: y"));
    }

    #[test]
    fn boundaries_are_random_and_token_safe() {
        let a = new_boundary();
        let b = new_boundary();
        assert_ne!(a, b);
        assert!(a.len() <= 70);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
