//! Media in an S3-compatible store: two nodes configured with one bucket on a local S3 server
//! (moto, from PyPI). An upload on one node is in the bucket when it is acknowledged; the other
//! node, which never had the file, serves it and its ranges from the bucket, also after the
//! first node is killed. SKIPs when the S3 server cannot be started.

mod harness;

use std::io::Cursor;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{free_port, must_be_ready, must_sign_up, NodeProc};

struct S3Server(Child);

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A local S3 server on `port`, or `None` when moto is not installed.
fn start_s3(port: u16) -> Option<S3Server> {
    let has_moto = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_moto {
        return None;
    }
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = S3Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, 90])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_in_the_bucket_and_any_node_serves_them_from_it() {
    let port = free_port();
    let Some(_s3) = start_s3(port) else {
        eprintln!("SKIP: no local S3 server (pip install 'moto[server]'; scripts/deps does)");
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    let config = root.path().join("s3.toml");
    std::fs::write(
        &config,
        format!("[media.s3]\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = \"chat-media\"\n"),
    )
    .expect("config");
    let env = vec![
        (
            "CHAT_CONFIG".to_owned(),
            config.to_string_lossy().into_owned(),
        ),
        ("CHAT_S3_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
        ("CHAT_S3_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
    ];
    let mut n1 = NodeProc::new(root.path(), "s1", None);
    n1.env = env.clone();
    n1.start();
    must_be_ready(&n1, 1).await;
    let mut n2 = NodeProc::new(root.path(), "s2", Some(n1.peer.clone()));
    n2.env = env;
    n2.start();
    must_be_ready(&n2, 2).await;
    let (a1, a2) = (n1.api(), n2.api());
    let (_, token) = must_sign_up(&a1, "s3_alice").await;

    let picture = png(640, 480);
    let media = a1
        .upload(&token, "photo.png", picture.clone())
        .await
        .expect("upload");
    let path = format!("/v1/media/{}", media.id);
    let local = a1.fetch(Some(&token), &path, &[]).await.expect("fetch");
    assert_eq!((local.status, local.body == picture), (200, true));
    let hash = local
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();

    // The object is in the bucket under its content hash.
    let direct = reqwest_get(&format!("http://127.0.0.1:{port}/chat-media/{hash}")).await;
    assert_eq!(direct, picture, "the bucket holds the upload");

    // The other node never had it: it reads from the bucket, ranges included.
    assert!(
        !root
            .path()
            .join("s2/media/blobs")
            .join(&hash[..2])
            .join(&hash)
            .exists(),
        "s2 has no local copy"
    );
    let got = a2
        .fetch(Some(&token), &path, &[("range", "bytes=100-4195")])
        .await
        .expect("range");
    assert_eq!((got.status, got.body == picture[100..4196]), (206, true));
    let thumb = a2
        .fetch(Some(&token), &format!("{path}/thumbnails/m"), &[])
        .await
        .expect("thumbnail");
    assert_eq!(thumb.status, 200);
    let img = image::load_from_memory(&thumb.body).expect("thumbnail image");
    assert_eq!((img.width(), img.height()), (320, 240));

    n1.kill9();
    let got = a2
        .fetch(Some(&token), &path, &[])
        .await
        .expect("after kill");
    assert_eq!((got.status, got.body == picture), (200, true));
}

/// A GET of an object straight from the S3 server, bypassing the nodes. The local server does
/// not check signatures, but wants an AWS authorization header to treat the read as an owner's.
async fn reqwest_get(url: &str) -> Vec<u8> {
    let (base, key) = url.rsplit_once('/').expect("bucket/key url");
    let api = chat_client::HttpApi::new(base).expect("api");
    let auth = "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/s3/aws4_request, \
                SignedHeaders=host, Signature=0";
    let got = api
        .fetch(None, &format!("/{key}"), &[("authorization", auth)])
        .await
        .expect("get");
    assert_eq!(got.status, 200, "GET {url}");
    got.body
}
