//! Content-addressed blob files: `root/blobs/<2 hex>/<64 hex>`, named by the SHA-256 of
//! their bytes, written through a temp file in `root/tmp` and renamed into place.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter, Take};

use crate::error::MediaError;

/// How many leading bytes of a blob are kept in memory for content sniffing.
pub const HEAD_LEN: usize = 8 * 1024;

const WRITE_BUFFER: usize = 128 * 1024;

/// The SHA-256 of a blob's content; its identity and file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobHash(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Self, MediaError> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MediaError::InvalidHash);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| MediaError::InvalidHash)?;
        Ok(BlobHash(out))
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.to_hex())
    }
}

impl FromStr for BlobHash {
    type Err = MediaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlobHash::from_hex(s)
    }
}

impl Serialize for BlobHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        BlobHash::from_hex(&s).map_err(|_| serde::de::Error::custom("expected 64 hex characters"))
    }
}

/// A stored blob: its hash and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    pub hash: BlobHash,
    pub size: u64,
}

#[derive(Debug)]
struct StoreInner {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
    /// Upload ids with an active writer/completer in this process (see `upload.rs`).
    upload_busy: Arc<Mutex<HashSet<String>>>,
}

/// The blob directory. Cheap to clone; open it once per process and per root
/// (opening removes leftover temp files).
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<StoreInner>,
}

impl BlobStore {
    /// Creates `root/blobs`, `root/tmp` and `root/uploads` and removes leftovers in `root/tmp`.
    pub fn open(root: &Path) -> Result<Self, MediaError> {
        let inner = StoreInner {
            root: root.to_path_buf(),
            blobs: root.join("blobs"),
            tmp: root.join("tmp"),
            uploads: root.join("uploads"),
            upload_busy: Arc::new(Mutex::new(HashSet::new())),
        };
        std::fs::create_dir_all(&inner.blobs)?;
        std::fs::create_dir_all(&inner.tmp)?;
        std::fs::create_dir_all(&inner.uploads)?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(&inner.tmp)? {
            let entry = entry?;
            let path = entry.path();
            let result = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(error = %e, "could not remove a leftover blob temp file"),
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed leftover blob temp files");
        }
        Ok(BlobStore {
            inner: Arc::new(inner),
        })
    }

    /// The root directory given to [`BlobStore::open`].
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(crate) fn uploads_dir(&self) -> &Path {
        &self.inner.uploads
    }

    pub(crate) fn upload_busy(&self) -> &Arc<Mutex<HashSet<String>>> {
        &self.inner.upload_busy
    }

    fn shard_dir(&self, hash: &BlobHash) -> PathBuf {
        self.inner.blobs.join(hex::encode(&hash.0[..1]))
    }

