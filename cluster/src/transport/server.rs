//! The receiving side: accepts peer connections and hands each request to a [`PeerHandler`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::frame::{
    read_frame, write_all, ByteBuf, Channel, Envelope, EnvelopeBody, PeerError, ENVELOPE_VERSION,
};

pub type PeerHandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, PeerError>> + Send>>;

/// What a node does with a request from a peer. Implemented by the node's wiring, which
/// dispatches on the channel.
pub trait PeerHandler: Send + Sync + 'static {
    fn handle(&self, channel: Channel, payload: Vec<u8>) -> PeerHandlerFuture;
}

/// Serves peer connections on `listener` until the returned task is aborted.
pub fn serve(listener: TcpListener, handler: Arc<dyn PeerHandler>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%remote, "peer connected");
                    tokio::spawn(serve_connection(stream, handler.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

async fn serve_connection(stream: TcpStream, handler: Arc<dyn PeerHandler>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_all(&mut wr, &frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let bytes = match read_frame(&mut rd).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "bad frame from peer; closing connection");
                break;
            }
        };
        let (id, channel, payload) = match Envelope::decode(&bytes) {
            Ok(Envelope {
                id,
                body: EnvelopeBody::Request { channel, payload },
                ..
            }) => (id, channel, payload),
            Ok(_) => {
                tracing::warn!("peer sent a reply on a server connection; closing it");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable envelope from peer; closing connection");
                break;
            }
        };
        let handler = handler.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = handler.handle(channel, payload).await.map(ByteBuf);
            let reply = Envelope {
                version: ENVELOPE_VERSION,
                id,
                body: EnvelopeBody::Reply { result },
            };
            match reply.encode() {
                Ok(frame) => {
                    let _ = tx.send(frame);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a reply");
                    let fallback = Envelope {
                        version: ENVELOPE_VERSION,
                        id,
                        body: EnvelopeBody::Reply {
                            result: Err(PeerError::Handler(e.to_string())),
                        },
                    };
                    if let Ok(frame) = fallback.encode() {
                        let _ = tx.send(frame);
                    }
                }
            }
        });
    }
    drop(tx);
    let _ = writer.await;
}
