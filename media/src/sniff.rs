//! Media type detection from content bytes only — never from the file name or the
//! client's `Content-Type`. Anything not on the allow-list is rejected.

use serde::{Deserialize, Serialize};

use crate::error::MediaError;

/// Broad category of an accepted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    File,
}

/// The result of [`sniff`]: the MIME type to serve, its kind and whether it may be
/// shown inline (`Content-Disposition: inline`) rather than only downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniffed {
    pub mime: &'static str,
    pub kind: MediaKind,
    pub inline: bool,
}

const fn media(mime: &'static str, kind: MediaKind, inline: bool) -> Sniffed {
    Sniffed { mime, kind, inline }
}

/// ISO-BMFF major brands accepted as `video/mp4`.
const MP4_VIDEO_BRANDS: &[&[u8; 4]] = &[
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"mp71", b"avc1",
    b"dash", b"M4V ", b"M4VH", b"M4VP", b"MSNV", b"f4v ", b"mmp4",
];

/// ISO-BMFF major brands accepted as `audio/mp4`.
const MP4_AUDIO_BRANDS: &[&[u8; 4]] = &[b"M4A ", b"M4B ", b"M4P ", b"F4A "];

fn unsupported(reason: &str) -> MediaError {
    MediaError::Unsupported {
        reason: reason.to_owned(),
    }
}

/// Detects the type of a file from its first bytes (pass up to 8 KiB; more is not needed).
///
/// Accepted: PNG, JPEG, GIF, WebP (image, inline); MP4, QuickTime, WebM, Matroska (video,
/// inline); MP3, Ogg, WAV, M4A, FLAC (audio, inline); PDF, ZIP, UTF-8 text (file, download
/// only); SVG and HTML are recognised so they are never served inline (file, download only).
/// Everything else is `Unsupported`.
pub fn sniff(head: &[u8]) -> Result<Sniffed, MediaError> {
    if let Some(found) = sniff_binary(head)? {
        return Ok(found);
    }
    if let Some(found) = sniff_markup(head) {
        return Ok(found);
    }
    if is_text(head) {
        return Ok(media("text/plain", MediaKind::File, false));
    }
    Err(unsupported("unrecognised binary content"))
}

fn sniff_binary(head: &[u8]) -> Result<Option<Sniffed>, MediaError> {
    use MediaKind::*;
    let found = if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        media("image/png", Image, true)
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        media("image/jpeg", Image, true)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        media("image/gif", Image, true)
    } else if head.starts_with(b"RIFF") && head.len() >= 12 {
        match head.get(8..12) {
            Some(b"WEBP") => media("image/webp", Image, true),
            Some(b"WAVE") => media("audio/wav", Audio, true),
            _ => return Err(unsupported("unsupported RIFF format")),
        }
    } else if head.get(4..8) == Some(b"ftyp") {
        return sniff_ftyp(head).map(Some);
    } else if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return match ebml_doc_type(head) {
            Some(b"webm") => Ok(Some(media("video/webm", Video, true))),
            Some(b"matroska") => Ok(Some(media("video/x-matroska", Video, true))),
            _ => Err(unsupported("unsupported EBML document type")),
        };
    } else if head.starts_with(b"OggS") {
        media("audio/ogg", Audio, true)
    } else if head.starts_with(b"fLaC") {
        media("audio/flac", Audio, true)
    } else if head.starts_with(b"ID3") || is_mpeg_audio_frame(head) {
        media("audio/mpeg", Audio, true)
    } else if head.starts_with(b"%PDF-") {
        media("application/pdf", File, false)
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        media("application/zip", File, false)
    } else {
        return Ok(None);
    };
    Ok(Some(found))
}

fn sniff_ftyp(head: &[u8]) -> Result<Sniffed, MediaError> {
    let Some(brand) = head.get(8..12) else {
        return Err(unsupported("truncated ISO-BMFF header"));
    };
    if brand == b"qt  " {
        Ok(media("video/quicktime", MediaKind::Video, true))
    } else if MP4_AUDIO_BRANDS.iter().any(|b| b.as_slice() == brand) {
        Ok(media("audio/mp4", MediaKind::Audio, true))
    } else if MP4_VIDEO_BRANDS.iter().any(|b| b.as_slice() == brand) {
        Ok(media("video/mp4", MediaKind::Video, true))
    } else {
        Err(unsupported("unsupported ISO-BMFF brand"))
    }
}