    /// Where the blob with this hash lives (whether or not it exists).
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        self.shard_dir(hash).join(hash.to_hex())
    }

    /// Starts writing a new blob of at most `limit` bytes into a temp file.
    pub async fn writer(&self, limit: u64) -> Result<BlobWriter, MediaError> {
        let tmp_path = self
            .inner
            .tmp
            .join(format!("{}.tmp", hex::encode(rand::random::<[u8; 16]>())));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .await?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp_path,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            hasher: Sha256::new(),
            written: 0,
            limit,
            head: Vec::new(),
            done: false,
        })
    }

    /// Stores `bytes` as a blob (deduplicated by hash).
    pub async fn put_bytes(&self, bytes: &[u8], durable: bool) -> Result<BlobInfo, MediaError> {
        let limit = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let mut writer = self.writer(limit).await?;
        writer.write(bytes).await?;
        writer.finish(durable).await
    }

    /// Every blob stored here, with its length. Files that are not blobs (wrong name or
    /// shard) are skipped, so a stray file never stops a scan.
    pub async fn list(&self) -> Result<Vec<BlobInfo>, MediaError> {
        let mut out = Vec::new();
        let mut shards = fs::read_dir(&self.inner.blobs).await?;
        while let Some(shard) = shards.next_entry().await? {
            if !shard.file_type().await?.is_dir() {
                continue;
            }
            let mut files = fs::read_dir(shard.path()).await?;
            while let Some(f) = files.next_entry().await? {
                let Some(name) = f.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(hash) = BlobHash::from_hex(&name) else {
                    continue;
                };
                if name != hash.to_hex() || shard.file_name().to_str() != Some(&name[..2]) {
                    continue;
                }
                let meta = f.metadata().await?;
                if meta.is_file() {
                    out.push(BlobInfo {
                        hash,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by_key(|b| b.hash);
        Ok(out)
    }

    /// Whether a blob with this hash is stored.
    pub async fn exists(&self, hash: &BlobHash) -> bool {
        matches!(fs::metadata(self.path(hash)).await, Ok(m) if m.is_file())
    }

    /// The blob's length in bytes; `NotFound` when absent.
    pub async fn size(&self, hash: &BlobHash) -> Result<u64, MediaError> {
        let meta = fs::metadata(self.path(hash))
            .await
            .map_err(MediaError::from_io_not_found)?;
        if !meta.is_file() {
            return Err(MediaError::NotFound);
        }
        Ok(meta.len())
    }

    /// Deletes the blob; `NotFound` when absent.
    pub async fn remove(&self, hash: &BlobHash) -> Result<(), MediaError> {
        fs::remove_file(self.path(hash))
            .await
            .map_err(MediaError::from_io_not_found)
    }

    /// Opens the whole blob for reading; `NotFound` when absent.
    pub async fn open_blob(&self, hash: &BlobHash) -> Result<File, MediaError> {
        File::open(self.path(hash))
            .await
            .map_err(MediaError::from_io_not_found)
    }

    /// Reads up to `max` bytes starting at `offset` (empty at or past the end).
    pub async fn read_at(
        &self,
        hash: &BlobHash,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, MediaError> {
        let mut file = self.open_blob(hash).await?;
        let len = file.metadata().await?.len();
        if offset >= len || max == 0 {
            return Ok(Vec::new());
        }
        let want = (len - offset).min(u64::try_from(max).unwrap_or(u64::MAX));
        file.seek(SeekFrom::Start(offset)).await?;
        let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(max));
        file.take(want).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    /// A reader over bytes `start..=end_inclusive` of the blob, positioned with a seek;
    /// it yields exactly that range and never reads the rest of the file.
    /// `RangeNotSatisfiable` when the range is empty or reaches past the end.
    pub async fn open_range(
        &self,
        hash: &BlobHash,
        start: u64,
        end_inclusive: u64,
    ) -> Result<Take<File>, MediaError> {
        if start > end_inclusive {
            return Err(MediaError::RangeNotSatisfiable);
        }
        let mut file = self.open_blob(hash).await?;
        let len = file.metadata().await?.len();
        if end_inclusive >= len {
            return Err(MediaError::RangeNotSatisfiable);
        }
        file.seek(SeekFrom::Start(start)).await?;
        Ok(file.take(end_inclusive - start + 1))
    }

    /// Moves the finished file `src` (on the same file system) into place as blob `hash`.
    /// If the blob already exists, `src` is deleted instead (dedup).
    pub(crate) async fn adopt(
        &self,
        src: &Path,
        hash: &BlobHash,
        durable: bool,
    ) -> Result<(), MediaError> {
        let shard = self.shard_dir(hash);
        let shard_existed = fs::try_exists(&shard).await?;
        if !shard_existed {
            fs::create_dir_all(&shard).await?;
        }
        let dest = shard.join(hash.to_hex());
        if fs::try_exists(&dest).await? {
            if let Err(e) = fs::remove_file(src).await {
                tracing::warn!(error = %e, "could not remove a duplicate blob temp file");
            }
            return Ok(());
        }
        fs::rename(src, &dest).await?;
        if durable {
            sync_dir(&shard).await?;
            if !shard_existed {
                sync_dir(&self.inner.blobs).await?;
            }
        }
        Ok(())
    }
}

/// fsyncs a directory so that renames and new entries in it survive a crash.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), MediaError> {
    File::open(dir).await?.sync_all().await?;
    Ok(())
}

/// A blob being written: hashes and counts as it goes, enforces the size limit and
/// keeps the first [`HEAD_LEN`] bytes for sniffing. Dropping it unfinished deletes
/// its temp file.
pub struct BlobWriter {
    store: BlobStore,
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: Sha256,
    written: u64,
    limit: u64,
    head: Vec<u8>,
    done: bool,
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobWriter")
            .field("written", &self.written)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

fn writer_closed() -> MediaError {
    MediaError::Io(io::Error::other("blob writer is closed after an error"))
}

impl BlobWriter {
    /// Appends a chunk. Fails with `TooLarge` (and deletes the temp file) as soon as the
    /// total would exceed the limit; the writer is unusable after any error.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), MediaError> {
        if self.file.is_none() {
            return Err(writer_closed());
        }
        let total = u64::try_from(chunk.len())
            .ok()
            .and_then(|n| self.written.checked_add(n))
            .filter(|t| *t <= self.limit);
        let Some(total) = total else {
            self.discard().await;
            return Err(MediaError::TooLarge { limit: self.limit });
        };
        let result = match self.file.as_mut() {
            Some(file) => file.write_all(chunk).await,
            None => return Err(writer_closed()),
        };
        if let Err(e) = result {
            self.discard().await;
            return Err(e.into());
        }
        self.hasher.update(chunk);
        if self.head.len() < HEAD_LEN {
            let take = (HEAD_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.written = total;
        Ok(())
    }

    /// The first bytes written (at most [`HEAD_LEN`]).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The limit given to [`BlobStore::writer`].
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Flushes (and fsyncs when `durable`) and moves the file into place.
    pub async fn finish(self, durable: bool) -> Result<BlobInfo, MediaError> {
        self.finish_inner(None, durable).await
    }

    /// Like [`BlobWriter::finish`], but fails with `HashMismatch` (keeping nothing)
    /// when the content does not hash to `expected`.
    pub async fn finish_expect(
        self,
        expected: BlobHash,
        durable: bool,
    ) -> Result<BlobInfo, MediaError> {
        self.finish_inner(Some(expected), durable).await
    }

    async fn finish_inner(
        mut self,
        expected: Option<BlobHash>,
        durable: bool,
    ) -> Result<BlobInfo, MediaError> {
        let Some(mut file) = self.file.take() else {
            return Err(writer_closed());
        };
        let flushed = async {
            file.flush().await?;
            let file = file.into_inner();
            if durable {
                file.sync_all().await?;
            }
            Ok::<(), io::Error>(())
        }
        .await;
        if let Err(e) = flushed {
            self.discard().await;
            return Err(e.into());
        }
        let hash = BlobHash(std::mem::take(&mut self.hasher).finalize().into());
        if expected.is_some_and(|e| e != hash) {
            self.discard().await;
            return Err(MediaError::HashMismatch);
        }
        let store = self.store.clone();
        match store.adopt(&self.tmp_path, &hash, durable).await {
            Ok(()) => {
                self.done = true;
                Ok(BlobInfo {
                    hash,
                    size: self.written,
                })
            }
            Err(e) => {
                self.discard().await;
                Err(e)
            }
        }
    }

    async fn discard(&mut self) {
        self.file = None;
        if !self.done {
            self.done = true;
            if let Err(e) = fs::remove_file(&self.tmp_path).await {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, "could not remove a blob temp file");
                }
            }
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            // Best effort; `BlobStore::open` removes anything left behind.
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_validation() {
        let h = BlobHash::of(b"hello");
        let hex = h.to_hex();
        assert_eq!(
            hex,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(BlobHash::from_hex(&hex).expect("valid"), h);
        assert_eq!(
            BlobHash::from_hex(&hex.to_uppercase()).expect("upper ok"),
            h
        );
        assert_eq!(h.to_string(), hex);
        assert!(matches!(
            BlobHash::from_hex(&hex[..63]),
            Err(MediaError::InvalidHash)
        ));
        assert!(BlobHash::from_hex(&format!("{hex}0")).is_err());
        assert!(BlobHash::from_hex(&format!("{}g", &hex[..63])).is_err());
        assert!(BlobHash::from_hex(&format!("+{}", &hex[..63])).is_err());
        assert!(BlobHash::from_hex("").is_err());
        // multi-byte chars must not cause a slicing panic
        assert!(BlobHash::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn serde_as_hex_string() {
        let h = BlobHash::of(b"x");
        let json = serde_json::to_string(&h).expect("serialize");
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        let back: BlobHash = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, h);
        assert!(serde_json::from_str::<BlobHash>("\"abc\"").is_err());
    }

    #[test]
    fn path_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let h = BlobHash::of(b"hello");
        let hex = h.to_hex();
        assert_eq!(
            store.path(&h),
            dir.path().join("blobs").join(&hex[..2]).join(&hex)
        );
    }
}
