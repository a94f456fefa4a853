//! Blob store behaviour on a real temp directory.

use std::path::Path;

use chat_media::{BlobHash, BlobStore, MediaError, HEAD_LEN};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u8
        })
        .collect()
}

/// All regular files below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn open(dir: &tempfile::TempDir) -> BlobStore {
    BlobStore::open(dir.path()).expect("open store")
}

#[tokio::test]
async fn streams_five_mib_in_uneven_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let data = pseudo_random(5 * 1024 * 1024, 42);
    let expected = BlobHash(Sha256::digest(&data).into());

    let mut writer = store.writer(data.len() as u64).await.expect("writer");
    let sizes = [1usize, 7, 4093, 65_537, 13, 300_001, 8191, 2];
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - pos);
        writer.write(&data[pos..pos + n]).await.expect("write");
        pos += n;
        i += 1;
        assert_eq!(writer.written(), pos as u64);
    }
    assert_eq!(writer.head(), &data[..HEAD_LEN]);
    let info = writer.finish(true).await.expect("finish");

    assert_eq!(info.hash, expected);
    assert_eq!(info.size, data.len() as u64);
    let on_disk = std::fs::read(store.path(&expected)).expect("blob file");
    assert_eq!(on_disk, data);
    assert!(store.exists(&expected).await);
    assert_eq!(
        store.size(&expected).await.expect("size"),
        data.len() as u64
    );
    assert!(files_under(&dir.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn head_of_a_small_blob_is_all_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut writer = store.writer(100).await.expect("writer");
    writer.write(b"hello ").await.expect("write");
    writer.write(b"world").await.expect("write");
    assert_eq!(writer.head(), b"hello world");
    let info = writer.finish(false).await.expect("finish");
    assert_eq!(info.hash, BlobHash::of(b"hello world"));
}

#[tokio::test]
async fn same_content_is_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let a = store.put_bytes(b"same bytes", true).await.expect("first");
    let b = store.put_bytes(b"same bytes", false).await.expect("second");
    let mut w = store.writer(1000).await.expect("writer");
    w.write(b"same ").await.expect("write");
    w.write(b"bytes").await.expect("write");
    let c = w.finish(true).await.expect("third");
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.size, 10);
    let blobs = files_under(&dir.path().join("blobs"));
    assert_eq!(blobs, vec![store.path(&a.hash)]);
    assert!(files_under(&dir.path().join("tmp")).is_empty());

    let other = store.put_bytes(b"other bytes", false).await.expect("other");
    assert_ne!(other.hash, a.hash);
    assert_eq!(files_under(&dir.path().join("blobs")).len(), 2);
}

#[tokio::test]
async fn too_large_stops_at_the_limit_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut writer = store.writer(100).await.expect("writer");
    writer.write(&[1u8; 60]).await.expect("under the limit");
    writer
        .write(&[2u8; 40])
        .await
        .expect("exactly at the limit");
    assert_eq!(files_under(&dir.path().join("tmp")).len(), 1);
    let err = writer.write(&[3u8; 1]).await.expect_err("over the limit");
    assert!(
        matches!(err, MediaError::TooLarge { limit: 100 }),
        "{err:?}"
    );
    assert_eq!(err.code(), "too_large");
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    // the writer is dead afterwards
    assert!(writer.write(b"x").await.is_err());
    assert!(writer.finish(true).await.is_err());
    assert!(files_under(&dir.path().join("blobs")).is_empty());

    // a limit of 0 accepts only the empty blob
    let mut w = store.writer(0).await.expect("writer");
    assert!(matches!(
        w.write(b"a").await,
        Err(MediaError::TooLarge { limit: 0 })
    ));
    let empty = store.put_bytes(b"", true).await.expect("empty blob");
    assert_eq!(empty.size, 0);
    assert_eq!(empty.hash, BlobHash::of(b""));
    assert!(store
        .read_at(&empty.hash, 0, 10)
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test]
async fn finish_expect_checks_the_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);

    let mut w = store.writer(1 << 20).await.expect("writer");
    w.write(b"replicated content").await.expect("write");
    let wrong = BlobHash::of(b"something else");
    let err = w.finish_expect(wrong, true).await.expect_err("mismatch");
    assert!(matches!(err, MediaError::HashMismatch), "{err:?}");
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert!(!store.exists(&wrong).await);

    let right = BlobHash::of(b"replicated content");
    let mut w = store.writer(1 << 20).await.expect("writer");
    w.write(b"replicated ").await.expect("write");
    w.write(b"content").await.expect("write");
    let info = w.finish_expect(right, true).await.expect("match");
    assert_eq!(info.hash, right);
    assert!(store.exists(&right).await);
}

