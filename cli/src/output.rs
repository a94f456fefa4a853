//! Printing: text for people, one JSON object per line for scripts (`--json`), and the
//! shared formatting of messages (time, sender, what a message refers to).

use std::io::Write;

use chat_types::{Message, MessageRef};
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
    format!(
        "#{} {} {}: {}",
        message.seq,
        format_time(message.ts_ms),
        sanitize(sender),
        body_text(message)
    )
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
    fn absurd_timestamps_still_format() {
        assert!(format_time(u64::MAX).starts_with('@'));
        assert_eq!(format_clock(u64::MAX), "--:--");
    }
}
