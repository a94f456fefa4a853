//! Files: uploading them for `chat send --file` and the UI's `/file`, and `chat download`.
//!
//! Files up to [`RESUMABLE_ABOVE`] go up in one request; larger ones through a resumable
//! upload in [`CHUNK`] pieces read from disk one at a time (never the whole file in memory),
//! resuming from the server's offset after a transient failure. Downloads are streamed to
//! disk in ranged requests of [`CHUNK`] bytes, so memory stays bounded whatever the size.

use std::io::{IsTerminal, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_client::{ClientError, Download, HttpApi};
use chat_types::{MediaId, MediaInfo, WireError};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::commands::retrying;
use crate::config::Ctx;
use crate::error::CliError;
use crate::output::{format_size, sanitize};

/// Files larger than this go through a resumable upload.
pub const RESUMABLE_ABOVE: u64 = 8 * 1024 * 1024;
/// The piece size of resumable uploads and of downloads.
pub const CHUNK: u64 = 4 * 1024 * 1024;
/// One media request may move several MiB: more time than the 10 s of other requests.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(300);
/// Transient failures of a resumable upload tolerated in a row.
const UPLOAD_RETRIES: u32 = 5;

/// A client for media requests (a longer timeout than the default).
pub fn media_api(server: &str) -> Result<HttpApi, CliError> {
    Ok(HttpApi::with_timeout(server, MEDIA_TIMEOUT)?)
}

/// The name an upload is given: the file's own name (the server sanitizes it further).
pub fn upload_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "file".to_owned())
}

/// Checks that `path` is a regular file that can be read; returns its size.
pub async fn check_file(path: &Path) -> Result<u64, CliError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| CliError::io(&format!("cannot read {}", path.display()), &e))?;
    if !meta.is_file() {
        return Err(CliError::new(
            "invalid_argument",
            format!("{} is not a file", path.display()),
        ));
    }
    Ok(meta.len())
}

