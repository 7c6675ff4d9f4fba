//! The HTTPS JSON API under `/api/v1`, operations endpoints, and the OpenAPI document generated
//! from these handlers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tern_engine::accounts::Accounts;
use tern_engine::conversations::{Conversations, HistoryRequest};
use tern_engine::core::Input;
use tern_engine::driver::EngineHandle;
use tern_engine::paging::{PageBudget, PageCost};
use tern_engine::service::ServiceError;
use tern_wire::api::{
    ApiError, BlockList, CertificateHash, ConversationList, ConversationView, CreateDirect,
    CreateGroup, Credentials, ErrorBody, FileRefView, HistoryPageView, InvitationList,
    InvitationView, LoginResponse, MemberView, MessageView, ReactionView, TransportInfo, UserRef,
    UserView,
};
use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::{
    ConversationInfo, ConversationKind, ErrorCode, MemberRole, Message, PROTOCOL_VERSION,
};
use utoipa::OpenApi;

use crate::session::SessionContext;
use crate::tls::Certificates;

/// Largest JSON body accepted by the API (group creation with many members is the biggest).
const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct ApiState {
    pub accounts: Arc<Accounts>,
    pub conversations: Arc<Conversations>,
    pub reactions: Arc<tern_engine::reactions::Reactions>,
    /// Devices and the key backup (`http_keys.rs`).
    pub keys: Arc<tern_engine::keys::Keys>,
    pub engine: EngineHandle,
    pub certs: Arc<Certificates>,
    pub registry: Arc<Registry>,
    /// host[:port] clients use to reach us (configured, else the bound address): the URLs in
    /// `/api/v1/transport` name it, never the request's `Host` header, which the client chose.
    pub public_authority: String,
    pub max_frame_bytes: usize,
    /// Largest history response (estimated JSON bytes).
    pub http_history_max_bytes: u64,
    /// Told when who may see whose presence changes (accepted invitations, unblocks).
    pub presence: crate::presence::PresenceService,
    /// How long a `429` answer is held back (see [`hold_refusals`]).
    pub refusal_delay: std::time::Duration,
    /// The web app served outside `/api` (`web.rs`).
    pub web: Arc<crate::web::WebApp>,
    /// Security headers, CORS and the error shape of every response (`headers.rs`).
    pub responses: Arc<crate::headers::ResponsePolicy>,
    /// Uploads, downloads and file metadata (`files/`).
    pub files: Arc<crate::files::FileService>,
}

/// The TCP peer address, inserted by the listener into every request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

#[derive(OpenApi)]
#[openapi(
    info(title = "Tern API", description = "Accounts, conversations and history over HTTPS. Real-time traffic uses the WebSocket (/api/v1/ws) and WebTransport (/api/v1/wt) endpoints with FlatBuffers frames. Every error body is an ApiError ({\"error\": {\"code\", \"message\"}}), including 404 for unknown paths, 405 (with Allow) for a method a path does not list, 408 for a body sent too slowly and 403 for a CORS preflight from an origin not in cors_origins."),
    paths(register, login, logout, logout_all, me, user_by_name, create_direct, create_group, list_conversations, history, transport, list_invitations, invite, accept_invite, decline_invite, add_member, remove_member, leave, list_blocks, block, unblock, crate::http_keys::list_devices, crate::http_keys::revoke_device, crate::http_keys::put_backup, crate::http_keys::get_backup, crate::http_keys::put_backup_sessions, crate::http_keys::list_backup_sessions, crate::files::http::create_upload, crate::files::http::head_upload, crate::files::http::patch_upload, crate::files::http::finish_upload, crate::files::http::delete_upload, crate::files::http::file_url, crate::files::http::file_content, crate::files::http::list_files),
    components(schemas(tern_wire::api::DeviceView, tern_wire::api::DeviceList, tern_wire::api::KeyBackup, tern_wire::api::BackupSessionView, tern_wire::api::PutBackupSessions, tern_wire::api::BackupSessionsStored, tern_wire::api::BackupSessionPage, Credentials, UserView, LoginResponse, CreateDirect, CreateGroup, MemberView, ConversationView, ConversationList, FileRefView, MessageView, HistoryPageView, ReactionView, CertificateHash, TransportInfo, ErrorBody, ApiError, UserRef, InvitationView, InvitationList, tern_wire::api::UploadCreate, tern_wire::api::UploadView, tern_wire::api::FileView, tern_wire::api::FileList, tern_wire::api::FileUrl)),
    modifiers(&BearerAuth, &ImpliedStatuses)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Statuses the server answers on every route of a kind, whichever handler it is, added to the
