//! The web client: the files of `web/` at the repository root, embedded in the binary and
//! served at `/`, so that every node is a complete product for a browser.
//!
//! Every reply carries `Cache-Control: no-cache` (the browser revalidates with the ETag, so a
//! new binary's files are seen at once), `X-Content-Type-Options: nosniff` and a
//! Content-Security-Policy that allows this origin only, plus WebSocket connections to the
//! host the page was loaded from.
//!
//! For working on the client without rebuilding: when the environment variable
//! `CHAT_WEB_DIR` names a directory (e.g. `CHAT_WEB_DIR=web chat-node ...`), the same files
//! are read from there on every request instead of the embedded copies, with the same
//! content types and headers (the ETag then comes from the file's current bytes), so a
//! reload of the page shows an edit at once. A file missing there answers `404`. Without the
//! variable, the embedded copies are served.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{guard, web, HttpRequest, HttpResponse};

struct Asset {
    /// The URL path.
    path: &'static str,
    /// The file's name in `web/` (and in `CHAT_WEB_DIR`).
    file: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &[u8] = include_bytes!("../../../web/index.html");
const JS: &str = "text/javascript; charset=utf-8";

macro_rules! module {
    ($name:literal) => {
        Asset {
            path: concat!("/", $name),
            file: $name,
            content_type: JS,
            body: include_bytes!(concat!("../../../web/", $name)),
        }
    };
}

static ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        file: "index.html",
        content_type: "text/html; charset=utf-8",
        body: INDEX,
    },
    Asset {
        path: "/index.html",
        file: "index.html",
        content_type: "text/html; charset=utf-8",
        body: INDEX,
    },
    module!("app.js"),
    module!("api.js"),
    module!("ui.js"),
    module!("media.js"),
    module!("contacts.js"),
    module!("groups.js"),
    module!("search.js"),
    Asset {
        path: "/style.css",
        file: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../web/style.css"),
    },
    Asset {
        path: "/manifest.webmanifest",
        file: "manifest.webmanifest",
        content_type: "application/manifest+json",
        body: include_bytes!("../../../web/manifest.webmanifest"),
    },
    Asset {
        path: "/icon.svg",
        file: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../web/icon.svg"),
    },
];

/// Registers `GET` and `HEAD` for each file of the web client.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for (i, asset) in ASSETS.iter().enumerate() {
        cfg.route(
            asset.path,
            web::route()
                .guard(guard::Any(guard::Get()).or(guard::Head()))
                .to(move |req: HttpRequest| async move { serve(&req, i) }),
        );
    }
}

/// The directory named by `CHAT_WEB_DIR` (read once, at the first request): the files are
/// then served from there, read on each request, instead of the embedded copies.
fn web_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("CHAT_WEB_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)?;
        tracing::info!(dir = %dir.display(), "serving the web client from disk (CHAT_WEB_DIR)");
        Some(dir)
    })
    .as_deref()
}

/// A strong ETag from a file's bytes.
fn tag_of(body: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

/// The ETag of an embedded file (fixed for the life of the binary).
fn etag(i: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    &TAGS.get_or_init(|| ASSETS.iter().map(|a| tag_of(a.body)).collect())[i]
}

fn serve(req: &HttpRequest, i: usize) -> HttpResponse {
    serve_from(req, i, web_dir())
}

/// Serves file `i`: the embedded copy, or, with `dir`, the file of that name read now.
fn serve_from(req: &HttpRequest, i: usize, dir: Option<&Path>) -> HttpResponse {
    let asset = &ASSETS[i];
    let (body, tag): (Cow<'static, [u8]>, Cow<'static, str>) = match dir {
        None => (Cow::Borrowed(asset.body), Cow::Borrowed(etag(i))),
        Some(dir) => match std::fs::read(dir.join(asset.file)) {
            Ok(bytes) => {
                let tag = tag_of(&bytes);
                (Cow::Owned(bytes), Cow::Owned(tag))
            }
            Err(e) => {
                tracing::warn!(file = asset.file, dir = %dir.display(), error = %e, "web client file not readable");
                return HttpResponse::NotFound()
                    .insert_header((header::CACHE_CONTROL, "no-cache"))
                    .content_type("text/plain; charset=utf-8")
                    .body(format!("{} is not readable in CHAT_WEB_DIR", asset.file));
            }
        },
    };
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, tag.into_owned()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, csp(req)));
    if fresh {
        resp.finish()
    } else {
        resp.content_type(asset.content_type)
            .body(body.into_owned())
    }
}

