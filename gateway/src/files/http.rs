//! The file API under `/api/v1` (PLAN section 2): resumable uploads, finish, abort, signed
//! download URLs, downloads with Range, and a conversation's file list.
//!
//! Every bearer call costs one token of the caller's file-request bucket (the same shape as
//! the per-device request limit) and checks membership: a non-member gets the same 404 as for
//! a conversation that does not exist.

// Helpers return the refusal itself as their error: built once, on the refusing path only.
#![allow(clippy::result_large_err)]

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tern_engine::driver::now_ms;
use tern_engine::service::ServiceError;
use tern_engine::store::files::{CreateOutcome, DeleteIf, UploadLimits, UploadRecord, UploadState};
use tern_wire::api::{FileList, FileUrl, FileView, UploadCreate, UploadView};
use tern_wire::ids::{ConversationId, MessageId, UserId};

use super::FileService;
use super::staging::Appended;
use crate::http::{ApiJson, ApiState, Caller, HttpError, error_response};

/// The content type of a PATCH body (as in tus).
pub const OFFSET_STREAM: &str = "application/offset+octet-stream";
pub const UPLOAD_OFFSET: &str = "upload-offset";
pub const UPLOAD_LENGTH: &str = "upload-length";

fn fail(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    error_response(status, code, message.into())
}

fn not_found(what: &str) -> Response {
    fail(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such {what}"),
    )
}

fn internal(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "{what}");
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "storage unavailable, retry",
    )
}

fn with_offset(mut response: Response, offset: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&offset.to_string()) {
        response.headers_mut().insert(UPLOAD_OFFSET, v);
    }
    response
}

fn limited(files: &FileService, user: UserId) -> Result<(), Response> {
    files.take_request(user).map_err(|retry| {
        HttpError::from(ServiceError::rate_limited(Duration::from_millis(
            u64::from(retry.ms),
        )))
        .into_response()
    })
}

/// The preamble of every handler with an upload or file id in its path: the caller's request
/// bucket first (a refused flood costs no parsing), then the id.
fn limited_id(files: &FileService, user: UserId, id: &str) -> Result<MessageId, Response> {
    limited(files, user)?;
    parse_id(id)
}

fn parse_id(id: &str) -> Result<MessageId, Response> {
    id.parse().map_err(|_| {
        fail(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "the id must be a UUID",
        )
    })
}

async fn member(files: &FileService, c: ConversationId, user: UserId) -> Result<(), Response> {
    match files.store.is_member(c, user).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(not_found("conversation")),
        Err(e) => Err(internal("checking membership", e)),
    }
}

/// The caller's own upload (anyone else's is a 404, like a missing one).
async fn own_upload(
    files: &FileService,
    id: MessageId,
    user: UserId,
) -> Result<UploadRecord, Response> {
    match files.meta.upload(id).await {
        Ok(Some(r)) if r.owner == user => Ok(r),
        Ok(_) => Err(not_found("upload")),
        Err(e) => Err(internal("reading an upload", e)),
    }
}

fn file_view(r: &UploadRecord) -> FileView {
    FileView {
        file_id: r.id,
        conversation: r.conversation,
        size: r.size,
        content_type: r.content_type.clone(),
        created_ms: r.updated_ms,
    }
}

#[utoipa::path(post, path = "/api/v1/uploads", request_body = UploadCreate, security(("bearer" = [])),
    responses((status = 201, body = UploadView),
              (status = 404, body = tern_wire::api::ApiError, description = "not a member, or no such conversation"),
              (status = 409, body = tern_wire::api::ApiError, description = "too_many_uploads: the open-upload limit"),
              (status = 413, body = tern_wire::api::ApiError, description = "limit_exceeded (size 0 or over max_file_bytes) or quota_exceeded"),
              (status = 415, body = tern_wire::api::ApiError, description = "type_not_allowed"),
              (status = 429, body = tern_wire::api::ApiError)))]
