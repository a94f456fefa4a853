//! Printing: text for people, one JSON object per line for scripts (`--json`), and the
//! shared formatting of messages (time, sender, what a message refers to).

use std::io::Write;

use chat_types::{Attachment, Message, MessageRef};
use serde::Serialize;

use crate::error::CliError;

/// How results are printed.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// One line on stdout, flushed (so that `chat tail | ...` sees each message at once).
    pub fn line(&self, text: &str) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(|e| CliError::io("cannot write to stdout", &e))
    }

    /// `value` as one JSON line on stdout.
    pub fn json_line<T: Serialize>(&self, value: &T) -> Result<(), CliError> {
        let text = serde_json::to_string(value)
            .map_err(|e| CliError::new("io", format!("cannot encode the output: {e}")))?;
        self.line(&text)
    }

    /// A text line, or the JSON line of `value` under `--json`.
    pub fn result<T: Serialize>(&self, text: &str, value: &T) -> Result<(), CliError> {
        if self.json {
            self.json_line(value)
        } else {
            self.line(text)
        }
    }

    /// A progress note for people, on stderr (also under `--json`: stdout stays data only).
    pub fn note(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }

    /// An error on stderr: `error: CODE: MESSAGE`, or under `--json`
    /// `{"error":{"code","message","retry"}}`.
    pub fn error(&self, e: &CliError) {
        let text = if self.json {
            serde_json::json!({"error": {"code": e.code, "message": e.message, "retry": e.retry}})
                .to_string()
        } else {
            format!("error: {}: {}", e.code, sanitize(&e.message))
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }
}

/// A message as `--json` prints it: the wire message plus the sender's username when known.
#[derive(Serialize)]
pub struct MessageOut<'a> {
    #[serde(flatten)]
    pub message: &'a Message,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_username: Option<&'a str>,
}

/// `ts_ms` as local date and time, `2026-05-01 14:02:11`.
pub fn format_time(ts_ms: u64) -> String {
    use chrono::TimeZone;
    i64::try_from(ts_ms)
        .ok()
        .and_then(|ms| chrono::Local.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| format!("@{ts_ms}ms"))
}

