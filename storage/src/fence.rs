//! Epoch fences shared by every replicated log: the newest owner epoch a log has seen.
//! Conversation logs are fenced under their 17-byte conversation key, user event logs under
//! `[0xEE] ++ user id (8, BE)`, so the two never collide in `conv_fence`.

use chat_types::{RingEpoch, UserId};
use rocksdb::WriteBatch;

use crate::db::{Store, CF_FENCE};
use crate::error::StorageError;
use crate::keys::{decode_u64_v1, encode_u64_v1};

const USER_FENCE_TAG: u8 = 0xEE;

pub(crate) fn user_fence_key(user: UserId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = USER_FENCE_TAG;
    k[1..].copy_from_slice(&user.0.to_be_bytes());
    k
}

pub(crate) fn read(store: &Store, key: &[u8]) -> Result<RingEpoch, StorageError> {
    match store.db().get_pinned_cf(store.cf(CF_FENCE)?, key)? {
        Some(v) => Ok(RingEpoch(decode_u64_v1(CF_FENCE, key, &v)?)),
        None => Ok(RingEpoch(0)),
    }
}

/// Refuses a write from `epoch` to a log whose fence is the newer `fence`.
pub(crate) fn check(fence: RingEpoch, epoch: RingEpoch) -> Result<(), StorageError> {
    if epoch < fence {
        return Err(StorageError::StaleEpoch {
            epoch: epoch.0,
            fence: fence.0,
        });
    }
    Ok(())
}

/// Adds "the fence is now `epoch`" to a batch (callers have checked it is not older).
pub(crate) fn put(
    store: &Store,
    batch: &mut WriteBatch,
    key: &[u8],
    epoch: RingEpoch,
) -> Result<(), StorageError> {
    batch.put_cf(store.cf(CF_FENCE)?, key, encode_u64_v1(epoch.0));
    Ok(())
}