/// document so that it lists what a client can actually get: 401 on every bearer route (no,
/// expired or revoked token), 400 on every route with an id in its path (not a UUID) or with a
/// body (malformed JSON), 413 on every route with a body (past the body limit), and every error
/// response's body is `ApiError`.
struct ImpliedStatuses;

impl utoipa::Modify for ImpliedStatuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ApiError")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            // Ids are UUIDs (400 when not); usernames in paths are looked up (404).
            let has_id = path.contains("{id}");
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                if op.security.is_some() {
                    responses
                        .entry("401".into())
                        .or_insert_with(|| error("missing, expired or revoked bearer token"));
                }
                let has_body = op.request_body.is_some();
                if has_id || has_body {
                    responses
                        .entry("400".into())
                        .or_insert_with(|| error("a malformed id or body"));
                }
                if has_body {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| error("the body is larger than the limit"));
                }
            }
        }
    }
}

pub fn router(api: Arc<ApiState>, sessions: Arc<SessionContext>) -> Router {
    let refusal_delay = api.refusal_delay;
    let responses = api.responses.clone();
    let v1 = Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/logout/all", post(logout_all))
        .route("/me", get(me))
        .route("/users/{username}", get(user_by_name))
        .route("/conversations", get(list_conversations))
        .route("/conversations/direct", post(create_direct))
        .route("/conversations/group", post(create_group))
        .route("/conversations/{id}/messages", get(history))
        .route("/invitations", get(list_invitations))
        .route("/conversations/{id}/invitations", post(invite))
        .route(
            "/conversations/{id}/invitations/accept",
            post(accept_invite),
        )
        .route(
            "/conversations/{id}/invitations/decline",
            post(decline_invite),
        )
        .route("/conversations/{id}/members", post(add_member))
        .route(
            "/conversations/{id}/members/{username}",
            axum::routing::delete(remove_member),
        )
        .route("/conversations/{id}/leave", post(leave))
        .route("/blocks", get(list_blocks))
        .route(
            "/blocks/{username}",
            axum::routing::put(block).delete(unblock),
        )
        .route("/devices", get(crate::http_keys::list_devices))
        .route(
            "/devices/{id}",
            axum::routing::delete(crate::http_keys::revoke_device),
        )
        .route(
            "/keys/backup",
            get(crate::http_keys::get_backup).put(crate::http_keys::put_backup),
        )
        .route(
            "/keys/backup/sessions",
            // The only body larger than MAX_BODY_BYTES (the inner limit wins).
            get(crate::http_keys::list_backup_sessions)
                .put(crate::http_keys::put_backup_sessions)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::http_keys::BACKUP_SESSIONS_BODY_BYTES,
                )),
        )
        // ---- file sharing (issue 13): PATCH bodies are streamed by the handler, which
        // bounds them by max_chunk_bytes itself (no extractor buffers them).
        .route("/uploads", post(crate::files::http::create_upload))
        .route(
            "/uploads/{id}",
            axum::routing::patch(crate::files::http::patch_upload)
                .head(crate::files::http::head_upload)
                .delete(crate::files::http::delete_upload),
        )
        .route(
            "/uploads/{id}/finish",
            post(crate::files::http::finish_upload),
        )
        .route("/files/{id}/url", post(crate::files::http::file_url))
        .route("/files/{id}/content", get(crate::files::http::file_content))
        .route(
            "/conversations/{id}/files",
            get(crate::files::http::list_files),
        )
        .route("/transport", get(transport))
        .route("/openapi.json", get(openapi))
        .with_state(api.clone());
    let ws = Router::new()
        .route("/api/v1/ws", get(crate::ws::upgrade))
        .with_state(sessions);
    Router::new()
        .nest("/api/v1", v1)
        .merge(ws)
        // Load balancers check the client port; /metrics lives on the operations listener only.
        .route("/healthz", get(healthz))
        // Everything else: the web app (GET/HEAD outside /api), else the JSON 404.
        .fallback(web_or_not_found)
        .with_state(api)
        .layer(axum::middleware::from_fn_with_state(
            refusal_delay,
            hold_refusals,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost: preflights, security headers and the error shape apply to everything,
        // including the 429s held back above and WebSocket upgrades.
        .layer(axum::middleware::from_fn_with_state(
            responses,
            crate::headers::client_responses,
        ))
}

/// Holds every `429 Too Many Requests` back for `delay` before sending it. A refusal costs the
/// server almost nothing, so a flooder on keep-alive connections got ~100,000 of them a second
/// (measured: 2.1 M in 20 s from one address) and that CPU raised a bystander's delivery p99
/// 17-fold on two cores. Held back, each of the address's connections (at most
/// `max_connections_per_address`) asks at most once per `delay`; a real client was told to wait
/// longer than that anyway (Retry-After), and it is only the refused request that waits.
async fn hold_refusals(
    State(delay): State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::TOO_MANY_REQUESTS && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

/// The operations listener's routes: health and metrics, nothing a client uses.
pub fn ops_router(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(api)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Paths no route claims: the web app's files and SPA fallback outside `/api`, the JSON 404
/// everywhere else (an unknown API path is never answered with the app's HTML).
async fn web_or_not_found(
    State(api): State<Arc<ApiState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    let is_api = path == "/api" || path.starts_with("/api/");
    if !is_api && let Some(response) = api.web.serve(&method, path, &headers).await {
        return response;
    }
    not_found().await
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint".into(),
    )
}

/// An API error: the JSON body `{"error": {"code", "message"}}` with the matching status.
pub struct HttpError(ServiceError);

impl From<ServiceError> for HttpError {
    fn from(e: ServiceError) -> Self {
        HttpError(e)
    }
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument | ErrorCode::MalformedFrame | ErrorCode::UnsupportedVersion => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Unauthenticated | ErrorCode::TokenRevoked => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::FrameTooLarge | ErrorCode::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::SlowConsumer => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ServerShutdown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ApiError {
            error: ErrorBody {
                code: code.to_owned(),
                message,
            },
        }),
    )
        .into_response()
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let e = self.0;
        let mut response = error_response(status_of(e.code), e.code.as_str(), e.message);
        if let Some(wait) = e.retry_after
            && let Ok(value) = HeaderValue::from_str(&wait.as_secs().to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status_of(e.code) == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body whose rejection is reported in the API's own error format.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = HttpError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(HttpError(ServiceError::invalid(rejection.body_text()))),
        }
    }
}

