//! The web client: the files of `web/` at the repository root, embedded in the binary and
//! served at `/`, so that every node is a complete product for a browser.
//!
//! Every reply carries `Cache-Control: no-cache` (the browser revalidates with the ETag, so a
//! new binary's files are seen at once), `X-Content-Type-Options: nosniff` and a
//! Content-Security-Policy that allows this origin only, plus WebSocket connections to the
//! host the page was loaded from.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{guard, web, HttpRequest, HttpResponse};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: &[u8] = include_bytes!("../../../web/index.html");

static ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: INDEX,
    },
    Asset {
        path: "/index.html",
        content_type: "text/html; charset=utf-8",
        body: INDEX,
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/app.js"),
    },
    Asset {
        path: "/api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/api.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../web/style.css"),
    },
    Asset {
        path: "/manifest.webmanifest",
        content_type: "application/manifest+json",
        body: include_bytes!("../../../web/manifest.webmanifest"),
    },
    Asset {
        path: "/icon.svg",
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

/// A strong ETag per file, from its bytes (fixed for the life of the binary).
fn etag(i: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    &TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                a.body.hash(&mut h);
                format!("\"{:016x}\"", h.finish())
            })
            .collect()
    })[i]
}

fn serve(req: &HttpRequest, i: usize) -> HttpResponse {
    let asset = &ASSETS[i];
    let tag = etag(i);
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
        .insert_header((header::ETAG, tag))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, csp(req)));
    if fresh {
        resp.finish()
    } else {
        resp.content_type(asset.content_type).body(asset.body)
    }
}

/// This origin only; the page's WebSocket goes to the host it was loaded from, which older
/// browsers do not count as `'self'`, so it is named (when it is a plain host[:port]).
fn csp(req: &HttpRequest) -> String {
    let info = req.connection_info();
    let host = info.host();
    let connect = if is_plain_host(host) {
        format!("'self' ws://{host} wss://{host}")
    } else {
        "'self'".to_owned()
    };
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; manifest-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
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
            assert!(index.contains(a.path) || a.path == "/api.js", "{}", a.path);
        }
        let req = TestRequest::default()
            .insert_header((header::HOST, "127.0.0.1:8080"))
            .to_http_request();
        let resp = serve(&req, 0);
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
        assert_eq!(serve(&again, 0).status(), 304);
    }
}
