//! The gateway's HTTP application: GOPROXY endpoints plus health,
//! readiness and version.
//!
//! Handlers are thin: a request path is decoded once into a typed
//! [`Route`], the [`ModuleService`] answers, and the answer (or its error,
//! through [`HttpError`]) becomes an HTTP response with the content type and
//! cache headers the GOPROXY protocol expects.

use crate::error::HttpError;
use crate::route::{self, Route};
use crate::service::{Answer, Immutable, ModuleService};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use modmesh_common::request_id;
use modmesh_proto::{Coordinates, ModulePath, Result};

const NO_CACHE: &str = "no-cache, no-store, must-revalidate";
const IMMUTABLE: &str = "public, max-age=604800, immutable";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Shared state of the gateway's handlers: the module service and the
/// edges ([`crate::edge`]).
#[derive(Clone)]
pub struct AppState {
    service: ModuleService,
    edges: std::sync::Arc<crate::edge::Edges>,
}

impl AppState {
    /// Handlers over `service`, with no edge features configured.
    pub fn new(service: ModuleService) -> Self {
        AppState {
            service,
            edges: Default::default(),
        }
    }

    /// The same handlers behind `edges`; the module index (if any) hears of
    /// every version this gateway fetches and stores.
    pub fn with_edges(mut self, edges: crate::edge::Edges) -> Self {
        if let Some(index) = edges.index.clone() {
            self.service.on_stored(std::sync::Arc::new(
                move |c: &modmesh_proto::Coordinates| {
                    let (index, c) = (index.clone(), c.clone());
                    tokio::spawn(async move {
                        if let Err(e) = index.index(c.module.as_str(), c.version.as_str()).await {
                            tracing::warn!(%c, error = %e, "module index write failed");
                        }
                    });
                },
            ));
        }
        self.edges = std::sync::Arc::new(edges);
        self
    }

    /// The edge configuration and parts.
    pub fn edges(&self) -> &crate::edge::Edges {
        &self.edges
    }

    pub(crate) fn edges_arc(&self) -> std::sync::Arc<crate::edge::Edges> {
        self.edges.clone()
    }

    /// Handlers over a module service on `services`, set as `cfg` says.
    pub fn from_config(
        services: crate::Services,
        cfg: &modmesh_common::Config,
    ) -> std::result::Result<Self, modmesh_common::config::ConfigError> {
        let settings = crate::service::Settings::from_config(cfg)?;
        Ok(AppState::new(ModuleService::new(services, settings)))
    }

    /// The module service behind the handlers.
    pub fn service(&self) -> &ModuleService {
        &self.service
    }
}

async fn list(state: &AppState, m: &ModulePath) -> Result<Response> {
    let versions = state.service.list(m).await?;
    let mut body = String::with_capacity(versions.len() * 12);
    for v in versions {
        body.push_str(&v);
        body.push('\n');
    }
    Ok(respond(body.into(), TEXT, NO_CACHE))
}

/// A 301 to `base` plus the request's path (Athens' redirect modes).
fn redirect(base: &str, path: &str) -> Response {
    let location = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    moved(StatusCode::MOVED_PERMANENTLY, &location)
}

/// A 307 to `url`, which is good for a while only (a presigned URL), so
/// clients must not remember it.
fn temporary_redirect(url: &str) -> Response {
    moved(StatusCode::TEMPORARY_REDIRECT, url)
}

fn moved(status: StatusCode, location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = status;
            r.headers_mut().insert(header::LOCATION, v);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(_) => HttpError(modmesh_proto::Error::internal(
            "redirect URL is not a header value",
        ))
        .into_response(),
    }
}

async fn info(state: &AppState, c: &Coordinates, path: &str) -> Result<Response> {
    match state.service.info(c).await? {
        Answer::Ready((info, Immutable(immutable))) => Ok(respond(
            info,
            JSON,
            if immutable { IMMUTABLE } else { NO_CACHE },
        )),
        Answer::Redirect(base) | Answer::Elsewhere(base) => Ok(redirect(&base, path)),
    }
}

async fn go_mod(state: &AppState, c: &Coordinates, path: &str) -> Result<Response> {
    match state.service.go_mod(c).await? {
        Answer::Ready(m) => Ok(respond(m, TEXT, IMMUTABLE)),
        Answer::Redirect(base) | Answer::Elsewhere(base) => Ok(redirect(&base, path)),
    }
}

async fn zip(state: &AppState, c: &Coordinates, head: bool, path: &str) -> Result<Response> {
    let zip = match state.service.zip(c).await? {
        Answer::Ready(z) => z,
        Answer::Redirect(base) => return Ok(redirect(&base, path)),
        Answer::Elsewhere(url) => return Ok(temporary_redirect(&url)),
    };
    let size = zip.size;
    let body = if head {
        drop(zip.stream);
        Body::empty()
    } else {
        Body::from_stream(zip.stream.map(|r| r.map_err(std::io::Error::other)))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(resp)
}

fn respond(body: Bytes, content_type: &'static str, cache: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn proxy(State(state): State<AppState>, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let result = match route::parse(req.uri().path()) {
        Err(e) => Err(e),
        Ok(Route::List(m)) => list(&state, &m).await,
        Ok(Route::Latest(m)) => state
            .service
            .latest(&m)
            .await
            .map(|i| respond(i, JSON, NO_CACHE)),
        Ok(Route::Info(c)) => info(&state, &c, req.uri().path()).await,
        Ok(Route::Mod(c)) => go_mod(&state, &c, req.uri().path()).await,
        Ok(Route::Zip(c)) => zip(&state, &c, head, req.uri().path()).await,
    };
    result.unwrap_or_else(|e| HttpError(e).into_response())
}

async fn healthz() -> Response {
    respond(Bytes::from_static(b"ok\n"), TEXT, NO_CACHE)
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.service.ready().await {
        Ok(()) => respond(Bytes::from_static(b"ready\n"), TEXT, NO_CACHE),
        Err(e) => {
            let mut r = HttpError(e).into_response();
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

async fn version() -> Response {
    let body = serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }).to_string();
    respond(body.into(), JSON, NO_CACHE)
}

/// The gateway's router with its layers (request ids and request logs,
/// panics), its edges (auth, filter, validator, `PathPrefix`) composed in
/// [`crate::edge::compose`].
pub fn router(state: AppState) -> Router {
    // A backstop: the module service bounds every operation by `Timeout`
    // itself; nothing a handler does may outlive that by more than a little.
    let backstop = state.service.timeout() + std::time::Duration::from_secs(5);
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .merge(crate::sumdb::routes())
        .fallback(proxy)
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |e: tower::BoxError| async move {
                        HttpError(modmesh_proto::Error::timeout(format!(
                            "request not answered in time: {e}"
                        )))
                        .into_response()
                    },
                ))
                .layer(tower::timeout::TimeoutLayer::new(backstop)),
        );
    crate::edge::compose(routes, state)
        // Prometheus metrics, on the root path whatever PathPrefix is (as in Athens).
        .route(
            "/metrics",
            get(|| async { modmesh_common::metrics::response() }),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(request_id::RequestIdLayer::new("gateway"))
        .layer(axum::middleware::from_fn(crate::observe::observe))
}
