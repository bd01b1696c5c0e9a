//! `storage-svc`: serves the configured storage backend as
//! `modmesh.v1.Storage` over gRPC, with health and reflection, until SIGTERM
//! or SIGINT.
//!
//! Configuration is Athens': `-config_file <path>` (else `./athens.toml`),
//! `ATHENS_*` environment overrides; `StorageType` picks the backend and
//! `StorageSvcListen` (`ATHENS_STORAGE_SVC_LISTEN`, default `:50051`) the
//! address. Exit status: 0 after a graceful shutdown, 2 for a configuration
//! error, 1 if the store cannot be opened or serving fails.

use modmesh_common::{run, server, shutdown};

#[tokio::main]
async fn main() {
    const NAME: &str = "storage-svc";
    let cfg = run::start(NAME);
    // A bad value is a configuration error (2); a store that cannot be
    // opened is 1.
    let storage = modmesh_storage::from_config(&cfg).unwrap_or_else(|e| {
        let code = if e.is(modmesh_proto::ErrorKind::Invalid) {
            2
        } else {
            1
        };
        run::fail(NAME, code, e)
    });
    let listener = run::bind(NAME, "StorageSvcListen", &cfg.StorageSvcListen, ":50051").await;
    tracing::info!(storage_type = %cfg.StorageType, "storage-svc starting");
    server::serve_grpc(
        listener,
        modmesh_storage::server::routes(storage),
        &[modmesh_storage::server::SERVICE_NAME],
        NAME,
        shutdown::signal(cfg.shutdown_timeout()),
    )
    .await
    .unwrap_or_else(|e| run::fail(NAME, 1, e));
    tracing::info!("storage-svc stopped");
}
