//! `storage-svc`: serves the configured storage backend as
//! `modmesh.v1.Storage` over gRPC, with health and reflection, until SIGTERM
//! or SIGINT; and, when `ExternalStorageListen` is set, the external-storage
//! HTTP protocol over the same backend.
//!
//! Configuration is Athens': `-config_file <path>` (else `./athens.toml`),
//! `ATHENS_*` environment overrides; `StorageType` picks the backend and
//! `StorageSvcListen` (`ATHENS_STORAGE_SVC_LISTEN`, default `:50051`) the
//! address; `ExternalStorageListen` (`ATHENS_EXTERNAL_STORAGE_LISTEN`,
//! default unset) the external-storage protocol's. Exit status: 0 after a
//! graceful shutdown, 2 for a configuration error, 1 if the store cannot be
//! opened or serving fails.

use futures::FutureExt;
use modmesh_common::{run, server, shutdown};
use modmesh_storage::external_server::{self, ExternalServerConfig};

#[tokio::main]
async fn main() {
    const NAME: &str = "storage-svc";
    let cfg = run::start(NAME);
    let external: ExternalServerConfig = cfg.section().unwrap_or_else(|e| run::fail(NAME, 2, e));
    let storage = modmesh_storage::from_config(&cfg).unwrap_or_else(|e| run::fail_build(NAME, e));
    run::report_unread(&cfg, &["Storage"]);
    let listener = run::bind(NAME, "StorageSvcListen", &cfg.StorageSvcListen, ":50051").await;
    let stop = shutdown::signal(cfg.shutdown_timeout()).shared();
    let listen = external.ExternalStorageListen.trim().to_string();
    let http = if listen.is_empty() {
        None
    } else {
        let l = run::bind(NAME, "ExternalStorageListen", &listen, "").await;
        tracing::info!(addr = %listen, "serving the external-storage protocol");
        Some(tokio::spawn(external_server::serve(
            l,
            storage.clone(),
            stop.clone(),
        )))
    };
    tracing::info!(storage_type = %cfg.StorageType, "storage-svc starting");
    server::serve_grpc(
        listener,
        modmesh_storage::server::routes(storage),
        &[modmesh_storage::server::SERVICE_NAME],
        NAME,
        stop,
    )
    .await
    .unwrap_or_else(|e| run::fail(NAME, 1, e));
    if let Some(http) = http {
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => run::fail(NAME, 1, format!("ExternalStorageListen: {e}")),
            Err(e) => run::fail(NAME, 1, format!("ExternalStorageListen: {e}")),
        }
    }
    tracing::info!("storage-svc stopped");
    modmesh_common::telemetry::shutdown();
}