pub async fn create_upload(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<UploadCreate>,
) -> Response {
    let files = &api.files;
    if let Err(r) = limited(files, caller.user) {
        return r;
    }
    if let Err(r) = member(files, body.conversation, caller.user).await {
        return r;
    }
    let content_type = body.content_type.trim().to_ascii_lowercase();
    if !super::policy::valid_content_type(&content_type) {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "content_type must be type/subtype (at most 127 bytes, no parameters)",
        );
    }
    if !super::policy::allowed(&files.config.allowed_types, &content_type) {
        files.metrics.type_refusals.inc();
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "type_not_allowed",
            format!("files of type {content_type} are not accepted here"),
        );
    }
    if body.size == 0 || body.size > files.config.max_file_bytes {
        files.metrics.size_refusals.inc();
        return fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit_exceeded",
            format!(
                "size must be between 1 and {} bytes",
                files.config.max_file_bytes
            ),
        );
    }
    let now = now_ms();
    let record = UploadRecord {
        id: MessageId::random(),
        owner: caller.user,
        conversation: body.conversation,
        size: body.size,
        content_type,
        offset: 0,
        state: UploadState::Staging,
        referenced: false,
        created_ms: now,
        updated_ms: now,
    };
    let limits = UploadLimits {
        quota_bytes: files.config.user_quota_bytes,
        max_open: files.config.max_open_uploads_per_user,
    };
    match files.meta.create_upload(record.clone(), limits).await {
        Ok(CreateOutcome::Created) => {
            files.metrics.uploads_created.inc();
        }
        Ok(CreateOutcome::QuotaExceeded { used }) => {
            files.metrics.size_refusals.inc();
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                format!(
                    "file quota exceeded: {used} of {} bytes used, this file needs {}",
                    files.config.user_quota_bytes, body.size
                ),
            );
        }
        Ok(CreateOutcome::TooManyOpen) => {
            return fail(
                StatusCode::CONFLICT,
                "too_many_uploads",
                format!(
                    "at most {} unfinished uploads at once: finish or abort one",
                    files.config.max_open_uploads_per_user
                ),
            );
        }
        Err(e) => return internal("creating an upload", e),
    }
    (
        StatusCode::CREATED,
        Json(UploadView {
            upload_id: record.id,
            conversation: record.conversation,
            size: record.size,
            content_type: record.content_type,
            offset: 0,
            max_chunk_bytes: files.config.max_chunk_bytes,
            expires_ms: now + files.config.upload_idle.as_millis() as u64,
        }),
    )
        .into_response()
}

#[utoipa::path(head, path = "/api/v1/uploads/{id}", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 204, description = "Upload-Offset: bytes durably received; Upload-Length: the declared size"),
              (status = 404, description = "no such upload of the caller")))]
pub async fn head_upload(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let files = &api.files;
    let id = match limited_id(files, caller.user, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match own_upload(files, id, caller.user).await {
        Ok(r) => {
            let mut response = with_offset(StatusCode::NO_CONTENT.into_response(), r.offset);
            if let Ok(v) = HeaderValue::from_str(&r.size.to_string()) {
                response.headers_mut().insert(UPLOAD_LENGTH, v);
            }
            response
        }
        Err(r) => r,
    }
}

fn header_u64(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[utoipa::path(patch, path = "/api/v1/uploads/{id}", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid),
           ("Upload-Offset" = u64, Header, description = "where this body starts: the current offset")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream", description = "at most max_chunk_bytes"),
    responses((status = 204, description = "stored; Upload-Offset: the new offset"),
              (status = 404, body = tern_wire::api::ApiError),
              (status = 409, body = tern_wire::api::ApiError, description = "offset_mismatch (Upload-Offset: the current offset), or upload_busy"),
              (status = 413, body = tern_wire::api::ApiError, description = "past the declared size: the upload is deleted; or longer than max_chunk_bytes (the first max_chunk_bytes are kept, Upload-Offset says)"),
              (status = 415, body = tern_wire::api::ApiError, description = "not application/offset+octet-stream")))]
pub async fn patch_upload(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let files = api.files.clone();
    let id = match limited_id(&files, caller.user, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let (parts, body) = request.into_parts();
    let is_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(OFFSET_STREAM));
    if !is_stream {
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_argument",
            format!("a PATCH body must be {OFFSET_STREAM}"),
        );
    }
    let Some(offset) = header_u64(&parts.headers, UPLOAD_OFFSET) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "the Upload-Offset header (a byte count) is required",
        );
    };
    let length = header_u64(&parts.headers, header::CONTENT_LENGTH);
    // Its own task: if the client's connection drops mid-body, the bytes that arrived are
    // still made durable and recorded (the handler's future would just be dropped).
    let user = caller.user;
    let work = tokio::spawn(async move { patch(&files, user, id, offset, length, body).await });
    match work.await {
        Ok(response) => response,
        Err(e) => internal("upload task", e),
    }
}

