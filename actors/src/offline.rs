//! Offline push: when a message reaches a user with no live connection anywhere, the user's
//! session hands a notice to the node's push sink (a webhook to a push gateway, in the node).
//! The actor crate only decides when; how the notice leaves the cluster is the node's.

use chat_types::{EventSeq, Message, UserId};

/// One "you have a new message" for a user who is not connected.
#[derive(Clone, Debug)]
pub struct OfflineNotice {
    pub user: UserId,
    pub event_seq: EventSeq,
    pub message: Message,
    /// False when the user asked for notifications without sender or preview.
    pub preview: bool,
}

/// Where notices go. Must not block: queue and return.
pub trait OfflinePush: Send + Sync {
    fn notify(&self, notice: OfflineNotice);
}
