//! Resumable uploads (tus-like): a client creates an upload with a declared size, sends the
//! bytes in chunks at explicit offsets, can resume after a dropped connection or a server
//! restart, and completes it into a blob.
//!
//! On disk, in `root/uploads`: `<id>.json` (a versioned sidecar, `{"v":1,...}`) and
//! `<id>.part` (the data received so far; its length is the upload's offset).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::blob::{sync_dir, BlobHash, BlobInfo, BlobStore, HEAD_LEN};
use crate::disposition::sanitize_file_name;
use crate::error::MediaError;

/// Version written in (and required of) upload sidecar files.
pub const SIDECAR_VERSION: u32 = 1;

const READ_CHUNK: usize = 64 * 1024;

/// An upload's id: 32 lowercase hex characters (random), safe to use in a path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// A new random id (128 bits).
    pub fn random() -> Self {
        UploadId(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// Accepts exactly 32 lowercase hex characters.
    pub fn parse(s: &str) -> Result<Self, MediaError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(UploadId(s.to_owned()))
        } else {
            Err(MediaError::InvalidUploadId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.0)
    }
}

impl FromStr for UploadId {
    type Err = MediaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UploadId::parse(s)
    }
}

impl Serialize for UploadId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UploadId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        UploadId::parse(&s).map_err(|_| serde::de::Error::custom("invalid upload id"))
    }
}

/// The state of an upload as reported to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub id: UploadId,
    pub owner: u64,
    /// Sanitized file name.
    pub name: String,
    /// Declared total size in bytes.
    pub size: u64,
    /// Bytes received and stored so far; the next chunk must start here.
    pub offset: u64,
    pub created_ms: u64,
}

/// The `<id>.json` file. The offset is not stored: it is the length of `<id>.part`.
#[derive(Serialize, Deserialize)]
struct Sidecar {
    v: u32,
    id: UploadId,
    owner: u64,
    name: String,
    size: u64,
    created_ms: u64,
}

impl Sidecar {
    fn state(self, offset: u64) -> UploadState {
        UploadState {
            id: self.id,
            owner: self.owner,
            name: self.name,
            size: self.size,
            offset,
            created_ms: self.created_ms,
        }
    }
}

fn lock(set: &Mutex<HashSet<String>>) -> MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks an upload id as in use by this process until dropped.
struct BusyGuard {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl BusyGuard {
    fn acquire(store: &BlobStore, id: &UploadId) -> Result<Self, MediaError> {
        let set = store.upload_busy().clone();
        if !lock(&set).insert(id.as_str().to_owned()) {
            return Err(MediaError::UploadBusy);
        }
        Ok(BusyGuard {
            set,
            id: id.as_str().to_owned(),
        })
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

fn corrupt_sidecar() -> MediaError {
    MediaError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        "unreadable upload sidecar",
    ))
}

async fn remove_if_exists(path: &Path) -> Result<(), MediaError> {
    match fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Resumable uploads stored next to a [`BlobStore`]. Cheap to clone. Concurrent writers
/// on one upload are refused with `UploadBusy` (tracked per `BlobStore`, in process).
#[derive(Debug, Clone)]
pub struct Uploads {
    store: BlobStore,
    dir: PathBuf,
}

impl Uploads {
    /// Uploads kept in the store's `root/uploads` directory.
    pub fn new(store: &BlobStore) -> Self {
        Uploads {
            store: store.clone(),
            dir: store.uploads_dir().to_path_buf(),
        }
    }

    fn json_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn json_tmp_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.json.tmp"))
    }

    fn part_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    async fn read_sidecar(&self, id: &UploadId) -> Result<Sidecar, MediaError> {
        let bytes = fs::read(self.json_path(id))
            .await
            .map_err(MediaError::from_io_not_found)?;
        let sidecar: Sidecar = serde_json::from_slice(&bytes).map_err(|_| corrupt_sidecar())?;
        if sidecar.v != SIDECAR_VERSION || sidecar.id != *id {
            return Err(corrupt_sidecar());
        }
        Ok(sidecar)
    }

    /// The sidecar of `owner`'s upload; another owner's upload is `NotFound`.
    async fn load(&self, id: &UploadId, owner: u64) -> Result<Sidecar, MediaError> {
        let sidecar = self.read_sidecar(id).await?;
        if sidecar.owner != owner {
            return Err(MediaError::NotFound);
        }
        Ok(sidecar)
    }

    async fn part_len(&self, id: &UploadId) -> Result<u64, MediaError> {
        Ok(fs::metadata(self.part_path(id))
            .await
            .map_err(MediaError::from_io_not_found)?
            .len())
    }

    async fn write_sidecar(&self, sidecar: &Sidecar) -> Result<(), MediaError> {
        let bytes = serde_json::to_vec(sidecar).map_err(io::Error::other)?;
        let tmp = self.json_tmp_path(&sidecar.id);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .await?;
        file.write_all(&bytes).await?;
        file.sync_all().await?;
        drop(file);
        fs::rename(&tmp, self.json_path(&sidecar.id)).await?;
        sync_dir(&self.dir).await
    }

    /// Starts an upload of `size` bytes (`TooLarge` if above `limit`). Size 0 is allowed:
    /// such an upload can be completed at once.
    pub async fn create(
        &self,
        owner: u64,
        name: &str,
        size: u64,
        limit: u64,
        now_ms: u64,
    ) -> Result<UploadState, MediaError> {
        if size > limit {
            return Err(MediaError::TooLarge { limit });
        }
        let id = UploadId::random();
        let _guard = BusyGuard::acquire(&self.store, &id)?;
        let sidecar = Sidecar {
            v: SIDECAR_VERSION,
            id: id.clone(),
            owner,
            name: sanitize_file_name(name),
            size,
            created_ms: now_ms,
        };
        let created = async {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.part_path(&id))
                .await?;
            self.write_sidecar(&sidecar).await
        }
        .await;
        if let Err(e) = created {
            let _ = remove_if_exists(&self.part_path(&id)).await;
            let _ = remove_if_exists(&self.json_tmp_path(&id)).await;
            let _ = remove_if_exists(&self.json_path(&id)).await;
            return Err(e);
        }
        Ok(sidecar.state(0))
    }

