//! Media over HTTP: uploads (whole, or resumable in chunks), downloads with Range and
//! caching headers, thumbnails, and signed links for `<img>` and `<video>`.
//!
//! Rules: the type is sniffed from the bytes against an allow-list (the name and the client's
//! `Content-Type` are never trusted); SVG and HTML are only ever served as attachments; every
//! download carries `nosniff` and a sandboxing CSP. A user may download a media when they
//! uploaded it, when it is an avatar, or when they may read a conversation whose messages
//! carry it; anyone else gets `404`, as for a media that does not exist.

use actix_web::body::SizedStream;
use actix_web::http::{header, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use chat_cluster::{BlobRef, MediaCommand, MediaRecord, MetaCommand, MetaResponse, ThumbRecord};
use chat_media::{
    content_disposition, parse_range, sanitize_file_name, sniff, BlobHash, BlobInfo, ByteRange,
    ImageLimits, MediaError, RangeRequest, Sniffed, ThumbSize, UploadId,
};
use chat_types::{
    Attachment, ConversationId, ErrorCode, MediaId, MediaInfo, MediaKind, MediaLink, UploadCreate,
    UploadStatus, UserId, WireError,
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{authenticate, error_response, query_params as query, AppState};
use crate::auth::now_ms;

/// Bytes per piece of a download body.
const BODY_CHUNK: usize = 256 * 1024;

fn wire(e: MediaError) -> WireError {
    let code = match &e {
        MediaError::TooLarge { .. } => ErrorCode::TooLarge,
        MediaError::NotFound => ErrorCode::NotFound,
        MediaError::Unsupported { .. } | MediaError::BadImage(_) => ErrorCode::UnsupportedMediaType,
        MediaError::TooManyPixels { .. } => ErrorCode::TooManyPixels,
        MediaError::OffsetMismatch { .. } => ErrorCode::OffsetMismatch,
        MediaError::UploadBusy => ErrorCode::Conflict,
        MediaError::InvalidUploadId | MediaError::InvalidHash => ErrorCode::InvalidArgument,
        MediaError::RangeNotSatisfiable => ErrorCode::RangeNotSatisfiable,
        MediaError::HashMismatch | MediaError::Io(_) => ErrorCode::Internal,
    };
    let message = match &e {
        MediaError::OffsetMismatch { expected } => format!("resume at offset {expected}"),
        MediaError::Io(_) => "storage failure".to_owned(),
        other => other.to_string(),
    };
    WireError::new(code, message)
}

fn not_found() -> WireError {
    WireError::new(ErrorCode::NotFound, "no such media")
}

fn media_id(raw: &str) -> Result<MediaId, WireError> {
    MediaId::parse(raw).map_err(|_| not_found())
}

/// Refuses an upload of `size` bytes before anything is read: the size limit, then the quota.
fn check_size(state: &AppState, user: UserId, size: u64) -> Result<(), WireError> {
    let limit = state.config.media.max_upload_bytes;
    if size > limit {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("uploads are limited to {limit} bytes"),
        ));
    }
    let used = state.meta.read(|m| m.media_usage(user));
    let quota = state.config.media.quota_bytes;
    if used.saturating_add(size) > quota {
        return Err(WireError::new(
            ErrorCode::QuotaExceeded,
            format!("this upload would exceed your storage quota ({used} of {quota} bytes used)"),
        ));
    }
    Ok(())
}

fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `POST /v1/media?name=`: the body is the file.
pub async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    let declared = content_length(&req);
    if let Err(e) = check_size(&state, principal.user_id, declared.unwrap_or(0)) {
        return error_response(&state, e);
    }
    let name = sanitize_file_name(query(&req).get("name").map_or("file", String::as_str));
    let service = state.media.clone();
    let mut writer = match service
        .blobs
        .writer(state.config.media.max_upload_bytes)
        .await
    {
        Ok(w) => w,
        Err(e) => return error_response(&state, wire(e)),
    };
    while let Some(chunk) = payload.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return error_response(
                    &state,
                    WireError::new(
                        ErrorCode::InvalidArgument,
                        format!("upload interrupted: {e}"),
                    ),
                )
            }
        };
        if let Err(e) = writer.write(&chunk).await {
            return error_response(&state, wire(e));
        }
    }
    // A chunked body has no Content-Length: the quota is checked again on what arrived.
    if let Err(e) = check_size(&state, principal.user_id, writer.written()) {
        return error_response(&state, e);
    }
    let sniffed = match sniff(writer.head()) {
        Ok(s) => s,
        Err(e) => return error_response(&state, wire(e)),
    };
    let blob = match writer.finish(service.durable()).await {
        Ok(b) => b,
        Err(e) => return error_response(&state, wire(e)),
    };
    match finish_media(&state, principal.user_id, name, sniffed, blob).await {
        Ok(info) => HttpResponse::Created().json(info),
        Err(e) => error_response(&state, e),
    }
}

/// Thumbnails (images), replication of every blob, and the record in the metadata.
async fn finish_media(
    state: &AppState,
    user: UserId,
    name: String,
    sniffed: Sniffed,
    blob: BlobInfo,
) -> Result<MediaInfo, WireError> {
    let service = state.media.clone();
    let kind = match sniffed.kind {
        chat_media::MediaKind::Image => MediaKind::Image,
        chat_media::MediaKind::Video => MediaKind::Video,
        chat_media::MediaKind::Audio => MediaKind::Audio,
        chat_media::MediaKind::File => MediaKind::File,
    };
    let (mut width, mut height, mut thumbs) = (None, None, Vec::new());
    if kind == MediaKind::Image {
        let path = service.blobs.path(&blob.hash);
        let limits = ImageLimits {
            max_pixels: state.config.media.max_image_pixels,
            ..ImageLimits::default()
        };
        let made = tokio::task::spawn_blocking(move || {
            let dims = chat_media::probe(&path, &limits)?;
            let thumbs = chat_media::thumbnails(&path, &limits)?;
            Ok::<_, MediaError>((dims, thumbs))
        })
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, "thumbnail task failed"))?;
        let ((w, h), made) = made.map_err(wire)?;
        width = Some(w);
        height = Some(h);
        for t in made {
            let info = service
                .blobs
                .put_bytes(&t.bytes, service.durable())
                .await
                .map_err(wire)?;
            thumbs.push(ThumbRecord {
                size: t.size.as_str().to_owned(),
                width: t.width,
                height: t.height,
                blob: BlobRef {
                    hash: info.hash.to_hex(),
                    size: info.size,
                    mime: t.mime.to_owned(),
                },
            });
        }
    }
    // The original and its thumbnails, on their placement nodes, all at once.
    let mut copies = vec![(blob.hash, blob.size)];
    for t in &thumbs {
        if let Ok(h) = BlobHash::from_hex(&t.blob.hash) {
            copies.push((h, t.blob.size));
        }
    }
    let results =
        futures_util::future::join_all(copies.iter().map(|(h, s)| service.replicate(*h, *s))).await;
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        tracing::warn!(error = %e, "an upload could not reach its replicas");
        return Err(WireError::new(
            ErrorCode::Unavailable,
            "not enough nodes took the upload; try again",
        ));
    }
    let id = MediaId::from_random(rand::random());
    let record = MediaRecord {
        uploader: user,
        blob: BlobRef {
            hash: blob.hash.to_hex(),
            size: blob.size,
            mime: sniffed.mime.to_owned(),
        },
        kind,
        name,
        width,
        height,
        thumbnails: thumbs,
        created_ms: now_ms(),
        conversations: Default::default(),
        public: false,
    };
    let info = record.info(&id);
    let cmd = MetaCommand::Media(MediaCommand::Add {
        id,
        record,
        quota_bytes: state.config.media.quota_bytes,
    });
    match state.meta.write(cmd).await.map_err(|e| e.to_wire())? {
        MetaResponse::MediaAdded => {
            crate::metrics::Metrics::inc(&state.metrics.media_uploads_total);
            Ok(info)
        }
        MetaResponse::MediaQuotaExceeded { used, quota } => Err(WireError::new(
            ErrorCode::QuotaExceeded,
            format!("this upload would exceed your storage quota ({used} of {quota} bytes used)"),
        )),
        _ => Err(WireError::new(
            ErrorCode::Internal,
            "unexpected metadata reply",
        )),
    }
}