/// MPEG-1/2/2.5 audio frame header: 11 sync bits, no reserved version/layer,
/// a valid bitrate and sample-rate index.
fn is_mpeg_audio_frame(head: &[u8]) -> bool {
    let (Some(&b0), Some(&b1), Some(&b2)) = (head.first(), head.get(1), head.get(2)) else {
        return false;
    };
    let version = (b1 >> 3) & 0b11;
    let layer = (b1 >> 1) & 0b11;
    let bitrate = b2 >> 4;
    let sample_rate = (b2 >> 2) & 0b11;
    b0 == 0xFF
        && b1 & 0xE0 == 0xE0
        && version != 0b01
        && layer != 0b00
        && bitrate != 0b1111
        && sample_rate != 0b11
}

/// Reads an EBML variable-length integer; `keep_marker` keeps the length bits (element IDs).
fn ebml_vint(data: &[u8], pos: usize, keep_marker: bool) -> Option<(u64, usize)> {
    let first = *data.get(pos)?;
    if first == 0 {
        return None;
    }
    let len = first.leading_zeros() as usize + 1;
    let mut value = if keep_marker {
        u64::from(first)
    } else {
        // len is 1..=8; for 8 the first byte carries no value bits.
        u64::from(first & 0xFFu8.checked_shr(len as u32).unwrap_or(0))
    };
    for i in 1..len {
        value = (value << 8) | u64::from(*data.get(pos.checked_add(i)?)?);
    }
    Some((value, len))
}

/// The DocType ("webm", "matroska", …) from the EBML header at the start of `head`.
fn ebml_doc_type(head: &[u8]) -> Option<&[u8]> {
    const EBML_ID_LEN: usize = 4;
    const DOC_TYPE_ID: u64 = 0x4282;
    let (header_size, size_len) = ebml_vint(head, EBML_ID_LEN, false)?;
    let start = EBML_ID_LEN + size_len;
    let end = usize::try_from(header_size)
        .ok()
        .and_then(|s| start.checked_add(s))
        .map_or(head.len(), |e| e.min(head.len()));
    let mut pos = start;
    while pos < end {
        let (id, id_len) = ebml_vint(head, pos, true)?;
        let (size, size_len) = ebml_vint(head, pos + id_len, false)?;
        let data_start = pos + id_len + size_len;
        let data_end = data_start.checked_add(usize::try_from(size).ok()?)?;
        if id == DOC_TYPE_ID {
            let value = head.get(data_start..data_end)?;
            // DocType may be padded with NULs.
            let trimmed_len = value.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
            return value.get(..trimmed_len);
        }
        pos = data_end;
    }
    None
}

fn starts_with_ignore_case(data: &[u8], prefix: &[u8]) -> bool {
    data.get(..prefix.len())
        .is_some_and(|d| d.eq_ignore_ascii_case(prefix))
}

