//! The gateway's HTTP semantics, in process: real storage, lock and
//! fetcher (the real go command against a local `file://` upstream), driven
//! through the router with `oneshot`.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use modmesh_common::Config;
use modmesh_gateway::{router, wire, AppState};
use modmesh_tests::fixtures;
use std::collections::HashMap;
use tower::ServiceExt;

struct Harness {
    app: Router,
    upstream: tempfile::TempDir,
    _work: tempfile::TempDir,
}

fn harness() -> Harness {
    let upstream = tempfile::tempdir().unwrap();
    fixtures::standard_proxy(upstream.path()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let env: HashMap<&str, String> = HashMap::from([
        (
            "ATHENS_GO_BINARY_ENV_VARS",
            format!("GOPROXY=file://{};GOSUMDB=off", upstream.path().display()),
        ),
        ("ATHENS_GOGET_DIR", work.path().display().to_string()),
        ("ATHENS_TIMEOUT", "60".into()),
    ]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let (services, _) = wire::services(&cfg).unwrap();
    Harness {
        app: router(AppState::from_config(services, &cfg).unwrap()),
        upstream,
        _work: work,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(app: &Router, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, path: &str) -> Answer {
    send(app, Method::GET, path, &[]).await
}

fn path(module: &str, rest: &str) -> String {
    format!("/{}/{rest}", fixtures::escape(module))
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_answer_with_go_semantics() {
    let h = harness();
    let app = &h.app;
    let base = fixtures::BASE;

    let list = get(app, &path(base, "@v/list")).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(list.content_type(), "text/plain; charset=utf-8");
    let versions: Vec<String> = list.text().lines().map(String::from).collect();
    assert!(versions.contains(&"v1.0.0".to_string()), "{versions:?}");
    assert!(
        versions.contains(&fixtures::BASE_RC.to_string()),
        "{versions:?}"
    );

    let info = get(app, &path(base, "@v/v1.0.0.info")).await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.text());
    assert_eq!(info.content_type(), "application/json");
    let v: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
    assert_eq!(v["Version"], "v1.0.0");

    let m = get(app, &path(base, "@v/v1.0.0.mod")).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.content_type(), "text/plain; charset=utf-8");
    assert!(
        m.text().starts_with(&format!("module {base}")),
        "{}",
        m.text()
    );

    let upstream_zip = std::fs::read(
        fixtures::ProxyDir::new(h.upstream.path())
            .unwrap()
            .file(base, "v1.0.0", "zip"),
    )
    .unwrap();
    let zip = get(app, &path(base, "@v/v1.0.0.zip")).await;
    assert_eq!(zip.status, StatusCode::OK);
    assert_eq!(zip.content_type(), "application/zip");
    assert_eq!(zip.body.as_ref(), upstream_zip.as_slice());
    assert_eq!(
        zip.headers[header::CONTENT_LENGTH].to_str().unwrap(),
        upstream_zip.len().to_string()
    );

    let head = send(app, Method::HEAD, &path(base, "@v/v1.0.0.zip"), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers[header::CONTENT_LENGTH].to_str().unwrap(),
        upstream_zip.len().to_string()
    );
    assert!(head.body.is_empty());

    let latest = get(app, &path(base, "@latest")).await;
    assert_eq!(latest.status, StatusCode::OK, "{}", latest.text());
    assert_eq!(latest.content_type(), "application/json");
    let v: serde_json::Value = serde_json::from_slice(&latest.body).unwrap();
    assert_eq!(v["Version"], "v1.0.0");

    // A query in .info is resolved (here `v1`, the highest v1 release).
    let q = get(app, &path(base, "@v/v1.info")).await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.text());
    let v: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
    assert_eq!(v["Version"], "v1.0.0");

    // Mixed case and /v2 paths round-trip through case escaping.
    let mixed = get(
        app,
        &path(fixtures::MIXED, &format!("@v/{}.info", fixtures::MIXED_V)),
    )
    .await;
    assert_eq!(mixed.status, StatusCode::OK, "{}", mixed.text());
    let lib = get(
        app,
        &path(fixtures::LIB_V2, &format!("@v/{}.mod", fixtures::LIB_V2_V)),
    )
    .await;
    assert_eq!(lib.status, StatusCode::OK, "{}", lib.text());
    assert!(lib.text().contains(fixtures::LIB_V2));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_things_are_404_in_plain_text() {
    let h = harness();
    for p in [
        "/example.com/nope/@v/list".to_string(),
        "/example.com/nope/@latest".to_string(),
        path(fixtures::BASE, "@v/v9.9.9.info"),
        path(fixtures::BASE, "@v/v9.9.9.mod"),
        path(fixtures::BASE, "@v/v9.9.9.zip"),
        "/favicon.ico".to_string(),
        "/example.com/base".to_string(),
    ] {
        let a = get(&h.app, &p).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{p}: {}", a.text());
        assert_eq!(a.content_type(), "text/plain; charset=utf-8", "{p}");
        assert!(!a.body.is_empty(), "{p}: an error says what went wrong");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_escapes_are_400_on_every_route() {
    let h = harness();
    for bad in [
        "example.com/!",
        "example.com/Upper",
        "example.com/a!!b",
        "-x.com/a",
    ] {
        for rest in [
            "@v/list",
            "@latest",
            "@v/v1.0.0.info",
            "@v/v1.0.0.mod",
            "@v/v1.0.0.zip",
        ] {
            let p = format!("/{bad}/{rest}");
            let a = get(&h.app, &p).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{p}: {}", a.text());
            assert_eq!(a.content_type(), "text/plain; charset=utf-8", "{p}");
        }
    }
    for v in ["v1.0.0-!", "V1.0.0", "-v1", "a%3Bb"] {
        let p = format!("/example.com/base/@v/{v}.info");
        assert_eq!(get(&h.app, &p).await.status, StatusCode::BAD_REQUEST, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn other_methods_are_405() {
    let h = harness();
    let a = send(&h.app, Method::POST, &path(fixtures::BASE, "@v/list"), &[]).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers[header::ALLOW], "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_echoed_or_made() {
    let h = harness();
    let a = send(
        &h.app,
        Method::GET,
        "/healthz",
        &[("x-request-id", "abc-123")],
    )
    .await;
    assert_eq!(a.headers["x-request-id"], "abc-123");
    let a = send(
        &h.app,
        Method::GET,
        "/healthz",
        &[("athens-request-id", "from-athens")],
    )
    .await;
    assert_eq!(a.headers["x-request-id"], "from-athens");
    let a = get(&h.app, "/example.com/nope/@v/list").await;
    let made = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "a fresh uuid: {made}");
    let b = get(&h.app, "/healthz").await;
    assert_ne!(b.headers["x-request-id"].to_str().unwrap(), made);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_version() {
    let h = harness();
    assert_eq!(get(&h.app, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&h.app, "/readyz").await.status, StatusCode::OK);
    let v = get(&h.app, "/version").await;
    assert_eq!(v.status, StatusCode::OK);
    let j: serde_json::Value = serde_json::from_slice(&v.body).unwrap();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_when_a_remote_service_is_down() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let env: HashMap<&str, String> = HashMap::from([("ATHENS_LOCK_SVC_URL", url)]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let (services, _) = wire::services(&cfg).unwrap();
    let app = router(AppState::from_config(services, &cfg).unwrap());
    let a = get(&app, "/readyz").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert!(a.text().contains("lock"), "{}", a.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_latest_survive_an_upstream_outage() {
    let h = harness();
    let base = fixtures::BASE;
    assert_eq!(
        get(&h.app, &path(base, "@v/v1.0.0.zip")).await.status,
        StatusCode::OK
    );
    // The upstream disappears.
    std::fs::remove_dir_all(h.upstream.path()).unwrap();
    let list = get(&h.app, &path(base, "@v/list")).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(list.text(), "v1.0.0\n");
    let latest = get(&h.app, &path(base, "@latest")).await;
    assert_eq!(latest.status, StatusCode::OK, "{}", latest.text());
    let v: serde_json::Value = serde_json::from_slice(&latest.body).unwrap();
    assert_eq!(v["Version"], "v1.0.0");
    // Stored versions are still served; others are 404.
    assert_eq!(
        get(&h.app, &path(base, "@v/v1.0.0.mod")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(
            &h.app,
            &path(base, &format!("@v/{}.mod", fixtures::BASE_RC))
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

// ------------------------------------------------------------ miss-path faults
//
// A fetcher the test scripts (it saves real module files from a local GOPROXY
// tree into real memory storage), to make the miss path panic, stall or
// queue at chosen moments.

mod scripted {
    use async_trait::async_trait;
    use bytes::Bytes;
    use modmesh_fetcher::{Fetched, Fetcher};
    use modmesh_proto::{Coordinates, Error, ModulePath, Result};
    use modmesh_storage::{SaveRequest, Storage};
    use modmesh_tests::fixtures::ProxyDir;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    pub struct Scripted {
        pub proxy: ProxyDir,
        pub storage: Arc<dyn Storage>,
        pub downloads: AtomicUsize,
        /// Download number N (from 0) panics.
        pub panic_on: Option<usize>,
        /// Each download first waits this long.
        pub stall: Duration,
        /// Each download waits until this is notified (if set).
        pub gate: Option<Arc<tokio::sync::Semaphore>>,
        /// Upstream list and query calls, by module path.
        pub asked: std::sync::Mutex<std::collections::HashMap<String, usize>>,
        /// While set, list and query fail as an unreachable upstream does.
        pub down: std::sync::atomic::AtomicBool,
    }

    impl Scripted {
        fn ask(&self, m: &ModulePath) {
            *self
                .asked
                .lock()
                .unwrap()
                .entry(m.as_str().to_string())
                .or_default() += 1;
        }
    }

    #[async_trait]
    impl Fetcher for Scripted {
        async fn download(&self, c: &Coordinates) -> Result<Fetched> {
            let n = self.downloads.fetch_add(1, Ordering::SeqCst);
            if self.panic_on == Some(n) {
                panic!("scripted fetcher panics on download {n}");
            }
            tokio::time::sleep(self.stall).await;
            if let Some(g) = &self.gate {
                g.acquire().await.unwrap().forget();
            }
            let m = c.module.as_str();
            let v = c.version.as_str();
            let read = |ext| std::fs::read(self.proxy.file(m, v, ext)).map_err(Error::from);
            let info = Bytes::from(read("info")?);
            let zip = Bytes::from(read("zip")?);
            let req = SaveRequest::new(c, info.clone(), Bytes::from(read("mod")?))?;
            let stream = futures::stream::once(async move { Ok(zip) }).boxed();
            self.storage.save(req, stream).await?;
            Ok(Fetched {
                version: c.version.clone(),
                info,
            })
        }
        async fn health(&self) -> Result<()> {
            Ok(())
        }
        /// The module's list file; every path ending in `/sub` is not a
        /// module.
        async fn list(&self, m: &ModulePath) -> Result<Vec<String>> {
            self.ask(m);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::unavailable("upstream unreachable"));
            }
            let list = self
                .proxy
                .root()
                .join(modmesh_tests::fixtures::escape(m.as_str()))
                .join("@v/list");
            match std::fs::read_to_string(list) {
                Ok(t) => Ok(t.lines().map(String::from).collect()),
                Err(_) => Err(Error::not_found(format!("{m}: not a module"))),
            }
        }
        /// `latest` is the highest listed version.
        async fn query(&self, c: &Coordinates) -> Result<Bytes> {
            let versions = self.list(&c.module).await?;
            if c.version.as_str() != "latest" {
                return Err(Error::not_found(format!("{c}: no such query")));
            }
            let v = versions
                .iter()
                .max_by(|a, b| modmesh_proto::coords::compare_versions(a, b))
                .ok_or_else(|| Error::not_found(format!("{c}: no versions")))?;
            Ok(Bytes::from(std::fs::read(self.proxy.file(
                c.module.as_str(),
                v,
                "info",
            ))?))
        }
    }
    use futures::StreamExt;
}

struct Scripted {
    app: Router,
    fetcher: Arc<scripted::Scripted>,
    lock: Arc<dyn modmesh_lock::Lock>,
    _upstream: tempfile::TempDir,
}

fn scripted(
    settings: modmesh_gateway::Settings,
    tune: impl FnOnce(&mut scripted::Scripted),
) -> Scripted {
    let upstream = tempfile::tempdir().unwrap();
    let proxy = fixtures::standard_proxy(upstream.path()).unwrap();
    let storage: Arc<dyn modmesh_storage::Storage> =
        Arc::new(modmesh_storage::backends::MemoryStorage::new());
    let lock: Arc<dyn modmesh_lock::Lock> = Arc::new(modmesh_lock::drivers::MemoryLock::new());
    let mut f = scripted::Scripted {
        proxy,
        storage: storage.clone(),
        downloads: Default::default(),
        panic_on: None,
        stall: Duration::ZERO,
        gate: None,
        asked: Default::default(),
        down: Default::default(),
    };
    tune(&mut f);
    let fetcher = Arc::new(f);
    let services = modmesh_gateway::Services {
        storage,
        lock: lock.clone(),
        fetcher: fetcher.clone(),
    };
    let service = modmesh_gateway::ModuleService::new(services, settings);
    Scripted {
        app: router(AppState::new(service)),
        fetcher,
        lock,
        _upstream: upstream,
    }
}

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_that_panics_does_not_poison_its_version() {
    let s = scripted(Default::default(), |f| f.panic_on = Some(0));
    let zip = path(fixtures::BASE, "@v/v1.0.0.zip");
    let first = get(&s.app, &zip).await;
    assert_eq!(
        first.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        first.text()
    );
    // The in-flight entry went with the panic: the next request fetches anew.
    let second = tokio::time::timeout(Duration::from_secs(10), get(&s.app, &zip))
        .await
        .expect("the version is not stuck");
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(s.fetcher.downloads.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_miss_queued_for_an_upstream_slot_holds_no_cluster_lock() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let settings = modmesh_gateway::Settings {
        protocol_workers: 1,
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let s = scripted(settings, |f| f.gate = Some(gate.clone()));
    // A takes the only upstream slot and stalls in its download.
    let a = tokio::spawn({
        let app = s.app.clone();
        async move { get(&app, &path(fixtures::BASE, "@v/v1.0.0.zip")).await }
    });
    while s.fetcher.downloads.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B misses too and queues for the slot.
    let b = tokio::spawn({
        let app = s.app.clone();
        async move { get(&app, &path(fixtures::MIXED, "@v/v1.2.3.zip")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While B queues, its version's cluster lock is free for other gateways.
    let b_key = modmesh_proto::Coordinates::new(fixtures::MIXED, fixtures::MIXED_V)
        .unwrap()
        .key();
    let lease = s
        .lock
        .acquire(&b_key, Duration::from_secs(5), Duration::ZERO)
        .await
        .expect("B's lock is not held while B waits for an upstream slot");
    s.lock.release(&lease).await.unwrap();
    gate.add_permits(2);
    assert_eq!(a.await.unwrap().status, StatusCode::OK);
    assert_eq!(b.await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_deadline_bounds_the_whole_miss() {
    let settings = modmesh_gateway::Settings {
        protocol_workers: 1,
        timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let s = scripted(settings, |f| f.stall = Duration::from_secs(30));
    let t = Instant::now();
    let (pa, pb) = (
        path(fixtures::BASE, "@v/v1.0.0.zip"),
        path(fixtures::MIXED, "@v/v1.2.3.zip"),
    );
    let (a, b) = tokio::join!(get(&s.app, &pa), get(&s.app, &pb));
    // One waits in the download, the other for the slot: both end at the
    // deadline with 504, not after a wait per step.
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.text());
    assert_eq!(b.status, StatusCode::GATEWAY_TIMEOUT, "{}", b.text());
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_service_that_never_answers_gives_504_not_a_hang() {
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let env: HashMap<&str, String> = HashMap::from([
        ("ATHENS_STORAGE_SVC_URL", url),
        ("ATHENS_TIMEOUT", "2".into()),
    ]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let (services, _) = wire::services(&cfg).unwrap();
    let app = router(AppState::from_config(services, &cfg).unwrap());
    let t = Instant::now();
    let a = tokio::time::timeout(
        Duration::from_secs(10),
        get(&app, &path(fixtures::BASE, "@v/v1.0.0.info")),
    )
    .await
    .expect("an answer, not a hang");
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.text());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let r = tokio::time::timeout(Duration::from_secs(10), get(&app, "/readyz"))
        .await
        .expect("readiness answers");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    held.abort();
}

#[test]
fn a_remote_fetcher_with_an_in_process_store_is_refused() {
    let env: HashMap<&str, String> =
        HashMap::from([("ATHENS_FETCHER_SVC_URL", "http://127.0.0.1:1".to_string())]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let e = wire::services(&cfg).err().expect("refused");
    assert!(e.message.contains("FetcherSvcURL"), "{e}");
    assert!(e.message.contains("StorageSvcURL"), "{e}");
}

#[test]
fn server_paths_never_reach_an_error_body() {
    use axum::response::IntoResponse;
    let e = modmesh_proto::Error::internal("open /srv/athens/example.com/a/v1.0.0/source.zip: EIO");
    let resp = modmesh_gateway::error::HttpError(e).into_response();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("/srv/athens"), "{text}");
    assert!(text.contains("EIO"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_probes_for_non_modules_asks_the_upstream_once_per_path() {
    let s = scripted(Default::default(), |_| {});
    let paths: Vec<String> = (0..100).map(|i| format!("example.com/m{i}/sub")).collect();
    // 1,000 concurrent probes: ten for each of 100 paths that are not modules.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        for p in &paths {
            let app = s.app.clone();
            let uri = path(p, "@v/list");
            tasks.push(tokio::spawn(async move { get(&app, &uri).await.status }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::NOT_FOUND);
    }
    let asked = s.fetcher.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 100, "{asked:?}");
    for (p, n) in &asked {
        assert_eq!(*n, 1, "{p} asked upstream {n} times");
    }
    // Later probes are answered from the negative cache; @latest is its own
    // question (one more call), then cached too.
    get(&s.app, &path(&paths[0], "@v/list")).await;
    get(&s.app, &path(&paths[0], "@latest")).await;
    get(&s.app, &path(&paths[0], "@latest")).await;
    assert_eq!(s.fetcher.asked.lock().unwrap()[&paths[0]], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn network_modes_with_the_upstream_up_and_down() {
    use modmesh_gateway::modes::NetworkMode;
    let base = fixtures::BASE;
    for mode in [
        NetworkMode::Strict,
        NetworkMode::Offline,
        NetworkMode::Fallback,
    ] {
        let settings = modmesh_gateway::Settings {
            network: mode,
            query_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            ..Default::default()
        };
        let s = scripted(settings, |_| {});
        let z = get(&s.app, &path(base, "@v/v1.0.0.zip")).await;
        assert_eq!(z.status, StatusCode::OK, "{mode:?}: {}", z.text());
        // Upstream up.
        let list = get(&s.app, &path(base, "@v/list")).await;
        assert_eq!(list.status, StatusCode::OK, "{mode:?}: {}", list.text());
        let latest = get(&s.app, &path(base, "@latest")).await;
        assert_eq!(latest.status, StatusCode::OK, "{mode:?}: {}", latest.text());
        let v: serde_json::Value = serde_json::from_slice(&latest.body).unwrap();
        if mode == NetworkMode::Offline {
            assert_eq!(list.text(), "v1.0.0\n", "{mode:?}");
            assert_eq!(v["Version"], "v1.0.0", "{mode:?}");
            assert!(
                s.fetcher.asked.lock().unwrap().is_empty(),
                "offline asked upstream"
            );
        } else {
            assert_eq!(
                list.text(),
                format!("v1.0.0\n{}\n", fixtures::BASE_RC),
                "{mode:?}"
            );
            assert_eq!(v["Version"], fixtures::BASE_RC, "{mode:?}");
        }
        // Upstream down.
        s.fetcher.down.store(true, Ordering::SeqCst);
        let list = get(&s.app, &path(base, "@v/list")).await;
        let latest = get(&s.app, &path(base, "@latest")).await;
        if mode == NetworkMode::Strict {
            assert_eq!(list.status, StatusCode::BAD_GATEWAY, "{}", list.text());
            assert_eq!(latest.status, StatusCode::BAD_GATEWAY, "{}", latest.text());
        } else {
            assert_eq!(list.status, StatusCode::OK, "{mode:?}: {}", list.text());
            assert_eq!(list.text(), "v1.0.0\n", "{mode:?}");
            assert_eq!(latest.status, StatusCode::OK, "{mode:?}: {}", latest.text());
            let v: serde_json::Value = serde_json::from_slice(&latest.body).unwrap();
            assert_eq!(v["Version"], "v1.0.0", "{mode:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn download_modes_decide_what_a_miss_does() {
    use modmesh_gateway::modes::ModesConfig;
    let policy = |mode: &str, url: &str| {
        ModesConfig {
            DownloadMode: mode.into(),
            DownloadURL: url.into(),
            ..Default::default()
        }
        .download_policy()
        .unwrap()
    };
    let settings = |mode: &str, url: &str| modmesh_gateway::Settings {
        downloads: policy(mode, url),
        ..Default::default()
    };
    let info = path(fixtures::BASE, "@v/v1.0.0.info");
    let downloads = |s: &Scripted| s.fetcher.downloads.load(Ordering::SeqCst);

    // none: 404, nothing fetched.
    let s = scripted(settings("none", ""), |_| {});
    assert_eq!(get(&s.app, &info).await.status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(downloads(&s), 0);

    // async: 404 now, the module a moment later.
    let s = scripted(settings("async", ""), |_| {});
    assert_eq!(get(&s.app, &info).await.status, StatusCode::NOT_FOUND);
    let t = Instant::now();
    loop {
        let a = get(&s.app, &info).await;
        if a.status == StatusCode::OK {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never stored: {}",
            a.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(downloads(&s), 1);

    // redirect: 301 to DownloadURL plus the path, nothing fetched.
    let s = scripted(settings("redirect", "https://dl.example/base/"), |_| {});
    let a = get(&s.app, &info).await;
    assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        a.headers[header::LOCATION].to_str().unwrap(),
        format!("https://dl.example/base{info}")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(downloads(&s), 0);

    // async_redirect: 301, and the module is stored in the background, after
    // which it is served here.
    let s = scripted(settings("async_redirect", "https://dl.example"), |_| {});
    let zip = path(fixtures::BASE, "@v/v1.0.0.zip");
    assert_eq!(
        get(&s.app, &zip).await.status,
        StatusCode::MOVED_PERMANENTLY
    );
    let t = Instant::now();
    while get(&s.app, &zip).await.status != StatusCode::OK {
        assert!(t.elapsed() < Duration::from_secs(10), "never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(downloads(&s), 1);

    // A download file: per-module modes, first matching block wins.
    let hcl = format!(
        "downloadURL = \"https://dl.example\"\nmode = \"redirect\"\ndownload \"{}\" {{\n  mode = \"sync\"\n}}\ndownload \"example.com/*\" {{\n  mode = \"none\"\n}}\n",
        fixtures::BASE
    );
    use base64::Engine;
    let custom = format!(
        "custom:{}",
        base64::engine::general_purpose::STANDARD.encode(hcl)
    );
    let s = scripted(settings(&custom, ""), |_| {});
    assert_eq!(get(&s.app, &info).await.status, StatusCode::OK);
    let mixed = path(fixtures::MIXED, &format!("@v/{}.info", fixtures::MIXED_V));
    assert_eq!(get(&s.app, &mixed).await.status, StatusCode::NOT_FOUND);
    assert_eq!(downloads(&s), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mesh_service_that_is_down_is_503_and_the_upstream_502() {
    let closed = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("http://127.0.0.1:{port}")
    };
    let work = tempfile::tempdir().unwrap();
    let gogetdir = work.path().display().to_string();
    let info = path(fixtures::BASE, "@v/v1.0.0.info");
    // Storage down: every read is 503.
    let env: HashMap<&str, String> = HashMap::from([
        ("ATHENS_STORAGE_SVC_URL", closed()),
        ("ATHENS_TIMEOUT", "5".into()),
    ]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let (services, _) = wire::services(&cfg).unwrap();
    let app = router(AppState::from_config(services, &cfg).unwrap());
    let a = get(&app, &info).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    // Lock down: a miss is 503.
    let env: HashMap<&str, String> = HashMap::from([
        ("ATHENS_LOCK_SVC_URL", closed()),
        ("ATHENS_TIMEOUT", "5".into()),
        ("ATHENS_GOGET_DIR", gogetdir.clone()),
    ]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let (services, _) = wire::services(&cfg).unwrap();
    let app = router(AppState::from_config(services, &cfg).unwrap());
    let a = get(&app, &info).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    // The upstream unreachable: 502.
    let env: HashMap<&str, String> = HashMap::from([
        (
            "ATHENS_GO_BINARY_ENV_VARS",
            format!("GOPROXY={};GOSUMDB=off", closed()),
        ),
        ("ATHENS_TIMEOUT", "20".into()),
        ("ATHENS_GOGET_DIR", gogetdir),
    ]);
    let cfg = Config::load(None, move |k| env.get(k).cloned()).unwrap();
    let (services, _) = wire::services(&cfg).unwrap();
    let app = router(AppState::from_config(services, &cfg).unwrap());
    let a = get(&app, &info).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
}
