//! Media through the protocol on a 3-node cluster: uploads (whole and resumable) with their
//! limits and quota, type sniffing, thumbnails, downloads with ranges and caching headers on
//! any node, signed links, who may read what, and downloads after the uploading node dies.

mod harness;

use std::io::Cursor;

use chat_client::{ClientError, Connection, HttpApi};
use chat_types::{ClientMsgId, ErrorCode, MediaKind, Message};
use harness::{must_sign_up, must_start_trio};

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// An MP4 header followed by `len` bytes that differ at every offset.
fn video(len: usize) -> Vec<u8> {
    let mut v = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2".to_vec();
    let mut x: u32 = 12345;
    while v.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        v.push((x >> 16) as u8);
    }
    v
}

/// A PNG whose header claims 100000 x 100000 pixels.
fn bomb() -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&[0u8; 64]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn code(e: ClientError) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_upload_download_ranges_thumbnails_limits_and_access_across_nodes() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = root.path().join("media.toml");
    std::fs::write(
        &config,
        "[media]\nmax_upload_bytes = 3145728\nquota_bytes = 4194304\n",
    )
    .expect("write config");
    let env = [(
        "CHAT_CONFIG".to_owned(),
        config.to_string_lossy().into_owned(),
    )];
    let mut trio = must_start_trio(root.path(), &env).await;
    let (a1, a2, a3) = (
        trio.nodes[0].api(),
        trio.nodes[1].api(),
        trio.nodes[2].api(),
    );
    let (alice, alice_token) = must_sign_up(&a1, "media_alice").await;
    let (bob, bob_token) = must_sign_up(&a2, "media_bob").await;
    let (_eve, eve_token) = must_sign_up(&a3, "media_eve").await;

    // An image: sniffed, measured, thumbnailed.
    let picture = png(800, 600);
    let image = a1
        .upload(&alice_token, "../../holiday\".png", picture.clone())
        .await
        .expect("upload png");
    assert_eq!(
        (image.kind, image.mime.as_str(), image.width, image.height),
        (MediaKind::Image, "image/png", Some(800), Some(600))
    );
    assert_eq!(image.name, "holiday.png", "the name is sanitized");
    let sizes: Vec<(String, u32, u32)> = image
        .thumbnails
        .iter()
        .map(|t| (t.size.clone(), t.width, t.height))
        .collect();
    assert_eq!(
        sizes,
        vec![
            ("s".to_owned(), 96, 96),
            ("m".to_owned(), 320, 240),
            ("l".to_owned(), 800, 600)
        ],
        "never upscaled"
    );
    // A video, uploaded in chunks through a resumable upload with a wrong offset on the way.
    let clip = video(2 * 1024 * 1024 + 123);
    let started = a1
        .create_upload(&alice_token, "clip.mp4", clip.len() as u64)
        .await
        .expect("create upload");
    let after = a1
        .append_upload(
            &alice_token,
            &started.upload_id,
            0,
            clip[..300_000].to_vec(),
        )
        .await
        .expect("first chunk");
    assert_eq!((after.offset, after.media.is_none()), (300_000, true));
    let err = a1
        .append_upload(&alice_token, &started.upload_id, 0, clip[..10].to_vec())
        .await
        .expect_err("chunk at the wrong offset");
    assert_eq!(code(err), Some(ErrorCode::OffsetMismatch));
    let err = a1
        .upload_status(&bob_token, &started.upload_id)
        .await
        .expect_err("someone else's upload");
    assert_eq!(code(err), Some(ErrorCode::NotFound));
    let status = a1
        .upload_status(&alice_token, &started.upload_id)
        .await
        .expect("status");
    assert_eq!(status.offset, 300_000);
    let mut offset = status.offset as usize;
    let mut media = None;
    while media.is_none() {
        let end = (offset + 700_000).min(clip.len());
        let s = a1
            .append_upload(
                &alice_token,
                &started.upload_id,
                offset as u64,
                clip[offset..end].to_vec(),
            )
            .await
            .expect("next chunk");
        offset = s.offset as usize;
        media = s.media;
    }
    let movie = media.expect("finished upload");
    assert_eq!(
        (movie.kind, movie.mime.as_str(), movie.size),
        (MediaKind::Video, "video/mp4", clip.len() as u64)
    );

    // Limits: the size (refused from Content-Length), the type, pixel bombs, the quota.
    let err = a1
        .upload(&alice_token, "big.bin", vec![7u8; 3 * 1024 * 1024 + 1])
        .await
        .expect_err("over the size limit");
    assert_eq!(code(err), Some(ErrorCode::TooLarge));
    let err = a1
        .upload(
            &alice_token,
            "a.exe",
            b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\xff\xff".repeat(50),
        )
        .await
        .expect_err("not an allowed type");
    assert_eq!(code(err), Some(ErrorCode::UnsupportedMediaType));
    let err = a1
        .upload(&alice_token, "bomb.png", bomb())
        .await
        .expect_err("decompression bomb");
    assert_eq!(code(err), Some(ErrorCode::TooManyPixels));
    let err = a1
        .upload(&alice_token, "more.mp4", video(2 * 1024 * 1024))
        .await
        .expect_err("over the quota");
    assert_eq!(code(err), Some(ErrorCode::QuotaExceeded));
    // SVG is accepted but never served as something a browser would render.
    let svg = a1
        .upload(
            &alice_token,
            "x.svg",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec(),
        )
        .await
        .expect("upload svg");
    assert_eq!(svg.kind, MediaKind::File);

    // Before any message carries them, only the uploader reads them.
    let path = format!("/v1/media/{}", image.id);
    let got = a2.fetch(Some(&bob_token), &path, &[]).await.expect("fetch");
    assert_eq!(got.status, 404, "bob cannot read it yet");
    let got = a3
        .fetch(Some(&alice_token), &path, &[])
        .await
        .expect("fetch");
    assert_eq!((got.status, got.body == picture), (200, true));
    assert_eq!(got.header("content-type"), Some("image/png"));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert!(got
        .header("content-security-policy")
        .is_some_and(|c| c.contains("sandbox")));
    assert!(got
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("inline") && d.contains("holiday.png")));
    let svg_got = a2
        .fetch(Some(&alice_token), &format!("/v1/media/{}", svg.id), &[])
        .await
        .expect("fetch svg");
    assert_eq!(
        svg_got.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(svg_got
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment")));

    // A message to bob carries both; now bob may read them, on any node, and eve still not.
    let (conn, _) = Connection::connect(&a1.ws_url(&alice_token))
        .await
        .expect("connect");
    let dm = conn
        .open_direct_by_id(bob)
        .await
        .expect("open dm")
        .conversation;
    conn.send_with_media(
        dm,
        ClientMsgId::new("with-media").expect("id"),
        "",
        vec![image.id.clone(), movie.id.clone()],
    )
    .await
    .expect("send with attachments");
    let err = conn
        .send_with_media(
            dm,
            ClientMsgId::new("bad-media").expect("id"),
            "x",
            vec![chat_types::MediaId::from_random([9; 16])],
        )
        .await
        .expect_err("unknown media");
    assert_eq!(code(err), Some(ErrorCode::NotFound));
    let history = a2
        .history(&bob_token, dm, Default::default())
        .await
        .expect("history");
    let carried: Vec<&Message> = history
        .messages
        .iter()
        .filter(|m| !m.attachments.is_empty())
        .collect();
    assert_eq!(carried.len(), 1);
    assert_eq!(carried[0].attachments[0].id, image.id);
    assert_eq!(carried[0].attachments[1].kind, MediaKind::Video);

    for api in [&a1, &a2, &a3] {
        let got = api
            .fetch(Some(&bob_token), &path, &[])
            .await
            .expect("fetch");
        assert_eq!((got.status, got.body == picture), (200, true));
        let got = api
            .fetch(Some(&eve_token), &path, &[])
            .await
            .expect("fetch");
        assert_eq!(got.status, 404, "eve is in no conversation that carries it");
    }

    // Ranges on the video: one, a suffix, several, none satisfiable; ETag revalidation.
    let vpath = format!("/v1/media/{}", movie.id);
    let mid = clip.len() / 2;
    let range = format!("bytes={}-{}", mid, mid + 999);
    let got = a3
        .fetch(Some(&bob_token), &vpath, &[("range", &range)])
        .await
        .expect("range");
    assert_eq!(got.status, 206);
    assert_eq!(got.body, clip[mid..mid + 1000]);
    assert_eq!(
        got.header("content-range"),
        Some(format!("bytes {}-{}/{}", mid, mid + 999, clip.len()).as_str())
    );
    let got = a2
        .fetch(Some(&bob_token), &vpath, &[("range", "bytes=-100")])
        .await
        .expect("suffix");
    assert_eq!(
        (got.status, got.body == clip[clip.len() - 100..]),
        (206, true)
    );
    let got = a2
        .fetch(
            Some(&bob_token),
            &vpath,
            &[("range", "bytes=0-9,1000-1009")],
        )
        .await
        .expect("two ranges");
    assert_eq!(got.status, 206);
    assert!(got
        .header("content-type")
        .is_some_and(|t| t.starts_with("multipart/byteranges")));
    let body = String::from_utf8_lossy(&got.body);
    assert!(
        body.contains("Content-Range: bytes 0-9/")
            && body.contains("Content-Range: bytes 1000-1009/")
    );
    let past = format!("bytes={}-", clip.len() + 10);
    let got = a2
        .fetch(Some(&bob_token), &vpath, &[("range", &past)])
        .await
        .expect("unsatisfiable");
    assert_eq!(got.status, 416);
    let etag = got.header("etag").expect("etag").to_owned();
    let got = a2
        .fetch(Some(&bob_token), &vpath, &[("if-none-match", &etag)])
        .await
        .expect("revalidate");
    assert_eq!((got.status, got.body.len()), (304, 0));

    // Thumbnails and signed links (for <img> and <video>, which cannot send headers).
    let link = a2.media_link(&bob_token, &image.id).await.expect("link");
    let small = a3
        .fetch(None, &link.thumbnails["s"], &[])
        .await
        .expect("thumbnail by link");
    assert_eq!(small.status, 200);
    let thumb = image::load_from_memory(&small.body).expect("a real image");
    assert_eq!((thumb.width(), thumb.height()), (96, 96));
    let full = a1.fetch(None, &link.url, &[]).await.expect("full by link");
    assert_eq!((full.status, full.body == picture), (200, true));
    let forged = link.url.replace("link=", "link=1");
    let got = a1.fetch(None, &forged, &[]).await.expect("forged link");
    assert_eq!(got.status, 401);
    let err = a1
        .media_link(&eve_token, &image.id)
        .await
        .expect_err("eve asks for a link");
    assert_eq!(code(err), Some(ErrorCode::NotFound));

    // An avatar must be one's own image, and is then readable by everyone.
    let update = chat_types::rest::ProfileUpdate {
        avatar: Some(Some(movie.id.to_string())),
        ..Default::default()
    };
    let err = a1
        .update_profile(&alice_token, &update)
        .await
        .expect_err("a video as avatar");
    assert_eq!(code(err), Some(ErrorCode::InvalidArgument));
    let update = chat_types::rest::ProfileUpdate {
        avatar: Some(Some(image.id.to_string())),
        ..Default::default()
    };
    a1.update_profile(&alice_token, &update)
        .await
        .expect("avatar");
    let got = a3.fetch(Some(&eve_token), &path, &[]).await.expect("fetch");
    assert_eq!(got.status, 200, "avatars are public");

    // The uploading node dies: every byte is still on the others.
    trio.nodes[0].kill9();
    let got = a2
        .fetch(Some(&bob_token), &vpath, &[])
        .await
        .expect("after the kill");
    assert_eq!((got.status, got.body == clip), (200, true));
    let got = a3
        .fetch(Some(&bob_token), &vpath, &[("range", "bytes=100-199")])
        .await
        .expect("range after the kill");
    assert_eq!((got.status, got.body == clip[100..200]), (206, true));
    let _ = alice;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_need_a_session_and_bad_ids_are_not_found() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut n = harness::NodeProc::new(root.path(), "solo", None);
    n.start();
    harness::must_be_ready(&n, 1).await;
    let api: HttpApi = n.api();
    let err = api
        .upload("not-a-token", "x.png", png(4, 4))
        .await
        .expect_err("no session");
    assert_eq!(code(err), Some(ErrorCode::Unauthorized));
    let (_, token) = must_sign_up(&api, "media_solo").await;
    for path in [
        "/v1/media/../../etc/passwd",
        "/v1/media/zzzz",
        "/v1/media/0123456789abcdef0123456789abcdef",
        "/v1/media/0123456789abcdef0123456789abcdef/thumbnails/xl",
        "/v1/uploads/../../x",
    ] {
        let got = api.fetch(Some(&token), path, &[]).await.expect("fetch");
        assert_eq!(got.status, 404, "{path}");
    }
    // One node: the upload is its own majority, and works end to end.
    let m = api
        .upload(&token, "tiny.png", png(4, 4))
        .await
        .expect("upload");
    let got = api
        .fetch(
            Some(&token),
            &format!("/v1/media/{}/thumbnails/s", m.id),
            &[],
        )
        .await
        .expect("thumbnail");
    assert_eq!(got.status, 200);
    let thumb = image::load_from_memory(&got.body).expect("image");
    assert_eq!((thumb.width(), thumb.height()), (4, 4), "never upscaled");
}

/// Where each blob must be for `members`: the first three distinct ring nodes from its hash.
fn placement(members: &[chat_types::NodeId], hash: &str) -> Vec<chat_types::NodeId> {
    let ring = chat_cluster::Ring::new(
        members.to_vec(),
        chat_types::RingEpoch(0),
        chat_cluster::ring::DEFAULT_VNODES,
    );
    let mut key = b"blob/".to_vec();
    for i in (0..hash.len()).step_by(2) {
        key.push(u8::from_str_radix(&hash[i..i + 2], 16).expect("hex"));
    }
    ring.successors(&key, 3)
}

fn holds(node: &harness::NodeProc, hash: &str) -> bool {
    node.data_dir
        .join("media/blobs")
        .join(&hash[..2])
        .join(hash)
        .is_file()
}

/// Polls until every blob is on exactly its placement nodes among `nodes`.
async fn must_settle(nodes: &[&harness::NodeProc], ids: &[chat_types::NodeId], hashes: &[String]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let wrong: Vec<String> = hashes
            .iter()
            .flat_map(|h| {
                let want = placement(ids, h);
                nodes
                    .iter()
                    .zip(ids)
                    .filter(|(n, id)| holds(n, h) != want.contains(id))
                    .map(|(n, _)| format!("{} {}", n.name, &h[..8]))
                    .collect::<Vec<_>>()
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blobs not where the ring puts them: {wrong:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_follow_the_ring_when_a_node_joins_and_another_drains() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut trio = must_start_trio(root.path(), &[]).await;
    let api = trio.nodes[1].api();
    let (_, token) = must_sign_up(&api, "media_mover").await;
    let mut files = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..8 {
        let body = format!("file number {i}\n").repeat(100 + i).into_bytes();
        let m = api
            .upload(&token, &format!("f{i}.txt"), body.clone())
            .await
            .expect("upload");
        let got = api
            .fetch(Some(&token), &format!("/v1/media/{}", m.id), &[])
            .await
            .expect("fetch");
        hashes.push(
            got.header("etag")
                .expect("etag")
                .trim_matches('"')
                .to_owned(),
        );
        files.push((m.id, body));
    }
    {
        let nodes: Vec<&harness::NodeProc> = trio.nodes.iter().collect();
        must_settle(&nodes, &trio.ids, &hashes).await;
    }

    // A fourth node joins: it gets the blobs it now places, the others drop what they lost.
    let mut n4 = harness::NodeProc::new(root.path(), "n4", Some(trio.nodes[0].peer.clone()));
    n4.start();
    let ready = harness::must_be_ready(&n4, 4).await;
    let mut ids = trio.ids.clone();
    ids.push(chat_types::NodeId(
        ready["node_id"].as_u64().expect("node id"),
    ));
    {
        let mut nodes: Vec<&harness::NodeProc> = trio.nodes.iter().collect();
        nodes.push(&n4);
        must_settle(&nodes, &ids, &hashes).await;
    }

    // The first node drains and stops: nothing it held is lost.
    trio.nodes[0].admin(&["drain"]);
    for n in [&trio.nodes[1], &trio.nodes[2], &n4] {
        harness::must_be_ready_with(n, 3, 3).await;
    }
    trio.nodes[0].stop();
    let rest = [&trio.nodes[1], &trio.nodes[2], &n4];
    must_settle(&rest, &ids[1..], &hashes).await;
    for (id, body) in &files {
        let got = n4
            .api()
            .fetch(Some(&token), &format!("/v1/media/{id}"), &[])
            .await
            .expect("fetch");
        assert_eq!((got.status, &got.body == body), (200, true));
    }
    let _ = &mut trio;
}
