//! `modmesh edge`: one HTTP port in front of every replica of the gateway.
//!
//! Each `--upstream` URL names a host (a compose service name resolves to
//! every replica) and a port. The addresses are resolved and probed with a
//! TCP connect every `refresh` (the resolve-and-probe step of the gRPC
//! balancer, [`modmesh_common::balance::resolve_live`]); requests go to them
//! in turn (round-robin). Bodies stream both ways as they arrive; status,
//! headers and redirects pass through unchanged, apart from hop-by-hop
//! headers. Every request carries an `X-Request-ID` upstream (the client's,
//! or a fresh one) and the response returns it. A GET or HEAD without a body
//! whose connection could not be made is tried on the next address (never
//! once a request was sent); an address that refused is left out until the
//! next refresh finds it again. When no address answers: 502 with a plain
//! text message.

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use modmesh_common::balance::{self, Resolver};
use modmesh_common::request_id;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What an edge forwards to and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http://host:port` URLs; every address each host resolves to is a
    /// replica.
    pub upstreams: Vec<String>,
    /// How often names are resolved again and addresses probed.
    pub refresh: Duration,
    /// How long a connection to a replica may take before the replica counts
    /// as not answering.
    pub connect_timeout: Duration,
}

/// One `--upstream`: a host and a port.
#[derive(Debug)]
struct Target {
    url: String,
    host: String,
    port: u16,
}

fn parse_target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("--upstream {url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--upstream {url}: only http:// upstreams"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--upstream {url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("--upstream {url}: a path is not supported"));
    }
    Ok(Target {
        url: url.to_string(),
        host,
        port: uri.port_u16().unwrap_or(80),
    })
}

/// The replicas known for each target, and the round-robin counter.
struct Pool {
    targets: Vec<Target>,
    known: Mutex<Vec<BTreeSet<SocketAddr>>>,
    next: AtomicUsize,
    resolve: Resolver,
}

impl Pool {
    /// Every known address once, starting at the next in turn.
    fn order(&self) -> Vec<SocketAddr> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let all: BTreeSet<SocketAddr> = known.iter().flatten().copied().collect();
        let mut all: Vec<SocketAddr> = all.into_iter().collect();
        if !all.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
            all.rotate_left(start);
        }
        all
    }

    /// Leaves `addr` out until a refresh finds it answering again.
    fn mark_down(&self, addr: SocketAddr) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for (t, set) in self.targets.iter().zip(known.iter_mut()) {
            if set.remove(&addr) {
                tracing::warn!(upstream = %t.url, %addr, "replica did not answer; left out until it does");
            }
        }
    }

    /// Resolves every target again and keeps the addresses that answer (a
    /// target whose name does not resolve keeps what it had).
    async fn refresh(&self) {
        for (i, t) in self.targets.iter().enumerate() {
            let live = match balance::resolve_live(&self.resolve, &t.host, t.port).await {
                Ok(live) => live.unwrap_or_default(),
                Err(e) => {
                    tracing::debug!(upstream = %t.url, error = %e, "resolution failed; keeping the replicas known");
                    continue;
                }
            };
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for gone in known[i].difference(&live) {
                tracing::info!(upstream = %t.url, addr = %gone, "replica left");
            }
            for new in live.difference(&known[i]) {
                tracing::info!(upstream = %t.url, addr = %new, "replica joined");
            }
            known[i] = live;
        }
    }
}

struct Edge {
    pool: Arc<Pool>,
    client: Client<HttpConnector, Body>,
}

