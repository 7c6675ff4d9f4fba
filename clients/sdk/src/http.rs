//! The HTTPS JSON API under `/api/v1` (shapes in `tern_wire::api`).

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_wire::api::{
    ApiError, BlockList, ConversationList, ConversationView, CreateDirect, CreateGroup,
    Credentials, HistoryPageView, InvitationList, InvitationView, LoginResponse, MessageView,
    TransportInfo, UserView,
};
use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::{FileRef, Message};

use crate::config::Config;
use crate::error::{ApiFailure, Error, Result};

/// Largest response body read. The API's biggest answers (history pages, conversation lists)
/// are far below this; the cap only stops a broken or hostile peer from exhausting memory.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Which history page to read, over HTTPS (`GET /conversations/{id}/messages` parameters;
/// `None` leaves the parameter out) or the socket ([`crate::Connection::history_query`];
/// `None` is 0, "unset").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Messages with seq strictly less than this.
    pub before: Option<u64>,
    /// Messages with seq strictly greater than this (the page is then the oldest of them).
    pub after: Option<u64>,
    /// Centred on this seq: `limit - (limit - 1) / 2` messages at or below it, the rest above.
    /// Not with `before`, `after`, `since_ms` or `until_ms` (the server refuses it).
    pub around: Option<u64>,
    /// Messages the server stamped at or after this, Unix ms (the page reads forward).
    pub since_ms: Option<u64>,
    /// Messages the server stamped at or before this, Unix ms.
    pub until_ms: Option<u64>,
    /// Only this user's messages.
    pub sender: Option<UserId>,
    /// Page size, 1..=500 on the server (more is refused).
    pub limit: Option<u32>,
}

impl HistoryQuery {
    /// The context of message `seq`, `limit` messages at most.
    pub fn around(seq: u64, limit: u32) -> Self {
        HistoryQuery {
            around: Some(seq),
            limit: Some(limit),
            ..HistoryQuery::default()
        }
    }

    /// Messages stamped within `[since_ms, until_ms]` (either end `None`: open), oldest first.
    pub fn between(since_ms: Option<u64>, until_ms: Option<u64>, limit: u32) -> Self {
        HistoryQuery {
            since_ms,
            until_ms,
            limit: Some(limit),
            ..HistoryQuery::default()
        }
    }

    /// The newest `limit` messages of `sender`.
    pub fn from_sender(sender: UserId, limit: u32) -> Self {
        HistoryQuery {
            sender: Some(sender),
            limit: Some(limit),
            ..HistoryQuery::default()
        }
    }
}

/// A client of the HTTPS API. Holds the bearer token once logged in.
#[derive(Debug, Clone)]
pub struct HttpApi {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl HttpApi {
    pub fn new(config: &Config) -> Result<HttpApi> {
        let http = reqwest::Client::builder()
            // Same trust as the sockets: the prebuilt rustls config (ring provider, pinning).
            .tls_backend_preconfigured((*config.tls().tcp).clone())
            // The server is addressed directly; an environment proxy would only get in the way
            // (and would see the bearer token's destination).
            .no_proxy()
            // The same source address as the sockets, when one is configured.
            .local_address(config.bind_address)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(config.client_name.clone())
            .build()?;
        // Trailing slash so that `join` appends instead of replacing the last segment.
        let base = Url::parse(&format!("{}/", config.api_base()))
            .map_err(|e| Error::Config(format!("bad server address: {e}")))?;
        Ok(HttpApi {
            http,
            base,
            token: None,
        })
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `POST /register` → 201 UserView.
    pub async fn register(&self, username: &str, password: &str) -> Result<UserView> {
        let body = Credentials {
            username: username.to_string(),
            password: password.to_string(),
        };
        self.call(Method::POST, self.url(&["register"])?, Some(&body), false)
            .await
    }

    /// `POST /login` → LoginResponse; keeps the token for later calls.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<LoginResponse> {
        let body = Credentials {
            username: username.to_string(),
            password: password.to_string(),
        };
        let resp: LoginResponse = self
            .call(Method::POST, self.url(&["login"])?, Some(&body), false)
            .await?;
        self.token = Some(resp.token.clone());
        Ok(resp)
    }

    /// `POST /logout` → 204; revokes the token (live connections using it are closed too).
    pub async fn logout(&mut self) -> Result<()> {
        self.call_empty(Method::POST, self.url(&["logout"])?)
            .await?;
        self.token = None;
        Ok(())
    }

