//! The message index's schema and its fields.

use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};

use crate::tokenizer::TOKENIZER_NAME;

/// The fields of a message document.
#[derive(Clone, Copy)]
pub(crate) struct Fields {
    /// "<conversation>/<seq>": the unique key, for delete-by-term on re-put and delete.
    pub key: Field,
    /// The conversation id as text ("dm:1:2", "g:7"): filter, delete-by-conversation, sort.
    pub conversation: Field,
    pub seq: Field,
    pub sender: Field,
    pub ts_ms: Field,
    /// Who may read the message: the members of a direct conversation; none for a group
    /// (group membership is checked by conversation id at query time).
    pub readers: Field,
    pub body: Field,
}

pub(crate) fn build() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let body_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER_NAME)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        conversation: b.add_text_field("conversation", STRING | STORED | FAST),
        seq: b.add_u64_field("seq", STORED | FAST),
        sender: b.add_u64_field("sender", INDEXED | STORED | FAST),
        ts_ms: b.add_u64_field("ts_ms", INDEXED | STORED | FAST),
        readers: b.add_u64_field("readers", INDEXED),
        body: b.add_text_field("body", body_options),
    };
    (b.build(), fields)
}

/// Field names used by the sort-key collectors.
pub(crate) const TS_MS: &str = "ts_ms";
pub(crate) const CONVERSATION: &str = "conversation";
pub(crate) const SEQ: &str = "seq";
