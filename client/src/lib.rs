//! chat-client: the async Rust SDK over the public protocol.
//!
//! Owns the client side of protocol v1: [`HttpApi`] for the REST endpoints (register, login,
//! logout, history, profiles, settings, sessions, contacts, blocks) and [`Connection`] for the
//! WebSocket (the hello/welcome handshake, requests matched to their replies by id, pushed
//! messages, close codes, and the same social calls). The CLI, the load tester and the
//! end-to-end tests reach the server only through this crate.
//!
//! Must not depend on anything of the server: only `chat-types` and the wire. If a test needs
//! to know something the protocol does not say, the protocol is what changes, not this crate's
//! dependencies. Nothing the server sends may make this crate panic: every frame is decoded
//! fallibly and an unexpected one becomes a [`ClientError::Protocol`] or a [`RawEvent`].

mod connection;
mod error;
mod http;
mod media;
mod routing;

pub use connection::{
    Ack, CloseInfo, Connection, ConnectionConfig, HistoryPage, RawEvent, Welcome,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use error::ClientError;
pub use http::HttpApi;
pub use media::{Download, MessageSearch};

pub use chat_types;