    /// `POST /logout/all`: log out everywhere. Revokes every token of this user (this one
    /// included) and closes all their live connections; other devices must log in again.
    pub async fn logout_all(&mut self) -> Result<()> {
        self.call_empty(Method::POST, self.url(&["logout", "all"])?)
            .await?;
        self.token = None;
        Ok(())
    }

    /// `GET /me`
    pub async fn me(&self) -> Result<UserView> {
        self.call(Method::GET, self.url(&["me"])?, None::<&()>, true)
            .await
    }

    /// `GET /users/{username}`
    pub async fn user_by_name(&self, username: &str) -> Result<UserView> {
        self.call(
            Method::GET,
            self.url(&["users", username])?,
            None::<&()>,
            true,
        )
        .await
    }

    /// `POST /conversations/direct`: creates or returns the 1:1 conversation with `peer`.
    pub async fn create_direct(&self, peer: &str) -> Result<ConversationView> {
        let body = CreateDirect {
            peer: peer.to_string(),
        };
        self.call(
            Method::POST,
            self.url(&["conversations", "direct"])?,
            Some(&body),
            true,
        )
        .await
    }

    /// `POST /conversations/group`; the caller becomes its owner.
    pub async fn create_group(
        &self,
        name: &str,
        description: &str,
        members: &[String],
    ) -> Result<ConversationView> {
        let body = CreateGroup {
            name: name.to_string(),
            description: description.to_string(),
            members: members.to_vec(),
        };
        self.call(
            Method::POST,
            self.url(&["conversations", "group"])?,
            Some(&body),
            true,
        )
        .await
    }

    /// `GET /invitations`: pending group invitations and 1:1 message requests, oldest first.
    pub async fn invitations(&self) -> Result<Vec<InvitationView>> {
        let list: InvitationList = self
            .call(Method::GET, self.url(&["invitations"])?, None::<&()>, true)
            .await?;
        Ok(list.invitations)
    }

    /// `POST /conversations/{id}/invitations/accept`: joins a group, or accepts a 1:1 request.
    pub async fn accept_invitation(
        &self,
        conversation: ConversationId,
    ) -> Result<ConversationView> {
        let id = conversation.to_string();
        self.call(
            Method::POST,
            self.url(&["conversations", &id, "invitations", "accept"])?,
            None::<&()>,
            true,
        )
        .await
    }

    /// `POST /conversations/{id}/invitations/decline`
    pub async fn decline_invitation(&self, conversation: ConversationId) -> Result<()> {
        let id = conversation.to_string();
        self.call_empty(
            Method::POST,
            self.url(&["conversations", &id, "invitations", "decline"])?,
        )
        .await
    }

    /// `PUT /blocks/{username}`: no 1:1 messages, invitations or presence between the two.
    pub async fn block(&self, username: &str) -> Result<()> {
        self.call_empty(Method::PUT, self.url(&["blocks", username])?)
            .await
    }

    /// `DELETE /blocks/{username}`
    pub async fn unblock(&self, username: &str) -> Result<()> {
        self.call_empty(Method::DELETE, self.url(&["blocks", username])?)
            .await
    }

    /// `GET /blocks`: the users the caller blocks (clients hide their group messages).
    pub async fn blocks(&self) -> Result<Vec<UserView>> {
        let list: BlockList = self
            .call(Method::GET, self.url(&["blocks"])?, None::<&()>, true)
            .await?;
        Ok(list.blocked)
    }

    /// `GET /conversations`
    pub async fn conversations(&self) -> Result<Vec<ConversationView>> {
        let list: ConversationList = self
            .call(
                Method::GET,
                self.url(&["conversations"])?,
                None::<&()>,
                true,
            )
            .await?;
        Ok(list.conversations)
    }