async fn patch(
    files: &FileService,
    user: UserId,
    id: MessageId,
    offset: u64,
    length: Option<u64>,
    body: axum::body::Body,
) -> Response {
    let Some(_guard) = files.lock(id).await else {
        return fail(
            StatusCode::CONFLICT,
            "upload_busy",
            "another request is writing this upload",
        );
    };
    let record = match own_upload(files, id, user).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if record.state != UploadState::Staging {
        return with_offset(
            fail(
                StatusCode::CONFLICT,
                "offset_mismatch",
                "the upload is finished",
            ),
            record.offset,
        );
    }
    if offset != record.offset {
        return with_offset(
            fail(
                StatusCode::CONFLICT,
                "offset_mismatch",
                format!("the upload is at {}, not {offset}", record.offset),
            ),
            record.offset,
        );
    }
    let room = record.size - record.offset;
    let max_chunk = files.config.max_chunk_bytes;
    if let Some(length) = length {
        if length > room {
            return lying(files, id).await;
        }
        if length > max_chunk {
            return with_offset(
                fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "limit_exceeded",
                    format!("one PATCH carries at most {max_chunk} bytes"),
                ),
                record.offset,
            );
        }
    }
    let stream = std::pin::pin!(files.upload_pace.paced(body.into_data_stream()));
    let appended = match files
        .staging
        .append(id, offset, stream, room, max_chunk)
        .await
    {
        Ok(a) => a,
        Err(e) => return internal("writing a staging file", e),
    };
    let (new_offset, response) = match appended {
        Appended::Overflow => return lying(files, id).await,
        Appended::Done { offset } => (offset, StatusCode::NO_CONTENT.into_response()),
        Appended::Interrupted { offset } => (
            offset,
            fail(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "the body broke off: what arrived is kept (see Upload-Offset)",
            ),
        ),
        Appended::ChunkTooLarge { offset } => (
            offset,
            fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "limit_exceeded",
                format!("one PATCH carries at most {max_chunk} bytes: the rest was not stored"),
            ),
        ),
    };
    match files.meta.set_offset(id, new_offset, now_ms()).await {
        Ok(true) => {
            files.metrics.upload_bytes.inc_by(new_offset - offset);
            with_offset(response, new_offset)
        }
        Ok(false) => {
            files.remove_bytes(id).await;
            not_found("upload")
        }
        Err(e) => internal("recording upload progress", e),
    }
}

/// More bytes than declared: the upload is deleted and nothing stays.
async fn lying(files: &FileService, id: MessageId) -> Response {
    files.metrics.size_refusals.inc();
    if let Err(e) = files.meta.delete_upload(id, DeleteIf::Always).await {
        return internal("deleting an oversized upload", e);
    }
    files.remove_bytes(id).await;
    fail(
        StatusCode::PAYLOAD_TOO_LARGE,
        "limit_exceeded",
        "more bytes than the declared size: the upload is deleted",
    )
}

#[utoipa::path(post, path = "/api/v1/uploads/{id}/finish", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = FileView, description = "the object is stored; finishing again answers the same"),
              (status = 404, body = tern_wire::api::ApiError),
              (status = 409, body = tern_wire::api::ApiError, description = "incomplete: offset != size")))]
pub async fn finish_upload(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let files = api.files.clone();
    let id = match limited_id(&files, caller.user, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let user = caller.user;
    // Its own task, so that a client hanging up cannot stop a promotion halfway.
    let work = tokio::spawn(async move { finish(&files, user, id).await });
    match work.await {
        Ok(response) => response,
        Err(e) => internal("finish task", e),
    }
}

async fn finish(files: &FileService, user: UserId, id: MessageId) -> Response {
    let Some(_guard) = files.lock(id).await else {
        return fail(
            StatusCode::CONFLICT,
            "upload_busy",
            "another request is writing this upload",
        );
    };
    let record = match own_upload(files, id, user).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if record.state == UploadState::Finished {
        return Json(file_view(&record)).into_response();
    }
    if record.offset != record.size {
        return with_offset(
            fail(
                StatusCode::CONFLICT,
                "incomplete",
                format!("{} of {} bytes received", record.offset, record.size),
            ),
            record.offset,
        );
    }
    let staging = files.staging_path(id);
    let promoted_before = !staging.exists()
        && matches!(files.blobs.size_of(id).await, Ok(Some(size)) if size == record.size);
    if !promoted_before && let Err(e) = files.blobs.promote(id, &staging, record.size).await {
        return internal("storing a finished upload", e);
    }
    match files.meta.finish_upload(id, now_ms()).await {
        Ok(true) => {
            files.metrics.uploads_finished.inc();
        }
        Ok(false) => {
            files.remove_bytes(id).await;
            return not_found("upload");
        }
        Err(e) => return internal("finishing an upload", e),
    }
    if let Err(e) = files.staging.remove(id).await {
        tracing::warn!(file = %id, error = %e, "removing a promoted staging file");
    }
    match files.meta.upload(id).await {
        Ok(Some(r)) => Json(file_view(&r)).into_response(),
        Ok(None) => not_found("upload"),
        Err(e) => internal("reading an upload", e),
    }
}

#[utoipa::path(delete, path = "/api/v1/uploads/{id}", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 204, description = "aborted: neither bytes nor metadata remain"),
              (status = 404, body = tern_wire::api::ApiError),
              (status = 409, body = tern_wire::api::ApiError, description = "a message references the file")))]
