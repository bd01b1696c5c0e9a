//! `storage-svc`: serves the configured storage backend as
//! `modmesh.v1.Storage` over gRPC, with health and reflection, until SIGTERM
//! or SIGINT.
//!
//! Configuration is Athens': `-config_file <path>` (else `./athens.toml`),
//! `ATHENS_*` environment overrides; `StorageType` picks the backend and
//! `StorageSvcListen` (`ATHENS_STORAGE_SVC_LISTEN`, default `:50051`) the
//! address.

use modmesh_common::{config, logging, server, shutdown, Config};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfg = match Config::from_args_and_env(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    logging::init(&cfg.LogLevel, &cfg.LogFormat);
    let listen = if cfg.StorageSvcListen.is_empty() {
        ":50051"
    } else {
        cfg.StorageSvcListen.as_str()
    };
    let addr = match config::listen_addr("StorageSvcListen", listen) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let storage = match modmesh_storage::from_config(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, storage_type = %cfg.StorageType, "cannot open storage");
            eprintln!("storage: {e}");
            std::process::exit(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            eprintln!("listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(%addr, storage_type = %cfg.StorageType, "storage-svc starting");
    let routes = modmesh_storage::server::routes(storage);
    if let Err(e) = server::serve_grpc(
        listener,
        routes,
        &[modmesh_storage::server::SERVICE_NAME],
        "storage-svc",
        shutdown::signal(cfg.shutdown_timeout()),
    )
    .await
    {
        tracing::error!(error = %e, "gRPC server failed");
        eprintln!("serve: {e}");
        std::process::exit(1);
    }
    tracing::info!("storage-svc stopped");
}