/// Serves the edge on `listener` until `shutdown` resolves (then lets
/// requests in flight finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    serve_with(listener, options, balance::dns(), shutdown).await
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    options: Options,
    resolve: Resolver,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    if options.upstreams.is_empty() {
        return Err("at least one --upstream is needed".into());
    }
    let targets = options
        .upstreams
        .iter()
        .map(|u| parse_target(u))
        .collect::<Result<Vec<_>, _>>()?;
    let pool = Arc::new(Pool {
        known: Mutex::new(vec![BTreeSet::new(); targets.len()]),
        targets,
        next: AtomicUsize::new(0),
        resolve,
    });
    pool.refresh().await;
    let refresher = {
        let pool = pool.clone();
        let every = options.refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                pool.refresh().await;
            }
        })
    };
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(options.connect_timeout));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        // Well under the gateways' IdleTimeout (60 s by default), so the
        // edge drops an idle connection before a gateway closes it.
        .pool_idle_timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(64)
        .build(connector);
    let edge = Arc::new(Edge { pool, client });
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(edge)
        .layer(request_id::RequestIdLayer::new("edge"));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string());
    refresher.abort();
    served
}

/// Headers that belong to one connection, not to the request or response.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

fn bad_gateway(message: String) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

async fn forward(State(edge): State<Arc<Edge>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // The id the request-id layer found or made (it returns it in the
    // response too).
    let id = request_id::current().unwrap_or_else(request_id::generate);
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(request_id::HEADER, v);
    }
    // An HTTP/2 client sends no Host: keep the authority it asked for.
    if !headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let retryable = matches!(parts.method, Method::GET | Method::HEAD) && body.is_end_stream();
    let order = edge.pool.order();
    if order.is_empty() {
        return bad_gateway(format!(
            "no gateway answers: no live address for {}",
            edge.pool
                .targets
                .iter()
                .map(|t| t.url.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut body = Some(body);
    let mut refused = Vec::new();
    for addr in &order {
        let Ok(uri) = format!("http://{addr}{path}").parse::<Uri>() else {
            return (StatusCode::BAD_REQUEST, "bad request target\n").into_response();
        };
        let mut out = axum::http::Request::new(body.take().unwrap_or_else(Body::empty));
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = headers.clone();
        match edge.client.request(out).await {
            Ok(resp) => {
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                // Answered in the client's HTTP version, whatever the
                // replica spoke.
                rparts.version = parts.version;
                return Response::from_parts(rparts, Body::new(rbody));
            }
            Err(e) if e.is_connect() => {
                edge.pool.mark_down(*addr);
                refused.push(format!("{addr}: {}", source_chain(&e)));
                if !retryable {
                    break;
                }
            }
            Err(e) => {
                return bad_gateway(format!(
                    "gateway {addr} failed during the exchange: {}",
                    source_chain(&e)
                ));
            }
        }
    }
    bad_gateway(format!(
        "no gateway answers: could not connect to {}",
        refused.join("; ")
    ))
}

/// An error and its causes on one line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use futures::StreamExt;
    use std::time::Instant;
    use tokio::sync::oneshot;

    /// A small real HTTP server on 127.0.0.1 that says who it is, redirects,
    /// echoes bodies as they arrive, streams slowly and shows the request id
    /// it received.
    struct Upstream {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        done: tokio::task::JoinHandle<()>,
    }

    impl Upstream {
        async fn start(name: &'static str) -> Upstream {
            let app = axum::Router::new()
                .route("/who", get(move || async move { name }))
                .route(
                    "/redirect",
                    get(|| async {
                        (
                            StatusCode::FOUND,
                            [
                                (header::LOCATION, "/elsewhere"),
                                (header::HeaderName::from_static("x-up"), "kept"),
                            ],
                            "moved",
                        )
                    }),
                )
                .route(
                    "/rid",
                    get(|h: HeaderMap| async move {
                        h.get(request_id::HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    }),
                )
                .route(
                    "/echo",
                    post(|b: Body| async move { Body::from_stream(b.into_data_stream()) }),
                )
                .route(
                    "/slow",
                    get(|| async {
                        let s = futures::stream::iter([0u8, 1]).then(|i| async move {
                            if i == 1 {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            Ok::<_, std::io::Error>(bytes::Bytes::from(format!("part{i};")))
                        });
                        Body::from_stream(s)
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            let done = tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
            Upstream {
                addr,
                stop: Some(tx),
                done,
            }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// Stops accepting and closes its connections.
        async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.done).await;
        }
    }

    /// An edge in front of `upstreams`, on 127.0.0.1; its URL.
    async fn start_edge(
        upstreams: Vec<String>,
        refresh: Duration,
    ) -> (String, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let options = Options {
            upstreams,
            refresh,
            connect_timeout: Duration::from_secs(1),
        };
        tokio::spawn(serve(listener, options, async move {
            let _ = rx.await;
        }));
        (url, tx)
    }

    fn client() -> Client<HttpConnector, Body> {
        Client::builder(TokioExecutor::new()).build(HttpConnector::new())
    }

    async fn send(
        c: &Client<HttpConnector, Body>,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Response<axum::body::Bytes> {
        let mut req = axum::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = c.request(req.body(body).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(Body::new(body), usize::MAX)
            .await
            .unwrap();
        Response::from_parts(parts, bytes)
    }

    fn text(r: &Response<axum::body::Bytes>) -> String {
        String::from_utf8_lossy(r.body()).to_string()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn forwards_round_robin_streams_and_keeps_headers() {
        let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
        let (edge, _stop) = start_edge(vec![a.url(), b.url()], Duration::from_secs(60)).await;
        let c = client();

        // Round-robin over both.
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..10 {
            let r = send(&c, Method::GET, &format!("{edge}/who"), &[], Body::empty()).await;
            assert_eq!(r.status(), StatusCode::OK);
            *seen.entry(text(&r)).or_insert(0) += 1;
        }
        assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
        assert_eq!(seen.get("b"), Some(&5), "{seen:?}");

        // A redirect passes through as it is, with its headers.
        let r = send(
            &c,
            Method::GET,
            &format!("{edge}/redirect"),
            &[],
            Body::empty(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "/elsewhere");
        assert_eq!(r.headers()["x-up"], "kept");
        assert_eq!(text(&r), "moved");

        // The client's request id goes upstream and comes back; without
        // one, the edge makes one and the upstream sees that same id.
        let r = send(
            &c,
            Method::GET,
            &format!("{edge}/rid"),
            &[("x-request-id", "rid-42")],
            Body::empty(),
        )
        .await;
        assert_eq!(text(&r), "rid-42");
        assert_eq!(r.headers()[request_id::HEADER], "rid-42");
        let r = send(&c, Method::GET, &format!("{edge}/rid"), &[], Body::empty()).await;
        let made = r.headers()[request_id::HEADER]
            .to_str()
            .unwrap()
            .to_string();
        assert!(made.len() >= 16, "{made:?}");
        assert_eq!(text(&r), made);

        // Bodies stream both ways: the first chunk sent comes back echoed
        // before the second is sent.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        let upload = Body::from_stream(tokio_stream_of(rx));
        let req = axum::http::Request::post(format!("{edge}/echo"))
            .body(upload)
            .unwrap();
        let pending = tokio::spawn({
            let c = c.clone();
            async move { c.request(req).await }
        });
        tx.send(Ok(bytes::Bytes::from_static(b"first;")))
            .await
            .unwrap();
        let resp = pending.await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut down = Body::new(resp.into_body()).into_data_stream();
        let first = tokio::time::timeout(Duration::from_secs(5), down.next())
            .await
            .expect("the echo of the first chunk, before the upload ended")
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], b"first;");
        tx.send(Ok(bytes::Bytes::from_static(b"second;")))
            .await
            .unwrap();
        drop(tx);
        let mut rest = Vec::new();
        while let Some(chunk) = down.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(&rest[..], b"second;");

        // A slow response's first part arrives before its end.
        let t = Instant::now();
        let resp = c
            .request(
                axum::http::Request::get(format!("{edge}/slow"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let mut down = Body::new(resp.into_body()).into_data_stream();
        let first = down.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"part0;");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        let second = down.next().await.unwrap().unwrap();
        assert_eq!(&second[..], b"part1;");
        assert!(t.elapsed() >= Duration::from_secs(2));

        a.stop().await;
        b.stop().await;
    }

    /// Who answers two GETs in a row (once the edge has found its
    /// replicas), sorted.
    async fn both_answer(c: &Client<HttpConnector, Body>, edge: &str) -> Vec<String> {
        let mut who = Vec::new();
        for _ in 0..2 {
            let r = send(c, Method::GET, &format!("{edge}/who"), &[], Body::empty()).await;
            assert_eq!(r.status(), StatusCode::OK);
            who.push(text(&r));
        }
        who.sort();
        who
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> + Send {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn retries_only_gets_that_could_not_connect_then_answers_502() {
        let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
        // No refresh during the test: the edge finds out by itself.
        let (edge, _stop) = start_edge(vec![a.url(), b.url()], Duration::from_secs(600)).await;
        let c = client();
        assert_eq!(both_answer(&c, &edge).await, ["a", "b"]);
        b.stop().await;
        // Two GETs: one of them starts at b, cannot connect, and is tried
        // on a; both succeed.
        for _ in 0..2 {
            let r = send(&c, Method::GET, &format!("{edge}/who"), &[], Body::empty()).await;
            assert_eq!(r.status(), StatusCode::OK, "{}", text(&r));
            assert_eq!(text(&r), "a");
        }

        // A POST is never tried twice: with a third replica that stops,
        // the POST that meets it gets 502, the other reaches a.
        let (a2, d) = (Upstream::start("a2").await, Upstream::start("d").await);
        let (edge2, _stop2) = start_edge(vec![a2.url(), d.url()], Duration::from_secs(600)).await;
        assert_eq!(both_answer(&c, &edge2).await, ["a2", "d"]);
        d.stop().await;
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let r = send(
                &c,
                Method::POST,
                &format!("{edge2}/echo"),
                &[],
                Body::from("x"),
            )
            .await;
            if r.status() == StatusCode::BAD_GATEWAY {
                assert_eq!(
                    r.headers()[header::CONTENT_TYPE],
                    "text/plain; charset=utf-8"
                );
                assert!(text(&r).contains("could not connect"), "{}", text(&r));
            }
            statuses.push(r.status().as_u16());
        }
        statuses.sort();
        assert_eq!(statuses, [200, 502]);

        // Nothing answers: 502 in plain text, and the edge stays up.
        a.stop().await;
        let r = send(&c, Method::GET, &format!("{edge}/who"), &[], Body::empty()).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(text(&r).starts_with("no gateway answers"), "{}", text(&r));
        let r = send(&c, Method::GET, &format!("{edge}/who"), &[], Body::empty()).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        a2.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_replica_that_returns_is_found_by_the_refresh() {
        let a = Upstream::start("a").await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let late = listener.local_addr().unwrap();
        drop(listener);
        let (edge, _stop) = start_edge(
            vec![a.url(), format!("http://{late}")],
            Duration::from_millis(300),
        )
        .await;
        let c = client();
        let r = send(&c, Method::GET, &format!("{edge}/who"), &[], Body::empty()).await;
        assert_eq!(text(&r), "a");
        // The late replica starts on its port; within a few refreshes it
        // gets requests.
        let std_listener = std::net::TcpListener::bind(late).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let app = axum::Router::new().route("/who", get(|| async { "late" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = send(&c, Method::GET, &format!("{edge}/who"), &[], Body::empty()).await;
            if text(&r) == "late" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the returning replica got no request"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.abort();
        a.stop().await;
    }

    #[test]
    fn upstreams_must_be_plain_http_without_a_path() {
        assert!(parse_target("http://gateway:3000").is_ok());
        assert_eq!(parse_target("http://gateway").unwrap().port, 80);
        assert!(parse_target("https://gateway:3000").is_err());
        assert!(parse_target("http://gateway:3000/x").is_err());
    }
}
