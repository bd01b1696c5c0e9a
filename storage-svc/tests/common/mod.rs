//! Backend constructors shared by the integration tests: each returns a
//! fresh, empty store (with whatever must live as long as it).

#![allow(dead_code)]

use modmesh_common::server::LoopbackServer;
use modmesh_storage::backends::{DiskStorage, MemoryStorage};
use modmesh_storage::client::StorageClient;
use modmesh_storage::compliance::Fixture;
use modmesh_storage::Storage;
use std::sync::Arc;

/// The `memory` backend.
pub async fn memory_backend() -> Fixture {
    Fixture::new(Arc::new(MemoryStorage::new()))
}

/// The `disk` backend in a fresh temporary directory.
pub async fn disk_backend() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = DiskStorage::new(dir.path()).expect("open disk storage");
    Fixture::new(Arc::new(storage)).keep(dir)
}

/// Serves `storage` the way storage-svc does (health, reflection,
/// request-id layer) on 127.0.0.1 and an ephemeral port.
pub async fn serve(storage: Arc<dyn Storage>) -> LoopbackServer {
    LoopbackServer::start(
        modmesh_storage::server::routes(storage),
        &[modmesh_storage::server::SERVICE_NAME],
    )
    .await
    .expect("serve")
}

/// `inner` behind a real gRPC server, reached through [`StorageClient`].
pub async fn over_grpc(inner: Fixture) -> Fixture {
    let server = serve(inner.storage.clone()).await;
    let client = StorageClient::new(&server.url).expect("client");
    let caps = client.fetch_capabilities().await.expect("capabilities");
    assert_eq!(caps, inner.storage.capabilities(), "capabilities over gRPC");
    Fixture::new(Arc::new(client)).keep(server).keep(inner)
}

/// `memory` over gRPC.
pub async fn grpc_memory_backend() -> Fixture {
    over_grpc(memory_backend().await).await
}

/// `disk` over gRPC.
pub async fn grpc_disk_backend() -> Fixture {
    over_grpc(disk_backend().await).await
}
