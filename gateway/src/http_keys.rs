//! HTTPS endpoints of the end-to-end key service: the caller's devices (list, revoke) and the
//! encrypted key backup. Every endpoint is authenticated and only ever touches the caller's
//! own data: there is no user id in any path, so no request can name another user's backup.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use serde::Deserialize;
use tern_engine::service::ServiceError;
use tern_engine::store::keys::{BackupMeta, BackupSession, MAX_BACKUP_VERSION_BYTES};
use tern_wire::api::{
    BackupSessionPage, BackupSessionView, BackupSessionsStored, DeviceList, DeviceView, KeyBackup,
    PutBackupSessions,
};
use tern_wire::ids::{ConversationId, DeviceId};

use crate::http::{ApiJson, ApiState, Caller, HttpError};

/// Largest backup metadata (decoded): salt, KDF parameters and a check value fit in far less.
pub const MAX_BACKUP_META_BYTES: usize = 4 * 1024;
/// Largest backed-up session (decoded): an exported Megolm session is well under 1 KiB.
pub const MAX_BACKUP_SESSION_BYTES: usize = 8 * 1024;
/// Sessions per upload.
pub const MAX_BACKUP_SESSIONS_PER_PUT: usize = 1_000;
/// Longest session id.
pub const MAX_SESSION_ID_BYTES: usize = 128;
/// Body limit of the session upload: 1,000 sessions of 8 KiB in base64 plus their fields.
pub const BACKUP_SESSIONS_BODY_BYTES: usize = 12 * 1024 * 1024;
/// Default page size of the session listing.
const DEFAULT_BACKUP_PAGE: u32 = 100;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn decode_b64(what: &str, text: &str, max: usize) -> Result<Vec<u8>, ServiceError> {
    let bytes = b64()
        .decode(text)
        .map_err(|_| ServiceError::invalid(format!("{what} is not standard base64")))?;
    if bytes.len() > max {
        return Err(ServiceError::new(
            tern_wire::msg::ErrorCode::LimitExceeded,
            format!("{what} is {} bytes; at most {max}", bytes.len()),
        ));
    }
    Ok(bytes)
}