/// The caller, authenticated by `Authorization: Bearer TOKEN`.
pub struct Caller {
    pub user: UserId,
    pub token: String,
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| ServiceError::new(ErrorCode::Unauthenticated, "missing bearer token"))?;
        let record = state.accounts.authenticate(&token).await?;
        Ok(Caller {
            user: record.user,
            token,
        })
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_owned())
}

fn client_ip(parts: &axum::http::Extensions) -> IpAddr {
    parts
        .get::<ClientAddr>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.0.ip())
}

#[utoipa::path(post, path = "/api/v1/register", request_body = Credentials,
    responses((status = 201, body = UserView), (status = 400, body = ApiError), (status = 409, body = ApiError),
              (status = 429, body = ApiError, headers(("Retry-After" = u64, description = "seconds to wait")))))]
async fn register(
    State(api): State<Arc<ApiState>>,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<UserView>), HttpError> {
    let ip = client_ip(request.extensions());
    let ApiJson(body) = ApiJson::<Credentials>::from_request(request, &()).await?;
    let user = api
        .accounts
        .register(&body.username, &body.password, ip)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            user_id: user.id,
            username: user.username,
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/login", request_body = Credentials,
    responses((status = 200, body = LoginResponse), (status = 401, body = ApiError),
              (status = 429, body = ApiError, headers(("Retry-After" = u64, description = "seconds to wait")))))]