#[tokio::test]
async fn dropping_an_unfinished_writer_removes_its_temp_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut w = store.writer(1000).await.expect("writer");
    w.write(b"partial").await.expect("write");
    assert_eq!(files_under(&dir.path().join("tmp")).len(), 1);
    drop(w);
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn open_removes_leftover_temp_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(&dir));
    std::fs::write(dir.path().join("tmp").join("crashed.tmp"), b"junk").expect("write");
    std::fs::create_dir(dir.path().join("tmp").join("subdir")).expect("mkdir");
    let _store = open(&dir);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp"))
            .expect("ls")
            .count(),
        0
    );
    assert!(dir.path().join("uploads").is_dir());
    assert!(dir.path().join("blobs").is_dir());
}

#[tokio::test]
async fn read_at_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let data = pseudo_random(10_000, 7);
    let info = store.put_bytes(&data, false).await.expect("put");
    let h = info.hash;

    assert_eq!(store.read_at(&h, 0, 1).await.expect("first"), &data[..1]);
    assert_eq!(
        store.read_at(&h, 4_000, 1_234).await.expect("middle"),
        &data[4_000..5_234]
    );
    assert_eq!(
        store.read_at(&h, 9_999, 1).await.expect("last"),
        &data[9_999..]
    );
    assert_eq!(
        store.read_at(&h, 9_000, 5_000).await.expect("short tail"),
        &data[9_000..]
    );
    assert!(store
        .read_at(&h, 10_000, 10)
        .await
        .expect("at end")
        .is_empty());
    assert!(store
        .read_at(&h, u64::MAX, 10)
        .await
        .expect("past end")
        .is_empty());
    assert!(store.read_at(&h, 0, 0).await.expect("max 0").is_empty());
    // chunked copy reassembles the blob exactly
    let mut copy = Vec::new();
    loop {
        let chunk = store
            .read_at(&h, copy.len() as u64, 3_000)
            .await
            .expect("chunk");
        if chunk.is_empty() {
            break;
        }
        copy.extend_from_slice(&chunk);
    }
    assert_eq!(copy, data);

    let missing = BlobHash::of(b"missing");
    assert!(matches!(
        store.read_at(&missing, 0, 1).await,
        Err(MediaError::NotFound)
    ));
}

async fn read_range(store: &BlobStore, h: &BlobHash, start: u64, end: u64) -> Vec<u8> {
    let mut reader = store.open_range(h, start, end).await.expect("open_range");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn open_range_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let data = pseudo_random(100_000, 9);
    let h = store.put_bytes(&data, false).await.expect("put").hash;

    assert_eq!(read_range(&store, &h, 0, 0).await, &data[..1]);
    assert_eq!(
        read_range(&store, &h, 31_337, 70_000).await,
        &data[31_337..=70_000]
    );
    assert_eq!(
        read_range(&store, &h, 99_999, 99_999).await,
        &data[99_999..]
    );
    assert_eq!(read_range(&store, &h, 0, 99_999).await, data);

    for (s, e) in [
        (0, 100_000),
        (100_000, 100_000),
        (50, 49),
        (u64::MAX, u64::MAX),
    ] {
        assert!(
            matches!(
                store.open_range(&h, s, e).await,
                Err(MediaError::RangeNotSatisfiable)
            ),
            "{s}-{e}"
        );
    }
    assert!(matches!(
        store.open_range(&BlobHash::of(b"nope"), 0, 0).await,
        Err(MediaError::NotFound)
    ));
}

#[tokio::test]
async fn size_exists_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let info = store.put_bytes(b"abc", true).await.expect("put");
    assert_eq!(store.size(&info.hash).await.expect("size"), 3);
    store.remove(&info.hash).await.expect("remove");
    assert!(!store.exists(&info.hash).await);
    assert!(matches!(
        store.size(&info.hash).await,
        Err(MediaError::NotFound)
    ));
    assert!(matches!(
        store.remove(&info.hash).await,
        Err(MediaError::NotFound)
    ));
    // a clone shares the same directory
    let clone = store.clone();
    let again = clone.put_bytes(b"abc", false).await.expect("put again");
    assert!(store.exists(&again.hash).await);
}

#[tokio::test]
async fn list_names_every_blob_once_and_skips_strays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    assert!(store.list().await.expect("list").is_empty());
    let a = store.put_bytes(b"first", false).await.expect("put");
    let b = store
        .put_bytes(&pseudo_random(70_000, 3), false)
        .await
        .expect("put");
    store.put_bytes(b"first", false).await.expect("dedup");
    // Strays: a file with a non-hash name, and a hash in the wrong shard.
    std::fs::write(store.root().join("blobs/zz"), b"x").expect("stray file");
    let wrong = store.root().join("blobs/00");
    std::fs::create_dir_all(&wrong).expect("shard");
    std::fs::write(wrong.join(BlobHash::of(b"other").to_hex()), b"other").expect("stray blob");
    let mut want = vec![(a.hash, 5u64), (b.hash, 70_000u64)];
    want.sort();
    let got: Vec<(BlobHash, u64)> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|i| (i.hash, i.size))
        .collect();
    assert_eq!(got, want);
    store.remove(&a.hash).await.expect("remove");
    assert_eq!(store.list().await.expect("list").len(), 1);
}