/// Uploads the file at `path`; `progress(done, total)` is called as bytes are accepted.
pub async fn upload_file<P>(
    api: &HttpApi,
    token: &str,
    path: &Path,
    progress: P,
) -> Result<MediaInfo, CliError>
where
    P: Fn(u64, u64) + Send + Sync,
{
    let size = check_file(path).await?;
    let name = upload_name(path);
    let unreadable =
        |e: std::io::Error| CliError::io(&format!("cannot read {}", path.display()), &e);
    if size <= RESUMABLE_ABOVE {
        let bytes = tokio::fs::read(path).await.map_err(unreadable)?;
        progress(0, size);
        let (bytes, name) = (&bytes, &name);
        // The same content uploaded twice is stored once: retrying is safe.
        let info =
            retrying(move || async move { Ok(api.upload(token, name, bytes.clone()).await?) })
                .await?;
        progress(size, size);
        return Ok(info);
    }
    let mut file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let name = &name;
    let started =
        retrying(move || async move { Ok(api.create_upload(token, name, size).await?) }).await?;
    let upload_id = started.upload_id.as_str();
    let mut offset = started.offset;
    let mut failures = 0;
    let mut delay = Duration::from_millis(300);
    loop {
        if offset >= size {
            return Err(CliError::new(
                "protocol",
                format!("the upload of {name} is at offset {offset} of {size} without its media"),
            ));
        }
        progress(offset, size);
        let len = usize::try_from((size - offset).min(CHUNK)).unwrap_or(0);
        let mut chunk = vec![0u8; len];
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(unreadable)?;
        file.read_exact(&mut chunk).await.map_err(unreadable)?;
        match api
            .append_upload(token, upload_id, offset, chunk)
            .await
            .map_err(CliError::from)
        {
            Ok(status) => {
                failures = 0;
                delay = Duration::from_millis(300);
                if let Some(media) = status.media {
                    progress(size, size);
                    return Ok(media);
                }
                if status.offset <= offset || status.offset > size {
                    return Err(CliError::new(
                        "protocol",
                        format!(
                            "an upload chunk at {offset} moved the offset to {}",
                            status.offset
                        ),
                    ));
                }
                offset = status.offset;
            }
            // Transient, or the server holds another offset than ours (a chunk whose answer
            // was lost): ask it where to go on.
            Err(e) if (e.retry || e.code == "offset_mismatch") && failures < UPLOAD_RETRIES => {
                failures += 1;
                tokio::time::sleep(e.retry_after.unwrap_or(delay).min(Duration::from_secs(10)))
                    .await;
                delay *= 2;
                let status =
                    retrying(move || async move { Ok(api.upload_status(token, upload_id).await?) })
                        .await?;
                if let Some(media) = status.media {
                    progress(size, size);
                    return Ok(media);
                }
                offset = status.offset;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Progress of a transfer on stderr, one line redrawn in place; silent when stderr is not a
/// terminal (scripts and logs get no carriage returns).
#[derive(Debug)]
pub struct StderrProgress {
    label: String,
    enabled: bool,
}

impl StderrProgress {
    pub fn new(verb: &str, name: &str) -> StderrProgress {
        StderrProgress {
            label: format!("{verb} {}", sanitize(name)),
            enabled: std::io::stderr().is_terminal(),
        }
    }

    pub fn show(&self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let percent = (done.saturating_mul(100))
            .checked_div(total)
            .unwrap_or(100)
            .min(100);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\u{1b}[2K{}: {} / {} ({percent}%)",
            self.label,
            format_size(done),
            format_size(total)
        );
        let _ = err.flush();
    }

    /// Ends the progress line.
    pub fn finish(&self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err);
        }
    }
}

/// A file name safe to create in a directory: the last path component of `name`, without
/// control characters or leading dots (no hidden files, no `..`), at most 200 bytes; the
/// media id when nothing is left.
pub fn safe_file_name(name: &str, fallback: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::new();
    for c in cleaned.chars() {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        fallback.to_owned()
    } else {
        out
    }
}

/// Where `chat download` writes.
enum Sink {
    Stdout,
    /// Writing `path` itself (claimed with create-new, removed on failure).
    New {
        path: PathBuf,
        file: tokio::fs::File,
    },
    /// `--force`: writing `tmp`, renamed over `path` at the end.
    Replace {
        path: PathBuf,
        tmp: PathBuf,
        file: tokio::fs::File,
    },
}

impl Sink {
    async fn open(path: Option<PathBuf>, force: bool) -> Result<Sink, CliError> {
        let Some(path) = path else {
            return Ok(Sink::Stdout);
        };
        let fail =
            |e: std::io::Error| CliError::io(&format!("cannot create {}", path.display()), &e);
        if !force {
            return match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(file) => Ok(Sink::New { path, file }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(CliError::new(
                    "exists",
                    format!(
                        "{} already exists; use --force to replace it or -o to pick another name",
                        path.display()
                    ),
                )),
                Err(e) => Err(fail(e)),
            };
        }
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "download".to_owned());
        let tmp = path.with_file_name(format!(".{file_name}.part-{}", std::process::id()));
        let file = tokio::fs::File::create(&tmp).await.map_err(fail)?;
        Ok(Sink::Replace { path, tmp, file })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        let written = match self {
            // A blocking write: stdout is a pipe or a terminal, and this is the only task.
            Sink::Stdout => std::io::stdout().lock().write_all(bytes),
            Sink::New { file, .. } | Sink::Replace { file, .. } => file.write_all(bytes).await,
        };
        written.map_err(|e| CliError::io("cannot write the download", &e))
    }

    /// Flushes and puts the file in place; returns its path (`None` for stdout).
    async fn finish(self) -> Result<Option<PathBuf>, CliError> {
        let fail = |e: std::io::Error| CliError::io("cannot write the download", &e);
        match self {
            Sink::Stdout => {
                std::io::stdout().lock().flush().map_err(fail)?;
                Ok(None)
            }
            Sink::New { path, file } => {
                file.sync_all().await.map_err(fail)?;
                Ok(Some(path))
            }
            Sink::Replace { path, tmp, file } => {
                file.sync_all().await.map_err(fail)?;
                drop(file);
                tokio::fs::rename(&tmp, &path).await.map_err(fail)?;
                Ok(Some(path))
            }
        }
    }

    /// Removes what a failed download left.
    async fn abandon(self) {
        match self {
            Sink::Stdout => {}
            Sink::New { path, file } => {
                drop(file);
                let _ = tokio::fs::remove_file(&path).await;
            }
            Sink::Replace { tmp, file, .. } => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
            }
        }
    }
}

/// The error of a download answered with a status other than 200 or 206.
fn status_error(d: &Download) -> CliError {
    match serde_json::from_slice::<WireError>(&d.body) {
        Ok(wire) => CliError::from(ClientError::Server(wire)),
        Err(_) => CliError {
            retry: d.status >= 500,
            ..CliError::new(
                "protocol",
                format!("HTTP {} without an error body", d.status),
            )
        },
    }
}

