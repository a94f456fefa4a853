//! chat-media: everything the chat server does with uploaded files, independent of how
//! they are served.
//!
//! This crate owns:
//! - blob files addressed by their SHA-256 ([`blob`]): streaming writes with a size limit,
//!   dedup, verified replica writes, ranged reads;
//! - resumable upload sessions ([`upload`]): chunked, resumable at an offset, even after a
//!   restart, completed into a blob;
//! - content sniffing ([`sniff`]): the type comes from the bytes, never from the name or the
//!   client's `Content-Type`, against an allow-list; SVG/HTML are never inline;
//! - thumbnails ([`thumbs`]) with decompression-bomb protection;
//! - HTTP helpers: `Range` parsing and `multipart/byteranges` framing ([`range`]),
//!   file-name sanitizing and `Content-Disposition` ([`disposition`]).
//!
//! It must NOT depend on RocksDB or `chat-storage`, the cluster, the actors, the node, or
//! any HTTP framework: metadata about who uploaded what lives elsewhere; this crate only
//! deals with files and bytes, and the node wires it to HTTP.
//!
//! Nothing here logs user content (file names, bytes), and no input (client bytes, file
//! names, headers) may cause a panic.

pub mod blob;
pub mod disposition;
pub mod error;
pub mod range;
pub mod sniff;
pub mod thumbs;
pub mod upload;

pub use blob::{BlobHash, BlobInfo, BlobStore, BlobWriter, HEAD_LEN};
pub use disposition::{content_disposition, sanitize_file_name};
pub use error::MediaError;
pub use range::{
    content_range, content_range_unsatisfied, multipart_layout, new_boundary, parse_range,
    ByteRange, MultipartLayout, MultipartPart, RangeRequest,
};
pub use sniff::{sniff, MediaKind, Sniffed};
pub use thumbs::{probe, thumbnails, ImageLimits, ThumbSize, Thumbnail};
pub use upload::{UploadAppender, UploadId, UploadState, Uploads};