    /// `GET /conversations/{id}/messages`, ascending by seq.
    pub async fn history(
        &self,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<HistoryPageView> {
        let mut url = self.url(&["conversations", &conversation.to_string(), "messages"])?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(b) = query.before {
                q.append_pair("before", &b.to_string());
            }
            if let Some(a) = query.after {
                q.append_pair("after", &a.to_string());
            }
            if let Some(s) = query.around {
                q.append_pair("around", &s.to_string());
            }
            if let Some(t) = query.since_ms {
                q.append_pair("since_ms", &t.to_string());
            }
            if let Some(t) = query.until_ms {
                q.append_pair("until_ms", &t.to_string());
            }
            if let Some(u) = query.sender {
                q.append_pair("sender", &u.to_string());
            }
            if let Some(l) = query.limit {
                q.append_pair("limit", &l.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.call(Method::GET, url, None::<&()>, true).await
    }

    /// The context of message `seq`: `GET …/messages?around=SEQ&limit=LIMIT`.
    pub async fn history_around(
        &self,
        conversation: ConversationId,
        seq: u64,
        limit: u32,
    ) -> Result<HistoryPageView> {
        self.history(conversation, HistoryQuery::around(seq, limit))
            .await
    }

    /// `GET /transport`: the endpoints and certificate hashes the server advertises.
    pub async fn transport_info(&self) -> Result<TransportInfo> {
        self.call(Method::GET, self.url(&["transport"])?, None::<&()>, false)
            .await
    }

    /// `base` + path segments, each percent-encoded (usernames go into paths).
    pub(crate) fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| Error::Config("server URL cannot have a path".into()))?;
            path.pop_if_empty();
            path.extend(segments);
        }
        Ok(url)
    }

    /// A path (and query) the server handed out, e.g. a signed file URL, on this server.
    pub(crate) fn resolve(&self, path_and_query: &str) -> Result<Url> {
        if !path_and_query.starts_with('/') || path_and_query.starts_with("//") {
            return Err(Error::BadResponse(format!(
                "expected a path on this server, got {path_and_query:?}"
            )));
        }
        self.base
            .join(path_and_query)
            .map_err(|e| Error::BadResponse(format!("bad URL {path_and_query:?}: {e}")))
    }

    /// The HTTP client (for requests that carry no bearer token, like signed downloads).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn request(
        &self,
        method: Method,
        url: Url,
        auth: bool,
    ) -> Result<reqwest::RequestBuilder> {
        let mut req = self.http.request(method, url);
        if auth {
            let token = self
                .token
                .as_deref()
                .ok_or_else(|| Error::Config("not logged in (no token)".into()))?;
            req = req.bearer_auth(token);
        }
        Ok(req)
    }