/// This origin only; the page's WebSocket goes to the host it was loaded from, which older
/// browsers do not count as `'self'`, so it is named (when it is a plain host[:port]).
/// Images and media may also come from `blob:` URLs (previews of files about to be sent).
fn csp(req: &HttpRequest) -> String {
    let info = req.connection_info();
    let host = info.host();
    let connect = if is_plain_host(host) {
        format!("'self' ws://{host} wss://{host}")
    } else {
        "'self'".to_owned()
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
         media-src 'self' blob:; connect-src {connect}; manifest-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// A host name or address with an optional port: nothing that could end the CSP directive.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;
    use actix_web::test::TestRequest;

    #[test]
    fn hosts_that_could_inject_into_the_policy_are_not_named() {
        assert!(is_plain_host("127.0.0.1:8080"));
        assert!(is_plain_host("[::1]:8080"));
        assert!(is_plain_host("chat.example.org"));
        assert!(!is_plain_host("evil; script-src *"));
        assert!(!is_plain_host(""));
        let req = TestRequest::default()
            .insert_header((header::HOST, "x; script-src *"))
            .to_http_request();
        assert!(!csp(&req).contains("script-src *"));
    }

    #[test]
    fn every_file_has_its_type_and_the_index_links_them() {
        let index = std::str::from_utf8(INDEX).expect("utf-8");
        for a in ASSETS
            .iter()
            .filter(|a| !a.path.ends_with(".html") && a.path != "/")
        {
            // Scripts are linked as the entry point or as module preloads.
            assert!(index.contains(&format!("\"{}\"", a.path)), "{}", a.path);
            assert_eq!(a.path.trim_start_matches('/'), a.file);
        }
        let req = TestRequest::default()
            .insert_header((header::HOST, "127.0.0.1:8080"))
            .to_http_request();
        let resp = serve_from(&req, 0, None);
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h.get(header::CACHE_CONTROL).expect("cache"), "no-cache");
        assert_eq!(
            h.get(header::X_CONTENT_TYPE_OPTIONS).expect("nosniff"),
            "nosniff"
        );
        let policy = h
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .expect("csp");
        assert!(policy.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080"));
        let again = TestRequest::default()
            .insert_header((header::IF_NONE_MATCH, etag(0)))
            .to_http_request();
        assert_eq!(serve_from(&again, 0, None).status(), 304);
    }

    #[test]
    fn a_web_dir_is_read_on_each_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let i = ASSETS
            .iter()
            .position(|a| a.path == "/app.js")
            .expect("app.js");
        let req = TestRequest::default().to_http_request();
        assert_eq!(serve_from(&req, i, Some(dir.path())).status(), 404);

        std::fs::write(dir.path().join("app.js"), "one").expect("write");
        let resp = serve_from(&req, i, Some(dir.path()));
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get(header::CONTENT_TYPE).expect("type"), JS);
        assert!(resp.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let first = resp.headers().get(header::ETAG).expect("etag").clone();
        let body = resp.into_body().try_into_bytes().expect("body");
        assert_eq!(&body[..], b"one");

        std::fs::write(dir.path().join("app.js"), "two").expect("write");
        let resp = serve_from(&req, i, Some(dir.path()));
        assert_ne!(resp.headers().get(header::ETAG).expect("etag"), &first);
        let tag = resp.headers().get(header::ETAG).expect("etag").clone();
        assert_eq!(
            &resp.into_body().try_into_bytes().expect("body")[..],
            b"two"
        );
        let again = TestRequest::default()
            .insert_header((header::IF_NONE_MATCH, tag))
            .to_http_request();
        assert_eq!(serve_from(&again, i, Some(dir.path())).status(), 304);
    }
}
