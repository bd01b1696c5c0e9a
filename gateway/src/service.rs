//! The module service: everything the gateway does for a module, with no
//! HTTP types. Handlers ([`crate::app`]) only map its answers to HTTP.
//!
//! # The miss path
//!
//! A canonical version that storage does not hold is fetched once however
//! many requests (and gateways) ask at once:
//!
//! 1. an in-process single flight per version, so one gateway asks the
//!    cluster lock once; the flight runs in a task of its own (a client that
//!    goes away does not abort a fetch others wait for), and its entry is
//!    removed by a drop guard whatever happens, a panic included;
//! 2. an upstream worker slot (`ProtocolWorkers`) is taken *before* the
//!    cluster lock, so no gateway holds a version's lock while it queues
//!    behind its own work;
//! 3. the cluster lock (a lease kept alive while held), a re-check of
//!    storage, the fetch (the fetcher stores), the release; the fetcher
//!    reports as it goes ([`modmesh_fetcher::Fetcher::download_progress`]),
//!    and requests waiting on the flight are answered from what it has
//!    ([`crate::flight`]): `.info` and `.mod` as soon as the fetcher has
//!    them, a `.zip` streamed from the flight's spool as it arrives (its
//!    tail released once stored, the body aborted on a refusal);
//! 4. the whole miss, slot and lock waits included, is bounded by one
//!    deadline (`Timeout`), after which the caller gets `Timeout` (504).
//!
//! # Queries
//!
//! `list`, `@latest` and version queries (`.info` of `master`, `v1`) go to
//! the upstream through [`QueryCache`]: concurrent identical queries share
//! one upstream call, answers are kept for `ListCacheTTL` seconds and "not
//! found" answers for `NegativeCacheTTL`, so a flood of probes for paths
//! that are not modules costs one fetcher call per path. Failures of the
//! upstream are never cached; `list` and `@latest` then answer from what
//! storage holds.

use crate::flight::{Live, Recorder};
use crate::modes::{DownloadPolicy, Mode, ModesConfig, NetworkMode};
use crate::wire::Services;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use modmesh_common::config::{ConfigError, Env, Section};
use modmesh_common::request_id;
use modmesh_proto::coords::compare_versions;
use modmesh_proto::{
    is_pseudo_version, Coordinates, Error, ErrorKind, ModulePath, Result, Version,
};
use modmesh_storage::ZipReader;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

/// The gateway's own keys (top level of the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct GatewayConfig {
    /// `ATHENS_LOCK_TTL`: seconds a single-flight lease lives without a
    /// keep-alive (it is renewed every third of that while the fetch runs),
    /// so the time a crashed holder blocks its version.
    pub LockTTL: u64,
    /// `ATHENS_LIST_CACHE_TTL`: seconds an upstream `list`, `@latest` or
    /// version-query answer is reused (0: not cached, concurrent identical
    /// queries still share one call).
    pub ListCacheTTL: u64,
    /// `ATHENS_NEGATIVE_CACHE_TTL`: seconds an upstream "not found" is reused.
    pub NegativeCacheTTL: u64,
    /// `ATHENS_ZIP_REDIRECT_TTL`: when greater than 0 and the storage backend
    /// can presign reads (s3, minio, gcp, azureblob), a stored zip is
    /// answered with a 307 to a URL the backend signs for this many seconds,
    /// so zips never pass through the gateway. 0 (the default): zips are
    /// served by the gateway.
    pub ZipRedirectTTL: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            LockTTL: 5,
            ListCacheTTL: 30,
            NegativeCacheTTL: 10,
            ZipRedirectTTL: 0,
        }
    }
}

