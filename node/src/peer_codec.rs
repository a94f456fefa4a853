//! The node's own peer payloads (media and search channels):
//! `[version] ++ MessagePack with field names`. Decoding is total: bad bytes are an error.

use chat_cluster::transport::PeerError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `v` as a payload of format `version`.
pub fn encode<T: Serialize>(version: u8, v: &T) -> Result<Vec<u8>, PeerError> {
    let mut out = vec![version];
    rmp_serde::encode::write_named(&mut out, v).map_err(|e| PeerError::Handler(e.to_string()))?;
    Ok(out)
}

/// A payload of format `version` (`what` names it in errors).
pub fn decode<T: DeserializeOwned>(version: u8, what: &str, bytes: &[u8]) -> Result<T, PeerError> {
    match bytes.split_first() {
        Some((v, rest)) if *v == version => {
            rmp_serde::from_slice(rest).map_err(|e| PeerError::BadPayload(e.to_string()))
        }
        Some((v, _)) => Err(PeerError::BadPayload(format!(
            "{what} payload version {v} is not supported"
        ))),
        None => Err(PeerError::BadPayload(format!("empty {what} payload"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_versions_and_junk() {
        let bytes = encode(3, &vec![1u32, 2]).expect("encode");
        assert_eq!(
            decode::<Vec<u32>>(3, "x", &bytes).expect("decode"),
            vec![1, 2]
        );
        assert!(decode::<Vec<u32>>(4, "x", &bytes).is_err());
        assert!(decode::<Vec<u32>>(3, "x", &[]).is_err());
        assert!(decode::<Vec<u32>>(3, "x", &[3, 0xc1]).is_err());
    }
}
