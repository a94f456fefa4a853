//! Resumable uploads on a real temp directory, including a simulated restart.

use std::path::Path;

use chat_media::{BlobHash, BlobStore, MediaError, UploadId, Uploads, HEAD_LEN};
use sha2::{Digest, Sha256};

const OWNER: u64 = 7;
const OTHER: u64 = 8;
const LIMIT: u64 = 10 * 1024 * 1024;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 253) as u8).collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn resumable_upload_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uploads_dir = dir.path().join("uploads");
    let content = data(300_000);
    let expected = BlobHash(Sha256::digest(&content).into());

    let id = {
        let store = BlobStore::open(dir.path()).expect("open");
        let uploads = Uploads::new(&store);
        let st = uploads
            .create(
                OWNER,
                "../../holiday \"pics\".bin",
                content.len() as u64,
                LIMIT,
                1_000,
            )
            .await
            .expect("create");
        assert_eq!(st.offset, 0);
        assert_eq!(st.size, 300_000);
        assert_eq!(st.name, "holiday pics.bin");
        assert_eq!(st.created_ms, 1_000);
        assert_eq!(
            entries(&uploads_dir),
            vec![format!("{}.json", st.id), format!("{}.part", st.id)]
        );
        let sidecar: serde_json::Value = serde_json::from_slice(
            &std::fs::read(uploads_dir.join(format!("{}.json", st.id))).expect("sidecar"),
        )
        .expect("json");
        assert_eq!(sidecar["v"], 1);
        assert_eq!(sidecar["owner"], OWNER);

        let mut app = uploads.append(&st.id, OWNER, 0).await.expect("append");
        app.write(&content[..100_000]).await.expect("chunk 1");
        app.write(&content[100_000..150_000])
            .await
            .expect("chunk 2");
        assert_eq!(app.state().offset, 150_000);
        let after = app.finish().await.expect("finish");
        assert_eq!(after.offset, 150_000);

        let err = uploads
            .append(&st.id, OWNER, 100_000)
            .await
            .expect_err("wrong offset");
        assert!(
            matches!(err, MediaError::OffsetMismatch { expected: 150_000 }),
            "{err:?}"
        );
        // too early to complete
        assert!(matches!(
            uploads.complete(&st.id, OWNER, true).await,
            Err(MediaError::OffsetMismatch { expected: 300_000 })
        ));
        st.id
    };

    // "restart": a new store and a new Uploads on the same directory
    let store = BlobStore::open(dir.path()).expect("reopen");
    let uploads = Uploads::new(&store);
    let st = uploads.status(&id, OWNER).await.expect("status");
    assert_eq!(st.offset, 150_000);
    assert_eq!(st.name, "holiday pics.bin");

    let mut app = uploads.append(&id, OWNER, st.offset).await.expect("resume");
    for chunk in content[150_000..].chunks(33_333) {
        app.write(chunk).await.expect("chunk");
    }
    assert_eq!(app.finish().await.expect("finish").offset, 300_000);

    let (info, head, name) = uploads.complete(&id, OWNER, true).await.expect("complete");
    assert_eq!(info.hash, expected);
    assert_eq!(info.size, 300_000);
    assert_eq!(head, &content[..HEAD_LEN]);
    assert_eq!(name, "holiday pics.bin");
    assert_eq!(std::fs::read(store.path(&expected)).expect("blob"), content);
    assert!(entries(&uploads_dir).is_empty());
    assert!(matches!(
        uploads.status(&id, OWNER).await,
        Err(MediaError::NotFound)
    ));
}

#[tokio::test]
async fn dropped_connection_keeps_written_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("open");
    let uploads = Uploads::new(&store);
    let st = uploads
        .create(OWNER, "a.bin", 1000, LIMIT, 0)
        .await
        .expect("create");
    let mut app = uploads.append(&st.id, OWNER, 0).await.expect("append");
    app.write(&data(400)).await.expect("write");
    drop(app); // no finish: the connection went away
    assert_eq!(
        uploads.status(&st.id, OWNER).await.expect("status").offset,
        400
    );
    // and the upload is no longer busy
    let app = uploads.append(&st.id, OWNER, 400).await.expect("resume");
    drop(app);
}

