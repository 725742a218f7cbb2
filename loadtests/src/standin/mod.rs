//! **qdrant-standin**: a gRPC server speaking the part of Qdrant's protocol that sluice's
//! `QdrantStore` uses, backed by qdrant-edge shards in a data directory.
//!
//! It exists because no Qdrant server can be installed in this build environment, yet the
//! server-side store (`sluice_shared::store::qdrant`) must be tested over the real wire protocol:
//! real qdrant-client, real tonic, real protobuf. Production uses the real Qdrant. The stand-in
//! implements the `Collections` (get, list, create, exists), `Points` (upsert, delete,
//! create_field_index, count, scroll, query) and `Qdrant` (health check) RPCs; every other RPC
//! answers `unimplemented`. Writes are applied and flushed before the reply, whatever `wait` says.
//!
//! Like the real server, it optimizes in the background of writes: every [`OPTIMIZE_AFTER_POINTS`]
//! points written to a collection its appendable segment is turned into an indexed one (see
//! [`EdgeShards::optimize_after`]), which keeps inserts cheap as collections grow. Unlike the real
//! server it builds no HNSW graphs (`m = 0`, whatever the request asks): dense search is exact,
//! and the stand-in, which shares the machine with the workers under test, spends no CPU the real
//! server would spend on its own machine.
//!
//! Run it as the `qdrant-standin` binary (`--listen 127.0.0.1:0 --data-dir DIR`), or in-process
//! with [`spawn`].

pub mod convert;
mod service;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use qdrant_client::qdrant::collections_server::CollectionsServer;
use qdrant_client::qdrant::points_server::PointsServer;
use qdrant_client::qdrant::qdrant_server::QdrantServer;
use sluice_shared::store::StoreError;
use sluice_shared::store::edge::{EdgeShards, OPTIMIZE_AFTER_POINTS};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use service::Standin;

/// Largest request accepted: an upsert batch of 128 points with 3,072-dim vectors and full chunk
/// texts is a few MB; the real server's default limit is 32 MB+.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A running in-process stand-in; dropping it does not stop the server, [`StandinHandle::shutdown`]
/// does (and waits until the shards are flushed and the data directory is unlocked).
pub struct StandinHandle {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl StandinHandle {
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// The stand-in's shards over `data_dir`, optimized as described in the module docs.
pub async fn open_shards(data_dir: &Path) -> Result<EdgeShards, StoreError> {
    Ok(EdgeShards::open(data_dir)
        .await?
        .optimize_after(OPTIMIZE_AFTER_POINTS))
}

/// Start a stand-in on a random 127.0.0.1 port over `data_dir`.
pub async fn spawn(data_dir: &Path) -> anyhow::Result<(SocketAddr, StandinHandle)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let shards = open_shards(data_dir).await?;
    let task = tokio::spawn(serve(listener, shards, shutdown.clone()));
    Ok((addr, StandinHandle { shutdown, task }))
}

/// Serve the stand-in on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    shards: EdgeShards,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let standin = Arc::new(Standin::new(shards));
    tonic::transport::Server::builder()
        .add_service(
            CollectionsServer::from_arc(standin.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            PointsServer::from_arc(standin.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(QdrantServer::from_arc(standin))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown.cancelled_owned(),
        )
        .await
}