/// The attachments of a message `user` sends to `conversation`: each media must exist and be
/// readable by the sender (their own upload, or one they received and forward). From then on
/// the conversation's members may read it too.
pub async fn resolve_attachments(
    state: &AppState,
    user: UserId,
    conversation: ConversationId,
    ids: &[MediaId],
) -> Result<Vec<Attachment>, WireError> {
    let (attachments, missing_ref) = state.meta.read(|m| {
        if !m.may_read_conversation(user, &conversation) {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        let mut out = Vec::with_capacity(ids.len());
        let mut missing_ref = false;
        for id in ids {
            let rec = m
                .media(id)
                .filter(|_| m.may_read_media(user, id))
                .ok_or_else(|| {
                    WireError::new(ErrorCode::NotFound, format!("no such media {id}"))
                })?;
            missing_ref |= !rec.conversations.contains(&conversation);
            out.push(rec.info(id).attachment());
        }
        Ok((out, missing_ref))
    })?;
    if missing_ref {
        let cmd = MetaCommand::Media(MediaCommand::Attach {
            media: ids.to_vec(),
            conversation,
        });
        match state.meta.write(cmd).await.map_err(|e| e.to_wire())? {
            MetaResponse::MediaAttached => {}
            _ => return Err(WireError::new(ErrorCode::NotFound, "no such media")),
        }
    }
    Ok(attachments)
}

// ----- resumable uploads ---------------------------------------------------------------------

/// `POST /v1/uploads {"name","size"}`.
pub async fn create_upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<UploadCreate>,
) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    if body.size == 0 {
        return error_response(
            &state,
            WireError::new(
                ErrorCode::InvalidArgument,
                "an upload needs at least one byte",
            ),
        );
    }
    if let Err(e) = check_size(&state, principal.user_id, body.size) {
        return error_response(&state, e);
    }
    match state
        .media
        .uploads
        .create(
            principal.user_id.0,
            &body.name,
            body.size,
            state.config.media.max_upload_bytes,
            now_ms(),
        )
        .await
    {
        Ok(s) => HttpResponse::Created().json(UploadStatus {
            upload_id: s.id.to_string(),
            offset: s.offset,
            size: s.size,
            media: None,
        }),
        Err(e) => error_response(&state, wire(e)),
    }
}

fn upload_id(raw: &str) -> Result<UploadId, WireError> {
    UploadId::parse(raw).map_err(|_| WireError::new(ErrorCode::NotFound, "no such upload"))
}

/// `GET /v1/uploads/{id}`: where to resume.
pub async fn upload_status(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    let id = match upload_id(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&state, e),
    };
    match state.media.uploads.status(&id, principal.user_id.0).await {
        Ok(s) => HttpResponse::Ok().json(UploadStatus {
            upload_id: s.id.to_string(),
            offset: s.offset,
            size: s.size,
            media: None,
        }),
        Err(e) => error_response(&state, wire(e)),
    }
}

/// `DELETE /v1/uploads/{id}`.
pub async fn cancel_upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    let id = match upload_id(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&state, e),
    };
    match state.media.uploads.cancel(&id, principal.user_id.0).await {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => error_response(&state, wire(e)),
    }
}

