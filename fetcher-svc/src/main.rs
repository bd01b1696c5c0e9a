//! `fetcher-svc`: serves the Fetcher gRPC service, running the go command
//! against the upstream and saving into storage (remote storage-svc when
//! `StorageSvcURL` is set, else an in-process backend from `StorageType`).

use modmesh_common::config::listen_addr;
use modmesh_common::{logging, server, shutdown, Config};
use modmesh_fetcher::gocmd::{GoFetcher, GoSettings};
use modmesh_fetcher::{server as fetcher_server, Fetcher};
use modmesh_storage::client::StorageClient;
use modmesh_storage::Storage;
use std::sync::Arc;

/// Where the service listens when `FetcherSvcListen` is empty.
const DEFAULT_LISTEN: &str = ":50053";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfg = match Config::from_args_and_env(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("fetcher-svc: {e}");
            std::process::exit(2);
        }
    };
    logging::init(&cfg.LogLevel, &cfg.LogFormat);
    if let Err(e) = run(cfg).await {
        tracing::error!(error = %e, "fetcher-svc failed");
        eprintln!("fetcher-svc: {e}");
        std::process::exit(1);
    }
}

async fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    let storage: Arc<dyn Storage> = if cfg.StorageSvcURL.is_empty() {
        modmesh_storage::from_config(&cfg)?
    } else {
        Arc::new(StorageClient::new(&cfg.StorageSvcURL)?)
    };
    let go = GoFetcher::new(GoSettings::from_config(&cfg), storage);
    match go.check().await {
        Ok(v) => tracing::info!(go = %v, base = %go.base_dir().display(), "go command found"),
        Err(e) => {
            tracing::error!(error = %e, "the go command cannot be run; every fetch will fail")
        }
    }
    let fetcher: Arc<dyn Fetcher> = Arc::new(go);
    let listen = if cfg.FetcherSvcListen.is_empty() {
        DEFAULT_LISTEN
    } else {
        cfg.FetcherSvcListen.as_str()
    };
    let addr = listen_addr("FetcherSvcListen", listen)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("FetcherSvcListen: cannot listen on {addr}: {e}"))?;
    server::serve_grpc(
        listener,
        fetcher_server::routes(fetcher),
        &[fetcher_server::SERVICE_NAME],
        "fetcher-svc",
        shutdown::signal(cfg.shutdown_timeout()),
    )
    .await?;
    tracing::info!("fetcher-svc stopped");
    Ok(())
}