async fn login(
    State(api): State<Arc<ApiState>>,
    request: axum::extract::Request,
) -> Result<Json<LoginResponse>, HttpError> {
    let ip = client_ip(request.extensions());
    let ApiJson(body) = ApiJson::<Credentials>::from_request(request, &()).await?;
    let session = api
        .accounts
        .login(&body.username, &body.password, ip)
        .await?;
    Ok(Json(LoginResponse {
        token: session.token,
        user_id: session.user.id,
        username: session.user.username,
        expires_at_ms: session.expires_ms,
    }))
}

use axum::extract::FromRequest as _;

#[utoipa::path(post, path = "/api/v1/logout", security(("bearer" = [])),
    responses((status = 204, description = "token revoked and its live connections closed"), (status = 401, body = ApiError)))]
async fn logout(State(api): State<Arc<ApiState>>, caller: Caller) -> Result<StatusCode, HttpError> {
    let token_hash = api.accounts.logout(&caller.token).await?;
    if api
        .engine
        .input(Input::TokenRevoked { token_hash })
        .await
        .is_err()
    {
        tracing::warn!("engine stopped: live connections of a revoked token not closed");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Log out everywhere: revokes every token of the caller's user (this one included) and closes
/// all their live WebSocket and WebTransport connections with `token_revoked`.
#[utoipa::path(post, path = "/api/v1/logout/all", security(("bearer" = [])),
    responses((status = 204, description = "every token of the user revoked and all their live connections closed"),
              (status = 401, body = ApiError)))]
async fn logout_all(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<StatusCode, HttpError> {
    let revoked = api.accounts.logout_all(caller.user).await?;
    tracing::info!(user = %caller.user, tokens = revoked, "logged out everywhere");
    if api
        .engine
        .input(Input::UserRevoked { user: caller.user })
        .await
        .is_err()
    {
        tracing::warn!(
            "engine stopped: live connections of a user logged out everywhere not closed"
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/me", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ApiError)))]
async fn me(State(api): State<Arc<ApiState>>, caller: Caller) -> Result<Json<UserView>, HttpError> {
    let user = api.accounts.user(caller.user).await?;
    Ok(Json(UserView {
        user_id: user.id,
        username: user.username,
    }))
}

#[utoipa::path(get, path = "/api/v1/users/{username}", security(("bearer" = [])),
    params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = ApiError)))]
async fn user_by_name(
    State(api): State<Arc<ApiState>>,
    _caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<UserView>, HttpError> {
    let user = api.accounts.user_by_name(&username).await?;
    Ok(Json(UserView {
        user_id: user.id,
        username: user.username,
    }))
}

pub fn conversation_view(info: ConversationInfo) -> ConversationView {
    ConversationView {
        conversation_id: info.conversation,
        kind: match info.kind {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
        .into(),
        name: info.name,
        description: info.description,
        members: info
            .members
            .into_iter()
            .map(|m| MemberView {
                user_id: m.user,
                username: m.username,
                role: match m.role {
                    MemberRole::Owner => "owner",
                    MemberRole::Member => "member",
                }
                .into(),
            })
            .collect(),
        last_seq: info.last_seq,
    }
}

pub fn message_view(m: Message) -> MessageView {
    MessageView {
        seq: m.seq,
        message_id: m.message_id,
        sender_user: m.sender_user,
        sender_device: m.sender_device,
        client_msg_id: format!("{:032x}", m.client_msg_id),
        timestamp_ms: m.timestamp_ms,
        content_type: m.content_type,
        payload_b64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
        files: m
            .files
            .into_iter()
            .map(|f| FileRefView {
                file_id: f.file_id,
                size: f.size,
                content_type: f.content_type,
            })
            .collect(),
    }
}

#[utoipa::path(post, path = "/api/v1/conversations/direct", request_body = CreateDirect, security(("bearer" = [])),
    responses((status = 200, body = ConversationView, description = "existing"), (status = 201, body = ConversationView, description = "created"), (status = 404, body = ApiError)))]