    /// The upload's state; `NotFound` if it does not exist or belongs to another owner.
    pub async fn status(&self, id: &UploadId, owner: u64) -> Result<UploadState, MediaError> {
        let sidecar = self.load(id, owner).await?;
        let offset = self.part_len(id).await?;
        Ok(sidecar.state(offset))
    }

    /// Opens the upload for appending at `offset`, which must equal the bytes stored so far
    /// (else `OffsetMismatch { expected }`). Only one appender per upload at a time
    /// (`UploadBusy`); it is released when the appender is finished or dropped.
    pub async fn append(
        &self,
        id: &UploadId,
        owner: u64,
        offset: u64,
    ) -> Result<UploadAppender, MediaError> {
        let sidecar = self.load(id, owner).await?;
        let guard = BusyGuard::acquire(&self.store, id)?;
        let part = self.part_path(id);
        let file = OpenOptions::new()
            .append(true)
            .open(&part)
            .await
            .map_err(MediaError::from_io_not_found)?;
        let current = file.metadata().await?.len();
        if offset != current {
            return Err(MediaError::OffsetMismatch { expected: current });
        }
        Ok(UploadAppender {
            file: Some(file),
            part,
            state: sidecar.state(current),
            _guard: guard,
        })
    }

    /// Turns a fully received upload (offset == size, else `OffsetMismatch { expected: size }`)
    /// into a blob: hashes the data streaming, moves the file into the blob store and
    /// removes the upload. Returns the blob, the first [`HEAD_LEN`] bytes (for sniffing) and
    /// the sanitized file name.
    pub async fn complete(
        &self,
        id: &UploadId,
        owner: u64,
        durable: bool,
    ) -> Result<(BlobInfo, Vec<u8>, String), MediaError> {
        let sidecar = self.load(id, owner).await?;
        let _guard = BusyGuard::acquire(&self.store, id)?;
        let part = self.part_path(id);
        let mut file = File::open(&part)
            .await
            .map_err(MediaError::from_io_not_found)?;
        let len = file.metadata().await?.len();
        if len != sidecar.size {
            return Err(MediaError::OffsetMismatch {
                expected: sidecar.size,
            });
        }
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(HEAD_LEN.min(usize::try_from(len).unwrap_or(HEAD_LEN)));
        let mut buf = vec![0u8; READ_CHUNK];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            hasher.update(chunk);
            if head.len() < HEAD_LEN {
                let take = (HEAD_LEN - head.len()).min(n);
                head.extend_from_slice(&chunk[..take]);
            }
            total += n as u64;
        }
        if total != sidecar.size {
            return Err(MediaError::OffsetMismatch {
                expected: sidecar.size,
            });
        }
        if durable {
            file.sync_all().await?;
        }
        drop(file);
        let hash = BlobHash(hasher.finalize().into());
        self.store.adopt(&part, &hash, durable).await?;
        remove_if_exists(&self.json_path(id)).await?;
        Ok((BlobInfo { hash, size: total }, head, sidecar.name))
    }

    /// Deletes the upload and its data; `NotFound` for another owner's upload.
    pub async fn cancel(&self, id: &UploadId, owner: u64) -> Result<(), MediaError> {
        self.load(id, owner).await?;
        let _guard = BusyGuard::acquire(&self.store, id)?;
        self.remove_files(id).await
    }

    async fn remove_files(&self, id: &UploadId) -> Result<(), MediaError> {
        remove_if_exists(&self.part_path(id)).await?;
        remove_if_exists(&self.json_tmp_path(id)).await?;
        remove_if_exists(&self.json_path(id)).await
    }

    /// Removes uploads created more than `older_than_ms` before `now_ms`, unreadable
    /// sidecars and orphaned data files. Uploads in use are skipped. Returns how many
    /// uploads were removed.
    pub async fn expire(&self, older_than_ms: u64, now_ms: u64) -> Result<usize, MediaError> {
        let mut ids = HashSet::new();
        let mut entries = fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stem = name
                .strip_suffix(".json")
                .or_else(|| name.strip_suffix(".json.tmp"))
                .or_else(|| name.strip_suffix(".part"));
            if let Some(id) = stem.and_then(|s| UploadId::parse(s).ok()) {
                ids.insert(id);
            }
        }
        let mut removed = 0usize;
        for id in ids {
            let Ok(_guard) = BusyGuard::acquire(&self.store, &id) else {
                continue;
            };
            let stale = match self.read_sidecar(&id).await {
                Ok(sidecar) => {
                    now_ms.saturating_sub(sidecar.created_ms) > older_than_ms
                        || self.part_len(&id).await.is_err()
                }
                // Missing (orphaned data) or unreadable sidecar.
                Err(_) => true,
            };
            if stale {
                match self.remove_files(&id).await {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(error = %e, "could not remove an expired upload"),
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "expired uploads");
        }
        Ok(removed)
    }
}

