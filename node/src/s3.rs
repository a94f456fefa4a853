//! An S3-compatible object store for media blobs, when one is configured (`[media.s3]`).
//!
//! Only what the media service needs: create the bucket if missing, `HEAD`, a streamed `PUT`
//! of a blob file, and ranged `GET`s. Requests are signed with AWS Signature Version 4
//! (path-style URLs, `UNSIGNED-PAYLOAD` so that a file streams without being hashed twice),
//! which MinIO, Garage, Ceph RGW and AWS itself all accept. Object keys are the blobs'
//! content hashes, so an object is written once and never changes.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// `[media.s3]` in the configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http://host:port` (or https) of the S3 endpoint.
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Or `CHAT_S3_ACCESS_KEY_ID`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// A file holding the secret key (or `CHAT_S3_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub secret_access_key_file: Option<std::path::PathBuf>,
    /// Filled from the environment or the file at start.
    #[serde(skip)]
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 configuration: {0}")]
    Config(String),
    #[error("S3 request failed: {0}")]
    Request(String),
    #[error("S3 answered {status} to {what}")]
    Status { status: u16, what: &'static str },
    #[error("reading the blob file: {0}")]
    Io(#[from] std::io::Error),
}

/// A client of one bucket.
pub struct S3Store {
    client: reqwest::Client,
    endpoint: Url,
    bucket: String,
    region: String,
    access_key: String,
    secret_key: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint.as_str())
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    pub fn new(config: &S3Config) -> Result<S3Store, S3Error> {
        let endpoint = Url::parse(&config.endpoint)
            .map_err(|e| S3Error::Config(format!("endpoint {:?}: {e}", config.endpoint)))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(S3Error::Config(
                "endpoint must be http(s)://host[:port]".into(),
            ));
        }
        let b = &config.bucket;
        if b.len() < 3
            || b.len() > 63
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        {
            return Err(S3Error::Config(
                "bucket must be 3 to 63 characters of a-z 0-9 . -".into(),
            ));
        }
        let access_key = std::env::var("CHAT_S3_ACCESS_KEY_ID")
            .ok()
            .or_else(|| config.access_key_id.clone())
            .ok_or_else(|| S3Error::Config("no access key id".into()))?;
        let secret_key = config
            .secret_access_key
            .clone()
            .ok_or_else(|| S3Error::Config("no secret access key".into()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| S3Error::Request(e.to_string()))?;
        Ok(S3Store {
            client,
            endpoint,
            bucket: b.clone(),
            region: config.region.clone(),
            access_key,
            secret_key,
        })
    }

    fn url(&self, key: Option<&str>) -> Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push(&self.bucket);
            if let Some(k) = key {
                path.push(k);
            }
        }
        url
    }

    /// A signed request builder for `method` on `url` (SigV4, unsigned payload).
    fn signed(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (date, amz_date) = amz_dates(now);
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (uri_encode(&k, true), uri_encode(&v, true)))
            .collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let canonical_request = format!(
            "{}\n{}\n{}\nhost:{}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:{}\n\nhost;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD",
            method.as_str(),
            url.path(),
            canonical_query,
            host,
            amz_date
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let mut key = hmac(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.region.as_bytes(), b"s3", b"aws4_request"] {
            key = hmac(&key, part);
        }
        let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
            self.access_key
        );
        self.client
            .request(method, url)
            .header("x-amz-date", amz_date)
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .header("authorization", auth)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, S3Error> {
        req.send()
            .await
            .map_err(|e| S3Error::Request(e.to_string()))
    }

    /// Creates the bucket unless it exists.
    pub async fn ensure_bucket(&self) -> Result<(), S3Error> {
        let resp = self.send(self.signed(Method::HEAD, self.url(None))).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let resp = self.send(self.signed(Method::PUT, self.url(None))).await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
            s => Err(S3Error::Status {
                status: s.as_u16(),
                what: "create bucket",
            }),
        }
    }

    /// The object's length, if it exists.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, S3Error> {
        let resp = self
            .send(self.signed(Method::HEAD, self.url(Some(key))))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(resp.content_length()),
            s => Err(S3Error::Status {
                status: s.as_u16(),
                what: "head object",
            }),
        }
    }

    /// Streams the file at `path` (`size` bytes) into the object `key`.
    pub async fn put_file(&self, key: &str, path: &Path, size: u64) -> Result<(), S3Error> {
        let file = tokio::fs::File::open(path).await?;
        let body = futures_util::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(buf), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let req = self
            .signed(Method::PUT, self.url(Some(key)))
            .header("content-length", size.to_string())
            .body(reqwest::Body::wrap_stream(body));
        let resp = self.send(req).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(S3Error::Status {
                status: resp.status().as_u16(),
                what: "put object",
            })
        }
    }

    /// Up to `len` bytes of `key` from `offset` (empty past the end); `None` when the object
    /// does not exist.
    pub async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, S3Error> {
        if len == 0 {
            return Ok(Some(Vec::new()));
        }
        let last = offset + len as u64 - 1;
        let req = self
            .signed(Method::GET, self.url(Some(key)))
            .header("range", format!("bytes={offset}-{last}"));
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(Some(Vec::new())),
            StatusCode::PARTIAL_CONTENT => Ok(Some(
                resp.bytes()
                    .await
                    .map_err(|e| S3Error::Request(e.to_string()))?
                    .to_vec(),
            )),
            StatusCode::OK => {
                // A store that ignores Range sends everything: keep the part asked for.
                let all = resp
                    .bytes()
                    .await
                    .map_err(|e| S3Error::Request(e.to_string()))?;
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
                let end = start.saturating_add(len).min(all.len());
                Ok(Some(all[start..end].to_vec()))
            }
            s => Err(S3Error::Status {
                status: s.as_u16(),
                what: "get object",
            }),
        }
    }
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = if key.len() > BLOCK {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(BLOCK, 0);
    let mut inner = Sha256::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<u8>>());
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<u8>>());
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` for a Unix time (UTC).
fn amz_dates(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}{month:02}{day:02}");
    let time = format!("{:02}{:02}{:02}", rem / 3600, (rem % 3600) / 60, rem % 60);
    (date.clone(), format!("{date}T{time}Z"))
}

/// RFC 3986 encoding as SigV4 wants it (`/` kept in paths).
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(amz_dates(0), ("19700101".into(), "19700101T000000Z".into()));
        // 2024-02-29T12:34:56Z, a leap day.
        assert_eq!(
            amz_dates(1_709_210_096),
            ("20240229".into(), "20240229T123456Z".into())
        );
    }

    #[test]
    fn signing_key_derivation_matches_the_aws_example() {
        // From AWS's "Examples of how to derive a signing key for Signature Version 4".
        let mut key = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        for part in [&b"us-east-1"[..], b"iam", b"aws4_request"] {
            key = hmac(&key, part);
        }
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(uri_encode("a b/c~", true), "a%20b%2Fc~");
        assert_eq!(uri_encode("a/b", false), "a/b");
    }
}