impl Section for GatewayConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_LOCK_TTL", "LockTTL"),
        Env::new("ATHENS_LIST_CACHE_TTL", "ListCacheTTL"),
        Env::new("ATHENS_NEGATIVE_CACHE_TTL", "NegativeCacheTTL"),
        Env::new("ATHENS_ZIP_REDIRECT_TTL", "ZipRedirectTTL"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.LockTTL == 0 {
            return Err(modmesh_common::config::err(
                "LockTTL",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

/// How the module service behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Concurrent upstream calls (Athens' `ProtocolWorkers`).
    pub protocol_workers: usize,
    /// The deadline of one miss or query, waits included (`Timeout`).
    pub timeout: Duration,
    /// Single-flight lease TTL.
    pub lock_ttl: Duration,
    /// How long upstream query answers are reused.
    pub query_ttl: Duration,
    /// How long upstream "not found" answers are reused.
    pub negative_ttl: Duration,
    /// What `list` and `@latest` do with the upstream.
    pub network: NetworkMode,
    /// What a miss does, per module.
    pub downloads: DownloadPolicy,
    /// Lifetime of presigned zip URLs; `None`: zips are served, never
    /// redirected to storage.
    pub zip_redirect: Option<Duration>,
}

impl Settings {
    /// The settings the configuration names.
    pub fn from_config(cfg: &modmesh_common::Config) -> std::result::Result<Self, ConfigError> {
        let g: GatewayConfig = cfg.section()?;
        let modes: ModesConfig = cfg.section()?;
        Ok(Settings {
            protocol_workers: cfg.ProtocolWorkers,
            timeout: cfg.timeout(),
            lock_ttl: Duration::from_secs(g.LockTTL),
            query_ttl: Duration::from_secs(g.ListCacheTTL),
            negative_ttl: Duration::from_secs(g.NegativeCacheTTL),
            network: modes.network_mode()?,
            downloads: modes.download_policy()?,
            zip_redirect: (g.ZipRedirectTTL > 0).then(|| Duration::from_secs(g.ZipRedirectTTL)),
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        let g = GatewayConfig::default();
        Settings {
            protocol_workers: 30,
            timeout: Duration::from_secs(300),
            lock_ttl: Duration::from_secs(g.LockTTL),
            query_ttl: Duration::from_secs(g.ListCacheTTL),
            negative_ttl: Duration::from_secs(g.NegativeCacheTTL),
            network: NetworkMode::Strict,
            downloads: DownloadPolicy::default(),
            zip_redirect: None,
        }
    }
}

/// An answer for a version's file: here it is, or fetch it from elsewhere.
#[derive(Debug)]
pub enum Answer<T> {
    /// The file.
    Ready(T),
    /// Not served here: redirect the client to this base URL plus the
    /// request path (a redirect download mode).
    Redirect(String),
    /// Stored, and readable for a while at this exact URL (a presigned
    /// storage URL): a temporary redirect.
    Elsewhere(String),
}

impl<T> Answer<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Ready(t) => Answer::Ready(f(t)),
            Answer::Redirect(u) => Answer::Redirect(u),
            Answer::Elsewhere(u) => Answer::Elsewhere(u),
        }
    }
}

/// A running miss: its end, and what it has so far.
#[derive(Clone)]
struct Flight {
    done: Shared<BoxFuture<'static, Result<()>>>,
    live: watch::Receiver<Live>,
}

/// Told, with the stored version's coordinates, each time a fetch by this
/// gateway has made a version visible (the module index listens here).
pub type OnStored = Arc<dyn Fn(&Coordinates) + Send + Sync>;

/// The module service. Cheap to clone.
#[derive(Clone)]
pub struct ModuleService {
    inner: Arc<Inner>,
}

struct Inner {
    services: Services,
    upstream: Semaphore,
    settings: Settings,
    in_flight: Mutex<HashMap<Coordinates, Flight>>,
    queries: QueryCache,
    on_stored: std::sync::OnceLock<OnStored>,
    presign_unsupported: AtomicBool,
}

/// Removes a version's in-flight entry when dropped: on success, on error,
/// and when the flight's task panics or is aborted.
struct FlightEntry {
    inner: Arc<Inner>,
    key: Coordinates,
}

impl Drop for FlightEntry {
    fn drop(&mut self) {
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// A point in time by which a whole operation must be done.
#[derive(Debug, Clone, Copy)]
struct Deadline(Instant);

impl Deadline {
    fn after(d: Duration) -> Self {
        Deadline(Instant::now() + d)
    }
    fn left(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
    /// Runs `f`, failing with `Timeout` naming `what` when the deadline passes.
    async fn run<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.left(), f)
            .await
            .unwrap_or_else(|_| Err(Error::timeout(format!("{what}: no answer in time"))))
    }
}

impl ModuleService {
    /// A module service over `services`.
    pub fn new(services: Services, settings: Settings) -> Self {
        ModuleService {
            inner: Arc::new(Inner {
                upstream: Semaphore::new(settings.protocol_workers.max(1)),
                queries: QueryCache::new(settings.query_ttl, settings.negative_ttl),
                services,
                settings,
                in_flight: Mutex::new(HashMap::new()),
                on_stored: std::sync::OnceLock::new(),
                presign_unsupported: AtomicBool::new(false),
            }),
        }
    }

    /// The deadline of one operation (`Timeout`).
    pub fn timeout(&self) -> Duration {
        self.inner.settings.timeout
    }

    /// Calls `hook` after each fetch that made a version visible (set once;
    /// later calls are ignored).
    pub fn on_stored(&self, hook: OnStored) {
        let _ = self.inner.on_stored.set(hook);
    }

    /// The services behind it.
    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    /// Versions of `m`: the upstream's releases merged with what storage
    /// holds (pseudo-versions left out), in semantic-version order. When the
    /// upstream does not know the module (or is not asked, offline; or
    /// fails, in fallback), what storage holds is the answer.
    pub async fn list(&self, m: &ModulePath) -> Result<Vec<String>> {
        let s = &self.inner.services;
        let deadline = Deadline::after(self.inner.settings.timeout);
        let network = self.inner.settings.network;
        let key = QueryKey::List(m.clone());
        let upstream = async {
            if network == NetworkMode::Offline {
                return Err(Error::not_found(format!("{m}: offline: storage only")));
            }
            self.query(key, deadline).await
        };
        let (stored, upstream) =
            tokio::join!(deadline.run("storage list", s.storage.list(m)), upstream);
        let stored = stored?;
        let releases: Vec<String> = stored
            .iter()
            .filter(|v| !is_pseudo_version(v))
            .cloned()
            .collect();
        let mut versions = match upstream {
            Ok(QueryValue::List(mut up)) => {
                up.extend(releases);
                up
            }
            Ok(QueryValue::Info(_)) => return Err(Error::internal("list answered with info")),
            // The upstream does not know it (or is not asked): what is stored
            // is the answer; only pseudo-versions stored means those.
            Err(e) if e.is(ErrorKind::NotFound) && !stored.is_empty() => {
                if releases.is_empty() {
                    stored
                } else {
                    releases
                }
            }
            Err(e) if network == NetworkMode::Fallback && !stored.is_empty() => {
                tracing::info!(module = %m, error = %e, "upstream list failed; serving the stored list");
                if releases.is_empty() {
                    stored
                } else {
                    releases
                }
            }
            Err(e) => return Err(e),
        };
        versions.sort_by(|a, b| compare_versions(a, b));
        versions.dedup();
        Ok(versions)
    }

    /// The `@latest` `.info`: the upstream's answer; or, when the upstream
    /// does not know the module (or is not asked, offline; or fails, in
    /// fallback), the stored version the go command would pick (the highest
    /// release, else pre-release, else the newest pseudo-version).
    pub async fn latest(&self, m: &ModulePath) -> Result<Bytes> {
        let deadline = Deadline::after(self.inner.settings.timeout);
        let latest = Coordinates {
            module: m.clone(),
            version: Version::new("latest")?,
        };
        let network = self.inner.settings.network;
        let e = if network == NetworkMode::Offline {
            Error::not_found(format!("{m}: offline: storage only"))
        } else {
            match self.query(QueryKey::Query(latest), deadline).await {
                Ok(QueryValue::Info(info)) => return Ok(info),
                Ok(QueryValue::List(_)) => {
                    return Err(Error::internal("latest answered with a list"))
                }
                Err(e) => e,
            }
        };
        if network == NetworkMode::Strict && !e.is(ErrorKind::NotFound) {
            return Err(e);
        }
        let storage = &self.inner.services.storage;
        let stored = deadline.run("storage list", storage.list(m)).await?;
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
                deadline.run("storage info", storage.info(&c)).await
            }
            None => Err(e),
        }
    }

    /// The `.info` of `c`. For a canonical version it is the stored file
    /// (fetched on a miss) and never changes; for a query (`master`, `v1`)
    /// it is the upstream's current answer. The flag says which.
    pub async fn info(&self, c: &Coordinates) -> Result<Answer<(Bytes, Immutable)>> {
        if !c.version.is_canonical() {
            return Ok(Answer::Ready((self.query_info(c).await?, Immutable(false))));
        }
        let storage = &self.inner.services.storage;
        let early = |rx: &watch::Receiver<Live>| early_meta(rx, c).map(|(i, _)| i);
        let info = self.read_through(c, || storage.info(c), early).await?;
        Ok(info.map(|i| (i, Immutable(true))))
    }

    /// The go.mod of `c` (a query is resolved first).
    pub async fn go_mod(&self, c: &Coordinates) -> Result<Answer<Bytes>> {
        let c = self.resolve(c).await?;
        let storage = &self.inner.services.storage;
        let early = |rx: &watch::Receiver<Live>| early_meta(rx, &c).map(|(_, m)| m);
        self.read_through(&c, || storage.go_mod(&c), early).await
    }

    /// The zip of `c` (a query is resolved first), streamed from storage.
    pub async fn zip(&self, c: &Coordinates) -> Result<Answer<ZipReader>> {
        let c = self.resolve(c).await?;
        if let Some(url) = self.presigned_zip(&c).await? {
            return Ok(Answer::Elsewhere(url));
        }
        let storage = &self.inner.services.storage;
        self.read_through(&c, || storage.zip(&c), crate::flight::zip_reader)
            .await
    }

    /// A presigned URL for the stored zip of `c`, when `ZipRedirectTTL` is
    /// set and the backend can sign one; `None` sends the zip through the
    /// gateway (not stored yet: the miss path fetches it).
    async fn presigned_zip(&self, c: &Coordinates) -> Result<Option<String>> {
        let Some(ttl) = self.inner.settings.zip_redirect else {
            return Ok(None);
        };
        // A mesh client learns the backend's capabilities late, so the first
        // answer decides: a backend that signs nothing is not asked again.
        if self.inner.presign_unsupported.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let storage = &self.inner.services.storage;
        let deadline = Deadline::after(self.inner.settings.timeout);
        match deadline
            .run("storage presign", storage.presign_zip(c, ttl))
            .await
        {
            Ok(Some(url)) => Ok(Some(url)),
            Ok(None) => {
                self.inner
                    .presign_unsupported
                    .store(true, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) if e.is(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The upstream's `.info` for a version query.
    async fn query_info(&self, c: &Coordinates) -> Result<Bytes> {
        let deadline = Deadline::after(self.inner.settings.timeout);
        match self.query(QueryKey::Query(c.clone()), deadline).await? {
            QueryValue::Info(info) => Ok(info),
            QueryValue::List(_) => Err(Error::internal("query answered with a list")),
        }
    }

    /// Whether every service answers its health check within a deadline,
    /// through the same channel that carries its traffic (or in process,
    /// for an embedded service).
    pub async fn ready(&self) -> Result<()> {
        let s = &self.inner.services;
        let d = Deadline::after(self.inner.settings.timeout.min(Duration::from_secs(5)));
        let name = |n: &'static str| move |e: Error| Error::unavailable(format!("{n}: {e}"));
        let (a, b, c) = tokio::join!(
            d.run("storage health", s.storage.health()),
            d.run("lock health", s.lock.health()),
            d.run("fetcher health", s.fetcher.health()),
        );
        a.map_err(name("storage"))?;
        b.map_err(name("lock"))?;
        c.map_err(name("fetcher"))?;
        Ok(())
    }

    /// A query through the cache, holding an upstream slot while it runs.
    async fn query(&self, key: QueryKey, deadline: Deadline) -> Result<QueryValue> {
        let this = self.clone();
        let k = key.clone();
        self.inner
            .queries
            .get(key, async move {
                let f = &this.inner.services.fetcher;
                let _slot = this.slot(deadline).await?;
                let started = Instant::now();
                let kind = match &k {
                    QueryKey::List(_) => "list",
                    QueryKey::Query(_) => "query",
                };
                let answer = match k {
                    QueryKey::List(m) => deadline
                        .run("upstream list", f.list(&m))
                        .await
                        .map(QueryValue::List),
                    QueryKey::Query(c) => deadline
                        .run("upstream query", f.query(&c))
                        .await
                        .map(QueryValue::Info),
                };
                let result = if answer.is_ok() { "ok" } else { "error" };
                metrics::counter!("modmesh_upstream_fetches_total", "kind" => kind, "result" => result)
                    .increment(1);
                metrics::histogram!("modmesh_upstream_fetch_duration_seconds", "kind" => kind)
                    .record(started.elapsed().as_secs_f64());
                answer.map_err(Error::from_upstream)
            })
            .await
    }

    /// Takes an upstream worker slot, waiting at most until `deadline`.
    async fn slot(&self, deadline: Deadline) -> Result<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(deadline.left(), self.inner.upstream.acquire())
            .await
            .map_err(|_| Error::timeout("no upstream worker free in time"))?
            .map_err(|_| Error::internal("upstream pool closed"))
    }

    /// Resolves a version query to a canonical version.
    async fn resolve(&self, c: &Coordinates) -> Result<Coordinates> {
        if c.version.is_canonical() {
            return Ok(c.clone());
        }
        let info = self.query_info(c).await?;
        let version = info_version(&info)?;
        Ok(Coordinates {
            module: c.module.clone(),
            version,
        })
    }

    /// Reads from storage; on a miss, does what the download mode says.
    /// While the miss's flight runs, `early` may answer from what it has.
    async fn read_through<T, F, Fut, E>(
        &self,
        c: &Coordinates,
        read: F,
        early: E,
    ) -> Result<Answer<T>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
        E: Fn(&watch::Receiver<Live>) -> Option<T>,
    {
        let d = Deadline::after(self.inner.settings.timeout);
        match d.run("storage read", read()).await {
            Err(e) if e.is(ErrorKind::NotFound) => {}
            other => return other.map(Answer::Ready),
        }
        let (mode, url) = self.inner.settings.downloads.for_module(c.module.as_str());
        let url = url.to_string();
        match mode {
            Mode::Sync => {}
            Mode::None => {
                return Err(Error::not_found(format!(
                    "{c}: not stored, and the download mode fetches nothing"
                )))
            }
            Mode::Redirect => return Ok(Answer::Redirect(url)),
            Mode::Async | Mode::AsyncRedirect => {
                // The fetch goes on in its own task; a later request finds it.
                let this = self.clone();
                let key = c.clone();
                tokio::spawn(
                    async move {
                        if let Err(e) = this.ensure(&key).await {
                            tracing::warn!(c = %key, error = %e, "background fetch failed");
                        }
                    }
                    .instrument(tracing::Span::current()),
                );
                return if mode == Mode::Async {
                    Err(Error::not_found(format!(
                        "{c}: not stored yet; fetching it in the background, ask again soon"
                    )))
                } else {
                    Ok(Answer::Redirect(url))
                };
            }
        }
        if let Some(t) = self.wait(self.flight(c), early).await? {
            return Ok(Answer::Ready(t));
        }
        Deadline::after(self.inner.settings.timeout)
            .run("storage read", read())
            .await
            .map(Answer::Ready)
    }

    /// Waits until no flight of this gateway runs, at most `within`. A
    /// streamed zip is answered once it is verified and its save goes on
    /// after, so a graceful stop waits here for those saves: what was
    /// served is stored.
    pub async fn settle(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let running: Vec<_> = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|f| f.done.clone())
                .collect();
            if running.is_empty() {
                return;
            }
            tracing::info!(
                flights = running.len(),
                "waiting for running fetches to be stored"
            );
            if tokio::time::timeout_at(deadline, futures::future::join_all(running))
                .await
                .is_err()
            {
                tracing::warn!("shutting down with fetches still running");
                return;
            }
        }
    }

    /// Makes sure a canonical version is stored: one fetch per version
    /// however many requests and gateways ask at once.
    async fn ensure(&self, c: &Coordinates) -> Result<()> {
        self.flight(c).done.await
    }

    /// Waits for `flight` to end, or for `early` to answer from what it
    /// has (`Some`).
    async fn wait<T>(
        &self,
        flight: Flight,
        early: impl Fn(&watch::Receiver<Live>) -> Option<T>,
    ) -> Result<Option<T>> {
        let Flight { mut done, mut live } = flight;
        loop {
            live.borrow_and_update();
            if let Some(t) = early(&live) {
                return Ok(Some(t));
            }
            tokio::select! {
                r = &mut done => return r.map(|()| None),
                changed = live.changed() => {
                    if changed.is_err() {
                        return done.await.map(|()| None);
                    }
                }
            }
        }
    }

    /// The flight of `c`: the running one, or a new one.
    fn flight(&self, c: &Coordinates) -> Flight {
        {
            let mut map = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match map.get(c) {
                Some(f) => {
                    metrics::counter!("modmesh_single_flight_waits_total").increment(1);
                    f.clone()
                }
                None => {
                    let this = self.clone();
                    let key = c.clone();
                    let rid = request_id::current().unwrap_or_else(request_id::generate);
                    let deadline = Deadline::after(self.inner.settings.timeout);
                    let entry = FlightEntry {
                        inner: self.inner.clone(),
                        key: key.clone(),
                    };
                    // The flight's task stays in the trace of the request that started it.
                    let span = tracing::info_span!("gateway.fetch", module = %key);
                    let (tx, live) = watch::channel(Live::default());
                    let tx = Arc::new(tx);
                    let task = tokio::spawn(
                        request_id::scope(rid, async move {
                            let _entry = entry;
                            let r = this.fetch_once(&key, deadline, tx.clone()).await;
                            let answered_early = tx.borrow().meta.is_some();
                            tx.send_modify(|l| l.verdict = Some(r.clone()));
                            if r.is_ok() && answered_early {
                                this.warm(&key, deadline).await;
                            }
                            r
                        })
                        .instrument(span),
                    );
                    let done = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Error::internal(format!("fetch task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    let f = Flight { done, live };
                    map.insert(c.clone(), f.clone());
                    f
                }
            }
        }
    }

    /// Reads the `.info` and `.mod` of the just stored `c` once, so that
    /// the gateway's tier (which fills on storage reads) holds what was
    /// answered early from the flight.
    async fn warm(&self, c: &Coordinates, deadline: Deadline) {
        let s = &self.inner.services.storage;
        let (i, m) = tokio::join!(
            deadline.run("storage info", s.info(c)),
            deadline.run("storage go.mod", s.go_mod(c))
        );
        if let Err(e) = i.and(m) {
            tracing::debug!(%c, error = %e, "warming the tier after the fetch failed");
        }
    }

    async fn fetch_once(
        &self,
        c: &Coordinates,
        deadline: Deadline,
        live: Arc<watch::Sender<Live>>,
    ) -> Result<()> {
        let s = &self.inner.services;
        let started = Instant::now();
        // The local slot first: never hold the cluster lock while queueing.
        let _slot = self.slot(deadline).await?;
        let guard = modmesh_lock::hold(
            s.lock.clone(),
            &c.key(),
            self.inner.settings.lock_ttl,
            deadline.left(),
        )
        .await?;
        let result = async {
            if deadline.run("storage exists", s.storage.exists(c)).await? {
                tracing::debug!(%c, "stored by another holder while waiting");
                return Ok(());
            }
            let download = Instant::now();
            // The fetcher's reports are recorded for the waiters as they come.
            let (progress, mut events) = modmesh_fetcher::Progress::channel(16);
            let mut recorder = Recorder::new(live);
            let fetch = async {
                let record = async {
                    while let Some(e) = events.recv().await {
                        recorder.apply(e).await;
                    }
                };
                let (r, ()) = tokio::join!(
                    deadline.run("upstream download", s.fetcher.download_progress(c, progress)),
                    record
                );
                r
            };
            let fetched = tokio::select! {
                r = fetch => {
                    let result = if r.is_ok() { "ok" } else { "error" };
                    metrics::counter!("modmesh_upstream_fetches_total", "kind" => "download", "result" => result).increment(1);
                    metrics::histogram!("modmesh_upstream_fetch_duration_seconds", "kind" => "download").record(download.elapsed().as_secs_f64());
                    r.map_err(Error::from_upstream)?
                }
                _ = guard.lost() => {
                    tracing::warn!(%c, "single-flight lease lost during the fetch; stopping it");
                    return Err(Error::unavailable(format!("{c}: single-flight lease lost during the fetch")));
                }
            };
            if fetched.version != c.version {
                tracing::warn!(%c, resolved = %fetched.version, "fetch resolved to another version");
            }
            tracing::info!(%c, ms = started.elapsed().as_millis() as u64, "fetched and stored");
            if let Some(hook) = self.inner.on_stored.get() {
                hook(&Coordinates { module: c.module.clone(), version: fetched.version.clone() });
            }
            Ok(())
        }
        .await;
        if let Err(e) = guard.release().await {
            tracing::warn!(%c, error = %e, "lock release failed");
        }
        result
    }
}

/// The `.info` and `.mod` of `c` a running flight has.
fn early_meta(rx: &watch::Receiver<Live>, c: &Coordinates) -> Option<(Bytes, Bytes)> {
    let l = rx.borrow();
    match &l.meta {
        Some((v, info, go_mod)) if *v == c.version => Some((info.clone(), go_mod.clone())),
        _ => None,
    }
}

/// Whether an answer never changes (a canonical version's file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Immutable(pub bool);

fn info_version(info: &[u8]) -> Result<Version> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "Version")]
        version: String,
    }
    let i: Info = serde_json::from_slice(info)
        .map_err(|e| Error::unavailable(format!("upstream info is not JSON: {e}")))?;
    Version::new(i.version)
}