fn contains_ignore_case(data: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && data
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// SVG and HTML (case-insensitive, after an optional UTF-8 BOM and whitespace).
fn sniff_markup(head: &[u8]) -> Option<Sniffed> {
    const SVG: Sniffed = media("image/svg+xml", MediaKind::File, false);
    const HTML: Sniffed = media("text/html", MediaKind::File, false);
    const HTML_STARTS: &[&[u8]] = &[
        b"<!doctype html",
        b"<html",
        b"<head",
        b"<body",
        b"<script",
        b"<iframe",
    ];
    let body = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let skip = body
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0C'))
        .unwrap_or(body.len());
    let body = &body[skip..];
    if starts_with_ignore_case(body, b"<svg") {
        return Some(SVG);
    }
    if HTML_STARTS.iter().any(|p| starts_with_ignore_case(body, p)) {
        return Some(HTML);
    }
    // An XML prolog, comment or SVG doctype before the root element.
    if starts_with_ignore_case(body, b"<?xml")
        || starts_with_ignore_case(body, b"<!--")
        || starts_with_ignore_case(body, b"<!doctype svg")
    {
        if contains_ignore_case(body, b"<svg") {
            return Some(SVG);
        }
        if contains_ignore_case(body, b"<html") || contains_ignore_case(body, b"<script") {
            return Some(HTML);
        }
    }
    None
}

/// Valid UTF-8 (a character cut off at the end is allowed) without NUL bytes.
fn is_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn encode(format: image::ImageFormat, img: image::DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encode test image");
        out.into_inner()
    }

    fn rgb() -> image::DynamicImage {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 8, |x, y| {
            image::Rgb([x as u8 * 10, y as u8 * 20, 7])
        }))
    }

    fn ok(head: &[u8]) -> (&'static str, MediaKind, bool) {
        let s = sniff(head).expect("should be accepted");
        (s.mime, s.kind, s.inline)
    }

    fn rejected(head: &[u8]) -> bool {
        matches!(sniff(head), Err(MediaError::Unsupported { .. }))
    }

    fn ftyp(brand: &[u8; 4]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0x20];
        v.extend_from_slice(b"ftyp");
        v.extend_from_slice(brand);
        v.extend_from_slice(&[0, 0, 2, 0]);
        v.extend_from_slice(b"isommp41");
        v.resize(64, 0);
        v
    }

    fn ebml(doc_type: &[u8]) -> Vec<u8> {
        // EBMLVersion=1, EBMLReadVersion=1, DocType=<doc_type>
        let mut body = vec![0x42, 0x86, 0x81, 0x01, 0x42, 0xF7, 0x81, 0x01, 0x42, 0x82];
        body.push(0x80 | doc_type.len() as u8);
        body.extend_from_slice(doc_type);
        let mut v = vec![0x1A, 0x45, 0xDF, 0xA3, 0x80 | body.len() as u8];
        v.extend_from_slice(&body);
        v.extend_from_slice(&[0x18, 0x53, 0x80, 0x67, 0x01, 0, 0, 0]);
        v
    }

    #[test]
    fn real_images() {
        use image::ImageFormat as F;
        assert_eq!(
            ok(&encode(F::Png, rgb())),
            ("image/png", MediaKind::Image, true)
        );
        assert_eq!(
            ok(&encode(F::Jpeg, rgb())),
            ("image/jpeg", MediaKind::Image, true)
        );
        assert_eq!(
            ok(&encode(F::Gif, rgb().into_rgba8().into())),
            ("image/gif", MediaKind::Image, true)
        );
        assert_eq!(
            ok(&encode(F::WebP, rgb())),
            ("image/webp", MediaKind::Image, true)
        );
    }

    #[test]
    fn video() {
        for brand in [
            b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"dash", b"M4V ",
        ] {
            assert_eq!(ok(&ftyp(brand)), ("video/mp4", MediaKind::Video, true));
        }
        assert_eq!(
            ok(&ftyp(b"qt  ")),
            ("video/quicktime", MediaKind::Video, true)
        );
        assert_eq!(ok(&ebml(b"webm")), ("video/webm", MediaKind::Video, true));
        assert_eq!(
            ok(&ebml(b"matroska")),
            ("video/x-matroska", MediaKind::Video, true)
        );
        assert!(rejected(&ebml(b"other")));
        assert!(rejected(&ftyp(b"heic")));
        assert!(rejected(&ftyp(b"avif")));
        assert!(rejected(b"\0\0\0\x20ftyp"));
        // truncated EBML header: no panic, rejected
        let full = ebml(b"webm");
        for n in 4..full.len() {
            let _ = sniff(&full[..n]);
        }
        assert!(rejected(&full[..12]));
    }

    #[test]
    fn audio() {
        assert_eq!(
            ok(b"ID3\x04\0\0\0\0\0\x21"),
            ("audio/mpeg", MediaKind::Audio, true)
        );
        // MPEG-1 Layer III, 128 kbit/s, 44.1 kHz
        assert_eq!(
            ok(&[0xFF, 0xFB, 0x90, 0x64, 0, 0]),
            ("audio/mpeg", MediaKind::Audio, true)
        );
        // reserved version / bad bitrate / bad sample rate are not audio
        assert!(rejected(&[0xFF, 0xEB, 0x90, 0x64]));
        assert!(rejected(&[0xFF, 0xFB, 0xF0, 0x64]));
        assert!(rejected(&[0xFF, 0xFB, 0x9C, 0x64]));
        assert_eq!(ok(b"OggS\0\x02\0\0"), ("audio/ogg", MediaKind::Audio, true));
        assert_eq!(
            ok(b"RIFF\x24\0\0\0WAVEfmt "),
            ("audio/wav", MediaKind::Audio, true)
        );
        assert_eq!(ok(&ftyp(b"M4A ")), ("audio/mp4", MediaKind::Audio, true));
        assert_eq!(
            ok(b"fLaC\0\0\0\x22"),
            ("audio/flac", MediaKind::Audio, true)
        );
    }

    #[test]
    fn riff_variants() {
        assert_eq!(ok(b"RIFF\x24\0\0\0WEBPVP8 ").0, "image/webp");
        assert_eq!(ok(b"RIFF\x24\0\0\0WAVEfmt ").0, "audio/wav");
        assert!(rejected(b"RIFF\x24\0\0\0AVI LIST"));
        assert!(rejected(b"RIFF\x24\0\0"));
    }

    #[test]
    fn documents_and_text() {
        assert_eq!(
            ok(b"%PDF-1.7\n%\xE2\xE3"),
            ("application/pdf", MediaKind::File, false)
        );
        assert_eq!(
            ok(b"PK\x03\x04\x14\0\0\0"),
            ("application/zip", MediaKind::File, false)
        );
        assert_eq!(
            ok("hello, wörld\n".as_bytes()),
            ("text/plain", MediaKind::File, false)
        );
        // a multi-byte character cut off by the 8 KiB head is still text
        let mut cut = "x".repeat(10).into_bytes();
        cut.extend_from_slice(&"€".as_bytes()[..2]);
        assert_eq!(ok(&cut).0, "text/plain");
        // invalid UTF-8 in the middle or NUL bytes are not text
        assert!(rejected(b"abc\xFFdef"));
        assert!(rejected(b"abc\0def"));
        // a JSON file is plain text
        assert_eq!(ok(b"{\"a\": 1}").0, "text/plain");
    }

    #[test]
    fn svg_and_html_are_never_inline() {
        let svg = [
            &b"<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>"[..],
            b"\xEF\xBB\xBF  \n<SVG>",
            b"<?xml version=\"1.0\"?>\n<!-- made by hand -->\n<svg onload=\"alert(1)\"/>",
            b"<!-- Generator: x -->\n<svg/>",
        ];
        for s in svg {
            assert_eq!(ok(s), ("image/svg+xml", MediaKind::File, false), "{s:?}");
        }
        let html = [
            &b"<!DOCTYPE html><html></html>"[..],
            b"  <html>",
            b"<HEAD><title>",
            b"<body onload=x>",
            b"\xEF\xBB\xBF<script>alert(1)</script>",
            b"\r\n<iframe src=x>",
            b"<?xml version=\"1.0\"?><html xmlns=\"http://www.w3.org/1999/xhtml\">",
        ];
        for s in html {
            assert_eq!(ok(s), ("text/html", MediaKind::File, false), "{s:?}");
        }
        // plain XML that is neither stays text
        assert_eq!(ok(b"<?xml version=\"1.0\"?><note/>").0, "text/plain");
    }

    #[test]
    fn random_binary_is_unsupported() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert!(rejected(&bytes));
        assert!(rejected(b"\x7fELF\x02\x01\x01\0"));
        assert!(rejected(b"MZ\x90\0\x03\0\0\0\0\0\0\0"));
    }

    #[test]
    fn never_panics_on_short_prefixes() {
        let samples: Vec<Vec<u8>> = vec![
            encode(image::ImageFormat::Png, rgb()),
            ftyp(b"isom"),
            ebml(b"webm"),
            b"RIFF\x24\0\0\0WAVE".to_vec(),
            vec![0xFF, 0xFB, 0x90],
            b"\xEF\xBB\xBF<?xml".to_vec(),
            vec![
                0x1A, 0x45, 0xDF, 0xA3, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            ],
            vec![0x1A, 0x45, 0xDF, 0xA3, 0x8F, 0x42, 0x82, 0x08, 0x42],
        ];
        for s in samples {
            for n in 0..=s.len() {
                let _ = sniff(&s[..n]);
            }
        }
        assert_eq!(ok(b"").0, "text/plain");
    }
}
