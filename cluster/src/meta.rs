//! The metadata state machine that Raft replicates: accounts, usernames and sessions.
//!
//! `apply` is a pure, deterministic function of the state and the command: every node that
//! applies the same log holds the same state. It also returns the key-value writes that
//! persist the change, so the Raft store can write them in the same batch as the applied log
//! id. Reads (token checks, username lookups) come from the local copy.
//!
//! Keys: `u/` ++ user id (8, BE) -> account; `n/` ++ username -> user id;
//! `s/` ++ token hash (hex) -> session; `c/next_user` -> next user id. Every value starts with
//! a format version. The Raft store keeps its own keys under `raft/`, which `load` skips.

use std::collections::BTreeMap;

use chat_storage::keys::{decode_u64_v1, decode_versioned, encode_u64_v1, encode_versioned};
use chat_storage::raft_kv::KvPair;
use chat_storage::StorageError;
use chat_types::UserId;
use serde::{Deserialize, Serialize};

const CF: &str = "metakey_value";
const FORMAT: u8 = 1;
const KEY_NEXT_USER: &[u8] = b"c/next_user";

/// The address book entry of one node: what openraft stores in its membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Where clients reach the node (HTTP and WebSocket).
    pub http_addr: String,
    /// Where other nodes reach it (Raft and actor messages).
    pub peer_addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http={} peer={}", self.http_addr, self.peer_addr)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user_id: UserId,
    pub username: String,
    /// argon2id PHC string; never leaves the cluster.
    pub password_hash: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: UserId,
    pub created_ms: u64,
}

/// A change to the metadata, proposed through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// `username` must already be canonical (see `chat_types::validate_username`).
    RegisterUser {
        username: String,
        password_hash: String,
        now_ms: u64,
    },
    /// `token_hash` is the hex SHA-256 of the bearer token; the token itself is never stored.
    CreateSession {
        token_hash: String,
        user_id: UserId,
        now_ms: u64,
    },
    RevokeSession {
        token_hash: String,
    },
}

/// The result of applying one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// For log entries that carry no command (blank entries, membership changes).
    #[default]
    None,
    Registered {
        user_id: UserId,
    },
    UsernameTaken,
    SessionCreated,
    UnknownUser,
    SessionRevoked {
        existed: bool,
    },
}

/// One key-value write that persists part of an applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaWrite {
    pub key: Vec<u8>,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// The replicated metadata, in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaState {
    users: BTreeMap<UserId, Account>,
    usernames: BTreeMap<String, UserId>,
    sessions: BTreeMap<String, SessionRecord>,
    next_user: u64,
}

