//! Backend constructors shared by the integration tests: each returns a
//! fresh, empty store (with whatever must live as long as it).

#![allow(dead_code)]

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

/// A running gRPC server; stops when dropped.
pub struct Server {
    /// Where it listens.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// Serves `storage` the way storage-svc does (health, reflection,
/// request-id layer) on 127.0.0.1 and an ephemeral port.
pub async fn serve(storage: Arc<dyn Storage>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        modmesh_common::server::serve_grpc(
            listener,
            modmesh_storage::server::routes(storage),
            &[modmesh_storage::server::SERVICE_NAME],
            "storage-svc-test",
            async {
                let _ = stopped.await;
            },
        )
        .await
        .expect("serve");
    });
    Server {
        url,
        stop: Some(stop),
        task,
    }
}

/// `inner` behind a real gRPC server, reached through [`StorageClient`].
pub async fn over_grpc(inner: Fixture) -> Fixture {
    let server = serve(inner.storage.clone()).await;
    let client = StorageClient::new(&server.url).expect("client");
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
