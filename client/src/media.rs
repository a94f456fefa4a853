//! Media and search over REST: uploads (whole or resumable), downloads with ranges, signed
//! links, and message, people and conversation search.

use chat_types::search::{ConversationSearchResponse, MessageSearchResponse, UserSearchResponse};
use chat_types::{
    ConversationId, MediaId, MediaInfo, MediaLink, UploadCreate, UploadStatus, UserId,
};

use crate::error::ClientError;
use crate::http::{decode, request_error, send, HttpApi};

/// A download's status, the headers a client cares about, and the body.
#[derive(Clone, Debug)]
pub struct Download {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Download {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Filters of a message search; `cursor` is the `next` of the previous page.
#[derive(Clone, Debug, Default)]
pub struct MessageSearch {
    pub conversation: Option<ConversationId>,
    pub sender: Option<UserId>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

impl HttpApi {
    /// `POST /v1/media?name=`: uploads `bytes` in one request.
    pub async fn upload(
        &self,
        token: &str,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<MediaInfo, ClientError> {
        let mut url = self.endpoint(&["v1", "media"]);
        url.query_pairs_mut().append_pair("name", name);
        let req = self.client.post(url).bearer_auth(token).body(bytes);
        decode(send(req).await?, "media").await
    }

    /// `POST /v1/uploads`: starts a resumable upload of `size` bytes.
    pub async fn create_upload(
        &self,
        token: &str,
        name: &str,
        size: u64,
    ) -> Result<UploadStatus, ClientError> {
        let body = UploadCreate {
            name: name.to_owned(),
            size,
        };
        let req = self
            .client
            .post(self.endpoint(&["v1", "uploads"]))
            .bearer_auth(token)
            .json(&body);
        decode(send(req).await?, "upload").await
    }

    /// `PATCH /v1/uploads/{id}`: the next chunk, at `offset`.
    pub async fn append_upload(
        &self,
        token: &str,
        upload_id: &str,
        offset: u64,
        chunk: Vec<u8>,
    ) -> Result<UploadStatus, ClientError> {
        let req = self
            .client
            .patch(self.endpoint(&["v1", "uploads", upload_id]))
            .bearer_auth(token)
            .header("upload-offset", offset.to_string())
            .body(chunk);
        decode(send(req).await?, "upload").await
    }

    /// `GET /v1/uploads/{id}`: where to resume.
    pub async fn upload_status(
        &self,
        token: &str,
        upload_id: &str,
    ) -> Result<UploadStatus, ClientError> {
        let req = self
            .client
            .get(self.endpoint(&["v1", "uploads", upload_id]))
            .bearer_auth(token);
        decode(send(req).await?, "upload").await
    }

    /// Uploads `bytes` in chunks of `chunk` bytes through a resumable upload.
    pub async fn upload_resumable(
        &self,
        token: &str,
        name: &str,
        bytes: &[u8],
        chunk: usize,
    ) -> Result<MediaInfo, ClientError> {
        let started = self.create_upload(token, name, bytes.len() as u64).await?;
        let mut offset = started.offset;
        loop {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let to = from.saturating_add(chunk.max(1)).min(bytes.len());
            let status = self
                .append_upload(token, &started.upload_id, offset, bytes[from..to].to_vec())
                .await?;
            if let Some(media) = status.media {
                return Ok(media);
            }
            if status.offset <= offset {
                return Err(ClientError::Protocol(
                    "an upload chunk made no progress".into(),
                ));
            }
            offset = status.offset;
        }
    }

    /// `GET /v1/media/{id}/info`.
    pub async fn media_info(&self, token: &str, id: &MediaId) -> Result<MediaInfo, ClientError> {
        let req = self
            .client
            .get(self.endpoint(&["v1", "media", id.as_str(), "info"]))
            .bearer_auth(token);
        decode(send(req).await?, "media").await
    }

    /// `POST /v1/media/{id}/link`.
    pub async fn media_link(&self, token: &str, id: &MediaId) -> Result<MediaLink, ClientError> {
        let req = self
            .client
            .post(self.endpoint(&["v1", "media", id.as_str(), "link"]))
            .bearer_auth(token);
        decode(send(req).await?, "link").await
    }

    /// `GET path` (e.g. `/v1/media/{id}` or a signed link) with the given extra headers,
    /// whatever the status: for clients that handle ranges and caching themselves.
    pub async fn fetch(
        &self,
        token: Option<&str>,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Download, ClientError> {
        let url = self.base_url().trim_end_matches('/').to_owned() + path_and_query;
        let mut req = self.client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(|e| request_error(&e))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let body = resp.bytes().await.map_err(|e| request_error(&e))?.to_vec();
        Ok(Download {
            status,
            headers,
            body,
        })
    }

    /// `GET /v1/search/messages`.
    pub async fn search_messages(
        &self,
        token: &str,
        text: &str,
        filters: &MessageSearch,
    ) -> Result<MessageSearchResponse, ClientError> {
        let mut url = self.endpoint(&["v1", "search", "messages"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("q", text);
            if let Some(c) = &filters.conversation {
                q.append_pair("conversation", &c.to_string());
            }
            if let Some(s) = filters.sender {
                q.append_pair("sender", &s.0.to_string());
            }
            if let Some(v) = filters.from_ms {
                q.append_pair("from_ms", &v.to_string());
            }
            if let Some(v) = filters.to_ms {
                q.append_pair("to_ms", &v.to_string());
            }
            if let Some(c) = &filters.cursor {
                q.append_pair("cursor", c);
            }
            if let Some(l) = filters.limit {
                q.append_pair("limit", &l.to_string());
            }
        }
        let req = self.client.get(url).bearer_auth(token);
        decode(send(req).await?, "search").await
    }

    /// `GET /v1/search/users`.
    pub async fn search_users(
        &self,
        token: &str,
        text: &str,
    ) -> Result<UserSearchResponse, ClientError> {
        let mut url = self.endpoint(&["v1", "search", "users"]);
        url.query_pairs_mut().append_pair("q", text);
        let req = self.client.get(url).bearer_auth(token);
        decode(send(req).await?, "search").await
    }

    /// `GET /v1/search/conversations`.
    pub async fn search_conversations(
        &self,
        token: &str,
        text: &str,
    ) -> Result<ConversationSearchResponse, ClientError> {
        let mut url = self.endpoint(&["v1", "search", "conversations"]);
        url.query_pairs_mut().append_pair("q", text);
        let req = self.client.get(url).bearer_auth(token);
        decode(send(req).await?, "search").await
    }
}