pub async fn delete_upload(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let files = &api.files;
    let id = match limited_id(files, caller.user, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Some(_guard) = files.lock(id).await else {
        return fail(
            StatusCode::CONFLICT,
            "upload_busy",
            "another request is writing this upload",
        );
    };
    let record = match own_upload(files, id, caller.user).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let condition = match (record.state, record.referenced) {
        (UploadState::Staging, _) => DeleteIf::Staging,
        (UploadState::Finished, false) => DeleteIf::UnreferencedSince(u64::MAX),
        (UploadState::Finished, true) => {
            return fail(
                StatusCode::CONFLICT,
                "conflict",
                "a message references this file",
            );
        }
    };
    match files.meta.delete_upload(id, condition).await {
        Ok(Some(_)) => {
            files.remove_bytes(id).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => not_found("upload"),
        Err(e) => internal("deleting an upload", e),
    }
}

/// A finished file the user may read: a member of its conversation, and the file referenced
/// by a message (or the user's own).
async fn readable(
    files: &FileService,
    id: MessageId,
    user: UserId,
) -> Result<UploadRecord, Response> {
    let record = match files.meta.upload(id).await {
        Ok(Some(r)) if r.state == UploadState::Finished && (r.referenced || r.owner == user) => r,
        Ok(_) => return Err(not_found("file")),
        Err(e) => return Err(internal("reading a file", e)),
    };
    member(files, record.conversation, user)
        .await
        .map_err(|_| not_found("file"))?;
    Ok(record)
}

#[utoipa::path(post, path = "/api/v1/files/{id}/url", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = FileUrl, description = "a download URL for the caller, valid url_ttl_secs"),
              (status = 404, body = tern_wire::api::ApiError, description = "no such file, or not a member of its conversation")))]
pub async fn file_url(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let files = &api.files;
    let id = match limited_id(files, caller.user, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if let Err(r) = readable(files, id, caller.user).await {
        return r;
    }
    let expires_ms = now_ms() + files.config.url_ttl.as_millis() as u64;
    Json(FileUrl {
        url: files.signer.url(id, caller.user, expires_ms),
        expires_ms,
    })
    .into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ContentParams {
    /// The member the URL was issued to.
    u: Option<String>,
    /// Expiry, Unix ms (a string here so that a malformed one is a 403 like any bad URL).
    e: Option<String>,
    /// The signature.
    s: Option<String>,
}

/// What a `Range` header asks of a file of `size` (≥ 1) bytes. Only single ranges are served;
/// anything else that is not unsatisfiable is answered with the whole file (RFC 9110 lets a
/// server ignore Range).
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    Full,
    Partial(Range<u64>),
    Unsatisfiable,
}

pub fn parse_range(value: Option<&str>, size: u64) -> RangeAnswer {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => {
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(start..end.min(size - 1) + 1)
            }
        }
        (Ok(start), Err(_)) if b.is_empty() => {
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(start..size)
            }
        }
        (Err(_), Ok(suffix)) if a.is_empty() => {
            if suffix == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(size.saturating_sub(suffix)..size)
            }
        }
        _ => RangeAnswer::Full,
    }
}

fn forbidden(message: &str) -> Response {
    fail(StatusCode::FORBIDDEN, "forbidden", message)
}

