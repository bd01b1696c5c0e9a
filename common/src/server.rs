//! One way to serve gRPC for every service: the service's routes plus
//! `grpc.health.v1`, server reflection, the request-id layer, `GET /metrics`
//! (HTTP/1.1 on the same port), and, when configured, TLS, the token check
//! and the trace context of the caller.

use crate::request_id::RequestIdLayer;
use std::future::Future;
use tokio::net::TcpListener;
use tonic::service::Routes;

/// HTTP/2 flow-control window per stream: room for a few zip chunks in
/// flight, so a streamed zip is not throttled to one 64 KiB window per
/// round trip.
const WINDOW: u32 = 4 << 20;

/// The largest HTTP/2 frame a peer may send: a whole stream window. With
/// the protocol's default (16 KiB) a 1 MiB zip chunk crossed the hop as 64
/// frames, and per-frame work (framing, flow control, waking the reader,
/// the receiver's buffer growth) was the largest cost of a streamed zip on
/// both sides after the copies (docs/transport.md).
const FRAME: u32 = WINDOW;

/// How many streams a client cancelled (a downloader that went away mid-zip)
/// it remembers, so that the frames the server had already sent for them
/// are dropped quietly. h2 remembers 50 by default and answers frames for a
/// forgotten stream with a reset it counts as a local error; after 1,024 of
/// those it closes the whole connection (ENHANCE_YOUR_CALM), failing every
/// call on it: 64 clients that disconnected at once were enough, now and
/// then, to cut 64 other downloads (docs/transport.md).
const REMEMBERED_RESETS: usize = 4096;

/// Serves `routes` on `listener` until `shutdown` resolves, reporting each of
/// `names` (fully qualified service names) as SERVING on the health service.
pub async fn serve_grpc(
    listener: TcpListener,
    routes: Routes,
    names: &[&str],
    component: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in names {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(modmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("reflection descriptors are valid");
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, component, "serving gRPC");
    // No Nagle delay: small frames (headers, last chunks) go out at once.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    // TLS (and mTLS) when GrpcTLSCertFile is set (crate::security).
    if let Some(tls) = crate::security::server_tls() {
        builder = builder.tls_config(tls)?;
    }
    // HTTP/1.1 too, for GET /metrics beside gRPC (crate::metrics).
    let routes = crate::metrics::with_route(routes);
    builder
        .accept_http1(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(4 * WINDOW)
        .max_frame_size(FRAME)
        // The caller's trace context (crate::telemetry) and the token check
        // (crate::security), each only when configured.
        .layer(tower::util::option_layer(crate::telemetry::server_layer(
            component,
        )))
        .layer(tower::util::option_layer(crate::security::token_layer()))
        .layer(RequestIdLayer::new(component))
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The deadline of a call on a channel from [`channel`].
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Opens a channel to `url` lazily (the first call connects), so a client can
/// be built before its server is up. Calls get [`DEFAULT_CALL_TIMEOUT`].
pub fn channel(url: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    channel_with_timeout(url, DEFAULT_CALL_TIMEOUT)
}

/// Every gRPC channel of the mesh is built here: a lazy connection with a
/// connect timeout, no Nagle delay, 4 MiB HTTP/2 windows and frames, room
/// for many cancelled streams, HTTP/2 keep-alive
/// pings (so a peer that froze or vanished is noticed even on an idle
/// connection), and a deadline on every call (`call_timeout` until the
/// response headers; a streamed body is not cut off). Calls are balanced
/// over every address the URL's host name resolves to, re-resolved every
/// few seconds ([`crate::balance`]), each address with these settings.
pub fn channel_with_timeout(
    url: &str,
    call_timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    // TLS for https:// URLs (crate::security), checked once here; every
    // replica's endpoint then gets the same settings, verified against the
    // URL's host name (not the address dialled).
    crate::security::secure_endpoint(
        url,
        tonic::transport::Endpoint::from_shared(url.to_string())?,
    )?;
    let url_owned = url.to_string();
    crate::balance::balanced_channel(
        url,
        move |endpoint| {
            let endpoint =
                crate::security::secure_endpoint(&url_owned, endpoint.clone()).unwrap_or(endpoint);
            endpoint_settings(endpoint, call_timeout)
        },
        crate::balance::DEFAULT_REFRESH,
        crate::balance::dns(),
    )
}

/// The settings of every endpoint of a channel (see [`channel_with_timeout`]).
fn endpoint_settings(
    endpoint: tonic::transport::Endpoint,
    call_timeout: std::time::Duration,
) -> tonic::transport::Endpoint {
    use std::time::Duration;
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(4 * WINDOW)
        .max_frame_size(FRAME)
        .http2_max_concurrent_reset_streams(REMEMBERED_RESETS)
}

/// A gRPC server on 127.0.0.1 and a free port, served the way every service
/// is (health, reflection, request ids): for tests and local tools. It stops
/// when [`LoopbackServer::stop`] is called or when it is dropped.
#[derive(Debug)]
pub struct LoopbackServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl LoopbackServer {
    /// Serves `routes`, reporting `names` as SERVING.
    pub async fn start(routes: Routes, names: &'static [&'static str]) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_grpc(listener, routes, names, "loopback", async {
            let _ = stopped.await;
        }));
        Ok(LoopbackServer {
            url,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops accepting, lets in-flight calls finish, and returns how serving ended.
    pub async fn stop(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether a failed call never reached a server: its connection could not
/// be made (tonic maps the connector's error to `Unavailable` with the
/// connector's words: "tcp connect error", "dns error", ...), or the
/// connection it was queued on closed before sending it (hyper's "operation
/// was canceled", which tonic maps to `Cancelled`: a replica shutting down
/// gracefully). Such a call can be made again whatever it does.
pub fn unsent(status: &tonic::Status) -> bool {
    let m = status.message();
    match status.code() {
        tonic::Code::Unavailable => m.starts_with("tcp ") || m.starts_with("dns error"),
        tonic::Code::Cancelled => m == "operation was canceled",
        _ => false,
    }
}

/// The pauses before each new attempt of [`retry_unsent`].
const UNSENT_PAUSES: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(150),
    std::time::Duration::from_millis(400),
];

/// Makes the call `call` builds, and makes it again (at most three more
/// times) while it fails without having reached a server ([`unsent`]). A
/// replica that went away is still in a channel's balance until the next
/// re-resolution, and a connection attempt that failed while a server
/// restarted is reported to the next call that picks it; both are such
/// failures. Before each new attempt every balanced channel re-resolves and
/// probes its name ([`crate::balance::refresh_now`]), so the next attempt
/// goes to a live replica or over a new connection. A server that stays
/// down still fails the call, within about a second when it refuses
/// connections.
pub async fn retry_unsent<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    for pause in UNSENT_PAUSES {
        match call().await {
            Err(status) if unsent(&status) => {
                tracing::debug!(error = %status, "a call could not connect; trying again");
                tokio::time::sleep(pause).await;
                crate::balance::refresh_now().await;
            }
            done => return done,
        }
    }
    call().await
}

/// `rpc!(stub, method(request))`: calls `method` with `request` on `stub`
/// (both expressions, evaluated again for each attempt, so a clone of a
/// generated client and a fresh message), through [`retry_unsent`], and
/// gives the reply's message; a failure returns from the enclosing function
/// through `?`.
#[macro_export]
macro_rules! rpc {
    ($stub:expr, $method:ident ($req:expr)) => {
        $crate::server::retry_unsent(|| {
            let mut stub = $stub;
            let req = $req;
            async move { stub.$method(req).await }
        })
        .await?
        .into_inner()
    };
}
