//! Frames on the peer wire: `u32 BE length ++ MessagePack(Envelope)`.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted in either direction (a Raft snapshot travels in one frame).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Version of [`Envelope`]. A node refuses envelopes of a version it does not know.
pub const ENVELOPE_VERSION: u16 = 1;

/// Which subsystem a payload is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// Raft RPCs between metadata replicas.
    Raft,
    /// Cluster membership and forwarded metadata writes.
    Cluster,
    /// Messages between actors on different nodes.
    Actor,
    /// Media bytes between nodes: reads of a blob and pulls of a new one onto its replicas.
    Media,
    /// Search queries fanned out to every node's index.
    Search,
}

/// An error a peer sends back instead of a reply payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    #[error("payload could not be decoded: {0}")]
    BadPayload(String),
    #[error("envelope version {0} is not supported")]
    UnsupportedVersion(u16),
    #[error("handler failed: {0}")]
    Handler(String),
    #[error("node is shutting down")]
    ShuttingDown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub id: u64,
    pub body: EnvelopeBody,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EnvelopeBody {
    Request {
        channel: Channel,
        #[serde(with = "serde_bytes_compat")]
        payload: Vec<u8>,
    },
    Reply {
        result: Result<ByteBuf, PeerError>,
    },
}

/// Bytes encoded as a MessagePack bin, not an array of integers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteBuf(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl Envelope {
    pub fn encode(&self) -> Result<Vec<u8>, super::TransportError> {
        let body = rmp_serde::to_vec_named(self)
            .map_err(|e| super::TransportError::Encode(e.to_string()))?;
        if body.len() > MAX_FRAME_BYTES {
            return Err(super::TransportError::TooLarge(body.len()));
        }
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, PeerError> {
        let env: Envelope =
            rmp_serde::from_slice(bytes).map_err(|e| PeerError::BadPayload(e.to_string()))?;
        if env.version != ENVELOPE_VERSION {
            return Err(PeerError::UnsupportedVersion(env.version));
        }
        Ok(env)
    }
}

/// Reads one frame body; `Ok(None)` on a clean end of stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes exceeds the limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_refuses_other_versions() {
        let env = Envelope {
            version: ENVELOPE_VERSION,
            id: 7,
            body: EnvelopeBody::Request {
                channel: Channel::Actor,
                payload: vec![1, 2, 3],
            },
        };
        let bytes = env.encode().expect("encode");
        assert_eq!(
            u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize,
            bytes.len() - 4
        );
        let back = Envelope::decode(&bytes[4..]).expect("decode");
        assert_eq!(back.id, 7);
        assert!(matches!(
            back.body,
            EnvelopeBody::Request { channel: Channel::Actor, ref payload } if payload == &[1, 2, 3]
        ));
        let mut other = env.clone();
        other.version = 99;
        let bytes = other.encode().expect("encode");
        assert_eq!(
            Envelope::decode(&bytes[4..]).map(|_| ()),
            Err(PeerError::UnsupportedVersion(99))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [&b""[..], b"\xff\xff", b"\x93\x01\x02", &[0x80; 64]] {
            assert!(Envelope::decode(junk).is_err());
        }
    }
}