/// `PATCH /v1/uploads/{id}` with `Upload-Offset`: one chunk. What arrived before a dropped
/// connection stays; the client asks for the offset and goes on from there.
pub async fn append_upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    mut payload: web::Payload,
) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    let id = match upload_id(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&state, e),
    };
    let Some(offset) = req
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return error_response(
            &state,
            WireError::new(ErrorCode::InvalidArgument, "Upload-Offset header required"),
        );
    };
    let owner = principal.user_id.0;
    let uploads = &state.media.uploads;
    let mut appender = match uploads.append(&id, owner, offset).await {
        Ok(a) => a,
        Err(e) => return error_response(&state, wire(e)),
    };
    let mut failure = None;
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(c) => {
                if let Err(e) = appender.write(&c).await {
                    failure = Some(wire(e));
                    break;
                }
            }
            Err(e) => {
                failure = Some(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("chunk interrupted: {e}"),
                ));
                break;
            }
        }
    }
    let status = match appender.finish().await {
        Ok(s) => s,
        Err(e) => return error_response(&state, wire(e)),
    };
    if let Some(e) = failure {
        return error_response(&state, e);
    }
    let mut reply = UploadStatus {
        upload_id: status.id.to_string(),
        offset: status.offset,
        size: status.size,
        media: None,
    };
    if status.offset < status.size {
        return HttpResponse::Ok().json(reply);
    }
    let (blob, head, name) = match uploads.complete(&id, owner, state.media.durable()).await {
        Ok(done) => done,
        Err(e) => return error_response(&state, wire(e)),
    };
    let sniffed = match sniff(&head) {
        Ok(s) => s,
        Err(e) => return error_response(&state, wire(e)),
    };
    match finish_media(&state, principal.user_id, name, sniffed, blob).await {
        Ok(info) => {
            reply.media = Some(info);
            HttpResponse::Created().json(reply)
        }
        Err(e) => error_response(&state, e),
    }
}

// ----- downloads -----------------------------------------------------------------------------

/// The user a download is for: a signed `?link=` or the usual bearer token.
async fn reader(state: &AppState, req: &HttpRequest, id: &MediaId) -> Result<UserId, WireError> {
    if let Some(link) = query(req).get("link") {
        return verify_link(state, id, link)
            .ok_or_else(|| WireError::new(ErrorCode::Unauthorized, "invalid or expired link"));
    }
    Ok(authenticate(state, req).await?.user_id)
}

fn link_signature(token_hash: &str, id: &MediaId, expires_ms: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"chat-media-link/v1\0");
    h.update(token_hash.as_bytes());
    h.update(b"\0");
    h.update(id.as_str().as_bytes());
    h.update(b"\0");
    h.update(expires_ms.to_be_bytes());
    hex::encode(&h.finalize()[..16])
}

