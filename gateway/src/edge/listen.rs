//! The gateway's HTTP listener: `UnixSocket` (which takes precedence over
//! `Port`, as in Athens) or TCP on `Port`; either plain or TLS.

use super::tls;
use super::EdgeConfig;
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;

/// How long a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why serving could not start: `code` is the exit status (2 for a
/// configuration error, 1 for anything else).
#[derive(Debug)]
pub struct ServeError {
    /// The exit status.
    pub code: i32,
    /// What went wrong, naming the key.
    pub message: String,
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn fail(code: i32, message: impl Into<String>) -> ServeError {
    ServeError {
        code,
        message: message.into(),
    }
}

/// Serves `app` where the configuration says until `stop` resolves, then
/// lets open connections finish.
pub async fn serve(
    cfg: &modmesh_common::Config,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let edge: EdgeConfig = cfg.section().map_err(|e| fail(2, e.to_string()))?;
    let tls = if edge.tls() {
        let store = tls::CertStore::open(&edge.TLSCertFile, &edge.TLSKeyFile)
            .map_err(|e| fail(2, format!("config: {e}")))?;
        store.watch();
        Some(tls::server_config(store).map_err(|e| fail(2, e))?)
    } else {
        None
    };
    if !edge.UnixSocket.is_empty() {
        let path = std::path::PathBuf::from(&edge.UnixSocket);
        // A socket left by an earlier run is replaced; any other file is not.
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(|e| {
            fail(
                1,
                format!("UnixSocket: cannot listen on {}: {e}", path.display()),
            )
        })?;
        tracing::info!(socket = %path.display(), tls = tls.is_some(), "gateway listening");
        let r = run(listener, app, tls, stop).await;
        let _ = std::fs::remove_file(&path);
        return r;
    }
    let addr = cfg.http_addr().map_err(|e| fail(2, e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| fail(1, format!("Port: cannot listen on {addr}: {e}")))?;
    tracing::info!(%addr, tls = tls.is_some(), storage = %cfg.StorageType, "gateway listening");
    // No Nagle delay: a response's last small write goes out at once.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    run(listener, app, tls, stop).await
}

async fn run<L: Listener>(
    listener: L,
    app: Router,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    L::Addr: std::fmt::Debug,
{
    match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .map_err(|e| fail(1, e.to_string())),
        Some(cfg) => {
            serve_tls(listener, app, cfg, stop).await;
            Ok(())
        }
    }
}

async fn serve_tls<L: Listener>(
    mut listener: L,
    app: Router,
    cfg: std::sync::Arc<rustls::ServerConfig>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that never finishes its request head is dropped.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT * 3);
    tokio::pin!(stop);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = &mut stop => break,
        };
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let svc = TowerToHyperService::new(app);
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
