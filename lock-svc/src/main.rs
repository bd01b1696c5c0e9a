//! `lock-svc`: serves the configured lock driver (`SingleFlightType`) as
//! `modmesh.v1.Lock` on `LockSvcListen` (default `:50052`), with gRPC health
//! and reflection, until SIGTERM or SIGINT.
//!
//! Exit status: 0 after a graceful shutdown, 2 for a configuration error,
//! 1 if serving fails (or the shutdown grace period runs out).

use modmesh_common::{run, server, shutdown};
use modmesh_lock::server::{routes_with_shutdown, SERVICE_NAME};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    const NAME: &str = "lock-svc";
    let cfg = run::start(NAME);
    let lock = modmesh_lock::from_config(&cfg).unwrap_or_else(|e| run::fail_build(NAME, e));
    run::report_unread(&cfg, &["SingleFlight"]);
    let listener = run::bind(NAME, "LockSvcListen", &cfg.LockSvcListen, ":50052").await;
    tracing::info!(driver = %cfg.SingleFlightType, "lock-svc starting");

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
    server::serve_grpc(listener, routes, &[SERVICE_NAME], NAME, shutdown)
        .await
        .unwrap_or_else(|e| run::fail(NAME, 1, e));
    tracing::info!("lock-svc stopped");
    modmesh_common::telemetry::shutdown();
}