/// An upstream question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QueryKey {
    /// The module's version list.
    List(ModulePath),
    /// A version query (`latest`, a branch, a prefix).
    Query(Coordinates),
}

/// An upstream answer.
#[derive(Debug, Clone)]
pub enum QueryValue {
    /// Versions.
    List(Vec<String>),
    /// A `.info` document.
    Info(Bytes),
}

type QueryAnswer = Result<QueryValue>;

/// Upstream answers by question: concurrent identical questions share one
/// call; answers live `ttl`, "not found" (and "gone") `negative_ttl`, and
/// failures not at all.
pub struct QueryCache {
    cache: moka::future::Cache<QueryKey, QueryAnswer>,
}

struct AnswerExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<QueryKey, QueryAnswer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _: &QueryKey,
        v: &QueryAnswer,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(match v {
            Ok(_) => self.ttl,
            Err(e) if e.is(ErrorKind::NotFound) || e.is(ErrorKind::Gone) => self.negative_ttl,
            Err(_) => Duration::ZERO,
        })
    }
}

impl QueryCache {
    /// A cache keeping answers `ttl` and "not found" `negative_ttl`.
    pub fn new(ttl: Duration, negative_ttl: Duration) -> Self {
        QueryCache {
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(AnswerExpiry { ttl, negative_ttl })
                .build(),
        }
    }

    /// The answer to `key`, asking `ask` unless a fresh answer is kept or
    /// the same question is already being asked.
    pub async fn get(
        &self,
        key: QueryKey,
        ask: impl std::future::Future<Output = QueryAnswer> + Send + 'static,
    ) -> QueryAnswer {
        let entry = self.cache.entry(key.clone()).or_insert_with(ask).await;
        let result = if entry.is_fresh() { "miss" } else { "hit" };
        metrics::counter!("modmesh_query_cache_total", "result" => result).increment(1);
        let answer = entry.into_value();
        if matches!(&answer, Err(e) if !(e.is(ErrorKind::NotFound) || e.is(ErrorKind::Gone))) {
            self.cache.invalidate(&key).await;
        }
        answer
    }
}
