//! Raft RPCs over the peer transport, on the `Raft` channel.
//!
//! Each RPC is `[RAFT_RPC_VERSION] ++ MessagePack(RaftRpc)`; each reply is the same version
//! byte and the MessagePack of `Result<response, RaftError>`, so a remote Raft error comes
//! back typed and an unreachable peer is told apart from a refusing one.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{MetaRaft, TypeConfig};
use crate::meta::NodeInfo;
use crate::transport::{Channel, PeerError, Transport, TransportError};

const RAFT_RPC_VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    let mut out = vec![RAFT_RPC_VERSION];
    rmp_serde::encode::write_named(&mut out, v).map_err(|e| e.to_string())?;
    Ok(out)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&RAFT_RPC_VERSION, rest)) => rmp_serde::from_slice(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("raft rpc version {v} is not supported")),
        None => Err("empty raft rpc".into()),
    }
}

/// Makes one [`PeerNetwork`] per target node; all share the node's transport.
#[derive(Clone, Debug)]
pub struct PeerNetworkFactory {
    transport: Transport,
}

impl PeerNetworkFactory {
    pub fn new(transport: Transport) -> Self {
        PeerNetworkFactory { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            transport: self.transport.clone(),
            target,
            addr: node.peer_addr.clone(),
        }
    }
}

#[derive(Debug)]
pub struct PeerNetwork {
    transport: Transport,
    target: u64,
    addr: String,
}

impl PeerNetwork {
    async fn call<Resp, E>(
        &self,
        rpc: RaftRpc,
        ttl: Duration,
    ) -> Result<Resp, RPCError<u64, NodeInfo, RaftError<u64, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&Msg(e))))?;
        let bytes = self
            .transport
            .request(&self.addr, Channel::Raft, payload, ttl)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable { .. } | TransportError::ConnectionLost { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                other => RPCError::Network(NetworkError::new(&other)),
            })?;
        let reply: Result<Resp, RaftError<u64, E>> =
            decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&Msg(e))))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Debug)]
struct Msg(String);
impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Msg {}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        self.call(RaftRpc::Append(rpc), option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(RaftRpc::Snapshot(rpc), option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        self.call(RaftRpc::Vote(rpc), option.hard_ttl()).await
    }
}

/// Serves one Raft RPC from a peer against the local Raft node.
pub async fn serve_raft_rpc(raft: &MetaRaft, payload: &[u8]) -> Result<Vec<u8>, PeerError> {
    let rpc: RaftRpc = decode(payload).map_err(PeerError::BadPayload)?;
    let out = match rpc {
        RaftRpc::Append(req) => encode(&raft.append_entries(req).await),
        RaftRpc::Vote(req) => encode(&raft.vote(req).await),
        RaftRpc::Snapshot(req) => encode(&raft.install_snapshot(req).await),
    };
    out.map_err(PeerError::Handler)
}
