//! The node-to-node transport: every byte one node sends another goes through here.
//!
//! One TCP connection per peer address, carrying length-prefixed frames. A frame is a
//! versioned [`Envelope`] encoded as MessagePack with field names, so that nodes of adjacent
//! versions can talk during a rolling upgrade. Requests carry an id and the reply names it;
//! many requests are in flight on one connection at once. Payloads are opaque bytes tagged
//! with a [`Channel`]: the cluster crate encodes Raft and membership requests, the actor crate
//! encodes actor messages, each with its own versioned codec.
//!
//! Limits: a frame larger than [`MAX_FRAME_BYTES`] closes the connection; a decode failure is
//! an error reply or a closed connection, never a panic. Fault injection (drop, delay,
//! partition) lives in [`faults`] and is applied on the sending side only, in one place.

mod client;
pub mod faults;
mod frame;
mod server;

pub use client::Transport;
pub use frame::{
    ByteBuf, Channel, Envelope, EnvelopeBody, PeerError, ENVELOPE_VERSION, MAX_FRAME_BYTES,
};
pub use server::{serve, PeerHandler, PeerHandlerFuture};

/// What can go wrong sending a request to a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("peer {addr} unreachable: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("request to {addr} timed out")]
    Timeout { addr: String },
    #[error("connection to {addr} lost before the reply")]
    ConnectionLost { addr: String },
    #[error("peer {addr} answered: {error}")]
    Remote { addr: String, error: PeerError },
    #[error("cannot encode a frame: {0}")]
    Encode(String),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
}