/// `<user>.<session id>.<expires ms>.<signature>`: valid until it expires or the session is
/// revoked. The signature is keyed by the session's token hash, which only the metadata holds.
fn verify_link(state: &AppState, id: &MediaId, link: &str) -> Option<UserId> {
    let mut parts = link.split('.');
    let user = UserId(parts.next()?.parse().ok()?);
    let session = parts.next()?;
    let expires_ms: u64 = parts.next()?.parse().ok()?;
    let sig = parts.next()?;
    if parts.next().is_some() || expires_ms < now_ms() {
        return None;
    }
    let token_hash = state.meta.read(|m| {
        m.sessions_of(user)
            .into_iter()
            .find(|(hash, _)| chat_cluster::meta::session_id(hash) == session)
            .map(|(hash, _)| hash.to_owned())
    })?;
    let want = link_signature(&token_hash, id, expires_ms);
    // Compare without an early exit.
    let same = want.len() == sig.len()
        && want
            .bytes()
            .zip(sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then_some(user)
}

/// The media's record if `user` may read it. A reader who just received a message with the
/// media may ask a node that has not applied the media's record or its attachment yet (both
/// were agreed before the message was written): such a miss waits for this node to catch up,
/// for at most the catch-up window, before it is a 404.
async fn readable(state: &AppState, user: UserId, id: &MediaId) -> Result<MediaRecord, WireError> {
    let check = |m: &chat_cluster::MetaState| {
        m.may_read_media(user, id)
            .then(|| m.media(id).cloned())
            .flatten()
    };
    if let Some(r) = state.meta.read(check) {
        return Ok(r);
    }
    state.auth.wait_for(check).await.ok_or_else(not_found)
}

/// `POST /v1/media/{id}/link`.
pub async fn link(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    let result = async {
        let id = media_id(&path)?;
        let record = readable(&state, principal.user_id, &id).await?;
        let expires_ms = now_ms() + state.config.media.link_ttl_ms;
        let sig = link_signature(&principal.token_hash, &id, expires_ms);
        let session = chat_cluster::meta::session_id(&principal.token_hash);
        let q = format!("link={}.{session}.{expires_ms}.{sig}", principal.user_id.0);
        Ok(MediaLink {
            url: format!("/v1/media/{id}?{q}"),
            thumbnails: record
                .thumbnails
                .iter()
                .map(|t| {
                    (
                        t.size.clone(),
                        format!("/v1/media/{id}/thumbnails/{}?{q}", t.size),
                    )
                })
                .collect(),
            expires_ms,
        })
    }
    .await;
    match result {
        Ok(l) => HttpResponse::Ok().json(l),
        Err(e) => error_response(&state, e),
    }
}

/// `GET /v1/media/{id}/info`.
pub async fn info(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let result = async {
        let id = media_id(&path)?;
        let user = reader(&state, &req, &id).await?;
        Ok::<_, WireError>(readable(&state, user, &id).await?.info(&id))
    }
    .await;
    match result {
        Ok(i) => HttpResponse::Ok().json(i),
        Err(e) => error_response(&state, e),
    }
}

/// `GET /v1/media/{id}` (and `HEAD`).
pub async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let result = async {
        let id = media_id(&path)?;
        let user = reader(&state, &req, &id).await?;
        let record = readable(&state, user, &id).await?;
        let inline = record.kind != MediaKind::File;
        Ok::<_, WireError>((record.blob, record.name, inline))
    }
    .await;
    match result {
        Ok((blob, name, inline)) => serve_blob(&state, &req, blob, &name, inline).await,
        Err(e) => error_response(&state, e),
    }
}

/// `GET /v1/media/{id}/thumbnails/{size}`.
pub async fn thumbnail(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (raw, size) = path.into_inner();
    let result = async {
        let id = media_id(&raw)?;
        let size = ThumbSize::parse(&size)
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such thumbnail size"))?;
        let user = reader(&state, &req, &id).await?;
        let record = readable(&state, user, &id).await?;
        let thumb = record
            .thumbnails
            .into_iter()
            .find(|t| t.size == size.as_str())
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, "this media has no thumbnails"))?;
        let ext = if thumb.blob.mime == "image/png" {
            "png"
        } else {
            "jpg"
        };
        Ok::<_, WireError>((thumb.blob, format!("thumbnail-{}.{ext}", size.as_str())))
    }
    .await;
    match result {
        Ok((blob, name)) => serve_blob(&state, &req, blob, &name, true).await,
        Err(e) => error_response(&state, e),
    }
}

/// One piece of a response body: literal bytes, or a range of the blob.
enum Piece {
    Bytes(Vec<u8>),
    Range(ByteRange),
}

