//! The user session actor: one per user, on the user's home node. It knows the user's live
//! connections on every node and pushes each new message once per node that holds some of
//! them. It handles one delivery at a time, so a user's connections see messages in the
//! order they were delivered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;

use chat_types::{Message, NodeId, UserId};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::connection::ConnRef;
use crate::router::Router;

pub enum SessionMsg {
    Attach(ConnRef),
    Detach(ConnRef),
    Deliver {
        message: Message,
        origin: Option<ConnRef>,
    },
}

pub struct SessionActor;

pub struct SessionArgs {
    pub user: UserId,
    pub router: Weak<Router>,
}

pub struct SessionState {
    user: UserId,
    router: Weak<Router>,
    conns: BTreeMap<NodeId, BTreeSet<u64>>,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        Ok(SessionState {
            user: args.user,
            router: args.router,
            conns: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Attach(c) => {
                state.conns.entry(c.node).or_default().insert(c.conn);
            }
            SessionMsg::Detach(c) => {
                if let Some(set) = state.conns.get_mut(&c.node) {
                    set.remove(&c.conn);
                    if set.is_empty() {
                        state.conns.remove(&c.node);
                    }
                }
            }
            SessionMsg::Deliver { message, origin } => {
                let Some(router) = state.router.upgrade() else {
                    return Ok(());
                };
                let mut gone = Vec::new();
                for (node, conns) in &state.conns {
                    let targets: Vec<u64> = conns
                        .iter()
                        .copied()
                        .filter(|c| {
                            origin
                                != Some(ConnRef {
                                    node: *node,
                                    conn: *c,
                                })
                        })
                        .collect();
                    if targets.is_empty() {
                        continue;
                    }
                    if let Err(e) = router.push(*node, targets, message.clone()).await {
                        tracing::warn!(user = %state.user, %node, error = %e, "push to node failed");
                        if router.is_gone(*node) {
                            gone.push(*node);
                        }
                    }
                }
                for node in gone {
                    state.conns.remove(&node);
                }
            }
        }
        Ok(())
    }
}