/// The first byte of a `Content-Range: bytes a-b/size` header.
fn range_start(d: &Download) -> Option<u64> {
    let value = d.header("content-range")?.trim();
    let rest = value.strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

/// `chat download MEDIA_ID [-o PATH] [--force]`.
pub async fn download(
    ctx: &Ctx,
    media: &str,
    output: Option<&Path>,
    force: bool,
) -> Result<(), CliError> {
    let id = MediaId::parse(media.trim())
        .map_err(|e| CliError::new("invalid_argument", e.to_string()))?;
    let auth = ctx.auth()?;
    let api = media_api(&auth.server)?;
    let (api, token, id_ref) = (&api, auth.token.as_str(), &id);
    let info = retrying(move || async move { Ok(api.media_info(token, id_ref).await?) }).await?;
    let name = safe_file_name(&info.name, id.as_str());
    let dest = match output {
        Some(p) if p == Path::new("-") => None,
        Some(p) if p.is_dir() => Some(p.join(&name)),
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(&name)),
    };
    let mut sink = Sink::open(dest, force).await?;
    let progress = StderrProgress::new("downloading", &name);
    let show = info.size > CHUNK;
    match fetch_into(api, token, &id, info.size, &mut sink, |done, total| {
        if show {
            progress.show(done, total);
        }
    })
    .await
    {
        Ok(()) => {}
        Err(e) => {
            if show {
                progress.finish();
            }
            sink.abandon().await;
            return Err(e);
        }
    }
    if show {
        progress.finish();
    }
    let Some(path) = sink.finish().await? else {
        return Ok(());
    };
    ctx.out.result(
        &format!(
            "saved {} ({}, {}) to {}",
            sanitize(&info.name),
            sanitize(&info.mime),
            format_size(info.size),
            path.display()
        ),
        &json!({
            "id": info.id,
            "name": info.name,
            "mime": info.mime,
            "size": info.size,
            "path": path,
        }),
    )
}

/// Streams the `size` bytes of `id` into `sink`, a range of [`CHUNK`] bytes at a time.
async fn fetch_into(
    api: &HttpApi,
    token: &str,
    id: &MediaId,
    size: u64,
    sink: &mut Sink,
    progress: impl Fn(u64, u64),
) -> Result<(), CliError> {
    let path = format!("/v1/media/{id}");
    let path = path.as_str();
    if size == 0 {
        let d = retrying(move || async move { get(api, token, path, None).await }).await?;
        return sink.write(&d.body).await;
    }
    let mut offset = 0u64;
    while offset < size {
        let last = offset.saturating_add(CHUNK).min(size) - 1;
        let range = format!("bytes={offset}-{last}");
        let range = range.as_str();
        let d = retrying(move || async move { get(api, token, path, Some(range)).await }).await?;
        let len = d.body.len() as u64;
        match d.status {
            // The whole file (a server that ignores ranges): fine when asked from the start.
            200 if offset == 0 => {
                if len != size {
                    return Err(CliError::new(
                        "protocol",
                        format!("the media has {len} bytes, its description says {size}"),
                    ));
                }
                sink.write(&d.body).await?;
                offset = len;
            }
            206 if range_start(&d) == Some(offset) && len > 0 && len <= last - offset + 1 => {
                sink.write(&d.body).await?;
                offset += len;
            }
            status => {
                return Err(CliError::new(
                    "protocol",
                    format!("unexpected answer to {range} of {size} bytes (HTTP {status})"),
                ))
            }
        }
        progress(offset, size);
    }
    Ok(())
}

/// A GET of media bytes: 200 or 206, anything else as an error.
async fn get(
    api: &HttpApi,
    token: &str,
    path: &str,
    range: Option<&str>,
) -> Result<Download, CliError> {
    let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
    let d = api.fetch(Some(token), path, &headers).await?;
    match d.status {
        200 | 206 => Ok(d),
        _ => Err(status_error(&d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloaded_names_have_no_path_and_no_surprises() {
        let id = "ab".repeat(16);
        assert_eq!(safe_file_name("cat.png", &id), "cat.png");
        assert_eq!(safe_file_name("../../etc/passwd", &id), "passwd");
        assert_eq!(safe_file_name("..\\..\\boot.ini", &id), "boot.ini");
        assert_eq!(safe_file_name("/abs/path/", &id), id);
        assert_eq!(safe_file_name("..", &id), id);
        assert_eq!(safe_file_name(".bashrc", &id), "bashrc");
        assert_eq!(safe_file_name("a\u{1b}[2Jb\n.txt", &id), "a[2Jb.txt");
        assert_eq!(safe_file_name("", &id), id);
        let long = safe_file_name(&"北".repeat(300), &id);
        assert!(long.len() <= 200 && long.chars().all(|c| c == '北'));
    }

    #[test]
    fn content_range_starts_parse() {
        let d = |v: &str| Download {
            status: 206,
            headers: vec![("content-range".into(), v.into())],
            body: Vec::new(),
        };
        assert_eq!(
            range_start(&d("bytes 4194304-8388607/9000000")),
            Some(4_194_304)
        );
        assert_eq!(range_start(&d("bytes 0-0/1")), Some(0));
        assert_eq!(range_start(&d("items 0-0/1")), None);
        assert_eq!(range_start(&d("bytes x-1/2")), None);
    }

    #[test]
    fn errors_of_downloads_keep_the_server_code() {
        let d = Download {
            status: 404,
            headers: Vec::new(),
            body: br#"{"code":"not_found","message":"no such media","retry":false}"#.to_vec(),
        };
        assert_eq!(status_error(&d).code, "not_found");
        let d = Download {
            status: 502,
            headers: Vec::new(),
            body: b"<html>".to_vec(),
        };
        let e = status_error(&d);
        assert!(e.retry && e.code == "protocol", "{e}");
    }
}