    pub(crate) async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        auth: bool,
    ) -> Result<T> {
        let mut req = self.request(method, url, auth)?;
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let retry_after = retry_after(&resp);
        let bytes = read_limited(resp).await?;
        if !status.is_success() {
            return Err(Error::Api(api_failure(status, &bytes, retry_after)));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadResponse(format!("{e} (HTTP {status})")))
    }

    pub(crate) async fn call_empty(&self, method: Method, url: Url) -> Result<()> {
        let resp = self.request(method, url, true)?.send().await?;
        let status = resp.status();
        let retry_after = retry_after(&resp);
        let bytes = read_limited(resp).await?;
        if !status.is_success() {
            return Err(Error::Api(api_failure(status, &bytes, retry_after)));
        }
        Ok(())
    }

    // ---- end-to-end keys: devices and the key backup (issue 11) ----

    /// `GET /devices`: the caller's devices.
    pub async fn devices(&self) -> Result<Vec<tern_wire::api::DeviceView>> {
        let list: tern_wire::api::DeviceList = self
            .call(Method::GET, self.url(&["devices"])?, None::<&()>, true)
            .await?;
        Ok(list.devices)
    }

    /// `DELETE /devices/{id}`: revokes one of the caller's devices.
    pub async fn revoke_device(&self, device: tern_wire::ids::DeviceId) -> Result<()> {
        self.call_empty(Method::DELETE, self.url(&["devices", &device.to_string()])?)
            .await
    }

    /// `PUT /keys/backup`: creates or replaces the backup header (a new version starts empty).
    pub async fn put_key_backup(&self, backup: &tern_wire::api::KeyBackup) -> Result<()> {
        let resp = self
            .request(Method::PUT, self.url(&["keys", "backup"])?, true)?
            .json(backup)
            .send()
            .await?;
        let status = resp.status();
        let retry_after = retry_after(&resp);
        let bytes = read_limited(resp).await?;
        if !status.is_success() {
            return Err(Error::Api(api_failure(status, &bytes, retry_after)));
        }
        Ok(())
    }

    /// `GET /keys/backup`: the backup header (`Error::Api` with 404 when there is none).
    pub async fn key_backup(&self) -> Result<tern_wire::api::KeyBackup> {
        self.call(
            Method::GET,
            self.url(&["keys", "backup"])?,
            None::<&()>,
            true,
        )
        .await
    }

    /// `PUT /keys/backup/sessions`: upserts sessions under the current version (409 if stale).
    pub async fn put_backup_sessions(
        &self,
        body: &tern_wire::api::PutBackupSessions,
    ) -> Result<tern_wire::api::BackupSessionsStored> {
        self.call(
            Method::PUT,
            self.url(&["keys", "backup", "sessions"])?,
            Some(body),
            true,
        )
        .await
    }

    /// `GET /keys/backup/sessions`: one page (pass `next_after` back as `after`).
    pub async fn backup_sessions(
        &self,
        conversation: Option<ConversationId>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<tern_wire::api::BackupSessionPage> {
        let mut url = self.url(&["keys", "backup", "sessions"])?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(c) = conversation {
                q.append_pair("conversation", &c.to_string());
            }
            if let Some(a) = after {
                q.append_pair("after", a);
            }
            if let Some(l) = limit {
                q.append_pair("limit", &l.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.call(Method::GET, url, None::<&()>, true).await
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    // Only the delay-seconds form; the server never sends an HTTP date.
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(crate) async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(Error::BadResponse(format!(
                "response body larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Maps an error answer to `ApiFailure`, tolerating bodies that are not `ApiError` JSON.
pub(crate) fn api_failure(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ApiFailure {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => ApiFailure {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
            retry_after,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string();
            ApiFailure {
                status: status.as_u16(),
                code: format!("http_{}", status.as_u16()),
                message: if text.is_empty() {
                    status.canonical_reason().unwrap_or("").to_string()
                } else {
                    text
                },
                retry_after,
            }
        }
    }
}

/// Converts a history entry of the HTTP API into the wire `Message` the sockets deliver.
pub fn message_from_view(conversation: ConversationId, v: &MessageView) -> Result<Message> {
    let client_msg_id = u128::from_str_radix(&v.client_msg_id, 16).map_err(|_| {
        Error::BadResponse(format!("client_msg_id {:?} is not hex", v.client_msg_id))
    })?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&v.payload_b64)
        .map_err(|e| Error::BadResponse(format!("payload_b64: {e}")))?;
    Ok(Message {
        conversation,
        seq: v.seq,
        message_id: v.message_id,
        sender_user: v.sender_user,
        sender_device: v.sender_device,
        client_msg_id,
        timestamp_ms: v.timestamp_ms,
        content_type: v.content_type.clone(),
        payload,
        files: v
            .files
            .iter()
            .map(|f| FileRef {
                file_id: f.file_id,
                size: f.size,
                content_type: f.content_type.clone(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Trust;

    #[test]
    fn api_failure_parses_body_or_falls_back() {
        let body = br#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
        let f = api_failure(
            StatusCode::TOO_MANY_REQUESTS,
            body,
            Some(Duration::from_secs(3)),
        );
        assert_eq!(f.status, 429);
        assert_eq!(f.code, "rate_limited");
        assert_eq!(f.message, "slow down");
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));

        let f = api_failure(StatusCode::BAD_GATEWAY, b"<html>oops</html>", None);
        assert_eq!(f.code, "http_502");
        assert_eq!(f.message, "<html>oops</html>");
    }

    #[test]
    fn urls_are_encoded() {
        let config =
            Config::new("127.0.0.1:4433", Trust::PinnedSha256(vec![[0u8; 32]])).expect("config");
        let api = HttpApi::new(&config).expect("api");
        assert_eq!(
            api.url(&["users", "a b/c"]).expect("url").as_str(),
            "https://127.0.0.1:4433/api/v1/users/a%20b%2Fc"
        );
        assert_eq!(
            api.url(&["login"]).expect("url").as_str(),
            "https://127.0.0.1:4433/api/v1/login"
        );
    }

    #[test]
    fn message_view_converts() {
        let v = MessageView {
            seq: 3,
            message_id: tern_wire::ids::MessageId(5),
            sender_user: tern_wire::ids::UserId(6),
            sender_device: tern_wire::ids::DeviceId(7),
            client_msg_id: format!("{:032x}", 0xabcu128),
            timestamp_ms: 9,
            content_type: "text".into(),
            payload_b64: "aGk=".into(),
            files: vec![],
        };
        let m = message_from_view(ConversationId(1), &v).expect("convert");
        assert_eq!(m.client_msg_id, 0xabc);
        assert_eq!(m.payload, b"hi");
        assert_eq!(m.seq, 3);
    }
}
