//! Id newtypes. Never pass a bare integer across a crate boundary.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A user's id, assigned by the metadata state machine at registration. Starts at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub u64);

/// A cluster node's id, chosen once when its data directory is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// A position in a conversation's log. The first message is 1; 0 means "nothing yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

/// The Raft log index of the membership a ring was built from. Larger is newer.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct RingEpoch(pub u64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for RingEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("malformed conversation id {0:?}: expected \"dm:<user>:<user>\" or \"g:<group>\"")]
    MalformedConversation(String),
    #[error("client message id must be 1 to {max} printable ASCII characters", max = ClientMsgId::MAX_LEN)]
    MalformedClientMsgId,
    #[error("malformed media id: must be 32 lowercase hex characters")]
    MalformedMediaId,
}

/// A group's id, assigned by the metadata state machine when the group is created. From 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A conversation. Direct conversations are named by their two members, so opening one needs
/// no coordination: `dm:<low>:<high>` with `low <= high` (equal for notes to self). A group's
/// conversation is `g:<group id>`; its members live in the replicated metadata.
///
/// Keys in storage use the fixed-width form of [`ConversationId::to_key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConversationId {
    Direct { low: UserId, high: UserId },
    Group { id: GroupId },
}

impl ConversationId {
    /// Width of [`ConversationId::to_key`].
    pub const KEY_LEN: usize = 17;
    const KIND_DIRECT: u8 = 1;
    const KIND_GROUP: u8 = 2;

    /// The direct conversation between two users, whichever order they are given in.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        ConversationId::Direct { low, high }
    }

    pub fn group(id: GroupId) -> Self {
        ConversationId::Group { id }
    }

    /// The group, for a group conversation.
    pub fn group_id(&self) -> Option<GroupId> {
        match *self {
            ConversationId::Group { id } => Some(id),
            ConversationId::Direct { .. } => None,
        }
    }

    /// The members of a direct conversation (one for notes to self); empty for a group,
    /// whose members only the metadata knows.
    pub fn direct_members(&self) -> Vec<UserId> {
        match *self {
            ConversationId::Direct { low, high } if low == high => vec![low],
            ConversationId::Direct { low, high } => vec![low, high],
            ConversationId::Group { .. } => Vec::new(),
        }
    }

    /// Membership of a direct conversation; always false for a group (ask the metadata).
    pub fn is_member(&self, user: UserId) -> bool {
        match *self {
            ConversationId::Direct { low, high } => user == low || user == high,
            ConversationId::Group { .. } => false,
        }
    }

    /// Fixed-width big-endian key: kind byte, then two u64s (a group: its id, then zero).
    /// Sorts by kind, then members or id.
    pub fn to_key(&self) -> [u8; Self::KEY_LEN] {
        let mut out = [0u8; Self::KEY_LEN];
        match *self {
            ConversationId::Direct { low, high } => {
                out[0] = Self::KIND_DIRECT;
                out[1..9].copy_from_slice(&low.0.to_be_bytes());
                out[9..17].copy_from_slice(&high.0.to_be_bytes());
            }
            ConversationId::Group { id } => {
                out[0] = Self::KIND_GROUP;
                out[1..9].copy_from_slice(&id.0.to_be_bytes());
            }
        }
        out
    }

    /// Inverse of [`ConversationId::to_key`]; `None` for bytes no build of ours wrote.
    pub fn from_key(key: &[u8]) -> Option<Self> {
        if key.len() != Self::KEY_LEN {
            return None;
        }
        let a = u64::from_be_bytes(key[1..9].try_into().ok()?);
        let b = u64::from_be_bytes(key[9..17].try_into().ok()?);
        match key[0] {
            Self::KIND_DIRECT if a != 0 && a <= b => Some(ConversationId::Direct {
                low: UserId(a),
                high: UserId(b),
            }),
            Self::KIND_GROUP if a != 0 && b == 0 => Some(ConversationId::Group { id: GroupId(a) }),
            _ => None,
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConversationId::Direct { low, high } => write!(f, "dm:{}:{}", low.0, high.0),
            ConversationId::Group { id } => write!(f, "g:{}", id.0),
        }
    }
}

impl FromStr for ConversationId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdError::MalformedConversation(s.chars().take(64).collect());
        if let Some(id) = s.strip_prefix("g:") {
            let id: u64 = id.parse().map_err(|_| bad())?;
            if id == 0 {
                return Err(bad());
            }
            return Ok(ConversationId::Group { id: GroupId(id) });
        }
        let rest = s.strip_prefix("dm:").ok_or_else(bad)?;
        let (a, b) = rest.split_once(':').ok_or_else(bad)?;
        let a: u64 = a.parse().map_err(|_| bad())?;
        let b: u64 = b.parse().map_err(|_| bad())?;
        if a == 0 || b == 0 || a > b {
            return Err(bad());
        }
        Ok(ConversationId::Direct {
            low: UserId(a),
            high: UserId(b),
        })
    }
}

impl Serialize for ConversationId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The sender's id for one message, used to make retries idempotent. Unique per sender and
/// conversation: a second send with the same id returns the first one's seq.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub const MAX_LEN: usize = 64;

    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let ok =
            !s.is_empty() && s.len() <= Self::MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(ClientMsgId(s))
        } else {
            Err(IdError::MalformedClientMsgId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClientMsgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClientMsgId::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_id_is_order_independent_and_round_trips() {
        let a = ConversationId::direct(UserId(9), UserId(3));
        assert_eq!(a, ConversationId::direct(UserId(3), UserId(9)));
        assert_eq!(a.to_string(), "dm:3:9");
        assert_eq!("dm:3:9".parse::<ConversationId>(), Ok(a));
        assert_eq!(ConversationId::from_key(&a.to_key()), Some(a));
    }

    #[test]
    fn conversation_key_layout_is_kind_then_big_endian_members() {
        let key = ConversationId::direct(UserId(1), UserId(0x0102)).to_key();
        let mut want = [0u8; 17];
        want[0] = 1;
        want[8] = 1;
        want[15] = 1;
        want[16] = 2;
        assert_eq!(key, want);
    }

    #[test]
    fn malformed_conversation_ids_are_refused() {
        for s in [
            "", "dm:", "dm:1", "dm:2:1", "dm:0:1", "dm:a:b", "gr:1:2", "dm:1:2:3",
        ] {
            assert!(s.parse::<ConversationId>().is_err(), "{s}");
        }
        assert_eq!(ConversationId::from_key(&[1u8; 3]), None);
    }

    #[test]
    fn client_msg_id_rules() {
        assert!(ClientMsgId::new("abc-1").is_ok());
        assert!(ClientMsgId::new("").is_err());
        assert!(ClientMsgId::new("a b").is_err());
        assert!(ClientMsgId::new("x".repeat(65)).is_err());
        assert!(serde_json::from_str::<ClientMsgId>("\"\"").is_err());
    }
}