#[tokio::test]
async fn other_owners_see_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("open");
    let uploads = Uploads::new(&store);
    let st = uploads
        .create(OWNER, "x", 10, LIMIT, 0)
        .await
        .expect("create");
    assert!(matches!(
        uploads.status(&st.id, OTHER).await,
        Err(MediaError::NotFound)
    ));
    assert!(matches!(
        uploads.append(&st.id, OTHER, 0).await,
        Err(MediaError::NotFound)
    ));
    assert!(matches!(
        uploads.complete(&st.id, OTHER, false).await,
        Err(MediaError::NotFound)
    ));
    assert!(matches!(
        uploads.cancel(&st.id, OTHER).await,
        Err(MediaError::NotFound)
    ));
    // even while busy, another owner learns nothing
    let _app = uploads.append(&st.id, OWNER, 0).await.expect("append");
    assert!(matches!(
        uploads.append(&st.id, OTHER, 0).await,
        Err(MediaError::NotFound)
    ));
    // an unknown id is the same answer
    assert!(matches!(
        uploads.status(&UploadId::random(), OWNER).await,
        Err(MediaError::NotFound)
    ));
}

#[tokio::test]
async fn one_appender_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("open");
    let uploads = Uploads::new(&store);
    let st = uploads
        .create(OWNER, "x", 10, LIMIT, 0)
        .await
        .expect("create");
    let first = uploads.append(&st.id, OWNER, 0).await.expect("first");
    let err = uploads.append(&st.id, OWNER, 0).await.expect_err("second");
    assert!(matches!(err, MediaError::UploadBusy), "{err:?}");
    assert_eq!(err.code(), "upload_busy");
    // a second Uploads on the same store shares the busy set
    let again = Uploads::new(&store);
    assert!(matches!(
        again.append(&st.id, OWNER, 0).await,
        Err(MediaError::UploadBusy)
    ));
    assert!(matches!(
        uploads.cancel(&st.id, OWNER).await,
        Err(MediaError::UploadBusy)
    ));
    first.finish().await.expect("finish");
    let second = uploads.append(&st.id, OWNER, 0).await.expect("free again");
    drop(second);
}

#[tokio::test]
async fn writing_past_the_declared_size_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("open");
    let uploads = Uploads::new(&store);
    let st = uploads
        .create(OWNER, "x", 10, LIMIT, 0)
        .await
        .expect("create");
    let mut app = uploads.append(&st.id, OWNER, 0).await.expect("append");
    app.write(b"123456").await.expect("fits");
    let err = app.write(b"78901").await.expect_err("past the size");
    assert!(matches!(err, MediaError::TooLarge { limit: 10 }), "{err:?}");
    app.write(b"7890").await.expect("the rest still fits");
    assert!(app.write(b"!").await.is_err());
    assert_eq!(app.finish().await.expect("finish").offset, 10);
    let (info, head, _) = uploads
        .complete(&st.id, OWNER, false)
        .await
        .expect("complete");
    assert_eq!(info.hash, BlobHash::of(b"1234567890"));
    assert_eq!(head, b"1234567890");
}

#[tokio::test]
async fn create_enforces_the_limit_and_sanitizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("open");
    let uploads = Uploads::new(&store);
    let err = uploads
        .create(OWNER, "x", 101, 100, 0)
        .await
        .expect_err("too big");
    assert!(
        matches!(err, MediaError::TooLarge { limit: 100 }),
        "{err:?}"
    );
    assert!(entries(&dir.path().join("uploads")).is_empty());
    let st = uploads
        .create(OWNER, "C:\\tmp\\a\r\nb.txt", 100, 100, 0)
        .await
        .expect("at limit");
    assert_eq!(st.name, "ab.txt");
    let st = uploads.create(OWNER, "", 1, 100, 0).await.expect("no name");
    assert_eq!(st.name, "file");
}

