//! Search over HTTP: messages (full text, across the cluster, only where the user may read),
//! people (prefix and typo-tolerant, by username and display name), and the user's own
//! conversations by name.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use chat_search::{rank_names, rank_people, Person, SearchError};
use chat_types::search::{
    ConversationHit, ConversationSearchResponse, MessageHit, MessageSearchResponse, UserHit,
    UserSearchResponse, MAX_SEARCH_PAGE,
};
use chat_types::{ConversationId, ErrorCode, UserId, WireError};

use super::{authenticate, error_response, query_params as query, AppState};
use crate::search::QueryWire;

fn invalid(m: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, m)
}

fn number<T: std::str::FromStr>(
    q: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<T>, WireError> {
    q.get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(format!("{name} must be a number")))
        })
        .transpose()
}

fn limit(q: &BTreeMap<String, String>, default: u32, max: u32) -> Result<u32, WireError> {
    Ok(number::<u32>(q, "limit")?.unwrap_or(default).clamp(1, max))
}

fn text(q: &BTreeMap<String, String>) -> Result<String, WireError> {
    let t = q.get("q").map(|s| s.trim()).unwrap_or("");
    if t.is_empty() {
        return Err(invalid("q (the text to search for) is required"));
    }
    if t.len() > 1024 {
        return Err(invalid("q is limited to 1024 bytes"));
    }
    Ok(t.to_owned())
}

/// `GET /v1/search/messages?q=&conversation=&sender=&from_ms=&to_ms=&cursor=&limit=`.
pub async fn messages(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    let user = principal.user_id;
    let result = async {
        let q = query(&req);
        let text = text(&q)?;
        let conversation = q
            .get("conversation")
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<ConversationId>()
                    .map_err(|e| invalid(e.to_string()))
            })
            .transpose()?;
        let (groups, allowed) = state.meta.read(|m| {
            let groups: Vec<ConversationId> = m
                .groups_of(user)
                .into_iter()
                .map(ConversationId::group)
                .collect();
            let allowed = conversation
                .as_ref()
                .is_none_or(|c| m.may_read_conversation(user, c));
            (groups, allowed)
        });
        if !allowed {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "not a member of that conversation",
            ));
        }
        let wire = QueryWire {
            text,
            reader: user,
            groups,
            conversation,
            sender: number::<u64>(&q, "sender")?.map(UserId),
            from_ms: number(&q, "from_ms")?,
            to_ms: number(&q, "to_ms")?,
            before: q.get("cursor").filter(|c| !c.is_empty()).cloned(),
            limit: limit(&q, 20, MAX_SEARCH_PAGE as u32)?,
        };
        let found = state.search.search(wire).await.map_err(|e| match e {
            SearchError::BadQuery(m) => invalid(m),
            SearchError::BadCursor => invalid("bad cursor"),
            SearchError::Index(_) => WireError::new(ErrorCode::Internal, "search failed"),
        })?;
        Ok(MessageSearchResponse {
            hits: found
                .page
                .hits
                .into_iter()
                .map(|h| MessageHit {
                    conversation: h.conversation,
                    seq: h.seq,
                    sender: h.sender,
                    ts_ms: h.ts_ms,
                    body: h.body,
                    snippet: h.snippet,
                    highlights: h.highlights,
                })
                .collect(),
            next: found.page.next.map(|c| c.encode()),
            partial: found.partial,
        })
    }
    .await;
    match result {
        Ok(r) => HttpResponse::Ok().json(r),
        Err(e) => error_response(&state, e),
    }
}

/// `GET /v1/search/users?q=&limit=`.
pub async fn users(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Err(e) = authenticate(&state, &req).await {
        return error_response(&state, e);
    }
    let result = (|| {
        let q = query(&req);
        let text = text(&q)?;
        let limit = limit(&q, 20, 50)? as usize;
        let people: Vec<Person> = state.meta.read(|m| {
            m.people()
                .map(|(user_id, username, display)| Person {
                    user_id,
                    username: username.to_owned(),
                    display_name: display.to_owned(),
                })
                .collect()
        });
        Ok::<_, WireError>(UserSearchResponse {
            users: rank_people(&text, &people, limit)
                .into_iter()
                .map(|p| UserHit {
                    user_id: p.user_id,
                    username: p.username,
                    display_name: p.display_name,
                })
                .collect(),
        })
    })();
    match result {
        Ok(r) => HttpResponse::Ok().json(r),
        Err(e) => error_response(&state, e),
    }
}

/// `GET /v1/search/conversations?q=&limit=`: the user's groups by name, and their direct
/// conversations by the other member's names.
pub async fn conversations(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let principal = match authenticate(&state, &req).await {
        Ok(p) => p,
        Err(e) => return error_response(&state, e),
    };
    let user = principal.user_id;
    let result = async {
        let q = query(&req);
        let text = text(&q)?;
        let limit = limit(&q, 20, 50)? as usize;
        let recent = state
            .router
            .conversations(user, 1000)
            .await
            .map_err(|e| e.to_wire())?;
        let items: Vec<(ConversationHit, String)> = state.meta.read(|m| {
            let mut items = Vec::new();
            for g in m.groups_of(user) {
                if let Some(rec) = m.group(g) {
                    let hit = ConversationHit {
                        conversation: ConversationId::group(g),
                        name: rec.name.clone(),
                        kind: "group".into(),
                    };
                    items.push((hit, rec.name.clone()));
                }
            }
            for s in &recent {
                if s.conversation.group_id().is_some() {
                    continue;
                }
                let Some(other) = s
                    .conversation
                    .direct_members()
                    .into_iter()
                    .find(|u| *u != user)
                else {
                    continue;
                };
                if let Some(p) = m.profile(other) {
                    let hit = ConversationHit {
                        conversation: s.conversation,
                        name: p.display_name.clone(),
                        kind: "direct".into(),
                    };
                    items.push((hit.clone(), p.display_name));
                    items.push((hit, p.username));
                }
            }
            items
        });
        let mut found: Vec<ConversationHit> = rank_names(
            &text,
            items.iter().map(|(hit, name)| (hit, name.as_str())),
            limit * 2,
        );
        // A direct conversation may match by both names: keep its first (best) place.
        let mut seen = std::collections::HashSet::new();
        found.retain(|h| seen.insert(h.conversation));
        found.truncate(limit);
        Ok::<_, WireError>(ConversationSearchResponse {
            conversations: found,
        })
    }
    .await;
    match result {
        Ok(r) => HttpResponse::Ok().json(r),
        Err(e) => error_response(&state, e),
    }
}
