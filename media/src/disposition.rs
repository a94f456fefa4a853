//! File-name sanitizing and the `Content-Disposition` header (RFC 6266 / RFC 8187).

use std::fmt::Write as _;

/// Longest sanitized name, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 200;

/// Unicode format characters that can disguise a name (bidi overrides/isolates,
/// zero-width characters, BOM).
fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
    )
}

fn is_forbidden(c: char) -> bool {
    c.is_control() || is_deceptive(c) || matches!(c, '"' | '\\' | '*' | '<' | '>' | '?' | '|' | ':')
}

fn trim_ends(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '.')
}

/// Makes a client-supplied file name safe to store and to put in a header:
/// keeps only the last path component (after `/` or `\`), removes control characters,
/// `"\*<>?|:` and bidi/zero-width characters, trims spaces and dots at both ends and
/// caps the result at [`MAX_FILE_NAME_BYTES`] on a character boundary.
/// An empty result becomes `"file"`.
pub fn sanitize_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !is_forbidden(*c)).collect();
    let mut out = trim_ends(&cleaned);
    if out.len() > MAX_FILE_NAME_BYTES {
        let mut cut = MAX_FILE_NAME_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out = trim_ends(&out[..cut]);
    }
    if out.is_empty() {
        "file".to_owned()
    } else {
        out.to_owned()
    }
}

/// RFC 8187 `attr-char`: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
fn is_attr_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if is_attr_char(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The `Content-Disposition` header value for a download named `name` (sanitized here):
/// `inline` or `attachment`, an ASCII `filename=` fallback (non-ASCII and `%` replaced by
/// `_`) and the exact UTF-8 name in `filename*=UTF-8''…`.
pub fn content_disposition(name: &str, inline: bool) -> String {
    let name = sanitize_file_name(name);
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && !matches!(c, '"' | '\\' | '%') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let kind = if inline { "inline" } else { "attachment" };
    format!(
        "{kind}; filename=\"{fallback}\"; filename*=UTF-8''{}",
        percent_encode(&name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_paths() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("C:\\Users\\me\\cat.png"), "cat.png");
        assert_eq!(sanitize_file_name("a/b\\c/d.txt"), "d.txt");
        assert_eq!(sanitize_file_name("dir/"), "file");
        assert_eq!(sanitize_file_name(".."), "file");
        assert_eq!(sanitize_file_name("../.."), "file");
        assert_eq!(sanitize_file_name(""), "file");
        assert_eq!(sanitize_file_name("   "), "file");
    }

    #[test]
    fn removes_dangerous_characters() {
        assert_eq!(sanitize_file_name("a\"b.txt"), "ab.txt");
        assert_eq!(
            sanitize_file_name("evil\r\nSet-Cookie: x.txt"),
            "evilSet-Cookie x.txt"
        );
        assert_eq!(sanitize_file_name("a*b?c<d>e|f:g.txt"), "abcdefg.txt");
        assert_eq!(sanitize_file_name("nul\0byte.txt"), "nulbyte.txt");
        assert_eq!(sanitize_file_name("tab\there"), "tabhere");
        // right-to-left override used to disguise "gnp.exe" as "exe.png"
        assert_eq!(sanitize_file_name("photo\u{202E}gnp.exe"), "photognp.exe");
        assert_eq!(sanitize_file_name("  .hidden. . "), "hidden");
        assert_eq!(sanitize_file_name("report.pdf."), "report.pdf");
    }

    #[test]
    fn keeps_unicode_and_caps_on_char_boundary() {
        assert_eq!(
            sanitize_file_name("Überraschung 🎉.png"),
            "Überraschung 🎉.png"
        );
        let long = "é".repeat(150); // 300 bytes
        let s = sanitize_file_name(&long);
        assert_eq!(s.len(), 200);
        assert!(s.chars().all(|c| c == 'é'));
        let odd = format!("a{}", "é".repeat(150)); // boundary falls mid-char
        let s = sanitize_file_name(&odd);
        assert_eq!(s.len(), 199);
        let dots = format!("{}.{}", "a".repeat(199), "b".repeat(10));
        assert_eq!(sanitize_file_name(&dots), "a".repeat(199));
    }

    #[test]
    fn disposition_ascii() {
        assert_eq!(
            content_disposition("report.pdf", false),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            content_disposition("my photo.png", true),
            "inline; filename=\"my photo.png\"; filename*=UTF-8''my%20photo.png"
        );
    }

    #[test]
    fn disposition_unicode_and_injection() {
        assert_eq!(
            content_disposition("naïve résumé.txt", false),
            "attachment; filename=\"na_ve r_sum_.txt\"; filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.txt"
        );
        let h = content_disposition("x\"; filename=evil.html\r\nX: y", false);
        assert!(!h.contains('\r') && !h.contains('\n'));
        assert_eq!(h.matches('"').count(), 2, "{h}");
        assert!(h.starts_with("attachment; filename=\"x; filename=evil.htmlX y\""));
        let h = content_disposition("100%.txt", false);
        assert_eq!(
            h,
            "attachment; filename=\"100_.txt\"; filename*=UTF-8''100%25.txt"
        );
        let h = content_disposition("a;b=c'd.txt", false);
        assert!(h.ends_with("filename*=UTF-8''a%3Bb%3Dc%27d.txt"), "{h}");
        assert_eq!(
            content_disposition("", true),
            "inline; filename=\"file\"; filename*=UTF-8''file"
        );
    }

    #[test]
    fn attr_chars_pass_through() {
        assert_eq!(percent_encode("AZaz09!#$&+-.^_`|~"), "AZaz09!#$&+-.^_`|~");
        assert_eq!(
            percent_encode(" ()*,/:;<=>?@[]{}'\"%"),
            "%20%28%29%2A%2C%2F%3A%3B%3C%3D%3E%3F%40%5B%5D%7B%7D%27%22%25"
        );
    }
}
