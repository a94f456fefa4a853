//! The conversation actor: one per conversation, on its owner node, the single writer of the
//! conversation's log. It checks membership, lets the log deduplicate by client message id
//! and assign the next seq in one batch, answers the sender, then hands the message to an
//! ordered fan-out queue so that a slow recipient never delays the next append.

use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use chat_storage::{AppendRequest, ConversationLog};
use chat_types::{ClientMsgId, ConversationId, Message, Seq, UserId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::connection::ConnRef;
use crate::error::ActorError;
use crate::router::Router;

pub enum ConversationMsg {
    Append {
        sender: UserId,
        client_msg_id: ClientMsgId,
        body: String,
        origin: Option<ConnRef>,
        reply: RpcReplyPort<Result<(Message, bool), ActorError>>,
    },
    History {
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
        reply: RpcReplyPort<Result<(Seq, Vec<Message>), ActorError>>,
    },
}

pub struct ConversationActor;

pub struct ConversationArgs {
    pub conversation: ConversationId,
    pub log: Arc<dyn ConversationLog>,
    pub router: Weak<Router>,
}

pub struct ConversationState {
    conversation: ConversationId,
    log: Arc<dyn ConversationLog>,
    fanout: mpsc::UnboundedSender<(Message, Option<ConnRef>)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor for ConversationActor {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = ConversationArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConversationArgs,
    ) -> Result<ConversationState, ActorProcessingErr> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Message, Option<ConnRef>)>();
        let router = args.router;
        let members = args.conversation.direct_members();
        // Deliveries leave in seq order: one at a time, each to every member's home node.
        tokio::spawn(async move {
            while let Some((message, origin)) = rx.recv().await {
                let Some(router) = router.upgrade() else {
                    return;
                };
                for member in &members {
                    if let Err(e) = router.deliver(*member, message.clone(), origin).await {
                        tracing::warn!(
                            conv = %message.conversation,
                            seq = %message.seq,
                            user = %member,
                            error = %e,
                            "live delivery failed; the recipient catches up from history"
                        );
                    }
                }
            }
        });
        Ok(ConversationState {
            conversation: args.conversation,
            log: args.log,
            fanout: tx,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: ConversationMsg,
        state: &mut ConversationState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConversationMsg::Append {
                sender,
                client_msg_id,
                body,
                origin,
                reply,
            } => {
                if !state.conversation.is_member(sender) {
                    let _ = reply.send(Err(ActorError::Forbidden));
                    return Ok(());
                }
                let req = AppendRequest {
                    conversation: state.conversation,
                    sender,
                    client_msg_id,
                    body,
                    ts_ms: now_ms(),
                };
                match state.log.append(req) {
                    Ok(outcome) => {
                        if !outcome.duplicate {
                            let _ = state.fanout.send((outcome.message.clone(), origin));
                        }
                        let _ = reply.send(Ok((outcome.message, outcome.duplicate)));
                    }
                    Err(e) => {
                        tracing::error!(conv = %state.conversation, error = %e, "append failed");
                        let _ = reply.send(Err(ActorError::Storage));
                    }
                }
            }
            ConversationMsg::History {
                after,
                before,
                limit,
                reply,
            } => {
                let _ = reply.send(read_page(
                    &*state.log,
                    &state.conversation,
                    after,
                    before,
                    limit,
                ));
            }
        }
        Ok(())
    }
}

fn read_page(
    log: &dyn ConversationLog,
    conv: &ConversationId,
    after: Option<Seq>,
    before: Option<Seq>,
    limit: u32,
) -> Result<(Seq, Vec<Message>), ActorError> {
    let storage = |e: chat_storage::StorageError| {
        tracing::error!(conv = %conv, error = %e, "history read failed");
        ActorError::Storage
    };
    let head = log.head(conv).map_err(storage)?;
    let limit = limit as usize;
    let messages = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(ActorError::InvalidArgument(
                "give at most one of after and before".into(),
            ))
        }
        (Some(after), None) => log.read_after(conv, after, limit).map_err(storage)?,
        (None, Some(before)) => log.read_before(conv, before, limit).map_err(storage)?,
        (None, None) => log.read_before(conv, head.next(), limit).map_err(storage)?,
    };
    Ok((head, messages))
}
