//! The gateway's HTTP application: GOPROXY endpoints plus health,
//! readiness and version.
//!
//! Cache misses follow one path: an in-process single flight per version
//! (so one gateway asks the lock once however many requests wait), then the
//! shared lock, a re-check of storage, the fetch (which stores), and the
//! release; every waiter then reads from storage. Hits never wait for the
//! upstream.

use crate::error::HttpError;
use crate::route::{self, Route};
use crate::wire::Services;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use modmesh_proto::coords::compare_versions;
use modmesh_proto::{
    is_pseudo_version, request_id, Coordinates, Error, ModulePath, Result, Version,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const NO_CACHE: &str = "no-cache, no-store, must-revalidate";
const IMMUTABLE: &str = "public, max-age=604800, immutable";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

type Flight = Shared<BoxFuture<'static, Result<()>>>;

/// Shared state of the gateway.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    services: Services,
    upstream: Semaphore,
    timeout: Duration,
    lock_ttl: Duration,
    in_flight: Mutex<HashMap<Coordinates, Flight>>,
}

impl AppState {
    /// State over `services`; `protocol_workers` bounds concurrent upstream
    /// work (Athens' ProtocolWorkers), `timeout` bounds each upstream call.
    pub fn new(services: Services, protocol_workers: usize, timeout: Duration) -> Self {
        AppState {
            inner: Arc::new(Inner {
                services,
                upstream: Semaphore::new(protocol_workers.max(1)),
                timeout,
                lock_ttl: Duration::from_secs(30),
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs `f` holding an upstream worker slot, within the timeout.
    async fn upstream<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let deadline = self.inner.timeout;
        let _permit = tokio::time::timeout(deadline, self.inner.upstream.acquire())
            .await
            .map_err(|_| {
                Error::timeout(format!(
                    "{what}: no upstream worker free within {deadline:?}"
                ))
            })?
            .map_err(|_| Error::internal("upstream pool closed"))?;
        tokio::time::timeout(deadline + Duration::from_secs(5), f)
            .await
            .map_err(|_| Error::timeout(format!("{what}: no answer within {deadline:?}")))?
    }

    /// Makes sure a canonical version is stored: one fetch per version
    /// however many requests and gateways ask at once.
    async fn ensure(&self, c: &Coordinates) -> Result<()> {
        let flight = {
            let mut map = self.inner.in_flight.lock().expect("in-flight map");
            match map.get(c) {
                Some(f) => f.clone(),
                None => {
                    let this = self.clone();
                    let key = c.clone();
                    let rid = request_id::current().unwrap_or_else(request_id::generate);
                    // A task of its own, so a client that goes away does not
                    // abort a fetch other clients (or gateways) wait for.
                    let task = tokio::spawn(request_id::scope(rid, async move {
                        let r = this.fetch_once(&key).await;
                        this.inner
                            .in_flight
                            .lock()
                            .expect("in-flight map")
                            .remove(&key);
                        r
                    }));
                    let f: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Error::internal(format!("fetch task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    map.insert(c.clone(), f.clone());
                    f
                }
            }
        };
        flight.await
    }

    async fn fetch_once(&self, c: &Coordinates) -> Result<()> {
        let s = &self.inner.services;
        let key = c.key();
        let started = Instant::now();
        let guard = modmesh_lock::hold(
            s.lock.clone(),
            &key,
            self.inner.lock_ttl,
            self.inner.timeout,
        )
        .await?;
        let result = async {
            if s.storage.exists(c).await? {
                tracing::debug!(%c, "stored by another holder while waiting");
                return Ok(());
            }
            let fetched = self.upstream("download", s.fetcher.download(c)).await?;
            if fetched.version != c.version {
                tracing::warn!(%c, resolved = %fetched.version, "fetch resolved to another version");
            }
            tracing::info!(%c, ms = started.elapsed().as_millis() as u64, "fetched and stored");
            Ok(())
        }
        .await;
        if let Err(e) = guard.release().await {
            tracing::warn!(%c, error = %e, "lock release failed");
        }
        result
    }

    /// Resolves a version query to a canonical version via the upstream.
    async fn resolve(&self, c: &Coordinates) -> Result<Coordinates> {
        if c.version.is_canonical() {
            return Ok(c.clone());
        }
        let info = self
            .upstream("query", self.inner.services.fetcher.query(c))
            .await?;
        let version = info_version(&info)?;
        Ok(Coordinates {
            module: c.module.clone(),
            version,
        })
    }

    /// Reads from storage, fetching on a miss.
    async fn read_through<T, F, Fut>(&self, c: &Coordinates, read: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match read().await {
            Err(e) if e.is(modmesh_proto::ErrorKind::NotFound) => {
                self.ensure(c).await?;
                read().await
            }
            other => other,
        }
    }

    async fn list(&self, m: &ModulePath) -> Result<Response> {
        let s = &self.inner.services;
        let (stored, upstream) =
            tokio::join!(s.storage.list(m), self.upstream("list", s.fetcher.list(m)));
        let stored: Vec<String> = stored?
            .into_iter()
            .filter(|v| !is_pseudo_version(v))
            .collect();
        let mut versions = match upstream {
            Ok(mut up) => {
                up.extend(stored);
                up
            }
            Err(e) if !stored.is_empty() => {
                tracing::info!(module = %m, error = %e, "upstream list failed; serving the stored list");
                stored
            }
            Err(e) => return Err(e),
        };
        versions.sort_by(|a, b| compare_versions(a, b));
        versions.dedup();
        let mut body = String::new();
        for v in versions {
            body.push_str(&v);
            body.push('\n');
        }
        Ok(respond(body.into(), TEXT, NO_CACHE))
    }

    async fn latest(&self, m: &ModulePath) -> Result<Response> {
        let s = &self.inner.services;
        let latest = Coordinates {
            module: m.clone(),
            version: Version::new("latest")?,
        };
        match self.upstream("latest", s.fetcher.query(&latest)).await {
            Ok(info) => Ok(respond(info, JSON, NO_CACHE)),
            Err(e) => {
                // Serve the stored version the go command would pick when the
                // upstream cannot answer: the highest release, else the
                // highest pre-release, else the newest pseudo-version.
                let stored = s.storage.list(m).await?;
                let rank = |v: &str| match (v.contains('-'), is_pseudo_version(v)) {
                    (false, _) => 2,
                    (true, false) => 1,
                    (true, true) => 0,
                };
                let best = stored
                    .iter()
                    .max_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| compare_versions(a, b)));
                match best {
                    Some(v) => {
                        tracing::info!(module = %m, error = %e, "upstream latest failed; serving the highest stored version");
                        let c = Coordinates {
                            module: m.clone(),
                            version: Version::new(v.clone())?,
                        };
                        Ok(respond(s.storage.info(&c).await?, JSON, NO_CACHE))
                    }
                    None => Err(e),
                }
            }
        }
    }

    async fn info(&self, c: &Coordinates) -> Result<Response> {
        if !c.version.is_canonical() {
            let info = self
                .upstream("query", self.inner.services.fetcher.query(c))
                .await?;
            return Ok(respond(info, JSON, NO_CACHE));
        }
        let storage = &self.inner.services.storage;
        let info = self.read_through(c, || storage.info(c)).await?;
        Ok(respond(info, JSON, IMMUTABLE))
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Response> {
        let c = self.resolve(c).await?;
        let storage = &self.inner.services.storage;
        let m = self.read_through(&c, || storage.go_mod(&c)).await?;
        Ok(respond(m, TEXT, IMMUTABLE))
    }

    async fn zip(&self, c: &Coordinates, head: bool) -> Result<Response> {
        let c = self.resolve(c).await?;
        let storage = &self.inner.services.storage;
        let zip = self.read_through(&c, || storage.zip(&c)).await?;
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

    /// Whether every service answers.
    async fn ready(&self) -> Result<()> {
        let s = &self.inner.services;
        s.storage
            .list(&ModulePath::new("github.com/gomods/athens")?)
            .await
            .map_err(|e| Error::unavailable(format!("storage: {e}")))?;
        for (name, channel) in &s.remotes {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let req = tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            };
            let status = tokio::time::timeout(Duration::from_secs(5), client.check(req))
                .await
                .map_err(|_| Error::unavailable(format!("{name}: health check timed out")))?
                .map_err(|e| Error::unavailable(format!("{name}: {}", e.message())))?
                .into_inner()
                .status;
            if status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                return Err(Error::unavailable(format!("{name}: not serving")));
            }
        }
        Ok(())
    }
}

fn info_version(info: &[u8]) -> Result<Version> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "Version")]
        version: String,
    }
    let i: Info = serde_json::from_slice(info)
        .map_err(|e| Error::internal(format!("upstream info is not JSON: {e}")))?;
    Version::new(i.version)
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
        Ok(Route::List(m)) => state.list(&m).await,
        Ok(Route::Latest(m)) => state.latest(&m).await,
        Ok(Route::Info(c)) => state.info(&c).await,
        Ok(Route::Mod(c)) => state.go_mod(&c).await,
        Ok(Route::Zip(c)) => state.zip(&c, head).await,
    };
    result.unwrap_or_else(|e| HttpError(e).into_response())
}

async fn healthz() -> Response {
    respond(Bytes::from_static(b"ok\n"), TEXT, NO_CACHE)
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.ready().await {
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

/// The gateway's router with its layers (request ids and request logs, panics).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .fallback(proxy)
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(request_id::RequestIdLayer::new("gateway"))
}
