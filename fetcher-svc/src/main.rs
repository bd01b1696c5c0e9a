//! `fetcher-svc`: serves the Fetcher gRPC service, running the go command
//! against the upstream and saving into storage (remote storage-svc when
//! `StorageSvcURL` is set, else an in-process backend from `StorageType`).
//! Listens on `FetcherSvcListen` (default `:50053`). Exit status: 0 after a
//! graceful shutdown, 2 for a configuration error, 1 if serving fails.

use modmesh_common::{run, server, shutdown};
use modmesh_fetcher::gocmd::GoFetcher;
use modmesh_fetcher::server as fetcher_server;
use modmesh_storage::client::StorageClient;
use modmesh_storage::Storage;
use std::sync::Arc;

#[tokio::main]
async fn main() {
    const NAME: &str = "fetcher-svc";
    let cfg = run::start(NAME);
    let storage: Arc<dyn Storage> = if cfg.StorageSvcURL.is_empty() {
        modmesh_storage::from_config(&cfg).unwrap_or_else(|e| run::fail_build(NAME, e))
    } else {
        Arc::new(StorageClient::new(&cfg.StorageSvcURL).unwrap_or_else(|e| run::fail(NAME, 2, e)))
    };
    let go = GoFetcher::from_config(&cfg, storage).unwrap_or_else(|e| run::fail(NAME, 2, e));
    match go.check().await {
        Ok(v) => tracing::info!(go = %v, base = %go.base_dir().display(), "go command found"),
        Err(e) => {
            tracing::error!(error = %e, "the go command cannot be run; every fetch will fail")
        }
    }
    // Reads (and logs) the go command's GOPROXY list once, up front.
    if let Err(e) = go.goproxy().await {
        tracing::error!(error = %e, "the go command's GOPROXY cannot be read");
    }
    let fetcher =
        modmesh_fetcher::native::with_mode(&cfg, go).unwrap_or_else(|e| run::fail(NAME, 2, e));
    let listener = run::bind(NAME, "FetcherSvcListen", &cfg.FetcherSvcListen, ":50053").await;
    server::serve_grpc(
        listener,
        fetcher_server::routes(fetcher),
        &[fetcher_server::SERVICE_NAME],
        NAME,
        shutdown::signal(cfg.shutdown_timeout()),
    )
    .await
    .unwrap_or_else(|e| run::fail(NAME, 1, e));
    tracing::info!("fetcher-svc stopped");
    modmesh_common::telemetry::shutdown();
}
