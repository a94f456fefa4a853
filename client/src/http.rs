//! The REST half of the protocol: `/v1/register`, `/v1/login`, `/v1/logout`, history,
//! profiles, settings, sessions, contacts and blocks, and the URL of the WebSocket endpoint.

use std::net::IpAddr;
use std::time::Duration;

use chat_types::rest::{
    BlocksResponse, ContactRequestBody, ContactsResponse, HistoryQuery, HistoryResponse,
    LoginRequest, LoginResponse, ProfileUpdate, RegisterRequest, RegisterResponse,
    RelationResponse, SessionsResponse, SettingsUpdate,
};
use chat_types::{ConversationId, Profile, Settings, UserId, WireError};
use reqwest::{RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;

use crate::connection::DEFAULT_REQUEST_TIMEOUT;
use crate::error::ClientError;

/// A client of the REST endpoints of one node (or of a load balancer in front of several).
#[derive(Clone, Debug)]
pub struct HttpApi {
    pub(crate) client: reqwest::Client,
    base: Url,
}

impl HttpApi {
    /// `base_url` is the scheme, host and port, optionally a path prefix:
    /// `http://127.0.0.1:8080`. Requests time out after [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(base_url: &str) -> Result<HttpApi, ClientError> {
        HttpApi::with_timeout(base_url, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Like [`HttpApi::new`] with a request timeout other than the default.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<HttpApi, ClientError> {
        HttpApi::with_local_addr(base_url, timeout, None)
    }

    /// Like [`HttpApi::with_timeout`], with every request's socket bound to `local_addr` when
    /// given (see `ConnectionConfig::local_addr`).
    pub fn with_local_addr(
        base_url: &str,
        timeout: Duration,
        local_addr: Option<IpAddr>,
    ) -> Result<HttpApi, ClientError> {
        let base = Url::parse(base_url)
            .map_err(|e| ClientError::Http(format!("bad base URL {base_url:?}: {e}")))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Http(format!(
                "bad base URL {base_url:?}: expected http://host:port"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .local_address(local_addr)
            .build()
            .map_err(|e| ClientError::Http(error_chain(&e)))?;
        Ok(HttpApi { client, base })
    }

    /// The base URL this client was built with.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `POST /v1/register`.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
    ) -> Result<RegisterResponse, ClientError> {
        let body = RegisterRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let req = self
            .client
            .post(self.endpoint(&["v1", "register"]))
            .json(&body);
        decode(send(req).await?, "register").await
    }

    /// `POST /v1/login`.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<LoginResponse, ClientError> {
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let req = self
            .client
            .post(self.endpoint(&["v1", "login"]))
            .json(&body);
        decode(send(req).await?, "login").await
    }

    /// `POST /v1/logout`: revokes `token`.
    pub async fn logout(&self, token: &str) -> Result<(), ClientError> {
        let req = self
            .client
            .post(self.endpoint(&["v1", "logout"]))
            .bearer_auth(token);
        send(req).await.map(drop)
    }

    /// `GET /v1/conversations/{conversation}/messages`.
    pub async fn history(
        &self,
        token: &str,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<HistoryResponse, ClientError> {
        self.history_raw(token, &conversation.to_string(), query)
            .await
    }

    /// Like [`HttpApi::history`] with the conversation named by any string, so that tests can
    /// ask for malformed or foreign ids.
    pub async fn history_raw(
        &self,
        token: &str,
        conversation: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResponse, ClientError> {
        let url = self.history_url(conversation, &query);
        let req = self.client.get(url).bearer_auth(token);
        decode(send(req).await?, "history").await
    }

    /// `GET /v1/me/profile`.
    pub async fn my_profile(&self, token: &str) -> Result<Profile, ClientError> {
        let req = self
            .client
            .get(self.endpoint(&["v1", "me", "profile"]))
            .bearer_auth(token);
        decode(send(req).await?, "profile").await
    }

    /// `PATCH /v1/me/profile`: returns the new profile.
    pub async fn update_profile(
        &self,
        token: &str,
        update: &ProfileUpdate,
    ) -> Result<Profile, ClientError> {
        let req = self
            .client
            .patch(self.endpoint(&["v1", "me", "profile"]))
            .bearer_auth(token)
            .json(update);
        decode(send(req).await?, "profile").await
    }

    /// `GET /v1/users/{user}/profile`.
    pub async fn user_profile(&self, token: &str, user: UserId) -> Result<Profile, ClientError> {
        let user = user.to_string();
        let req = self
            .client
            .get(self.endpoint(&["v1", "users", &user, "profile"]))
            .bearer_auth(token);
        decode(send(req).await?, "profile").await
    }

    /// `GET /v1/me/settings`.
    pub async fn settings(&self, token: &str) -> Result<Settings, ClientError> {
        let req = self
            .client
            .get(self.endpoint(&["v1", "me", "settings"]))
            .bearer_auth(token);
        decode(send(req).await?, "settings").await
    }

    /// `PUT /v1/me/settings`: returns the new settings.
    pub async fn update_settings(
        &self,
        token: &str,
        update: &SettingsUpdate,
    ) -> Result<Settings, ClientError> {
        let req = self
            .client
            .put(self.endpoint(&["v1", "me", "settings"]))
            .bearer_auth(token)
            .json(update);
        decode(send(req).await?, "settings").await
    }

    /// `GET /v1/me/sessions`.
    pub async fn sessions(&self, token: &str) -> Result<SessionsResponse, ClientError> {
        let req = self
            .client
            .get(self.endpoint(&["v1", "me", "sessions"]))
            .bearer_auth(token);
        decode(send(req).await?, "sessions").await
    }

    /// `DELETE /v1/me/sessions/{session_id}`.
    pub async fn revoke_session(&self, token: &str, session_id: &str) -> Result<(), ClientError> {
        let req = self
            .client
            .delete(self.endpoint(&["v1", "me", "sessions", session_id]))
            .bearer_auth(token);
        send(req).await.map(drop)
    }

    /// `GET /v1/contacts`: contacts, incoming and outgoing requests.
    pub async fn contacts(&self, token: &str) -> Result<ContactsResponse, ClientError> {
        let req = self
            .client
            .get(self.endpoint(&["v1", "contacts"]))
            .bearer_auth(token);
        decode(send(req).await?, "contacts").await
    }

    /// `POST /v1/contacts/requests` naming the user by id.
    pub async fn request_contact(
        &self,
        token: &str,
        user: UserId,
    ) -> Result<RelationResponse, ClientError> {
        let body = ContactRequestBody {
            user_id: Some(user),
            username: None,
        };
        self.request_contact_raw(token, &body).await
    }

    /// `POST /v1/contacts/requests` with any body, for tests of bad input.
    pub async fn request_contact_raw(
        &self,
        token: &str,
        body: &ContactRequestBody,
    ) -> Result<RelationResponse, ClientError> {
        let req = self
            .client
            .post(self.endpoint(&["v1", "contacts", "requests"]))
            .bearer_auth(token)
            .json(body);
        decode(send(req).await?, "relation").await
    }

    /// `POST /v1/contacts/requests/{user}/accept`.
    pub async fn accept_contact(
        &self,
        token: &str,
        user: UserId,
    ) -> Result<RelationResponse, ClientError> {
        self.request_action(token, user, "accept").await
    }

    /// `POST /v1/contacts/requests/{user}/decline`.
    pub async fn decline_contact(
        &self,
        token: &str,
        user: UserId,
    ) -> Result<RelationResponse, ClientError> {
        self.request_action(token, user, "decline").await
    }

    /// `POST /v1/contacts/requests/{user}/cancel`: withdraws one's own request.
    pub async fn cancel_contact(
        &self,
        token: &str,
        user: UserId,
    ) -> Result<RelationResponse, ClientError> {
        self.request_action(token, user, "cancel").await
    }

    /// `DELETE /v1/contacts/{user}`.
    pub async fn remove_contact(
        &self,
        token: &str,
        user: UserId,
    ) -> Result<RelationResponse, ClientError> {
        let user = user.to_string();
        let req = self
            .client
            .delete(self.endpoint(&["v1", "contacts", &user]))
            .bearer_auth(token);
        decode(send(req).await?, "relation").await
    }

    /// `GET /v1/blocks`.
    pub async fn blocks(&self, token: &str) -> Result<BlocksResponse, ClientError> {
        let req = self
            .client
            .get(self.endpoint(&["v1", "blocks"]))
            .bearer_auth(token);
        decode(send(req).await?, "blocks").await
    }

    /// `PUT /v1/blocks/{user}`.
    pub async fn block_user(
        &self,
        token: &str,
        user: UserId,
    ) -> Result<RelationResponse, ClientError> {
        let user = user.to_string();
        let req = self
            .client
            .put(self.endpoint(&["v1", "blocks", &user]))
            .bearer_auth(token);
        decode(send(req).await?, "relation").await
    }

    /// `DELETE /v1/blocks/{user}`.
    pub async fn unblock_user(
        &self,
        token: &str,
        user: UserId,
    ) -> Result<RelationResponse, ClientError> {
        let user = user.to_string();
        let req = self
            .client
            .delete(self.endpoint(&["v1", "blocks", &user]))
            .bearer_auth(token);
        decode(send(req).await?, "relation").await
    }

    async fn request_action(
        &self,
        token: &str,
        user: UserId,
        action: &str,
    ) -> Result<RelationResponse, ClientError> {
        let user = user.to_string();
        let req = self
            .client
            .post(self.endpoint(&["v1", "contacts", "requests", &user, action]))
            .bearer_auth(token);
        decode(send(req).await?, "relation").await
    }

    /// The WebSocket URL for `token`: `ws://host:port/v1/ws?token=...` (`wss` under https).
    pub fn ws_url(&self, token: &str) -> String {
        let mut url = self.endpoint(&["v1", "ws"]);
        url.query_pairs_mut().append_pair("token", token);
        // A serialised URL starts with its scheme, which `new` checked is http or https.
        let url = url.to_string();
        match url.strip_prefix("http") {
            Some(rest) => format!("ws{rest}"),
            None => url,
        }
    }

    fn history_url(&self, conversation: &str, query: &HistoryQuery) -> Url {
        let mut url = self.endpoint(&["v1", "conversations", conversation, "messages"]);
        let params: Vec<(&str, String)> = [
            ("after", query.after.map(|s| s.0.to_string())),
            ("before", query.before.map(|s| s.0.to_string())),
            ("around", query.around.map(|s| s.0.to_string())),
            ("limit", query.limit.map(|l| l.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        url
    }

    /// The base URL with `segments` appended, each percent-encoded as one path segment.
    pub(crate) fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }
}

/// Sends `req`; a non-2xx status becomes [`ClientError::Server`] when the body is a
/// [`WireError`], [`ClientError::Http`] otherwise.
pub(crate) async fn send(req: RequestBuilder) -> Result<Response, ClientError> {
    let resp = req.send().await.map_err(|e| request_error(&e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<WireError>(&body) {
        Ok(wire) => Err(ClientError::Server(wire)),
        Err(_) => Err(ClientError::Http(format!(
            "HTTP {status} without an error body"
        ))),
    }
}

pub(crate) async fn decode<T: DeserializeOwned>(
    resp: Response,
    what: &str,
) -> Result<T, ClientError> {
    let body = resp.bytes().await.map_err(|e| request_error(&e))?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Protocol(format!("bad {what} response body: {e}")))
}

pub(crate) fn request_error(e: &reqwest::Error) -> ClientError {
    if e.is_timeout() {
        ClientError::Timeout
    } else {
        ClientError::Http(error_chain(e))
    }
}

/// `e` and its sources, as reqwest's own message omits the cause ("error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chat_types::{Seq, UserId};

    use super::*;

    #[test]
    fn endpoints_join_the_base_and_encode_segments() {
        let api = HttpApi::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            api.endpoint(&["v1", "register"]).as_str(),
            "http://127.0.0.1:8080/v1/register"
        );
        let api = HttpApi::new("http://example.test/prefix/").unwrap();
        assert_eq!(
            api.endpoint(&["v1", "conversations", "a/b?c", "messages"])
                .as_str(),
            "http://example.test/prefix/v1/conversations/a%2Fb%3Fc/messages"
        );
    }

    #[test]
    fn history_url_names_the_conversation_and_only_the_given_bounds() {
        let api = HttpApi::new("http://127.0.0.1:8080").unwrap();
        let conv = ConversationId::direct(UserId(2), UserId(1)).to_string();
        assert_eq!(
            api.history_url(&conv, &HistoryQuery::default()).as_str(),
            "http://127.0.0.1:8080/v1/conversations/dm:1:2/messages"
        );
        let q = HistoryQuery {
            after: Some(Seq(5)),
            before: None,
            around: None,
            limit: Some(10),
        };
        assert_eq!(
            api.history_url(&conv, &q).as_str(),
            "http://127.0.0.1:8080/v1/conversations/dm:1:2/messages?after=5&limit=10"
        );
    }

    #[test]
    fn ws_url_switches_scheme_and_encodes_the_token() {
        let api = HttpApi::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            api.ws_url("a+b/c=&d"),
            "ws://127.0.0.1:8080/v1/ws?token=a%2Bb%2Fc%3D%26d"
        );
        let api = HttpApi::new("https://chat.example.test").unwrap();
        assert_eq!(api.ws_url("t"), "wss://chat.example.test/v1/ws?token=t");
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for bad in ["", "127.0.0.1:8080", "mailto:x@y", "ftp://host"] {
            assert!(HttpApi::new(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn unreachable_server_is_an_http_error() {
        // Port 1 on localhost is not listening in any sane test environment.
        let api = HttpApi::new("http://127.0.0.1:1").unwrap();
        match api.login("alice", "password1").await {
            Err(ClientError::Http(_)) => {}
            other => panic!("expected an http error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_leave_from_the_local_address_given() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, peer) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let body =
                serde_json::to_string(&WireError::new(chat_types::ErrorCode::Unauthorized, "no"))
                    .unwrap();
            let response = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(response.as_bytes()).await.unwrap();
            peer
        });
        let local: IpAddr = "127.0.0.4".parse().unwrap();
        let api = HttpApi::with_local_addr(
            &format!("http://{addr}"),
            Duration::from_secs(5),
            Some(local),
        )
        .unwrap();
        let err = api.login("alice", "password1").await.unwrap_err();
        assert!(matches!(err, ClientError::Server(_)), "{err:?}");
        assert_eq!(server.await.unwrap().ip(), local);
    }
}
