//! `gateway`: the GOPROXY HTTP server. Alone it is a complete proxy
//! (storage, locks and fetcher in its own process); with `*SvcURL` keys set
//! it uses the mesh's services. Exit status: 0 after a graceful shutdown, 2
//! for a configuration error, 1 if serving fails.

use modmesh_common::{run, server, shutdown};
use modmesh_gateway::{router, wire, AppState};

#[tokio::main]
async fn main() {
    const NAME: &str = "gateway";
    let cfg = run::start(NAME);
    let (services, embedded) = wire::services(&cfg).unwrap_or_else(|e| run::fail_build(NAME, e));

    // One signal stops every server of this process.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grace = cfg.shutdown_timeout();
    tokio::spawn(async move {
        shutdown::signal(grace).await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };

    let mut servers = Vec::new();
    for (listen, routes, name, key) in embedded.grpc {
        let listener = run::bind(NAME, key, &listen, "").await;
        let stop = stopped();
        servers.push(tokio::spawn(async move {
            if let Err(e) = server::serve_grpc(listener, routes, &[name], NAME, stop).await {
                tracing::error!(error = %e, key, "gRPC server failed");
            }
        }));
    }

    let state = AppState::from_config(services, &cfg).unwrap_or_else(|e| run::fail(NAME, 2, e));
    // An embedded gateway reads every table; a gateway of a mesh only its own.
    let embedded_all =
        cfg.StorageSvcURL.is_empty() && cfg.LockSvcURL.is_empty() && cfg.FetcherSvcURL.is_empty();
    let edges = modmesh_gateway::edge::Edges::from_config(&cfg)
        .await
        .unwrap_or_else(|e| run::fail(NAME, 2, e));
    let service = state.service().clone();
    let app = router(state.with_edges(edges));
    if embedded_all {
        run::report_unread(&cfg, &["", "Storage", "SingleFlight"]);
    } else {
        run::report_unread(&cfg, &[""]);
    }
    // UnixSocket or Port, plain or TLS (modmesh_gateway::edge::listen).
    modmesh_gateway::edge::listen::serve(&cfg, app, stopped())
        .await
        .unwrap_or_else(|e| run::fail(NAME, e.code, e));
    // Saves of zips already served (their clients got them once verified).
    service.settle(grace).await;
    for s in servers {
        let _ = s.await;
    }
    tracing::info!("gateway stopped");
    modmesh_common::telemetry::shutdown();
}
