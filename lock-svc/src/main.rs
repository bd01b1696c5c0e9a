//! `lock-svc`: serves the configured lock driver (`SingleFlightType`) as
//! `modmesh.v1.Lock` on `LockSvcListen` (default `:50052`), with gRPC health
//! and reflection, until SIGTERM or SIGINT.
//!
//! Exit status: 0 after a graceful shutdown, 2 for a configuration error,
//! 1 if serving fails (or the shutdown grace period runs out).

use modmesh_common::{config, logging, server, shutdown, Config};
use modmesh_lock::server::{routes_with_shutdown, SERVICE_NAME};
use tokio_util::sync::CancellationToken;

const DEFAULT_LISTEN: &str = ":50052";

fn config_error(e: impl std::fmt::Display) -> ! {
    eprintln!("lock-svc: {e}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfg = Config::from_args_and_env(&args).unwrap_or_else(|e| config_error(e));
    logging::init(&cfg.LogLevel, &cfg.LogFormat);
    let lock = modmesh_lock::from_config(&cfg).unwrap_or_else(|e| config_error(e));
    let listen = if cfg.LockSvcListen.is_empty() {
        DEFAULT_LISTEN
    } else {
        cfg.LockSvcListen.as_str()
    };
    let addr = config::listen_addr("LockSvcListen", listen).unwrap_or_else(|e| config_error(e));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            eprintln!("lock-svc: listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(%addr, driver = %cfg.SingleFlightType, "lock-svc starting");

    // On SIGTERM/SIGINT: first end the waits blocked in Acquire (their
    // callers get UNAVAILABLE and can retry elsewhere), then let the server
    // drain what is left.
    let stop = CancellationToken::new();
    let grace = cfg.shutdown_timeout();
    let shutdown = {
        let stop = stop.clone();
        async move {
            shutdown::signal(grace).await;
            stop.cancel();
        }
    };
    let routes = routes_with_shutdown(lock, stop);
    if let Err(e) =
        server::serve_grpc(listener, routes, &[SERVICE_NAME], "lock-svc", shutdown).await
    {
        tracing::error!(error = %e, "serving failed");
        eprintln!("lock-svc: {e}");
        std::process::exit(1);
    }
    tracing::info!("lock-svc stopped");
}
