//! The gateway's HTTP listener: `UnixSocket` (which takes precedence over
//! `Port`, as in Athens) or TCP on `Port`; either plain or TLS.

use super::tls;
use super::EdgeConfig;
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use modmesh_common::config::{err, ConfigError, Env, Section};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How long a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the listener treats slow, idle and surplus connections (top-level
/// keys; Athens' Go server sets none of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct ConnLimits {
    /// `ATHENS_READ_HEADER_TIMEOUT`: seconds a client has to send a whole
    /// request head, counted from when the server starts waiting for it
    /// (so it also bounds an idle HTTP/1 keep-alive connection).
    pub ReadHeaderTimeout: u64,
    /// `ATHENS_IDLE_TIMEOUT`: seconds a connection may stay open with no
    /// request in flight and no byte moving either way (HTTP/2 included,
    /// and a client that stops reading its answer).
    pub IdleTimeout: u64,
    /// `ATHENS_MAX_CONNECTIONS`: open client connections at most; one more
    /// is answered `503` at once and closed (0: no limit).
    pub MaxConnections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            ReadHeaderTimeout: 10,
            IdleTimeout: 60,
            MaxConnections: 4096,
        }
    }
}

impl Section for ConnLimits {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_READ_HEADER_TIMEOUT", "ReadHeaderTimeout"),
        Env::new("ATHENS_IDLE_TIMEOUT", "IdleTimeout"),
        Env::new("ATHENS_MAX_CONNECTIONS", "MaxConnections"),
    ];
    fn validate(&self) -> Result<(), ConfigError> {
        if self.ReadHeaderTimeout == 0 {
            return Err(err("ReadHeaderTimeout", "must be greater than 0"));
        }
        if self.IdleTimeout == 0 {
            return Err(err("IdleTimeout", "must be greater than 0"));
        }
        Ok(())
    }
}

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
    let limits: ConnLimits = cfg.section().map_err(|e| fail(2, e.to_string()))?;
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
        let r = run(listener, app, tls, &limits, stop).await;
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
    run(listener, app, tls, &limits, stop).await
}

async fn run<L: Listener>(
    mut listener: L,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: &ConnLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    L::Io: Unpin,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let header_timeout = Duration::from_secs(limits.ReadHeaderTimeout);
    let idle = Duration::from_secs(limits.IdleTimeout);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that never finishes its request head is dropped (hyper
    // answers a malformed head with 400 itself).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(idle / 2))
        .keep_alive_timeout(header_timeout);
    let slots = (limits.MaxConnections > 0)
        .then(|| Arc::new(tokio::sync::Semaphore::new(limits.MaxConnections)));
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let tracker = tokio_util::task::TaskTracker::new();
    tokio::pin!(stop);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            _ = &mut stop => break,
        };
        let permit = match &slots {
            None => None,
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    tracker.spawn(refuse(io));
                    continue;
                }
            },
        };
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        let stopping = stopping.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::new());
            let io = Tracked {
                inner: io,
                activity: activity.clone(),
            };
            match acceptor {
                None => serve_conn(io, app, &builder, activity, idle, stopping).await,
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
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
                    serve_conn(stream, app, &builder, activity, idle, stopping).await
                }
            }
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The answer to a connection over `MaxConnections`.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 50\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many open connections (MaxConnections reached)\n";

/// Answers a connection over the limit with `503` and closes it, waiting
/// at most a second on the client.
async fn refuse<I: AsyncWrite + Unpin>(mut io: I) {
    tracing::warn!("connection refused: MaxConnections reached");
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(REFUSED).await?;
        io.shutdown().await
    })
    .await;
}

/// Serves one connection until it ends, falls idle, or the server stops
/// (then it finishes its requests first).
async fn serve_conn<I>(
    io: I,
    app: Router,
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    activity: Arc<Activity>,
    idle: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let a = activity.clone();
    let svc = tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
        let busy = Busy::new(a.clone());
        let call = tower::ServiceExt::oneshot(app.clone(), req);
        async move {
            let r = call.await;
            drop(busy);
            r
        }
    });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut shutting = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = activity.idle_for(idle), if !shutting => {
                tracing::debug!(?idle, "closing an idle connection (IdleTimeout)");
                return;
            }
            _ = stopping.wait_for(|s| *s), if !shutting => {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection did last: the time of its last byte either way and
/// its requests in flight.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle` with no request in flight.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due && self.busy.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wake = if Instant::now() >= due {
                // A request is in flight: look again later.
                Instant::now() + idle.min(Duration::from_secs(1))
            } else {
                due
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

/// One request in flight on a connection.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::Relaxed);
        a.touch();
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's stream that records when bytes move.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
