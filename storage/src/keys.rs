//! Key and value codecs. Keys are fixed-width big-endian so that RocksDB's byte order is the
//! numeric order; every value starts with a one-byte format version.

use chat_types::{ConversationId, Seq, UserId};

use crate::error::StorageError;

pub const CONV_LEN: usize = ConversationId::KEY_LEN;
pub const MSG_KEY_LEN: usize = CONV_LEN + 8;

/// `conv ++ seq`, the key of one message.
pub fn message_key(conv: &ConversationId, seq: Seq) -> [u8; MSG_KEY_LEN] {
    let mut k = [0u8; MSG_KEY_LEN];
    k[..CONV_LEN].copy_from_slice(&conv.to_key());
    k[CONV_LEN..].copy_from_slice(&seq.0.to_be_bytes());
    k
}

/// Splits a message key into its conversation and seq.
pub fn split_message_key(key: &[u8]) -> Option<(ConversationId, Seq)> {
    if key.len() != MSG_KEY_LEN {
        return None;
    }
    let conv = ConversationId::from_key(&key[..CONV_LEN])?;
    let seq = u64::from_be_bytes(key[CONV_LEN..].try_into().ok()?);
    Some((conv, Seq(seq)))
}

/// `conv ++ sender ++ client_msg_id`, the key of one dedup record.
pub fn dedup_key(conv: &ConversationId, sender: UserId, client_msg_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(CONV_LEN + 8 + client_msg_id.len());
    k.extend_from_slice(&conv.to_key());
    k.extend_from_slice(&sender.0.to_be_bytes());
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

/// Format version 1 of a stored u64 (heads, dedup seqs): `[1] ++ u64 BE`.
pub fn encode_u64_v1(v: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = 1;
    out[1..].copy_from_slice(&v.to_be_bytes());
    out
}

pub fn decode_u64_v1(cf: &'static str, key: &[u8], value: &[u8]) -> Result<u64, StorageError> {
    match value.first() {
        Some(1) if value.len() == 9 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&value[1..]);
            Ok(u64::from_be_bytes(b))
        }
        Some(1) | None => Err(StorageError::corrupt(cf, key)),
        Some(&version) => Err(StorageError::UnknownVersion { cf, version }),
    }
}

/// The buffer [`encode_versioned`] starts with: a 64-byte message body with its record fits.
const ENCODE_CAPACITY: usize = 256;

/// Encodes a serde value as `[version] ++ MessagePack with field names`.
pub fn encode_versioned<T: serde::Serialize>(
    cf: &'static str,
    version: u8,
    value: &T,
) -> Result<Vec<u8>, StorageError> {
    // Grown from one byte, the buffer was reallocated about five times per record: with
    // the other serialisers' growth, 3.6% of a flood's CPU in `scripts/profile`.
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    out.push(version);
    rmp_serde::encode::write_named(&mut out, value).map_err(|e| StorageError::Encode {
        cf,
        detail: e.to_string(),
    })?;
    Ok(out)
}

/// Decodes what [`encode_versioned`] wrote, refusing any other version.
pub fn decode_versioned<T: serde::de::DeserializeOwned>(
    cf: &'static str,
    version: u8,
    key: &[u8],
    value: &[u8],
) -> Result<T, StorageError> {
    match value.split_first() {
        Some((&v, rest)) if v == version => {
            rmp_serde::from_slice(rest).map_err(|_| StorageError::corrupt(cf, key))
        }
        Some((&v, _)) => Err(StorageError::UnknownVersion { cf, version: v }),
        None => Err(StorageError::corrupt(cf, key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_key_is_conversation_then_big_endian_seq() {
        let conv = ConversationId::direct(UserId(1), UserId(2));
        let k = message_key(&conv, Seq(0x0102));
        assert_eq!(&k[..17], &conv.to_key());
        assert_eq!(&k[17..], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(split_message_key(&k), Some((conv, Seq(0x0102))));
    }

    #[test]
    fn message_keys_sort_by_seq_within_a_conversation() {
        let conv = ConversationId::direct(UserId(1), UserId(2));
        let a = message_key(&conv, Seq(255));
        let b = message_key(&conv, Seq(256));
        assert!(a < b);
    }

    #[test]
    fn dedup_key_layout() {
        let conv = ConversationId::direct(UserId(1), UserId(2));
        let k = dedup_key(&conv, UserId(7), "ab");
        assert_eq!(k.len(), 17 + 8 + 2);
        assert_eq!(&k[17..25], &7u64.to_be_bytes());
        assert_eq!(&k[25..], b"ab");
    }

    #[test]
    fn u64_values_are_versioned() {
        let v = encode_u64_v1(9);
        assert_eq!(decode_u64_v1("t", b"k", &v).expect("decodes"), 9);
        assert!(matches!(
            decode_u64_v1("t", b"k", &[2, 0]),
            Err(StorageError::UnknownVersion { version: 2, .. })
        ));
        assert!(decode_u64_v1("t", b"k", &[1, 0]).is_err());
        assert!(decode_u64_v1("t", b"k", &[]).is_err());
    }
}