#[utoipa::path(get, path = "/api/v1/files/{id}/content",
    params(("id" = String, Path, format = Uuid), ContentParams,
           ("Range" = Option<String>, Header, description = "one range, bytes=a-b, a- or -n")),
    responses((status = 200, description = "the encrypted object (application/octet-stream, attachment, nosniff, Cache-Control: no-store)"),
              (status = 206, description = "the requested range (Content-Range)"),
              (status = 403, body = tern_wire::api::ApiError, description = "bad, tampered or expired URL, or no longer a member"),
              (status = 404, body = tern_wire::api::ApiError),
              (status = 416, body = tern_wire::api::ApiError, description = "the range starts past the end")))]
pub async fn file_content(
    State(api): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(params): Query<ContentParams>,
    headers: HeaderMap,
) -> Response {
    let files = &api.files;
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let (Some(u), Some(e), Some(s)) = (params.u, params.e, params.s) else {
        return forbidden("a download needs a signed URL (POST /files/{id}/url)");
    };
    let (Ok(user), Ok(e)) = (u.parse::<UserId>(), e.parse::<u64>()) else {
        return forbidden("bad URL");
    };
    if files.signer.verify(id, user, e, &s, now_ms()).is_err() {
        return forbidden("the URL is invalid or expired: ask for a new one");
    }
    if let Err(r) = limited(files, user) {
        return r;
    }
    let record = match files.meta.upload(id).await {
        Ok(Some(r)) if r.state == UploadState::Finished => r,
        Ok(_) => return not_found("file"),
        Err(e) => return internal("reading a file", e),
    };
    match files.store.is_member(record.conversation, user).await {
        Ok(true) => {}
        Ok(false) => return forbidden("no longer a member of the file's conversation"),
        Err(e) => return internal("checking membership", e),
    }
    let size = record.size;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, range) = match parse_range(range_header, size) {
        RangeAnswer::Full => (StatusCode::OK, 0..size),
        RangeAnswer::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeAnswer::Unsatisfiable => {
            let mut response = fail(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return response;
        }
    };
    let stream = match files.blobs.read(id, range.clone()).await {
        Ok(s) => s,
        Err(e) => return internal("reading a file object", e),
    };
    files.metrics.download_bytes.inc_by(range.end - range.start);
    let stream = files.download_pace.paced(stream);
    let mut response = Response::new(axum::body::Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    set(
        h,
        header::CONTENT_LENGTH,
        (range.end - range.start).to_string(),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set(
        h,
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"{id}.tern\""),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Cache-Control: no-store is set on every /api response by `headers.rs`.
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            h,
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", range.start, range.end - 1),
        );
    }
    response
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/files", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = FileList, description = "files that messages reference, oldest first (the newest 1,000)"),
              (status = 404, body = tern_wire::api::ApiError)))]
pub async fn list_files(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let files = &api.files;
    if let Err(r) = limited(files, caller.user) {
        return r;
    }
    let Ok(conversation) = id.parse::<ConversationId>() else {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "conversation id must be a UUID",
        );
    };
    if let Err(r) = member(files, conversation, caller.user).await {
        return r;
    }
    match files
        .meta
        .conversation_files(conversation, super::MAX_LISTED_FILES)
        .await
    {
        Ok(list) => Json(FileList {
            files: list.iter().map(file_view).collect(),
        })
        .into_response(),
        Err(e) => internal("listing files", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let p = |v: &str| parse_range(Some(v), 100);
        assert_eq!(parse_range(None, 100), RangeAnswer::Full);
        assert_eq!(p("bytes=0-9"), RangeAnswer::Partial(0..10));
        assert_eq!(p("bytes=90-200"), RangeAnswer::Partial(90..100));
        assert_eq!(p("bytes=99-"), RangeAnswer::Partial(99..100));
        assert_eq!(p("bytes=-10"), RangeAnswer::Partial(90..100));
        assert_eq!(p("bytes=-1000"), RangeAnswer::Partial(0..100));
        assert_eq!(p("bytes=100-"), RangeAnswer::Unsatisfiable);
        assert_eq!(p("bytes=100-200"), RangeAnswer::Unsatisfiable);
        assert_eq!(p("bytes=-0"), RangeAnswer::Unsatisfiable);
        assert_eq!(p("bytes=5-1"), RangeAnswer::Full);
        assert_eq!(p("bytes=0-1,5-6"), RangeAnswer::Full);
        assert_eq!(p("items=0-1"), RangeAnswer::Full);
        assert_eq!(p("bytes=x-1"), RangeAnswer::Full);
    }
}
