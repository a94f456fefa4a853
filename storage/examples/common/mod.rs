//! What the storage benchmarks share: the message they append and how they stop on a bad
//! argument. Not an example of its own (cargo builds `examples/*.rs`).

use chat_storage::AppendRequest;
use chat_types::{ClientMsgId, ConversationId, RingEpoch, UserId};

/// A message body of a typical chat length.
pub const BODY: &str =
    "Are we still on for the release review at three? I moved the notes into the doc.";

/// Message `i` of direct conversation `pair` (users `2 * pair + 1` and `2 * pair + 2`), sent
/// by its first user with client id `m<i>`.
pub fn request(pair: u64, i: u64) -> AppendRequest {
    let sender = UserId(2 * pair + 1);
    AppendRequest {
        conversation: ConversationId::direct(sender, UserId(sender.0 + 1)),
        sender,
        client_msg_id: ClientMsgId::new(format!("m{i}")).expect("client message id"),
        body: BODY.to_owned(),
        ts_ms: 1_795_000_000_000 + i,
        refers: None,
        attachments: Vec::new(),
        epoch: RingEpoch(1),
    }
}

/// The parsed arguments, or the error on stderr and exit code 2.
pub fn args_or_exit<T>(bench: &str, parsed: Result<T, String>) -> T {
    parsed.unwrap_or_else(|e| {
        eprintln!("{bench}: {e}");
        std::process::exit(2);
    })
}