async fn create_direct(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateDirect>,
) -> Result<(StatusCode, Json<ConversationView>), HttpError> {
    let peer = api.accounts.user_by_name(&body.peer).await?;
    let (info, created) = api.conversations.open_direct(caller.user, peer.id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(conversation_view(info))))
}

#[utoipa::path(post, path = "/api/v1/conversations/group", request_body = CreateGroup, security(("bearer" = [])),
    responses((status = 201, body = ConversationView), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 413, body = ApiError)))]
async fn create_group(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateGroup>,
) -> Result<(StatusCode, Json<ConversationView>), HttpError> {
    api.conversations.check_member_count(body.members.len())?;
    let mut members = Vec::with_capacity(body.members.len());
    for username in &body.members {
        members.push(api.accounts.user_by_name(username).await?.id);
    }
    let info = api
        .conversations
        .create_group(caller.user, &body.name, &body.description, &members)
        .await?;
    Ok((StatusCode::CREATED, Json(conversation_view(info))))
}

#[utoipa::path(get, path = "/api/v1/conversations", security(("bearer" = [])),
    responses((status = 200, body = ConversationList)))]
async fn list_conversations(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<ConversationList>, HttpError> {
    let conversations = api.conversations.list(caller.user).await?;
    Ok(Json(ConversationList {
        conversations: conversations.into_iter().map(conversation_view).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct HistoryParams {
    /// Only messages with seq below this (absent or 0: no upper bound). Without `after` and
    /// `since_ms`, the page is the newest messages below it: scroll back by passing a page's
    /// first seq.
    before: Option<u64>,
    /// Only messages with seq above this; when above 0 the page is the oldest messages after
    /// it (catching up forward). Absent or 0 means "not set": the page is then the newest
    /// messages, not the oldest — read a whole conversation by scrolling back from the newest.
    after: Option<u64>,
    /// The context of a message: the page is centred on this seq, `limit - (limit - 1) / 2`
    /// messages at or below it and `(limit - 1) / 2` above (the older side gets the odd one).
    /// Not with `before`, `after`, `since_ms` or `until_ms` (400). 0 = not set.
    around: Option<u64>,
    /// Only messages the server stamped at or after this (Unix ms); the page is then the
    /// oldest of the range (jump to a date, read forward). 0 = not set.
    since_ms: Option<u64>,
    /// Only messages the server stamped at or before this (Unix ms). 0 = not set; earlier
    /// than `since_ms` is a 400.
    until_ms: Option<u64>,
    /// Only messages of this user (UUID). Combines with every other parameter.
    #[param(format = Uuid)]
    sender: Option<String>,
    /// Page size (1..=500, default 50; above 500 is a 400).
    limit: Option<u32>,
}

impl HistoryParams {
    fn request(&self) -> Result<HistoryRequest, ServiceError> {
        let sender = match &self.sender {
            None => None,
            Some(s) => Some(
                s.parse::<UserId>()
                    .map_err(|_| ServiceError::invalid("sender must be a user id (UUID)"))?,
            ),
        };
        Ok(HistoryRequest {
            before_seq: self.before.unwrap_or(0),
            after_seq: self.after.unwrap_or(0),
            limit: self.limit.unwrap_or(50),
            around_seq: self.around.unwrap_or(0),
            since_ms: self.since_ms.unwrap_or(0),
            until_ms: self.until_ms.unwrap_or(0),
            sender,
        })
    }
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid), HistoryParams),
    responses((status = 200, body = HistoryPageView), (status = 400, body = ApiError, description = "a malformed id or parameter, around with before/after/since_ms/until_ms, since_ms after until_ms, limit above 500"), (status = 404, body = ApiError, description = "no such conversation, or not a member")))]
async fn history(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Json<HistoryPageView>, HttpError> {
    let id: ConversationId = id
        .parse()
        .map_err(|_| ServiceError::invalid("conversation id must be a UUID"))?;
    let request = params.request()?;
    // Pages are bounded by (estimated) JSON bytes too, so one response stays bounded.
    let budget = api.http_history_max_bytes;
    let mut page = api
        .conversations
        .history_page(
            caller.user,
            id,
            request,
            PageBudget {
                max_bytes: budget,
                cost: PageCost::JSON,
            },
        )
        .await?;
    let mut reactions = api.reactions.for_page(id, &page.messages).await?;
    page.fit(&mut reactions, &request, budget, PageCost::JSON);
    let reactions = reactions
        .into_iter()
        .map(|r| ReactionView {
            seq: r.seq,
            emoji: r.emoji,
            count: r.count,
            users: r.users,
        })
        .collect();
    Ok(Json(HistoryPageView {
        messages: page.messages.into_iter().map(message_view).collect(),
        reactions,
        has_more: page.has_more,
        has_more_before: page.has_more_before,
        has_more_after: page.has_more_after,
    }))
}

fn invitation_view(p: tern_engine::conversations::PendingInvitation) -> InvitationView {
    InvitationView {
        conversation_id: p.invitation.conversation,
        name: p.name,
        inviter_id: p.invitation.inviter,
        inviter: p.inviter,
        created_ms: p.invitation.created_ms,
    }
}

fn conversation_id(id: &str) -> Result<ConversationId, ServiceError> {
    id.parse()
        .map_err(|_| ServiceError::invalid("conversation id must be a UUID"))
}

#[utoipa::path(get, path = "/api/v1/invitations", security(("bearer" = [])),
    responses((status = 200, body = InvitationList, description = "the caller's pending group invitations, oldest first")))]
async fn list_invitations(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<InvitationList>, HttpError> {
    let mut invitations = Vec::new();
    for pending in api.conversations.invitations(caller.user).await? {
        invitations.push(invitation_view(pending));
    }
    Ok(Json(InvitationList { invitations }))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/invitations", request_body = UserRef, security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 201, body = InvitationView), (status = 403, body = ApiError, description = "not the group's owner"), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "already a member")))]
async fn invite(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserRef>,
) -> Result<(StatusCode, Json<InvitationView>), HttpError> {
    let id = conversation_id(&id)?;
    let user = api.accounts.user_by_name(&body.username).await?;
    let pending = api.conversations.invite(caller.user, id, user.id).await?;
    Ok((StatusCode::CREATED, Json(invitation_view(pending))))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/invitations/accept", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = ConversationView, description = "joined the group, or accepted the 1:1 request"), (status = 404, body = ApiError, description = "no pending invitation")))]
async fn accept_invite(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ConversationView>, HttpError> {
    let id = conversation_id(&id)?;
    let info = api.conversations.accept_invite(caller.user, id).await?;
    api.presence.relations_changed(&[caller.user]).await;
    Ok(Json(conversation_view(info)))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/invitations/decline", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 204, description = "declined; the inviter is notified"), (status = 404, body = ApiError, description = "no pending invitation")))]
async fn decline_invite(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let id = conversation_id(&id)?;
    api.conversations.decline_invite(caller.user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/members", request_body = UserRef, security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = ConversationView, description = "the user is invited (nobody joins without accepting); the group as it is"), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError)))]
async fn add_member(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserRef>,
) -> Result<Json<ConversationView>, HttpError> {
    let id = conversation_id(&id)?;
    let user = api.accounts.user_by_name(&body.username).await?;
    let info = api
        .conversations
        .add_member(caller.user, id, user.id)
        .await?;
    Ok(Json(conversation_view(info)))
}

#[utoipa::path(delete, path = "/api/v1/conversations/{id}/members/{username}", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid), ("username" = String, Path)),
    responses((status = 204, description = "removed; they receive nothing sent from now on"), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn remove_member(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path((id, username)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    let id = conversation_id(&id)?;
    let user = api.accounts.user_by_name(&username).await?;
    api.conversations
        .remove_member(caller.user, id, user.id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/leave", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 204, description = "left"), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the owner cannot leave while other members remain")))]
async fn leave(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let id = conversation_id(&id)?;
    api.conversations.leave(caller.user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/blocks", security(("bearer" = [])),
    responses((status = 200, body = BlockList, description = "the users the caller blocks")))]
async fn list_blocks(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<BlockList>, HttpError> {
    let mut blocked = Vec::new();
    for user in api.conversations.blocked(caller.user).await? {
        let record = api.accounts.user(user).await?;
        blocked.push(UserView {
            user_id: record.id,
            username: record.username,
        });
    }
    Ok(Json(BlockList { blocked }))
}

#[utoipa::path(put, path = "/api/v1/blocks/{username}", security(("bearer" = [])),
    params(("username" = String, Path)),
    responses((status = 204, description = "blocked: no 1:1 messages, invitations or presence between the two"), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn block(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<StatusCode, HttpError> {
    let user = api.accounts.user_by_name(&username).await?;
    api.conversations
        .set_block(caller.user, user.id, true)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/blocks/{username}", security(("bearer" = [])),
    params(("username" = String, Path)),
    responses((status = 204, description = "unblocked"), (status = 404, body = ApiError)))]
async fn unblock(
    State(api): State<Arc<ApiState>>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<StatusCode, HttpError> {
    let user = api.accounts.user_by_name(&username).await?;
    api.conversations
        .set_block(caller.user, user.id, false)
        .await?;
    api.presence
        .relations_changed(&[caller.user, user.id])
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/transport",
    responses((status = 200, body = TransportInfo, description = "where to connect and which certificate hashes to pin")))]
async fn transport(State(api): State<Arc<ApiState>>) -> Json<TransportInfo> {
    let addr = &api.public_authority;
    let ms = |secs: Option<i64>| secs.and_then(|s| u64::try_from(s).ok()).map(|s| s * 1000);
    let hash = |cert: crate::tls::ActiveCert, role: &str| CertificateHash {
        algorithm: "sha-256".into(),
        value: hex::encode(cert.sha256),
        role: role.into(),
        not_before_ms: ms(cert.not_before),
        not_after_ms: ms(cert.not_after),
    };
    // The next certificate is listed a while before it is served, so a page that pins every
    // listed hash keeps connecting across the rotation without fetching this again.
    let mut certificate_hashes = vec![hash(api.certs.active(), "current")];
    certificate_hashes.extend(api.certs.next().map(|next| hash(next, "next")));
    Json(TransportInfo {
        webtransport_url: format!("https://{addr}{}", crate::wt::WT_PATH),
        websocket_url: format!("wss://{addr}/api/v1/ws"),
        certificate_hashes,
        protocol_version: PROTOCOL_VERSION,
        max_frame_bytes: api.max_frame_bytes as u32,
    })
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(api): State<Arc<ApiState>>) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &api.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::ids::{DeviceId, MessageId};
    use tern_wire::msg::{FileRef, Message, ReactionCount};

    /// The JSON estimate that bounds HTTPS history pages is never below the real JSON.
    #[test]
    fn json_page_costs_are_upper_bounds() {
        let m = Message {
            conversation: ConversationId::random(),
            seq: u64::MAX,
            message_id: MessageId(u128::MAX),
            sender_user: UserId::random(),
            sender_device: DeviceId::random(),
            client_msg_id: u128::MAX,
            timestamp_ms: u64::MAX,
            content_type: "c\"".repeat(64),
            payload: vec![0xff; 60 * 1024 + 1],
            files: (0..16)
                .map(|i| FileRef {
                    file_id: MessageId(i),
                    size: u64::MAX,
                    content_type: "f\"".repeat(32),
                })
                .collect(),
        };
        let cost = (PageCost::JSON.message)(&m);
        let json = serde_json::to_vec(&message_view(m)).expect("json").len() as u64;
        assert!(json <= cost, "message: json {json} > estimate {cost}");
        let r = ReactionCount {
            seq: u64::MAX,
            emoji: "👍🏽".into(),
            count: u32::MAX,
            users: (0..32).map(|_| UserId::random()).collect(),
        };
        let cost = (PageCost::JSON.reaction)(&r);
        let view = ReactionView {
            seq: r.seq,
            emoji: r.emoji,
            count: r.count,
            users: r.users,
        };
        let json = serde_json::to_vec(&view).expect("json").len() as u64;
        assert!(json <= cost, "reaction: json {json} > estimate {cost}");
    }
}