#[tokio::test]
async fn empty_upload_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("open");
    let uploads = Uploads::new(&store);
    let st = uploads
        .create(OWNER, "empty.txt", 0, LIMIT, 0)
        .await
        .expect("create");
    let (info, head, name) = uploads
        .complete(&st.id, OWNER, true)
        .await
        .expect("complete");
    assert_eq!(info.size, 0);
    assert_eq!(info.hash, BlobHash::of(b""));
    assert!(head.is_empty());
    assert_eq!(name, "empty.txt");
    assert!(store.exists(&info.hash).await);
}

#[tokio::test]
async fn completing_existing_content_dedups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("open");
    let uploads = Uploads::new(&store);
    let existing = store.put_bytes(b"dup", true).await.expect("put");
    let st = uploads
        .create(OWNER, "d", 3, LIMIT, 0)
        .await
        .expect("create");
    let mut app = uploads.append(&st.id, OWNER, 0).await.expect("append");
    app.write(b"dup").await.expect("write");
    app.finish().await.expect("finish");
    let (info, _, _) = uploads
        .complete(&st.id, OWNER, false)
        .await
        .expect("complete");
    assert_eq!(info.hash, existing.hash);
    assert!(entries(&dir.path().join("uploads")).is_empty());
    assert_eq!(std::fs::read(store.path(&info.hash)).expect("blob"), b"dup");
}

#[tokio::test]
async fn cancel_and_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uploads_dir = dir.path().join("uploads");
    let store = BlobStore::open(dir.path()).expect("open");
    let uploads = Uploads::new(&store);

    let a = uploads.create(OWNER, "a", 5, LIMIT, 0).await.expect("a");
    uploads.cancel(&a.id, OWNER).await.expect("cancel");
    assert!(entries(&uploads_dir).is_empty());
    assert!(matches!(
        uploads.cancel(&a.id, OWNER).await,
        Err(MediaError::NotFound)
    ));

    let old = uploads
        .create(OWNER, "old", 5, LIMIT, 1_000)
        .await
        .expect("old");
    let busy_old = uploads
        .create(OWNER, "busy", 5, LIMIT, 1_000)
        .await
        .expect("busy");
    let fresh = uploads
        .create(OWNER, "fresh", 5, LIMIT, 90_000)
        .await
        .expect("fresh");
    // an orphaned data file and a corrupt sidecar
    let orphan = UploadId::random();
    std::fs::write(uploads_dir.join(format!("{orphan}.part")), b"xx").expect("orphan");
    let corrupt = UploadId::random();
    std::fs::write(uploads_dir.join(format!("{corrupt}.json")), b"{not json").expect("corrupt");
    // files that are not uploads are left alone
    std::fs::write(uploads_dir.join("README"), b"keep").expect("readme");

    let _appender = uploads.append(&busy_old.id, OWNER, 0).await.expect("busy");
    let removed = uploads.expire(60_000, 100_000).await.expect("expire");
    assert_eq!(removed, 3, "old, orphan and corrupt");
    assert!(matches!(
        uploads.status(&old.id, OWNER).await,
        Err(MediaError::NotFound)
    ));
    assert_eq!(
        uploads
            .status(&fresh.id, OWNER)
            .await
            .expect("fresh kept")
            .offset,
        0
    );
    assert_eq!(
        uploads
            .status(&busy_old.id, OWNER)
            .await
            .expect("busy kept")
            .offset,
        0
    );
    let mut expected = vec![
        format!("{}.json", busy_old.id),
        format!("{}.part", busy_old.id),
        format!("{}.json", fresh.id),
        format!("{}.part", fresh.id),
        "README".to_owned(),
    ];
    expected.sort();
    assert_eq!(entries(&uploads_dir), expected);
}