fn user_key(id: UserId) -> Vec<u8> {
    let mut k = b"u/".to_vec();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

fn username_key(name: &str) -> Vec<u8> {
    let mut k = b"n/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn session_key(hash: &str) -> Vec<u8> {
    let mut k = b"s/".to_vec();
    k.extend_from_slice(hash.as_bytes());
    k
}

impl MetaState {
    pub fn user(&self, id: UserId) -> Option<&Account> {
        self.users.get(&id)
    }

    pub fn user_by_name(&self, username: &str) -> Option<&Account> {
        self.usernames
            .get(username)
            .and_then(|id| self.users.get(id))
    }

    pub fn session(&self, token_hash: &str) -> Option<&SessionRecord> {
        self.sessions.get(token_hash)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Applies one command. Deterministic: no clock, no randomness, no I/O.
    pub fn apply(
        &mut self,
        cmd: &MetaCommand,
    ) -> Result<(MetaResponse, Vec<MetaWrite>), StorageError> {
        match cmd {
            MetaCommand::RegisterUser {
                username,
                password_hash,
                now_ms,
            } => {
                if self.usernames.contains_key(username) {
                    return Ok((MetaResponse::UsernameTaken, Vec::new()));
                }
                let user_id = UserId(self.next_user.max(1));
                self.next_user = user_id.0 + 1;
                let account = Account {
                    user_id,
                    username: username.clone(),
                    password_hash: password_hash.clone(),
                    created_ms: *now_ms,
                };
                let writes = vec![
                    MetaWrite {
                        key: user_key(user_id),
                        value: Some(encode_versioned(CF, FORMAT, &account)?),
                    },
                    MetaWrite {
                        key: username_key(username),
                        value: Some(encode_u64_v1(user_id.0).to_vec()),
                    },
                    MetaWrite {
                        key: KEY_NEXT_USER.to_vec(),
                        value: Some(encode_u64_v1(self.next_user).to_vec()),
                    },
                ];
                self.usernames.insert(username.clone(), user_id);
                self.users.insert(user_id, account);
                Ok((MetaResponse::Registered { user_id }, writes))
            }
            MetaCommand::CreateSession {
                token_hash,
                user_id,
                now_ms,
            } => {
                if !self.users.contains_key(user_id) {
                    return Ok((MetaResponse::UnknownUser, Vec::new()));
                }
                let rec = SessionRecord {
                    user_id: *user_id,
                    created_ms: *now_ms,
                };
                let writes = vec![MetaWrite {
                    key: session_key(token_hash),
                    value: Some(encode_versioned(CF, FORMAT, &rec)?),
                }];
                self.sessions.insert(token_hash.clone(), rec);
                Ok((MetaResponse::SessionCreated, writes))
            }
            MetaCommand::RevokeSession { token_hash } => {
                let existed = self.sessions.remove(token_hash).is_some();
                let writes = if existed {
                    vec![MetaWrite {
                        key: session_key(token_hash),
                        value: None,
                    }]
                } else {
                    Vec::new()
                };
                Ok((MetaResponse::SessionRevoked { existed }, writes))
            }
        }
    }

    /// Rebuilds the state from its persisted key-value pairs (in any order). Keys under
    /// `raft/` belong to the Raft store and are skipped.
    pub fn load<I>(pairs: I) -> Result<MetaState, StorageError>
    where
        I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    {
        let mut state = MetaState::default();
        for (k, v) in pairs {
            if let Some(rest) = k.strip_prefix(b"u/") {
                if rest.len() != 8 {
                    return Err(StorageError::Corrupt {
                        cf: CF,
                        key: String::from_utf8_lossy(&k).into_owned(),
                    });
                }
                let account: Account = decode_versioned(CF, FORMAT, &k, &v)?;
                state.users.insert(account.user_id, account);
            } else if let Some(rest) = k.strip_prefix(b"n/") {
                let id = UserId(decode_u64_v1(CF, &k, &v)?);
                state
                    .usernames
                    .insert(String::from_utf8_lossy(rest).into_owned(), id);
            } else if let Some(rest) = k.strip_prefix(b"s/") {
                let rec: SessionRecord = decode_versioned(CF, FORMAT, &k, &v)?;
                state
                    .sessions
                    .insert(String::from_utf8_lossy(rest).into_owned(), rec);
            } else if k == KEY_NEXT_USER {
                state.next_user = decode_u64_v1(CF, &k, &v)?;
            }
        }
        Ok(state)
    }

    /// Every persisted pair of the state, for snapshots: `load(dump())` is the same state.
    pub fn dump(&self) -> Result<Vec<KvPair>, StorageError> {
        let mut out = Vec::with_capacity(self.users.len() * 2 + self.sessions.len() + 1);
        for (id, account) in &self.users {
            out.push((user_key(*id), encode_versioned(CF, FORMAT, account)?));
        }
        for (name, id) in &self.usernames {
            out.push((username_key(name), encode_u64_v1(id.0).to_vec()));
        }
        for (hash, rec) in &self.sessions {
            out.push((session_key(hash), encode_versioned(CF, FORMAT, rec)?));
        }
        out.push((
            KEY_NEXT_USER.to_vec(),
            encode_u64_v1(self.next_user).to_vec(),
        ));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(s: &mut MetaState, name: &str) -> MetaResponse {
        s.apply(&MetaCommand::RegisterUser {
            username: name.into(),
            password_hash: "h".into(),
            now_ms: 5,
        })
        .expect("apply")
        .0
    }

    #[test]
    fn usernames_are_unique_and_ids_sequential() {
        let mut s = MetaState::default();
        assert_eq!(
            register(&mut s, "alice"),
            MetaResponse::Registered { user_id: UserId(1) }
        );
        assert_eq!(
            register(&mut s, "bob"),
            MetaResponse::Registered { user_id: UserId(2) }
        );
        assert_eq!(register(&mut s, "alice"), MetaResponse::UsernameTaken);
        assert_eq!(s.user_by_name("bob").map(|a| a.user_id), Some(UserId(2)));
    }

    #[test]
    fn sessions_need_a_user_and_can_be_revoked() {
        let mut s = MetaState::default();
        register(&mut s, "alice");
        let create = |user| MetaCommand::CreateSession {
            token_hash: "ab".into(),
            user_id: UserId(user),
            now_ms: 1,
        };
        assert_eq!(
            s.apply(&create(9)).expect("apply").0,
            MetaResponse::UnknownUser
        );
        assert_eq!(
            s.apply(&create(1)).expect("apply").0,
            MetaResponse::SessionCreated
        );
        assert!(s.session("ab").is_some());
        let revoke = MetaCommand::RevokeSession {
            token_hash: "ab".into(),
        };
        assert_eq!(
            s.apply(&revoke).expect("apply").0,
            MetaResponse::SessionRevoked { existed: true }
        );
        assert!(s.session("ab").is_none());
    }

    #[test]
    fn writes_rebuild_the_same_state() {
        let mut s = MetaState::default();
        let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut run = |s: &mut MetaState, cmd: MetaCommand| {
            for w in s.apply(&cmd).expect("apply").1 {
                match w.value {
                    Some(v) => kv.insert(w.key, v),
                    None => kv.remove(&w.key),
                };
            }
        };
        for name in ["alice", "bob", "carol"] {
            run(
                &mut s,
                MetaCommand::RegisterUser {
                    username: name.into(),
                    password_hash: "h".into(),
                    now_ms: 1,
                },
            );
        }
        run(
            &mut s,
            MetaCommand::CreateSession {
                token_hash: "t1".into(),
                user_id: UserId(2),
                now_ms: 2,
            },
        );
        let loaded = MetaState::load(kv.clone()).expect("load");
        assert_eq!(loaded, s);
        let from_dump = MetaState::load(s.dump().expect("dump")).expect("load");
        assert_eq!(from_dump, s);
    }
}