async fn serve_blob(
    state: &AppState,
    req: &HttpRequest,
    blob: BlobRef,
    name: &str,
    inline: bool,
) -> HttpResponse {
    let Ok(hash) = BlobHash::from_hex(&blob.hash) else {
        return error_response(
            state,
            WireError::new(ErrorCode::Internal, "corrupt media record"),
        );
    };
    let size = blob.size;
    let etag = format!("\"{}\"", blob.hash);
    // Never let a browser render active content from here.
    let dangerous = matches!(blob.mime.as_str(), "image/svg+xml" | "text/html");
    let inline = inline && !dangerous;
    let mime = if dangerous {
        "application/octet-stream".to_owned()
    } else {
        blob.mime.clone()
    };
    let service = state.media.clone();
    {
        let service = service.clone();
        tokio::spawn(async move { service.repair_if_placed_here(hash, size).await });
    }

    let headers = |b: &mut actix_web::HttpResponseBuilder| {
        b.insert_header((header::ETAG, etag.clone()))
            .insert_header((header::ACCEPT_RANGES, "bytes"))
            .insert_header((header::CACHE_CONTROL, "private, max-age=86400"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox",
            ))
            .insert_header(("Cross-Origin-Resource-Policy", "same-origin"))
            .insert_header((header::CONTENT_DISPOSITION, content_disposition(name, inline)));
    };
    let header_str = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(inm) = header_str(header::IF_NONE_MATCH) {
        if inm.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            let mut b = HttpResponse::NotModified();
            headers(&mut b);
            return b.finish();
        }
    }
    // A Range applies only to the version the client names in If-Range (if it names one).
    let range = header_str(header::RANGE)
        .filter(|_| header_str(header::IF_RANGE).is_none_or(|v| v.trim() == etag));
    let ranges = match range.map(|r| parse_range(&r, size)) {
        None | Some(Ok(RangeRequest::Full)) => None,
        Some(Ok(RangeRequest::Partial(r))) => Some(r),
        Some(Err(_)) => {
            let mut b = HttpResponse::build(StatusCode::RANGE_NOT_SATISFIABLE);
            headers(&mut b);
            return b
                .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                .finish();
        }
    };
    let (status, content_type, pieces, length, content_range) = match ranges {
        None => (
            StatusCode::OK,
            mime,
            vec![Piece::Range(ByteRange {
                start: 0,
                end: size.saturating_sub(1),
            })]
            .into_iter()
            .filter(|_| size > 0)
            .collect::<Vec<_>>(),
            size,
            None,
        ),
        Some(r) if r.len() == 1 => (
            StatusCode::PARTIAL_CONTENT,
            mime,
            vec![Piece::Range(r[0])],
            r[0].len(),
            Some(chat_media::content_range(&r[0], size)),
        ),
        Some(r) => {
            let boundary = chat_media::new_boundary();
            let layout = chat_media::multipart_layout(&r, size, &mime, &boundary);
            let mut pieces = Vec::new();
            for part in layout.parts {
                pieces.push(Piece::Bytes(part.header));
                pieces.push(Piece::Range(part.range));
            }
            pieces.push(Piece::Bytes(layout.closing));
            (
                StatusCode::PARTIAL_CONTENT,
                layout.content_type,
                pieces,
                layout.content_length,
                None,
            )
        }
    };
    let mut b = HttpResponse::build(status);
    headers(&mut b);
    b.insert_header((header::CONTENT_TYPE, content_type));
    if let Some(cr) = content_range {
        b.insert_header((header::CONTENT_RANGE, cr));
    }
    if req.method() == actix_web::http::Method::HEAD {
        return b
            .insert_header((header::CONTENT_LENGTH, length.to_string()))
            .finish();
    }
    // Pieces become body chunks lazily: a range is read only as the client takes it.
    let stream = futures_util::stream::unfold(
        (pieces.into_iter(), None::<(u64, u64)>),
        move |(mut rest, current)| {
            let service = service.clone();
            async move {
                let (mut at, end) = match current {
                    Some(c) => c,
                    None => match rest.next()? {
                        Piece::Bytes(b) => {
                            return Some((Ok::<_, actix_web::Error>(Bytes::from(b)), (rest, None)))
                        }
                        Piece::Range(r) => (r.start, r.end),
                    },
                };
                let want =
                    usize::try_from((end - at + 1).min(BODY_CHUNK as u64)).unwrap_or(BODY_CHUNK);
                match service.read(&hash, at, want).await {
                    Ok(bytes) if !bytes.is_empty() => {
                        at += bytes.len() as u64;
                        let next = (at <= end).then_some((at, end));
                        Some((Ok(Bytes::from(bytes)), (rest, next)))
                    }
                    Ok(_) | Err(_) => {
                        tracing::warn!("a media body ended early: its blob could not be read");
                        Some((
                            Err(actix_web::error::ErrorServiceUnavailable(
                                "media unavailable",
                            )),
                            (Vec::new().into_iter(), None),
                        ))
                    }
                }
            }
        },
    );
    b.body(SizedStream::new(length, stream))
}