/// `ts_ms` as local time of day, `14:02`.
pub fn format_clock(ts_ms: u64) -> String {
    use chrono::TimeZone;
    i64::try_from(ts_ms)
        .ok()
        .and_then(|ms| chrono::Local.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%H:%M").to_string())
        .unwrap_or_else(|| "--:--".into())
}

/// Server text made safe for a terminal: control characters (escape sequences among them)
/// become U+FFFD, except newlines and tabs, which become spaces.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// The body with what it refers to: `(reply to #3) yes`, `(edit of #3) lunch at 1?`,
/// `(deleted #2)`, `(reaction to #1) 👍`.
pub fn body_text(message: &Message) -> String {
    let body = sanitize(&message.body);
    match message.refers {
        None => body,
        Some(MessageRef::Reply { seq }) => format!("(reply to #{seq}) {body}"),
        Some(MessageRef::Edit { seq }) => format!("(edit of #{seq}) {body}"),
        Some(MessageRef::Delete { seq }) => format!("(deleted #{seq})"),
        Some(MessageRef::Reaction { seq }) => format!("(reaction to #{seq}) {body}"),
        // Group changes and whatever later protocol versions add: shown by their wire form.
        Some(other) => {
            let what = serde_json::to_value(other)
                .ok()
                .and_then(|v| match v {
                    serde_json::Value::Object(map) => Some(
                        map.iter()
                            .map(|(k, v)| match v {
                                serde_json::Value::String(s) if k == "kind" => s.clone(),
                                serde_json::Value::String(s) => format!("{k} {s}"),
                                other => format!("{k} {other}"),
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    _ => None,
                })
                .unwrap_or_else(|| "change".to_owned());
            let what = sanitize(&what);
            if body.is_empty() {
                format!("({what})")
            } else {
                format!("({what}) {body}")
            }
        }
    }
}

/// `#3 2026-05-01 14:02:11 bob: hello`.
pub fn message_line(message: &Message, sender: &str) -> String {
    let line = format!(
        "#{} {} {}: {}",
        message.seq,
        format_time(message.ts_ms),
        sanitize(sender),
        body_text(message)
    );
    // A message with only attachments has an empty body: no trailing space.
    line.trim_end().to_owned()
}

/// The message line followed by one line per attachment (see [`attachment_line`]).
pub fn message_text(message: &Message, sender: &str, prefix: &str) -> String {
    let mut text = format!("{prefix}{}", message_line(message, sender));
    for a in &message.attachments {
        text.push('\n');
        text.push_str(&attachment_line(a));
    }
    text
}

/// `  📎 cat.png (image/png, 47.1 KiB, 800x600) media 9f2c…e1`: what `chat download` takes.
pub fn attachment_line(a: &Attachment) -> String {
    let mut details = vec![sanitize(&a.mime), format_size(a.size)];
    if let (Some(w), Some(h)) = (a.width, a.height) {
        details.push(format!("{w}x{h}"));
    }
    format!(
        "  \u{1f4ce} {} ({}) media {}",
        sanitize(&a.name),
        details.join(", "),
        a.id
    )
}

/// A byte count for people: `512 B`, `47.1 KiB`, `12.0 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision loss above 2^53 bytes does not matter for one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Whether the text output may carry terminal styling: stdout (or stderr) is a terminal,
/// `NO_COLOR` is unset and the terminal is not `dumb`.
pub fn styled(is_terminal: bool) -> bool {
    is_terminal
        && !matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty())
        && std::env::var("TERM").ok().as_deref() != Some("dumb")
}

/// Splits `snippet` at the half-open `highlights` (in Unicode code points, as the server
/// sends them) into pieces and whether each is a match. Ranges out of bounds are clipped,
/// empty or reversed ones ignored, overlapping ones merged: nothing the server sends panics.
pub fn highlight_pieces(snippet: &str, highlights: &[(usize, usize)]) -> Vec<(String, bool)> {
    let chars: Vec<char> = snippet.chars().collect();
    let mut ranges: Vec<(usize, usize)> = highlights
        .iter()
        .map(|&(s, e)| (s.min(chars.len()), e.min(chars.len())))
        .filter(|(s, e)| s < e)
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut pieces = Vec::new();
    let mut at = 0;
    for (s, e) in merged {
        if s > at {
            pieces.push((chars[at..s].iter().collect(), false));
        }
        pieces.push((chars[s..e].iter().collect(), true));
        at = e;
    }
    if at < chars.len() || pieces.is_empty() {
        pieces.push((chars[at..].iter().collect(), false));
    }
    pieces
}

/// The snippet, sanitized, with its matches marked: bold reverse video when `styled`, else
/// in brackets (`we meet in [Beijing]`).
pub fn marked_snippet(snippet: &str, highlights: &[(usize, usize)], styled: bool) -> String {
    // `sanitize` maps each character to exactly one, so the offsets still hold.
    let clean = sanitize(snippet);
    let mut out = String::new();
    for (piece, hit) in highlight_pieces(&clean, highlights) {
        match (hit, styled) {
            (false, _) => out.push_str(&piece),
            (true, true) => out.push_str(&format!("\u{1b}[1;7m{piece}\u{1b}[0m")),
            (true, false) => out.push_str(&format!("[{piece}]")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chat_types::{ClientMsgId, ConversationId, Seq, UserId};

    use super::*;

    fn message(body: &str, refers: Option<MessageRef>) -> Message {
        Message {
            conversation: ConversationId::direct(UserId(1), UserId(2)),
            seq: Seq(4),
            sender: UserId(2),
            client_msg_id: ClientMsgId::new("c").unwrap(),
            body: body.into(),
            ts_ms: 0,
            refers,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(
            sanitize("a\u{1b}[2Jb\nc\td\u{7f}"),
            "a\u{fffd}[2Jb c d\u{fffd}"
        );
    }

    #[test]
    fn message_lines_show_seq_sender_and_reference() {
        let line = message_line(&message("hi", None), "bob");
        assert!(line.starts_with("#4 "), "{line}");
        assert!(line.ends_with(" bob: hi"), "{line}");
        let reply = message("yes", Some(MessageRef::Reply { seq: Seq(1) }));
        assert_eq!(body_text(&reply), "(reply to #1) yes");
        let del = message("", Some(MessageRef::Delete { seq: Seq(2) }));
        assert_eq!(body_text(&del), "(deleted #2)");
    }

    #[test]
    fn json_messages_are_the_wire_message_plus_the_sender_name() {
        let m = message("hi", None);
        let v = serde_json::to_value(MessageOut {
            message: &m,
            sender_username: Some("bob"),
        })
        .unwrap();
        assert_eq!(v["conversation"], "dm:1:2");
        assert_eq!(v["seq"], 4);
        assert_eq!(v["body"], "hi");
        assert_eq!(v["sender_username"], "bob");
    }

    #[test]
    fn attachments_print_under_their_message() {
        let mut m = message("", None);
        m.attachments.push(Attachment {
            id: chat_types::MediaId::from_random([0xab; 16]),
            mime: "image/png".into(),
            kind: chat_types::MediaKind::Image,
            size: 48_213,
            name: "cat\u{1b}.png".into(),
            width: Some(800),
            height: Some(600),
            thumbnails: Vec::new(),
        });
        let text = message_text(&m, "bob", "");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with(" bob:"), "{text}");
        assert_eq!(
            lines[1],
            format!(
                "  \u{1f4ce} cat\u{fffd}.png (image/png, 47.1 KiB, 800x600) media {}",
                "ab".repeat(16)
            )
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(12 * 1024 * 1024), "12.0 MiB");
        assert!(format_size(u64::MAX).ends_with("PiB"));
    }

    #[test]
    fn highlights_are_marked_by_code_point_and_never_panic() {
        assert_eq!(
            marked_snippet("我们明天去北京开会", &[(5, 7)], false),
            "我们明天去[北京]开会"
        );
        assert_eq!(
            marked_snippet("a cafe b", &[(2, 6)], true),
            "a \u{1b}[1;7mcafe\u{1b}[0m b"
        );
        // Overlapping, reversed, empty and out-of-range ranges.
        assert_eq!(
            marked_snippet("abcdef", &[(4, 99), (1, 3), (2, 4), (5, 2), (0, 0)], false),
            "a[bcdef]"
        );
        assert_eq!(marked_snippet("", &[(0, 3)], false), "");
        assert_eq!(marked_snippet("x\u{1b}y", &[(2, 3)], false), "x\u{fffd}[y]");
    }

    #[test]
    fn absurd_timestamps_still_format() {
        assert!(format_time(u64::MAX).starts_with('@'));
        assert_eq!(format_clock(u64::MAX), "--:--");
    }
}