fn validate_version(version: &str) -> Result<(), ServiceError> {
    if version.is_empty()
        || version.len() > MAX_BACKUP_VERSION_BYTES
        || version.chars().any(char::is_control)
    {
        return Err(ServiceError::invalid(format!(
            "version must be 1..={MAX_BACKUP_VERSION_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn validate_session_id(id: &str) -> Result<(), ServiceError> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES || id.chars().any(char::is_control) {
        return Err(ServiceError::invalid(format!(
            "session_id must be 1..={MAX_SESSION_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/devices", security(("bearer" = [])),
    responses((status = 200, body = DeviceList), (status = 401, body = tern_wire::api::ApiError)))]
pub async fn list_devices(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<DeviceList>, HttpError> {
    let devices = api
        .keys
        .devices(caller.user)
        .await?
        .into_iter()
        .map(|d| DeviceView {
            device_id: d.device,
            created_ms: d.created_ms,
            last_seen_ms: d.last_seen_ms,
            has_keys: !d.identity_key.is_empty(),
            identity_key: b64().encode(&d.identity_key),
        })
        .collect();
    Ok(Json(DeviceList { devices }))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 204, description = "revoked: keys, inbox and binding deleted, its token revoked, its connections closed, contacts told"),
              (status = 401, body = tern_wire::api::ApiError), (status = 404, body = tern_wire::api::ApiError, description = "not one of the caller's devices")))]
pub async fn revoke_device(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let device: DeviceId = id
        .parse()
        .map_err(|_| ServiceError::invalid("device id must be a UUID"))?;
    api.keys.revoke_device(caller.user, device).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/keys/backup", security(("bearer" = [])), request_body = KeyBackup,
    responses((status = 204, description = "created or replaced (a new version deletes the old entries)"),
              (status = 400, body = tern_wire::api::ApiError), (status = 413, body = tern_wire::api::ApiError)))]
pub async fn put_backup(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<KeyBackup>,
) -> Result<StatusCode, HttpError> {
    validate_version(&body.version)?;
    let meta = decode_b64("meta", &body.meta, MAX_BACKUP_META_BYTES)?;
    api.keys
        .put_backup(
            caller.user,
            BackupMeta {
                version: body.version,
                meta,
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/keys/backup", security(("bearer" = [])),
    responses((status = 200, body = KeyBackup), (status = 404, body = tern_wire::api::ApiError, description = "no backup")))]
pub async fn get_backup(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<KeyBackup>, HttpError> {
    let backup =
        api.keys.backup(caller.user).await?.ok_or_else(|| {
            ServiceError::new(tern_wire::msg::ErrorCode::NotFound, "no key backup")
        })?;
    Ok(Json(KeyBackup {
        version: backup.version,
        meta: b64().encode(&backup.meta),
    }))
}

#[utoipa::path(put, path = "/api/v1/keys/backup/sessions", security(("bearer" = [])), request_body = PutBackupSessions,
    responses((status = 200, body = BackupSessionsStored), (status = 404, body = tern_wire::api::ApiError, description = "no backup"),
              (status = 409, body = tern_wire::api::ApiError, description = "version is not the current one"),
              (status = 413, body = tern_wire::api::ApiError, description = "too many sessions or one too large")))]
pub async fn put_backup_sessions(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<PutBackupSessions>,
) -> Result<Json<BackupSessionsStored>, HttpError> {
    validate_version(&body.version)?;
    if body.sessions.len() > MAX_BACKUP_SESSIONS_PER_PUT {
        return Err(ServiceError::new(
            tern_wire::msg::ErrorCode::LimitExceeded,
            format!("at most {MAX_BACKUP_SESSIONS_PER_PUT} sessions per request"),
        )
        .into());
    }
    let mut sessions = Vec::with_capacity(body.sessions.len());
    for s in body.sessions {
        validate_session_id(&s.session_id)?;
        sessions.push(BackupSession {
            conversation: s.conversation,
            data: decode_b64("data", &s.data, MAX_BACKUP_SESSION_BYTES)?,
            session_id: s.session_id,
        });
    }
    let total = api
        .keys
        .put_backup_sessions(caller.user, body.version, sessions)
        .await?;
    Ok(Json(BackupSessionsStored { total }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct BackupSessionsQuery {
    /// Only this conversation's sessions.
    conversation: Option<String>,
    /// `next_after` of the previous page.
    after: Option<String>,
    /// Page size (1..=1000, default 100).
    limit: Option<u32>,
}

/// `after` is a session id when the listing is of one conversation, else
/// `<conversation uuid>/<session id>`.
fn parse_after(
    conversation: Option<ConversationId>,
    after: &str,
) -> Result<(ConversationId, String), ServiceError> {
    match conversation {
        Some(c) => Ok((c, after.to_owned())),
        None => {
            let (c, sid) = after.split_once('/').ok_or_else(|| {
                ServiceError::invalid("after must be <conversation>/<session_id>")
            })?;
            let c = c
                .parse()
                .map_err(|_| ServiceError::invalid("after: conversation must be a UUID"))?;
            Ok((c, sid.to_owned()))
        }
    }
}

#[utoipa::path(get, path = "/api/v1/keys/backup/sessions", security(("bearer" = [])),
    params(BackupSessionsQuery),
    responses((status = 200, body = BackupSessionPage), (status = 404, body = tern_wire::api::ApiError, description = "no backup")))]
pub async fn list_backup_sessions(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Query(query): Query<BackupSessionsQuery>,
) -> Result<Json<BackupSessionPage>, HttpError> {
    if api.keys.backup(caller.user).await?.is_none() {
        return Err(ServiceError::new(tern_wire::msg::ErrorCode::NotFound, "no key backup").into());
    }
    let conversation = match query.conversation.as_deref() {
        Some(c) => Some(
            c.parse::<ConversationId>()
                .map_err(|_| ServiceError::invalid("conversation must be a UUID"))?,
        ),
        None => None,
    };
    let after = match query.after.as_deref() {
        Some(a) => Some(parse_after(conversation, a)?),
        None => None,
    };
    let limit = query.limit.unwrap_or(DEFAULT_BACKUP_PAGE);
    let page = api
        .keys
        .backup_sessions(caller.user, conversation, after, limit.saturating_add(1))
        .await?;
    let limit = limit.clamp(1, api.keys.limits().max_backup_page) as usize;
    let has_more = page.len() > limit;
    let sessions: Vec<BackupSessionView> = page
        .into_iter()
        .take(limit)
        .map(|s| BackupSessionView {
            conversation: s.conversation,
            session_id: s.session_id,
            data: b64().encode(&s.data),
        })
        .collect();
    let next_after = match (has_more, sessions.last()) {
        (true, Some(last)) if conversation.is_some() => Some(last.session_id.clone()),
        (true, Some(last)) => Some(format!("{}/{}", last.conversation, last.session_id)),
        _ => None,
    };
    Ok(Json(BackupSessionPage {
        sessions,
        next_after,
    }))
}
