//! `gateway`: the GOPROXY HTTP server. Alone it is a complete proxy
//! (storage, locks and fetcher in its own process); with `*SvcURL` keys set
//! it uses the mesh's services.

use modmesh_common::{config::listen_addr, logging, server, shutdown, Config};
use modmesh_gateway::{router, wire, AppState};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfg = match Config::from_args_and_env(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: {e}");
            std::process::exit(2);
        }
    };
    logging::init(&cfg.LogLevel, &cfg.LogFormat);
    let (services, embedded) = match wire::services(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway: {e}");
            std::process::exit(2);
        }
    };

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
    for (listen, routes, name, component) in embedded.grpc {
        let addr = match listen_addr(&format!("{component} listen"), &listen) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("gateway: {e}");
                std::process::exit(2);
            }
        };
        let listener = bind(addr).await;
        let stop = stopped();
        servers.push(tokio::spawn(async move {
            if let Err(e) = server::serve_grpc(listener, routes, &[name], component, stop).await {
                tracing::error!(error = %e, component, "gRPC server failed");
            }
        }));
    }

    let addr = cfg.http_addr().expect("validated");
    let listener = bind(addr).await;
    tracing::info!(%addr, storage = %cfg.StorageType, "gateway listening");
    let app = router(AppState::new(services, cfg.ProtocolWorkers, cfg.timeout()));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
        std::process::exit(1);
    }
    for s in servers {
        let _ = s.await;
    }
    tracing::info!("gateway stopped");
}

async fn bind(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gateway: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    }
}