/// Writes chunks to one upload. Each chunk is written through to the file before
/// `write` returns, so a dropped connection loses nothing that was acknowledged.
pub struct UploadAppender {
    file: Option<File>,
    part: PathBuf,
    state: UploadState,
    _guard: BusyGuard,
}

impl fmt::Debug for UploadAppender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadAppender")
            .field("id", &self.state.id)
            .field("offset", &self.state.offset)
            .field("size", &self.state.size)
            .finish_non_exhaustive()
    }
}

impl UploadAppender {
    /// Appends a chunk. A chunk that would go past the declared size is refused whole with
    /// `TooLarge { limit: size }` (earlier chunks stay).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), MediaError> {
        let Some(file) = self.file.as_mut() else {
            return Err(MediaError::Io(io::Error::other(
                "upload appender is closed after an error",
            )));
        };
        let size = self.state.size;
        let new_offset = u64::try_from(chunk.len())
            .ok()
            .and_then(|n| self.state.offset.checked_add(n))
            .filter(|o| *o <= size)
            .ok_or(MediaError::TooLarge { limit: size })?;
        if chunk.is_empty() {
            return Ok(());
        }
        let written = async {
            file.write_all(chunk).await?;
            file.flush().await
        }
        .await;
        if let Err(e) = written {
            // The file may now hold part of the chunk; `status` reports the real length.
            self.file = None;
            return Err(e.into());
        }
        self.state.offset = new_offset;
        Ok(())
    }

    /// The upload's state including the bytes written so far.
    pub fn state(&self) -> &UploadState {
        &self.state
    }

    /// Flushes and fsyncs; returns the state with the stored offset.
    pub async fn finish(mut self) -> Result<UploadState, MediaError> {
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
            file.sync_all().await?;
        }
        let offset = fs::metadata(&self.part)
            .await
            .map_err(MediaError::from_io_not_found)?
            .len();
        self.state.offset = offset;
        Ok(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_id_format() {
        let id = UploadId::random();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(UploadId::parse(id.as_str()).expect("own ids parse"), id);
        assert_ne!(UploadId::random(), id);
        assert_eq!(id.to_string(), id.as_str());
        for bad in [
            "",
            "../../../../etc/passwd",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcde/",
            "0123456789abcdef0123456789abcdeé",
        ] {
            assert!(
                matches!(UploadId::parse(bad), Err(MediaError::InvalidUploadId)),
                "{bad}"
            );
        }
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(
            serde_json::from_str::<UploadId>(&json).expect("deserialize"),
            id
        );
        assert!(serde_json::from_str::<UploadId>("\"../x\"").is_err());
    }
}
