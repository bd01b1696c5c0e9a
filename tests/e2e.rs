//! End-to-end tests of the module proxy, with the real `go` command as client.
//!
//! Needs the binaries: `cargo build --workspace --bins`, then
//! `cargo test -p modmesh-tests --test e2e -- --nocapture` (timings are printed
//! on stderr). Every test has its own upstream, ports and temporary
//! directories; the heavy ones (processes, big transfers) take [`HEAVY`] so
//! that two of them never compete for the two cores at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use hyper::{Method, StatusCode};
use modmesh_tests::fixtures::{
    sha256_file, standard_proxy, url_path, write_program, ProxyDir, BASE, BASE_RC, LEGACY,
    LEGACY_V, LIB_V2, LIB_V2_V, MIXED, MIXED_V, PSEUDO, PSEUDO_V,
};
use modmesh_tests::goclient::{build_and_run_program, GoEnv};
use modmesh_tests::http::{self, get, get_sha256, raw_get, raw_request, truncate};
use modmesh_tests::objstores;
use modmesh_tests::procs::Proc;
use modmesh_tests::server::StaticServer;
use modmesh_tests::topology::{embedded_spec, restart_gateway, start_gateway, Mesh, Store};

/// Serialises the tests that start processes or move big files.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Prints a timing line for `phase` of `test`.
fn lap(test: &str, phase: &str, t: Instant) {
    eprintln!("[{test}] {phase}: {:.1} s", t.elapsed().as_secs_f64());
}

/// Fails unless every `.zip` was requested from the upstream at most once.
fn assert_each_zip_fetched_once(upstream: &StaticServer) -> Result<()> {
    let many: Vec<_> = upstream
        .counts()
        .into_iter()
        .filter(|(p, n)| p.ends_with(".zip") && *n > 1)
        .collect();
    ensure!(
        many.is_empty(),
        "zips fetched upstream more than once: {many:?}"
    );
    Ok(())
}

/// A temporary directory holding the standard upstream (served over HTTP)
/// and an empty disk store.
struct World {
    tmp: tempfile::TempDir,
    proxy: ProxyDir,
    upstream: StaticServer,
    store: PathBuf,
}

impl World {
    fn new() -> Result<World> {
        let tmp = tempfile::tempdir()?;
        let proxy = standard_proxy(tmp.path().join("upstream"))?;
        let upstream = StaticServer::start(proxy.root())?;
        let store = tmp.path().join("store");
        std::fs::create_dir(&store)?;
        Ok(World {
            tmp,
            proxy,
            upstream,
            store,
        })
    }

    /// An embedded gateway over the store, fetching from the upstream.
    async fn gateway(&self) -> Result<Proc> {
        let spec = embedded_spec(
            "gateway",
            self.tmp.path(),
            &Store::Disk(self.store.clone()),
            &self.upstream.url(),
        )?;
        start_gateway(spec).await
    }

    /// The mesh (two gateways and fetchers) over the store.
    async fn mesh(&self) -> Result<Mesh> {
        Mesh::start(
            self.tmp.path(),
            &Store::Disk(self.store.clone()),
            &self.upstream.url(),
            2,
        )
        .await
    }
}

/// The fixtures alone: the program builds with GOPROXY pointing straight at
/// the upstream server (no gateway involved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_build_directly_against_upstream() -> Result<()> {
    let t = Instant::now();
    let tmp = tempfile::tempdir()?;
    let proxy = standard_proxy(tmp.path().join("upstream"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let prog = tmp.path().join("prog");
    write_program(&prog)?;
    let go = GoEnv::new(&upstream.url())?;
    build_and_run_program(&go, &prog).await?;
    let zip = url_path(MIXED, MIXED_V, "zip");
    assert_eq!(upstream.count(&zip), 1, "{:?}", upstream.counts());
    // A big module downloads too, outside any main module.
    let big = ProxyDir::new(tmp.path().join("upstream"))?;
    let zip_path = big.add_big("example.com/big", "v1.0.0", 2 << 20)?;
    let out = go
        .run(
            tmp.path(),
            &["mod", "download", "-json", "example.com/big@v1.0.0"],
        )
        .await?;
    let json: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let cached = json["Zip"]
        .as_str()
        .ok_or_else(|| anyhow!("no Zip in {json}"))?;
    assert_eq!(sha256_file(Path::new(cached))?, sha256_file(&zip_path)?);
    lap("fixtures", "total", t);
    Ok(())
}

/// Protocol checks against a warm gateway whose upstream still runs.
async fn check_protocol(gw: &str, proxy: &ProxyDir) -> Result<()> {
    for path in ["/healthz", "/readyz", "/version"] {
        let r = get(&format!("{gw}{path}")).await?;
        ensure!(
            r.status == StatusCode::OK,
            "{path}: {} {}",
            r.status,
            r.text()
        );
    }
    // .info of a canonical version names exactly that version; x-request-id is set.
    for (m, v) in [
        (MIXED, MIXED_V),
        (LEGACY, LEGACY_V),
        (PSEUDO, PSEUDO_V),
        (LIB_V2, LIB_V2_V),
        (BASE, BASE_RC),
    ] {
        let r = get(&format!("{gw}{}", url_path(m, v, "info"))).await?;
        ensure!(
            r.status == StatusCode::OK,
            "{m}@{v}.info: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            r.headers.contains_key("x-request-id"),
            "no x-request-id on {m}@{v}.info"
        );
        let info: serde_json::Value = serde_json::from_slice(&r.body)
            .with_context(|| format!("{m}@{v}.info is not JSON: {}", r.text()))?;
        ensure!(info["Version"] == v, "{m}@{v}.info says {info}");
        let r = get(&format!("{gw}{}", url_path(m, v, "mod"))).await?;
        let want = std::fs::read(proxy.file(m, v, "mod"))?;
        ensure!(
            r.status == StatusCode::OK && r.body[..] == want[..],
            "{m}@{v}.mod: {} {:?}, want {:?}",
            r.status,
            r.text(),
            String::from_utf8_lossy(&want)
        );
        // HEAD on the zip: 200 with the length, no body.
        let zip_len = std::fs::metadata(proxy.file(m, v, "zip"))?.len();
        let r = http::request(Method::HEAD, &format!("{gw}{}", url_path(m, v, "zip"))).await?;
        ensure!(r.status == StatusCode::OK, "HEAD {m}@{v}.zip: {}", r.status);
        let len = r
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok());
        ensure!(
            len.is_none() || len == Some(&zip_len.to_string()),
            "HEAD {m}@{v}.zip content-length {len:?}, want {zip_len}"
        );
    }
    // list and @latest.
    let r = get(&format!("{gw}/example.com/base/@v/list")).await?;
    let versions: BTreeSet<&str> = std::str::from_utf8(&r.body)?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(
        r.status == StatusCode::OK && versions == BTreeSet::from(["v1.0.0", BASE_RC]),
        "base list: {} {:?}",
        r.status,
        r.text()
    );
    let r = get(&format!("{gw}/example.com/!mixed/!case/@v/list")).await?;
    ensure!(
        r.status == StatusCode::OK && r.text().lines().any(|l| l.starts_with(MIXED_V)),
        "Mixed/Case list: {} {:?}",
        r.status,
        r.text()
    );
    let r = get(&format!("{gw}/example.com/base/@latest")).await?;
    ensure!(
        r.status == StatusCode::OK,
        "base @latest: {} {}",
        r.status,
        r.text()
    );
    let info: serde_json::Value = serde_json::from_slice(&r.body)?;
    ensure!(
        info["Version"] == "v1.0.0",
        "base @latest says {info} (want the release)"
    );
    // Unknown modules and versions are 404/410 so the go command can fall back.
    for path in [
        "/example.com/nope/@v/list".to_string(),
        "/example.com/nope/@latest".to_string(),
        url_path(BASE, "v9.9.9", "info"),
        url_path(BASE, "v9.9.9", "zip"),
    ] {
        let r = get(&format!("{gw}{path}")).await?;
        ensure!(
            r.status == StatusCode::NOT_FOUND || r.status == StatusCode::GONE,
            "{path}: {} {} (want 404 or 410)",
            r.status,
            r.text()
        );
    }
    Ok(())
}

/// One embedded gateway on disk: the program builds through it; then, with the
/// upstream stopped and the gateway restarted on the same disk root, it
/// builds again (fresh module cache, same go.sum) from the store alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_builds_then_serves_from_store_alone() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let mut w = World::new()?;
    let mut gw = w.gateway().await?;
    lap("embedded", "gateway ready", t);

    let prog = w.tmp.path().join("prog");
    write_program(&prog)?;
    build_and_run_program(&GoEnv::new(&gw.url())?, &prog)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", gw.log_tail(6000)))?;
    lap("embedded", "cold build through gateway", t);
    assert_each_zip_fetched_once(&w.upstream)?;
    check_protocol(&gw.url(), &w.proxy)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", gw.log_tail(6000)))?;
    lap("embedded", "protocol checks", t);

    w.upstream.stop();
    restart_gateway(&mut gw).await?;
    std::fs::remove_file(prog.join("app"))?;
    build_and_run_program(&GoEnv::new(&gw.url())?, &prog)
        .await
        .map_err(|e| anyhow!("build from the store alone: {e:#}\n{}", gw.log_tail(6000)))?;
    lap("embedded", "build from store alone after restart", t);
    gw.stop()?;
    Ok(())
}

/// The mesh: storage-svc (disk), lock-svc, two fetchers, two gateways. Build
/// through gateway A; stop the upstream; restart gateway B; build through B
/// from the store alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_builds_then_serves_from_store_alone() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let mut w = World::new()?;
    let mut mesh = w.mesh().await?;
    lap("mesh", "6 processes ready", t);

    let prog = w.tmp.path().join("prog");
    write_program(&prog)?;
    build_and_run_program(&GoEnv::new(&mesh.gateways[0].url())?, &prog)
        .await
        .map_err(|e| anyhow!("build through gateway A: {e:#}\n{}", mesh.log_tails(4000)))?;
    lap("mesh", "cold build through gateway A", t);
    assert_each_zip_fetched_once(&w.upstream)?;

    // A request id sent to the gateway travels every gRPC hop into each
    // service's logs: a cold .info goes gateway → lock-svc, storage-svc,
    // fetcher-svc → storage-svc.
    let rid = "e2e-request-id-7f3a";
    let target = url_path(BASE, "v1.0.0", "info");
    let reply = raw_request(
        &mesh.gateways[0].spec.addr,
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply
            .text
            .to_ascii_lowercase()
            .contains(&format!("x-request-id: {rid}")),
        "the gateway echoes the request id: {}",
        reply.text
    );
    for p in [
        &mesh.gateways[0],
        &mesh.lock,
        &mesh.storage,
        &mesh.fetchers[0],
    ] {
        assert!(
            p.log_text().contains(rid),
            "{} logs do not carry request id {rid}:\n{}",
            p.spec.label,
            p.log_tail(3000)
        );
    }
    assert!(
        !mesh.fetchers[1].log_text().contains(rid),
        "the other fetcher never saw this request"
    );

    w.upstream.stop();
    restart_gateway(&mut mesh.gateways[1]).await?;
    std::fs::remove_file(prog.join("app"))?;
    build_and_run_program(&GoEnv::new(&mesh.gateways[1].url())?, &prog)
        .await
        .map_err(|e| {
            anyhow!(
                "build through gateway B from the store alone: {e:#}\n{}",
                mesh.log_tails(4000)
            )
        })?;
    lap(
        "mesh",
        "build through restarted gateway B from store alone",
        t,
    );
    mesh.stop()?;
    Ok(())
}

/// 50 concurrent cold `.zip` requests (plus `.info` and `.mod` ones) spread
/// over `gateways`, with the upstream answering slowly: exactly one upstream
/// request for the zip, and every client gets 200 and the upstream's bytes.
async fn single_flight(test: &str, gateways: &[String], w: &World) -> Result<()> {
    let (m, v) = (MIXED, MIXED_V);
    w.upstream.set_delay(Duration::from_millis(300));
    let want_zip = sha256_file(&w.proxy.file(m, v, "zip"))?;
    let want_mod = std::fs::read(w.proxy.file(m, v, "mod"))?;
    let mut jobs = Vec::new();
    for i in 0..50 {
        jobs.push((gateways[i % gateways.len()].clone(), "zip"));
    }
    for i in 0..10 {
        jobs.push((gateways[i % gateways.len()].clone(), "info"));
        jobs.push((gateways[(i + 1) % gateways.len()].clone(), "mod"));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(jobs.len()));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (gw, ext) in jobs {
        let barrier = barrier.clone();
        let url = format!("{gw}{}", url_path(m, v, ext));
        tasks.spawn(async move {
            barrier.wait().await;
            let res = if ext == "zip" {
                get_sha256(&url).await.map(|(s, h, _)| (s, h.into_bytes()))
            } else {
                get(&url).await.map(|r| (r.status, r.body.to_vec()))
            };
            (url, ext, res)
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (url, ext, res) = done?;
        match res {
            Err(e) => failures.push(format!("{url}: {e:#}")),
            Ok((status, body)) => {
                let ok = status == StatusCode::OK
                    && match ext {
                        "zip" => body == want_zip.as_bytes(),
                        "mod" => body == want_mod,
                        _ => serde_json::from_slice::<serde_json::Value>(&body)
                            .is_ok_and(|j| j["Version"] == v),
                    };
                if !ok {
                    failures.push(format!(
                        "{url}: {status} {:?}",
                        truncate(&String::from_utf8_lossy(&body), 200)
                    ));
                }
            }
        }
    }
    lap(test, "70 concurrent cold requests answered", t);
    eprintln!("[{test}] upstream requests: {:?}", w.upstream.counts());
    w.upstream.set_delay(Duration::ZERO);
    let zip_fetches = w.upstream.count(&url_path(m, v, "zip"));
    ensure!(
        failures.is_empty() && zip_fetches == 1,
        "{} failed requests; upstream saw {zip_fetches} request(s) for the zip (want 1); upstream counts {:?}\n{}",
        failures.len(),
        w.upstream.counts(),
        failures.join("\n")
    );
    Ok(())
}

/// Single flight across the two gateways of a mesh (shared lock-svc).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_across_mesh_gateways() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let w = World::new()?;
    let mut mesh = w.mesh().await?;
    let urls: Vec<String> = mesh.gateways.iter().map(Proc::url).collect();
    single_flight("single-flight mesh", &urls, &w)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", mesh.log_tails(3000)))?;
    mesh.stop()?;
    lap("single-flight mesh", "total", t);
    Ok(())
}

/// Single flight within one embedded gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_embedded() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let w = World::new()?;
    let mut gw = w.gateway().await?;
    single_flight("single-flight embedded", &[gw.url()], &w)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", gw.log_tail(6000)))?;
    gw.stop()?;
    lap("single-flight embedded", "total", t);
    Ok(())
}

/// SIGTERM while a cold request waits on a slow upstream: the request still
/// completes with the right bytes, and the gateway then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let w = World::new()?;
    w.upstream.set_delay(Duration::from_millis(1500));
    let mut gw = w.gateway().await?;
    let url = format!("{}{}", gw.url(), url_path(MIXED, MIXED_V, "zip"));
    let request = tokio::spawn(async move { get_sha256(&url).await });
    // Let the request reach the gateway and start its fetch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        !request.is_finished(),
        "the request should still be in flight"
    );
    let stopped = tokio::task::spawn_blocking(move || {
        let r = gw.stop();
        (r, gw)
    });
    let (status, sha, _) = request.await??;
    ensure!(status == StatusCode::OK, "in-flight request got {status}");
    ensure!(
        sha == sha256_file(&w.proxy.file(MIXED, MIXED_V, "zip"))?,
        "in-flight request got other bytes"
    );
    let (r, gw) = stopped.await?;
    r.map_err(|e| anyhow!("{e:#}\n{}", gw.log_tail(4000)))?;
    lap("sigterm", "in-flight request finished, gateway exited 0", t);
    Ok(())
}

/// Every path under `dir` (relative), directories included.
fn tree(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            out.insert(p.strip_prefix(base)?.to_path_buf());
            if e.file_type()?.is_dir() {
                walk(base, &p, out)?;
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// The hostile request targets; `sentinel` is an absolute path a shell
/// injection would create.
fn hostile_targets(sentinel: &str) -> Vec<Vec<u8>> {
    let s = sentinel;
    let long = "a".repeat(8192);
    let text = [
        // `..` in every encoding.
        "/../../../../../../etc/passwd".to_string(),
        "/example.com/../../secret.txt/@v/list".into(),
        "/example.com/a/@v/../../../../secret.txt".into(),
        "/example.com/a/@v/...info".into(),
        "/example.com/a/@v/...zip".into(),
        "/../secret.txt/@v/list".into(),
        "/%2e%2e/%2e%2e/%2e%2e/secret.txt/@v/list".into(),
        "/%2E%2E/%2E%2E/%2E%2E/secret.txt/@v/list".into(),
        "/example.com/a/@v/%2e%2e.info".into(),
        "/%252e%252e/%252e%252e/secret.txt/@v/list".into(),
        "/example.com/..%2f..%2f..%2fsecret.txt/@v/list".into(),
        "/example.com/a/@v/..%2f..%2f..%2fsecret.txt.info".into(),
        "/example.com/a/@v/..%2F..%2F..%2Fsecret.txt.mod".into(),
        "/example.com%2f..%2f..%2f..%2fsecret.txt/@v/list".into(),
        "/example.com/a/@v/%2f..%2f..%2fsecret.txt.zip".into(),
        "/example.com\\..\\..\\..\\secret.txt/@v/list".into(),
        "/example.com/a/@v/..\\..\\..\\secret.txt.info".into(),
        "/example.com/a/@v/v1.0.0\\..\\..\\..\\secret.txt.zip".into(),
        "/example.com/a/@v/%5c..%5c..%5csecret.txt.info".into(),
        "/example.com/a/..%5c..%5c..%5csecret.txt/@v/list".into(),
        "//secret.txt/@v/list".into(),
        "/example.com//a/@v/list".into(),
        "/./example.com/a/@v/list".into(),
        // Bad `!` escapes.
        "/example.com/!/@v/list".into(),
        "/example.com/!!a/@v/list".into(),
        "/example.com/!A/@v/list".into(),
        "/example.com/a!/@v/list".into(),
        "/example.com/!1/@v/list".into(),
        "/example.com/a/@v/v1.0.0!.info".into(),
        "/example.com/a/@v/v1.0.0-!R!C.info".into(),
        "/example.com/a/@v/v1.0.0-!!rc.mod".into(),
        // Uppercase in escaped paths.
        "/example.com/Mixed/Case/@v/list".into(),
        "/example.com/Mixed/Case/@latest".into(),
        "/example.com/a/@v/V1.0.0.info".into(),
        "/example.com/a/@v/v1.0.0-RC.zip".into(),
        // Non-ASCII, percent-encoded (raw bytes below).
        "/example.com/%C3%A9/@v/list".into(),
        "/example.com/a/@v/v1.0.0-%C3%A9.info".into(),
        "/example.com/%FF%FE/@v/list".into(),
        // NUL, percent-encoded (raw below).
        "/example.com/a%00/@v/list".into(),
        "/example.com/a/@v/v1.0.0%00.info".into(),
        "/example.com/a/@v/v1.0.0.info%00.zip".into(),
        // 8 KB paths.
        format!("/example.com/{long}/@v/list"),
        format!("/example.com/a/@v/v1.0.0-{long}.info"),
        // Leading `-`: must never reach a command line as a flag.
        "/-x.com/@v/list".into(),
        "/-x.com/@latest".into(),
        "/example.com/a/@v/-v1.info".into(),
        "/--help/@v/list".into(),
        "/example.com/a/@v/--help.info".into(),
        "/example.com/a/@v/-modfile=x.mod".into(),
        // Shell metacharacters in version queries and paths.
        format!("/example.com/a/@v/$(touch%20{s}).info"),
        format!("/example.com/a/@v/$(touch${{IFS}}{s}).info"),
        format!("/example.com/a/@v/%24%28touch%20{s}%29.info"),
        format!("/example.com/a/@v/v1.0.0;touch%20{s}.info"),
        format!("/example.com/a/@v/v1.0.0%3Btouch%20{s}.info"),
        format!("/example.com/a/@v/v1.0.0|touch%20{s}.info"),
        format!("/example.com/a/@v/v1.0.0%7Ctouch%20{s}.info"),
        format!("/example.com/a/@v/`touch%20{s}`.info"),
        format!("/example.com/a/@v/%60touch%20{s}%60.info"),
        format!("/example.com/a/@v/v1.0.0&&touch%20{s}.info"),
        format!("/example.com/a/@v/v1.0.0%26%26touch%20{s}.mod"),
        format!("/example.com/$(touch%20{s})/@v/list"),
        "/example.com/a/@v/$(touch%20pwned).info".into(),
        "/example.com/a/@v/;touch%20pwned;.info".into(),
        "/$(touch%20pwned)/@latest".into(),
        "/example.com/a/@v/master;touch%20pwned.info".into(),
    ];
    let mut out: Vec<Vec<u8>> = text.iter().map(|t| t.as_bytes().to_vec()).collect();
    // Raw non-ASCII and NUL bytes in the request line.
    out.push("/example.com/é/@v/list".as_bytes().to_vec());
    out.push("/exämple.com/a/@v/v1.0.0.info".as_bytes().to_vec());
    out.push(b"/example.com/\xff\xfe/@v/list".to_vec());
    out.push(b"/example.com/a\0/@v/list".to_vec());
    out.push(b"/example.com/a/@v/v1.0.0\0.info".to_vec());
    out
}

/// Hostile paths, sent raw, against a gateway whose disk store is a
/// subdirectory of a temporary directory: every answer is 4xx, the gateway
/// stays up, no shell injection runs, and nothing is created inside or
/// outside the store root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_rejected() -> Result<()> {
    let t = Instant::now();
    let work = tempfile::tempdir()?; // upstream, logs, goget dir, cwd
    let jail = tempfile::tempdir()?; // holds only the store root and the test's files
    let root = jail.path().join("store");
    std::fs::create_dir(&root)?;
    std::fs::write(jail.path().join("secret.txt"), "TOP-SECRET-CONTENT")?;
    let sentinel = jail.path().join("pwned");
    let proxy = standard_proxy(work.path().join("upstream"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let spec = embedded_spec(
        "gateway",
        work.path(),
        &Store::Disk(root.clone()),
        &upstream.url(),
    )?;
    let mut gw = start_gateway(spec).await?;
    let addr = gw.spec.addr.clone();

    // One legitimate fetch, so the store is not empty.
    let r = get(&format!("{}{}", gw.url(), url_path(BASE, "v1.0.0", "info"))).await?;
    ensure!(
        r.status == StatusCode::OK,
        "legit .info: {} {}\n{}",
        r.status,
        r.text(),
        gw.log_tail(4000)
    );
    // `.info` is answered while the zip is still being fetched, the `.zip`
    // once it is verified; the save ends soon after.
    let r = get(&format!("{}{}", gw.url(), url_path(BASE, "v1.0.0", "zip"))).await?;
    ensure!(r.status == StatusCode::OK, "legit .zip: {}", r.status);
    until_stored(&root, BASE, "v1.0.0").await?;
    let before = tree(jail.path())?;
    let upstream_before = upstream.counts();

    let targets = hostile_targets(&sentinel.display().to_string());
    let mut bad = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for target in &targets {
        let shown = truncate(
            &String::from_utf8_lossy(target).escape_debug().to_string(),
            120,
        );
        let reply = raw_get(&addr, target).await;
        if let Ok(r) = &reply {
            *statuses.entry(r.status).or_default() += 1;
        }
        match reply {
            Ok(r) if (400..500).contains(&r.status) && !r.text.contains("TOP-SECRET") => {}
            Ok(r) => bad.push(format!(
                "{shown} -> {} {:?}",
                r.status,
                truncate(&r.text, 300)
            )),
            Err(e) => bad.push(format!("{shown} -> no answer: {e:#}")),
        }
    }
    let health = get(&format!("{}/healthz", gw.url())).await;
    let alive = gw.try_exit().is_none();
    let after = tree(jail.path())?;
    let created: Vec<_> = after.difference(&before).collect();
    let pwned: Vec<_> = tree(work.path())?
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("pwned"))
        .collect();
    lap(
        "hostile",
        &format!("{} raw requests, statuses {statuses:?}", targets.len()),
        t,
    );

    let mut problems = Vec::new();
    if !bad.is_empty() {
        problems.push(format!(
            "{} answers were not 4xx:\n  {}",
            bad.len(),
            bad.join("\n  ")
        ));
    }
    if !alive || !matches!(&health, Ok(r) if r.status == StatusCode::OK) {
        problems.push(format!(
            "gateway not healthy afterwards (alive: {alive}, /healthz: {:?})",
            health.map(|r| r.status)
        ));
    }
    if sentinel.exists() || !pwned.is_empty() {
        problems.push(format!(
            "a shell injection ran: {sentinel:?} exists: {}, found {pwned:?}",
            sentinel.exists()
        ));
    }
    if upstream.counts() != upstream_before {
        problems.push(format!(
            "hostile requests reached the upstream: before {upstream_before:?}, after {:?}",
            upstream.counts()
        ));
    }
    if !created.is_empty() {
        problems.push(format!(
            "files appeared in {}: {created:?}",
            jail.path().display()
        ));
    }
    if !problems.is_empty() {
        bail!("{}\n{}", problems.join("\n"), gw.log_tail(6000));
    }
    gw.stop()?;
    Ok(())
}

/// A 200 MiB module goes cold through an embedded gateway (`go mod
/// download`), then 4 clients fetch it warm at once; all bytes match the
/// upstream and the gateway's peak RSS stays under 128 MiB. Then the same
/// with the tier's disk level on (the gateway restarted): one read fills
/// it while streaming, 4 clients are served from its file, and the peak
/// RSS stays under 128 MiB too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_zip_streams_with_bounded_memory() -> Result<()> {
    const SIZE: u64 = 200 << 20;
    const MODULE: &str = "example.com/big";
    const VERSION: &str = "v1.0.0";
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let tmp = tempfile::tempdir()?;
    let proxy = ProxyDir::new(tmp.path().join("upstream"))?;
    let p = proxy.clone();
    let (zip_path, want) = tokio::task::spawn_blocking(move || -> Result<_> {
        let zip = p.add_big(MODULE, VERSION, SIZE)?;
        let sha = sha256_file(&zip)?;
        Ok((zip, sha))
    })
    .await??;
    let zip_len = std::fs::metadata(&zip_path)?.len();
    lap("big-zip", "200 MiB module written and hashed", t);

    let upstream = StaticServer::start(proxy.root())?;
    let store = tmp.path().join("store");
    std::fs::create_dir(&store)?;
    let spec = embedded_spec("gateway", tmp.path(), &Store::Disk(store), &upstream.url())?;
    let mut gw = start_gateway(spec).await?;

    let go = GoEnv::new(&gw.url())?;
    let out = go
        .run(
            tmp.path(),
            &["mod", "download", "-json", &format!("{MODULE}@{VERSION}")],
        )
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", gw.log_tail(6000)))?;
    lap("big-zip", "cold `go mod download` through the gateway", t);
    let json: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let cached = PathBuf::from(
        json["Zip"]
            .as_str()
            .ok_or_else(|| anyhow!("no Zip in {json}"))?,
    );
    let got = tokio::task::spawn_blocking(move || sha256_file(&cached)).await??;
    ensure!(
        got == want,
        "go mod download got zip sha256 {got}, upstream has {want}"
    );
    drop(go);

    let four_warm = |gw_url: String, what: &'static str| {
        let (want, url) = (
            want.clone(),
            format!("{gw_url}{}", url_path(MODULE, VERSION, "zip")),
        );
        async move {
            let warm = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let url = url.clone();
                tasks.spawn(async move { get_sha256(&url).await });
            }
            while let Some(done) = tasks.join_next().await {
                let (status, sha, len) = done??;
                ensure!(
                    status == StatusCode::OK && sha == want && len == zip_len,
                    "warm client got {status}, {len} bytes, sha256 {sha} (want 200, {zip_len}, {want})"
                );
            }
            let secs = warm.elapsed().as_secs_f64();
            eprintln!(
                "[big-zip] 4 warm clients{what}: {:.1} s, {:.0} MiB/s aggregate",
                secs,
                4.0 * zip_len as f64 / secs / (1 << 20) as f64
            );
            Ok(())
        }
    };
    four_warm(gw.url(), "").await?;
    let hwm = gw.vm_hwm_kib()?;
    eprintln!("[big-zip] gateway VmHWM {} MiB", hwm / 1024);
    ensure!(
        upstream.count(&url_path(MODULE, VERSION, "zip")) == 1,
        "upstream counts {:?}",
        upstream.counts()
    );
    ensure!(
        hwm < 128 * 1024,
        "gateway peak RSS {} MiB >= 128 MiB after a 200 MiB zip\n{}",
        hwm / 1024,
        gw.log_tail(4000)
    );

    // The disk level on: a first read fills it, 4 come from its file.
    let disk = tmp.path().join("tier-disk");
    gw.spec
        .set("ATHENS_TIER_DISK_PATH", disk.to_string_lossy().into_owned());
    restart_gateway(&mut gw).await?;
    let url = format!("{}{}", gw.url(), url_path(MODULE, VERSION, "zip"));
    let (status, sha, _) = get_sha256(&url).await?;
    ensure!(
        status == StatusCode::OK && sha == want,
        "filling read: {status} {sha}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tier_zip_files(&disk)?.len() != 1 {
        ensure!(
            Instant::now() < deadline,
            "no zip on disk 10 s after the fill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    four_warm(gw.url(), " from the disk level").await?;
    let hwm = gw.vm_hwm_kib()?;
    eprintln!(
        "[big-zip] gateway VmHWM with the disk level {} MiB",
        hwm / 1024
    );
    let metrics = get(&format!("{}/metrics", gw.url())).await?.text();
    let from_disk: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("modmesh_tier_reads_total{")
                && l.contains("file=\"zip\"")
                && l.contains("level=\"disk\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(
        from_disk >= 4.0,
        "{from_disk} zip reads from the disk level, want 4\n{metrics}"
    );
    ensure!(
        hwm < 128 * 1024,
        "gateway peak RSS {} MiB >= 128 MiB with the disk level\n{}",
        hwm / 1024,
        gw.log_tail(4000)
    );
    gw.stop()?;
    lap("big-zip", "total", t);
    Ok(())
}

/// Resolves the nested program in `dir` through the gateway at `gw`:
/// `go mod tidy` (every prefix of both package paths asked), `go build`,
/// `go get` of a module version and of a package path, and 404 for the
/// prefixes that are not modules.
async fn resolve_nested_program(
    go: &modmesh_tests::chains::SharedBuildGo,
    gw: &str,
    dir: &Path,
) -> Result<()> {
    use modmesh_tests::chains::{
        build_and_expect, nested_output, write_nested_program, INNER, INNER_V, OUTER,
    };
    let env = go.env(gw)?;
    write_nested_program(dir)?;
    env.run(dir, &["mod", "tidy"]).await?;
    let go_mod = std::fs::read_to_string(dir.join("go.mod"))?;
    ensure!(
        go_mod.contains(&format!("{OUTER} v1.1.0"))
            && go_mod.contains(&format!("{INNER} {INNER_V}")),
        "go.mod after tidy:\n{go_mod}"
    );
    build_and_expect(&env, dir, &nested_output("v1.1.0")).await?;
    env.run(dir, &["get", &format!("{OUTER}@v1.0.0")]).await?;
    build_and_expect(&env, dir, &nested_output("v1.0.0")).await?;
    env.run(dir, &["get", &format!("{OUTER}/util@latest")])
        .await?;
    build_and_expect(&env, dir, &nested_output("v1.1.0")).await?;
    for path in [
        "/example.com/outer/util/@v/list",
        "/example.com/outer/util/@latest",
        "/example.com/outer/inner/deep/pkg/@v/list",
        "/example.com/outer/inner/deep/@latest",
        "/example.com/@v/list",
        "/example.com/outer/@v/v9.9.9.info",
        "/example.com/outer/@v/no-such-branch.info",
    ] {
        let r = get(&format!("{gw}{path}")).await?;
        ensure!(
            r.status == StatusCode::NOT_FOUND,
            "{path}: {} {} (want 404)",
            r.status,
            r.text()
        );
    }
    Ok(())
}

/// With a fetcher `GOPROXY` of `<made-up upstream>,direct` (then `|`)
/// where `direct` reaches nothing, packages in sub-directories of made-up
/// modules, one in a nested module whose prefix is also a module, resolve
/// with `go mod tidy`, `go get` and `go build` through an embedded gateway
/// and through the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_directory_packages_resolve_through_a_chain_whose_direct_is_unreachable() -> Result<()>
{
    use modmesh_tests::chains::{add_nested_modules, unreachable_direct_env, SharedBuildGo};
    use modmesh_tests::topology::Mesh;
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let w = World::new()?;
    let go = SharedBuildGo::new()?;
    add_nested_modules(&w.proxy)?;
    for (i, sep) in [",", "|"].into_iter().enumerate() {
        let chain = format!("{}{sep}direct", w.upstream.url());
        let env_vars = unreachable_direct_env(&chain);

        let store = w.tmp.path().join(format!("store-embedded-{i}"));
        std::fs::create_dir(&store)?;
        let mut spec = embedded_spec(
            &format!("gateway-chain-{i}"),
            w.tmp.path(),
            &Store::Disk(store),
            &chain,
        )?;
        spec.set("ATHENS_GO_BINARY_ENV_VARS", env_vars.clone());
        let mut gw = start_gateway(spec).await?;
        resolve_nested_program(
            &go,
            &gw.url(),
            &w.tmp.path().join(format!("prog-embedded-{i}")),
        )
        .await
        .map_err(|e| anyhow!("GOPROXY={chain} (embedded): {e:#}\n{}", gw.log_tail(8000)))?;
        gw.stop()?;
        lap("chain", &format!("embedded, '{sep}'"), t);

        let store = w.tmp.path().join(format!("store-mesh-{i}"));
        std::fs::create_dir(&store)?;
        let mut mesh = Mesh::start_with_fetcher_env(
            &w.tmp.path().join(format!("mesh-{i}")),
            &Store::Disk(store),
            &chain,
            1,
            &[("ATHENS_GO_BINARY_ENV_VARS", env_vars.as_str())],
        )
        .await?;
        resolve_nested_program(
            &go,
            &mesh.gateways[0].url(),
            &w.tmp.path().join(format!("prog-mesh-{i}")),
        )
        .await
        .map_err(|e| anyhow!("GOPROXY={chain} (mesh): {e:#}\n{}", mesh.log_tails(6000)))?;
        mesh.stop()?;
        lap("chain", &format!("mesh, '{sep}'"), t);
    }
    // Four topologies, each with its own store and module cache: each zip
    // is fetched from the upstream at most once by each.
    let many: Vec<_> = w
        .upstream
        .counts()
        .into_iter()
        .filter(|(p, n)| p.ends_with(".zip") && *n > 4)
        .collect();
    ensure!(many.is_empty(), "zips fetched too often: {many:?}");
    Ok(())
}

/// Real modules through the real upstream `go env GOPROXY` names on this
/// machine: `go mod tidy` through an embedded gateway (whose fetcher uses
/// that same GOPROXY, `direct` included) gives the same go.mod and go.sum
/// as straight from the upstream. Skipped (printing "SKIPPED: ...") only
/// when that upstream cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_modules_tidy_through_the_gateway_as_straight_from_the_upstream() -> Result<()> {
    use modmesh_tests::chains::{first_proxy_url, go_env, go_reaches, write_real_program};
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let goproxy = go_env("GOPROXY")?;
    let Some(url) = first_proxy_url(&goproxy) else {
        eprintln!("SKIPPED: go env GOPROXY ({goproxy}) names no proxy to compare with");
        return Ok(());
    };
    if let Err(e) = go_reaches(&url, "golang.org/x/text", Duration::from_secs(60)).await {
        eprintln!("SKIPPED: the upstream {url} cannot be reached: {e:#}");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;

    let straight = tmp.path().join("straight");
    write_real_program(&straight)?;
    GoEnv::new(&goproxy)?
        .run(&straight, &["mod", "tidy"])
        .await?;
    lap("real", "tidy straight from the upstream", t);

    let store = tmp.path().join("store");
    std::fs::create_dir(&store)?;
    let mut spec = embedded_spec("gateway-real", tmp.path(), &Store::Disk(store), &goproxy)?;
    let gosumdb = go_env("GOSUMDB")?;
    spec.set(
        "ATHENS_GO_BINARY_ENV_VARS",
        format!("GOPROXY={goproxy};GOSUMDB={gosumdb}"),
    );
    let mut gw = start_gateway(spec).await?;
    let through = tmp.path().join("through");
    write_real_program(&through)?;
    let env = GoEnv::new(&gw.url())?;
    env.run(&through, &["mod", "tidy"])
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", gw.log_tail(8000)))?;
    lap("real", "tidy through the gateway", t);
    for file in ["go.mod", "go.sum"] {
        let a = std::fs::read_to_string(straight.join(file))?;
        let b = std::fs::read_to_string(through.join(file))?;
        ensure!(
            a == b,
            "{file} differs:\n--- straight ---\n{a}\n--- through the gateway ---\n{b}"
        );
    }
    let go_mod = std::fs::read_to_string(through.join("go.mod"))?;
    ensure!(
        go_mod.contains("golang.org/x/text v") && go_mod.contains("github.com/google/uuid v"),
        "{go_mod}"
    );
    // A package path that is not a module is 404 through the gateway.
    let r = get(&format!("{}/golang.org/x/text/language/@v/list", gw.url())).await?;
    ensure!(
        r.status == StatusCode::NOT_FOUND,
        "golang.org/x/text/language list: {} {}",
        r.status,
        r.text()
    );
    gw.stop()?;
    lap("real", "total", t);
    Ok(())
}

/// The checksum-database proxy: with its default `GOSUMDB` form pointing
/// at a database the tests sign (`tests/sumdbhelper`), the go command
/// verifies every module through the gateway; with the database stopped,
/// a machine with empty caches verifies the same modules again from the
/// gateway's cache; a lookup under `NoSumPatterns` is 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sumdb_proxy_verifies_online_and_with_the_database_down() -> Result<()> {
    use modmesh_tests::sumdb::TestSumDb;
    const T: &str = "sumdb_proxy";
    let _heavy = HEAVY.lock().await;
    let w = World::new()?;
    let mut db = TestSumDb::start(w.proxy.root(), None).await?;
    let mut spec = embedded_spec(
        "gateway",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
    )?;
    // The fetcher's go command verifies against the same database.
    spec.set(
        "ATHENS_GO_BINARY_ENV_VARS",
        format!("GOPROXY={};GOSUMDB={}", w.upstream.url(), db.gosumdb()),
    );
    spec.set("ATHENS_SUM_DBS", db.url.clone());
    spec.set(
        "ATHENS_GONOSUM_PATTERNS",
        "example.com/secret*,corp.example",
    );
    let gw = start_gateway(spec).await?;
    let base = format!("{}/sumdb/{}", gw.url(), db.name());

    let r = get(&format!("{base}/supported")).await?;
    ensure!(r.status == StatusCode::OK, "supported: {}", r.status);
    let r = get(&format!("{}/sumdb/other.example/supported", gw.url())).await?;
    ensure!(
        r.status == StatusCode::NOT_FOUND,
        "unknown db: {}",
        r.status
    );
    let r = get(&format!("{base}/lookup/corp.example/x@v1.0.0")).await?;
    ensure!(
        r.status == StatusCode::FORBIDDEN,
        "NoSumPatterns: {}",
        r.status
    );
    let r = get(&format!("{base}/lookup/example.com/secret/x@v1.0.0")).await?;
    ensure!(
        r.status == StatusCode::FORBIDDEN,
        "NoSumPatterns glob: {}",
        r.status
    );

    let t = Instant::now();
    // The key alone: the go command then asks its GOPROXY for the database
    // (`<name> <url>` would bypass every proxy), and the direct route
    // (https://<name>) leads nowhere, so only the gateway can answer.
    let sumdb_env = [("GOSUMDB", db.vkey.clone())];
    let extra: Vec<(&str, &str)> = sumdb_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let online = GoEnv::new(&gw.url())?;
    let app = w.tmp.path().join("app-online");
    write_program(&app)?;
    online
        .run_with(&app, &["build", "-o", "app", "."], &extra)
        .await?;
    // The go command kept what it verified: lookups and tiles of this database.
    let verified = online
        .modcache()
        .join("cache/download/sumdb")
        .join(db.name())
        .join("lookup");
    ensure!(
        verified.is_dir(),
        "the go command looked nothing up through the gateway"
    );
    lap(T, "online build, verified through the gateway", t);

    // The database goes away; a fresh machine verifies from the gateway's cache.
    db.stop().await?;
    let t = Instant::now();
    let offline = GoEnv::new(&gw.url())?;
    let app = w.tmp.path().join("app-offline");
    write_program(&app)?;
    offline
        .run_with(&app, &["build", "-o", "app", "."], &extra)
        .await
        .with_context(|| gw.log_tail(4000))?;
    lap(T, "offline build, verified from the gateway's cache", t);
    // Something never cached is not made up: the stopped database is a 502.
    let r = get(&format!("{base}/lookup/example.com/never@v1.0.0")).await?;
    ensure!(
        r.status == StatusCode::BAD_GATEWAY,
        "uncached lookup with the database down: {}",
        r.status
    );
    Ok(())
}

/// Corrupted tiles from the checksum database, passed on by the gateway,
/// make the go command fail: it never accepts a module on a tree it cannot
/// verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sumdb_proxy_corrupted_tiles_fail_the_go_command() -> Result<()> {
    use modmesh_tests::sumdb::TestSumDb;
    let _heavy = HEAVY.lock().await;
    let w = World::new()?;
    let db = TestSumDb::start_with(w.proxy.root(), &["-corrupt-tiles"]).await?;
    let mut spec = embedded_spec(
        "gateway",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
    )?;
    spec.set("ATHENS_SUM_DBS", db.url.clone());
    let gw = start_gateway(spec).await?;
    let vkey = db.vkey.clone();
    let env = GoEnv::new(&gw.url())?;
    let app = w.tmp.path().join("app");
    write_program(&app)?;
    let err = env
        .run_with(&app, &["build", "-o", "app", "."], &[("GOSUMDB", &vkey)])
        .await
        .err()
        .context("the go command accepted modules on corrupted tiles")?;
    let text = format!("{err:#}");
    ensure!(
        text.contains("verifying") && !text.contains("connection refused"),
        "the failure is not the tree check: {text}"
    );
    Ok(())
}

/// A checksum database whose record disagrees with the zip the gateway
/// stored makes the go command fail, through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sumdb_proxy_mismatch_fails_the_go_command() -> Result<()> {
    use modmesh_tests::sumdb::TestSumDb;
    let _heavy = HEAVY.lock().await;
    let w = World::new()?;
    let db = TestSumDb::start(w.proxy.root(), Some(BASE)).await?;
    // The fetcher does not check (GOSUMDB=off), so the zip is stored and
    // only the client's check through the gateway stands in the way.
    let mut spec = embedded_spec(
        "gateway",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
    )?;
    spec.set("ATHENS_SUM_DBS", db.url.clone());
    let gw = start_gateway(spec).await?;
    // The key alone, so the go command asks the gateway (see above).
    let gosumdb = db.vkey.clone();
    let env = GoEnv::new(&gw.url())?;
    let app = w.tmp.path().join("app");
    write_program(&app)?;
    let err = env
        .run_with(&app, &["build", "-o", "app", "."], &[("GOSUMDB", &gosumdb)])
        .await
        .err()
        .context("the go command accepted a zip its checksum database disagrees with")?;
    let text = format!("{err:#}");
    ensure!(
        text.contains("SECURITY ERROR") || text.contains("checksum mismatch"),
        "the failure is not the checksum check: {text}"
    );
    ensure!(
        text.contains(BASE),
        "the failure does not name {BASE}: {text}"
    );
    Ok(())
}

/// When the fetcher's go command refuses a download, the client gets 403
/// and the go command's reason, without server paths: a zip its checksum
/// database disagrees with, and a toolchain module with `GOSUMDB=off`
/// (toolchains must always be verified).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_command_refusals_are_403_with_the_reason() -> Result<()> {
    use modmesh_tests::fixtures::ModuleVersion;
    use modmesh_tests::sumdb::TestSumDb;
    let _heavy = HEAVY.lock().await;
    let w = World::new()?;
    const TOOLCHAIN: &str = "golang.org/toolchain";
    const TOOLCHAIN_V: &str = "v0.0.1-go1.99.1.linux-amd64";
    w.proxy.add(&ModuleVersion {
        path: TOOLCHAIN.into(),
        version: TOOLCHAIN_V.into(),
        time: "2024-01-01T00:00:00Z".into(),
        go_mod: Some(format!("module {TOOLCHAIN}\n")),
        files: vec![("bin/go".into(), b"#!/bin/sh\necho go1.99.1\n".to_vec())],
    })?;
    let goget_marker = w.tmp.path().display().to_string();

    // The fetcher verifies against a database whose record for BASE is wrong.
    let db = TestSumDb::start(w.proxy.root(), Some(BASE)).await?;
    let mut spec = embedded_spec(
        "gw-corrupt",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
    )?;
    spec.set(
        "ATHENS_GO_BINARY_ENV_VARS",
        format!("GOPROXY={};GOSUMDB={}", w.upstream.url(), db.gosumdb()),
    );
    let gw = start_gateway(spec).await?;
    let r = get(&format!("{}{}", gw.url(), url_path(BASE, BASE_RC, "zip"))).await?;
    let body = r.text();
    ensure!(
        r.status == StatusCode::FORBIDDEN,
        "mismatch: {} {body}",
        r.status
    );
    ensure!(
        body.contains("checksum mismatch"),
        "mismatch reason: {body}"
    );
    ensure!(!body.contains(&goget_marker), "server path in {body}");
    // Nothing was stored: the module stays refused, never served. Its
    // go.mod matches the database's record, so a `.mod` request is answered
    // while the fetch goes on (the upstream's bytes); the zip is refused
    // again and nothing is stored.
    let r = get(&format!("{}{}", gw.url(), url_path(BASE, BASE_RC, "mod"))).await?;
    ensure!(
        r.status == StatusCode::OK
            && r.body[..] == std::fs::read(w.proxy.file(BASE, BASE_RC, "mod"))?[..],
        "verified go.mod of a refused module: {} {}",
        r.status,
        r.text()
    );
    let r = get(&format!("{}{}", gw.url(), url_path(BASE, BASE_RC, "zip"))).await?;
    ensure!(
        r.status == StatusCode::FORBIDDEN && r.text().contains("checksum mismatch"),
        "mismatch again: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        !stored(&w.store)?.iter().any(|p| p.starts_with(BASE)),
        "the refused module was stored"
    );
    drop(gw);

    // The default fetcher environment has GOSUMDB=off.
    let spec = embedded_spec(
        "gw-off",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
    )?;
    let gw = start_gateway(spec).await?;
    let r = get(&format!(
        "{}{}",
        gw.url(),
        url_path(TOOLCHAIN, TOOLCHAIN_V, "zip")
    ))
    .await?;
    let body = r.text();
    ensure!(
        r.status == StatusCode::FORBIDDEN,
        "toolchain: {} {body}",
        r.status
    );
    ensure!(
        body.contains("checksum database disabled by GOSUMDB=off"),
        "toolchain reason: {body}"
    );
    ensure!(!body.contains(&goget_marker), "server path in {body}");
    Ok(())
}

/// `GOTOOLCHAIN=go1.99.1`: the go command downloads the toolchain module
/// (160 MiB) through the gateway (the gateway's fetcher verifying it
/// against the tests' checksum database, the client verifying it through
/// the gateway's checksum-database proxy), runs the switched toolchain, and
/// the gateway's peak RSS stays under 128 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toolchain_switch_downloads_through_the_gateway() -> Result<()> {
    use modmesh_tests::sumdb::TestSumDb;
    use modmesh_tests::toolchain::{self, TOOLCHAIN};
    const FILLER: u64 = 160 << 20;
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let w = World::new()?;
    let p = w.proxy.clone();
    tokio::task::spawn_blocking(move || toolchain::write(&p, "go1.99.1", FILLER)).await??;
    let toolchain_v = toolchain::version("go1.99.1");
    lap("toolchain", "160 MiB toolchain written", t);
    let db = TestSumDb::start(w.proxy.root(), None).await?;
    let mut spec = embedded_spec(
        "gateway",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
    )?;
    spec.set(
        "ATHENS_GO_BINARY_ENV_VARS",
        format!("GOPROXY={};GOSUMDB={}", w.upstream.url(), db.gosumdb()),
    );
    spec.set("ATHENS_SUM_DBS", db.url.clone());
    let gw = start_gateway(spec).await?;
    let env = GoEnv::new(&gw.url())?;
    let dir = w.tmp.path().join("outside-any-module");
    std::fs::create_dir_all(&dir)?;
    let out = env
        .run_with(
            &dir,
            &["version"],
            &[("GOTOOLCHAIN", "go1.99.1"), ("GOSUMDB", db.vkey.as_str())],
        )
        .await?;
    lap("toolchain", "switched through the gateway", t);
    ensure!(
        out.stdout.contains("fake toolchain go1.99.1: version"),
        "the switched toolchain did not run: {out:?}"
    );
    ensure!(
        w.upstream.count(&url_path(TOOLCHAIN, &toolchain_v, "zip")) == 1,
        "the toolchain zip did not come from the upstream once: {:?}",
        w.upstream.counts()
    );
    let hwm = gw.vm_hwm_kib()?;
    eprintln!("[toolchain] gateway VmHWM {} MiB", hwm / 1024);
    ensure!(
        hwm < 128 * 1024,
        "gateway peak RSS {} MiB >= 128 MiB after a 160 MiB toolchain",
        hwm / 1024
    );
    Ok(())
}

/// A private module behind an HTTPS GOPROXY with basic auth: a gateway
/// without credentials is refused (403), a gateway with `NETRCPath` serves
/// it, and neither gateway's log shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_module_needs_the_netrc_and_the_password_is_never_logged() -> Result<()> {
    use modmesh_tests::fixtures::ModuleVersion;
    use modmesh_tests::private::PrivateProxy;
    const MODULE: &str = "example.com/private/secret";
    const VERSION: &str = "v1.0.0";
    const PASSWORD: &str = "pa55-s3cr3t-never-logged";
    let _heavy = HEAVY.lock().await;
    let tmp = tempfile::tempdir()?;
    let proxy = ProxyDir::new(tmp.path().join("private"))?;
    let mv = ModuleVersion {
        path: MODULE.into(),
        version: VERSION.into(),
        time: "2024-01-01T00:00:00Z".into(),
        go_mod: Some(format!("module {MODULE}\n\ngo 1.21\n")),
        files: vec![(
            "secret.go".into(),
            b"// Package secret is private.\npackage secret\n".to_vec(),
        )],
    };
    proxy.add(&mv)?;
    let private = PrivateProxy::start(proxy.root(), tmp.path(), "modder", PASSWORD).await?;
    let netrc = tmp.path().join("netrc");
    std::fs::write(
        &netrc,
        format!(
            "machine {} login modder password {PASSWORD}\n",
            private.machine()
        ),
    )?;
    let ca = private.ca_file().display().to_string();

    let mut spec = embedded_spec(
        "gw-anon",
        tmp.path(),
        &Store::Disk(tmp.path().join("store-anon")),
        &private.url(),
    )?;
    std::fs::create_dir_all(tmp.path().join("store-anon"))?;
    spec.set("SSL_CERT_FILE", ca.clone());
    let anon = start_gateway(spec).await?;
    let r = get(&format!(
        "{}{}",
        anon.url(),
        url_path(MODULE, VERSION, "mod")
    ))
    .await?;
    ensure!(
        r.status == StatusCode::FORBIDDEN,
        "without the netrc: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        private.unauthorized() > 0,
        "the private proxy was never asked"
    );

    let mut spec = embedded_spec(
        "gw-netrc",
        tmp.path(),
        &Store::Disk(tmp.path().join("store-netrc")),
        &private.url(),
    )?;
    std::fs::create_dir_all(tmp.path().join("store-netrc"))?;
    spec.set("SSL_CERT_FILE", ca);
    spec.set("ATHENS_NETRC_PATH", netrc.display().to_string());
    let gw = start_gateway(spec).await?;
    let r = get(&format!("{}{}", gw.url(), url_path(MODULE, VERSION, "mod"))).await?;
    ensure!(
        r.status == StatusCode::OK && r.text() == mv.mod_file(),
        "with the netrc: {} {}\n{}",
        r.status,
        r.text(),
        gw.log_tail(3000)
    );
    let r = get(&format!("{}{}", gw.url(), url_path(MODULE, VERSION, "zip"))).await?;
    ensure!(
        r.status == StatusCode::OK,
        "zip with the netrc: {}",
        r.status
    );
    for p in [&anon, &gw] {
        ensure!(
            !p.log_text().contains(PASSWORD),
            "the password is in a log:\n{}",
            p.log_text()
        );
    }
    Ok(())
}

/// The checksum-database proxy in the mesh: the gateway reaches the
/// database only through fetcher-svc (gRPC `SumDB`), which alone holds
/// `SumDBs`; with the database stopped, the gateway's cache answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_sumdb_proxy_goes_through_the_fetcher() -> Result<()> {
    use modmesh_tests::sumdb::TestSumDb;
    let _heavy = HEAVY.lock().await;
    let w = World::new()?;
    let mut db = TestSumDb::start(w.proxy.root(), None).await?;
    let env_vars = format!("GOPROXY={};GOSUMDB={}", w.upstream.url(), db.gosumdb());
    let mut mesh = Mesh::start_with_fetcher_env(
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
        1,
        &[
            ("ATHENS_GO_BINARY_ENV_VARS", env_vars.as_str()),
            ("ATHENS_SUM_DBS", db.url.as_str()),
        ],
    )
    .await?;
    let gw = mesh.gateways[0].url();
    let vkey = db.vkey.clone();
    let extra = [("GOSUMDB", vkey.as_str())];
    for (phase, label) in [
        ("online", "app-online"),
        ("database stopped", "app-offline"),
    ] {
        if phase == "database stopped" {
            db.stop().await?;
        }
        let env = GoEnv::new(&gw)?;
        let app = w.tmp.path().join(label);
        write_program(&app)?;
        env.run_with(&app, &["build", "-o", "app", "."], &extra)
            .await
            .with_context(|| format!("{phase}\n{}", mesh.log_tails(3000)))?;
    }
    mesh.stop()?;
    Ok(())
}

/// Every download mode with the real go command as client. `redirect` and
/// `async_redirect` send it to `DownloadURL` (a second server of the same
/// files), which it follows; `async_redirect` also stores the modules in the
/// background, after which the gateway serves them itself. `async` fails the
/// first build with "not found" and a later one succeeds from the store.
/// `none` refuses and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_modes_with_the_go_command() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let w = World::new()?;
    let mirror = StaticServer::start(w.proxy.root())?;
    let zips = |s: &StaticServer| {
        s.counts()
            .into_iter()
            .filter(|(p, _)| p.ends_with(".zip"))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let base_zip = url_path(BASE, "v1.0.0", "zip");
    for mode in ["redirect", "async_redirect", "async", "none"] {
        let t = Instant::now();
        let store = w.tmp.path().join(format!("store-{mode}"));
        std::fs::create_dir(&store)?;
        let mut spec = embedded_spec(
            &format!("gw-{mode}"),
            w.tmp.path(),
            &Store::Disk(store.clone()),
            &w.upstream.url(),
        )?;
        spec.set("ATHENS_DOWNLOAD_MODE", mode);
        spec.set("ATHENS_DOWNLOAD_URL", mirror.url());
        let mut gw = start_gateway(spec).await?;
        let (upstream_before, mirror_before) = (zips(&w.upstream), zips(&mirror));
        let prog = w.tmp.path().join(format!("prog-{mode}"));
        write_program(&prog)?;
        let go = GoEnv::new(&gw.url())?;
        let built = build_and_run_program(&go, &prog).await;
        let (upstream_zips, mirror_zips) = (
            zips(&w.upstream) - upstream_before,
            zips(&mirror) - mirror_before,
        );
        let ctx = || format!("mode {mode}:\n{}", gw.log_tail(3000));
        match mode {
            "redirect" => {
                built.with_context(ctx)?;
                ensure!(
                    mirror_zips >= 5,
                    "{mode}: the go command followed to DownloadURL ({mirror_zips} zips there)"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                ensure!(
                    upstream_zips == 0 && zips(&w.upstream) == upstream_before,
                    "{mode}: the gateway fetched nothing"
                );
                ensure!(
                    stored(&store)?.is_empty(),
                    "{mode}: nothing stored: {:?}",
                    stored(&store)?
                );
            }
            "async_redirect" => {
                built.with_context(ctx)?;
                ensure!(
                    mirror_zips >= 5,
                    "{mode}: the go command followed to DownloadURL"
                );
                // Stored in the background, then served here.
                wait_for_status(&format!("{}{base_zip}", gw.url()), StatusCode::OK)
                    .await
                    .with_context(ctx)?;
                ensure!(
                    zips(&w.upstream) > upstream_before,
                    "{mode}: fetched in the background"
                );
            }
            "async" => {
                let e = built.expect_err("async: the first build finds nothing stored");
                ensure!(
                    format!("{e:#}").contains("404"),
                    "{mode}: the go command saw 404: {e:#}"
                );
                ensure!(mirror_zips == 0, "{mode}: no redirect");
                // Each failed attempt starts background fetches of what it
                // asked for; a later build succeeds from the store.
                let mut attempts = 1;
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    attempts += 1;
                    let go = GoEnv::new(&gw.url())?;
                    match build_and_run_program(&go, &prog).await {
                        Ok(()) => break,
                        Err(e) if attempts < 20 => eprintln!("[{mode}] attempt {attempts}: {e:#}"),
                        Err(e) => return Err(e).with_context(ctx),
                    }
                }
                eprintln!("[{mode}] built after {attempts} attempts");
                ensure!(attempts > 1, "{mode}: the first build failed");
                ensure!(!stored(&store)?.is_empty(), "{mode}: stored");
            }
            "none" => {
                let e = built.expect_err("none: nothing is served");
                ensure!(
                    format!("{e:#}").contains("404"),
                    "{mode}: the go command saw 404: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                ensure!(
                    zips(&w.upstream) == upstream_before && mirror_zips == 0,
                    "{mode}: nothing fetched"
                );
                ensure!(stored(&store)?.is_empty(), "{mode}: nothing stored");
            }
            _ => unreachable!(),
        }
        gw.stop()?;
        lap("download modes", mode, t);
    }
    Ok(())
}

/// The files of a disk store, its temporary area left out.
fn stored(root: &Path) -> Result<BTreeSet<PathBuf>> {
    Ok(tree(root)?
        .into_iter()
        .filter(|p| !p.starts_with(".modmesh-tmp"))
        .collect())
}

/// Polls `url` until it answers `want` (10 s at most).
async fn wait_for_status(url: &str, want: StatusCode) -> Result<()> {
    let t = Instant::now();
    loop {
        let r = get(url).await?;
        if r.status == want {
            return Ok(());
        }
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "{url} still answers {} ({})",
            r.status,
            truncate(&r.text(), 200)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `ZipRedirectTTL` set and storage-svc on an object store, a stored
/// zip is answered with a 307 to a URL the backend signs (never cached by
/// clients), whose bytes are the module's; the go command follows it, so a
/// build with an empty module cache succeeds with the upstream stopped while
/// no zip passes through the gateway. A backend that cannot sign (disk)
/// keeps serving zips itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_zips_redirect_to_presigned_storage_urls() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let Some(bucket) = objstores::open(objstores::Kind::S3OnS3sFs).await? else {
        return Ok(());
    };
    let s3_url = bucket
        .env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT")
        .map(|(_, v)| v.clone())
        .context("the s3 environment names its endpoint")?;
    let mut w = World::new()?;
    let mut env = bucket.env.clone();
    env.push(("ATHENS_ZIP_REDIRECT_TTL".into(), "120".into()));
    let store = Store::Env(env);
    let mut mesh = Mesh::start(w.tmp.path(), &store, &w.upstream.url(), 1).await?;
    let gw = mesh.gateways[0].url();
    let prog = w.tmp.path().join("prog");
    write_program(&prog)?;
    // Cold: the miss path fetches and serves the zips itself.
    build_and_run_program(&GoEnv::new(&gw)?, &prog)
        .await
        .with_context(|| mesh.log_tails(3000))?;

    // Warm: a 307 to the object store, which serves the exact bytes.
    // (The versions the build selected, so their zips are stored.)
    for (module, version) in [(BASE, BASE_RC), (LIB_V2, LIB_V2_V), (MIXED, MIXED_V)] {
        let path = url_path(module, version, "zip");
        for method in [Method::GET, Method::HEAD] {
            let r = http::request(method.clone(), &format!("{gw}{path}")).await?;
            ensure!(
                r.status == StatusCode::TEMPORARY_REDIRECT,
                "{method} {path}: {}\n{}",
                r.status,
                mesh.log_tails(3000)
            );
            ensure!(
                r.headers["cache-control"] == "no-store",
                "{path}: a presigned URL is not to be kept"
            );
            let location = r.headers["location"].to_str()?;
            ensure!(
                location.starts_with(&s3_url),
                "{path}: redirected to the store: {location}"
            );
            if method == Method::GET {
                let (status, sha, _) = get_sha256(location).await?;
                ensure!(status == StatusCode::OK, "{location}: {status}");
                ensure!(
                    sha == sha256_file(&w.proxy.file(module, version, "zip"))?,
                    "{path}: the store's bytes are the module's"
                );
            }
        }
        // .info and .mod are still served by the gateway.
        let r = get(&format!("{gw}{}", url_path(module, version, "mod"))).await?;
        ensure!(r.status == StatusCode::OK, "{module} .mod: {}", r.status);
    }

    // Disk cannot sign: the same key leaves stored zips served by the gateway.
    let mut spec = embedded_spec(
        "gw-disk",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
    )?;
    spec.set("ATHENS_ZIP_REDIRECT_TTL", "120");
    let mut disk_gw = start_gateway(spec).await?;
    let zip_url = format!("{}{}", disk_gw.url(), url_path(BASE, "v1.0.0", "zip"));
    let want = sha256_file(&w.proxy.file(BASE, "v1.0.0", "zip"))?;
    for phase in ["cold", "warm"] {
        let (status, sha, _) = get_sha256(&zip_url).await?;
        ensure!(
            status == StatusCode::OK && sha == want,
            "disk, {phase}: {status}"
        );
    }
    disk_gw.stop()?;

    // The go command follows the redirects: an empty module cache builds
    // with the upstream gone.
    w.upstream.stop();
    std::fs::remove_file(prog.join("app"))?;
    build_and_run_program(&GoEnv::new(&gw)?, &prog)
        .await
        .with_context(|| {
            format!(
                "warm build through presigned URLs\n{}",
                mesh.log_tails(3000)
            )
        })?;
    mesh.stop()?;

    Ok(())
}

/// The native fetcher refuses what the go command would refuse, and stores
/// nothing of it: a corrupted zip, an entry leaving `module@version/`, an
/// entry outside it, a case-folded duplicate, a go.mod differing from the
/// `.mod` file, an oversized zip (refused as soon as its size is known, the
/// rest never read) and a zip whose hash the checksum database (the tests'
/// signed one) records differently. Each is 403 with the reason, the go
/// command in the client fails with it, and the store is unchanged; a good
/// module verified against the same database is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_fetcher_refuses_bad_modules_and_stores_nothing() -> Result<()> {
    use modmesh_tests::fixtures::zip_bytes;
    use modmesh_tests::sumdb::TestSumDb;
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let w = World::new()?;
    const V: &str = "v1.0.0";
    let gomod = |m: &str| format!("module {m}\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "example.com/bad/corrupt",
            b"PK\x03\x04 this is not a zip at all".to_vec(),
            "not a valid zip file",
        ),
        (
            "example.com/bad/slip",
            zip_bytes(&[
                (
                    "example.com/bad/slip@v1.0.0/go.mod",
                    gomod("example.com/bad/slip").as_bytes(),
                ),
                ("example.com/bad/slip@v1.0.0/../../x", b"x"),
            ])?,
            "leaves its directory",
        ),
        (
            "example.com/bad/outside",
            zip_bytes(&[("elsewhere@v1.0.0/x.go", b"package x\n")])?,
            "is not under example.com/bad/outside@v1.0.0/",
        ),
        (
            "example.com/bad/casefold",
            zip_bytes(&[
                ("example.com/bad/casefold@v1.0.0/README", b"a"),
                ("example.com/bad/casefold@v1.0.0/readme", b"b"),
            ])?,
            "when case is ignored",
        ),
        (
            "example.com/bad/gomod",
            zip_bytes(&[(
                "example.com/bad/gomod@v1.0.0/go.mod",
                b"module example.com/other\n",
            )])?,
            "go.mod in the zip does not match the .mod file",
        ),
    ];
    for (m, zip, _) in &cases {
        w.proxy.add_raw(m, V, &gomod(m), zip)?;
    }
    // 600 MiB, sparse: over the 500 MiB limit without using the disk.
    const HUGE: &str = "example.com/bad/huge";
    w.proxy.add_raw(HUGE, V, &gomod(HUGE), b"")?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(w.proxy.file(HUGE, V, "zip"))?
        .set_len(600 << 20)?;

    // The database records every module of the upstream; BASE's zip hash
    // is wrong.
    let db = TestSumDb::start(w.proxy.root(), Some(BASE)).await?;
    let spec = native_spec(
        "gw-native",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
        &db.gosumdb(),
    )?;
    let gw = start_gateway(spec).await?;
    let before = tree(&w.store)?;

    let mut refused: Vec<(String, String, String)> = cases
        .iter()
        .map(|(m, _, why)| (m.to_string(), V.to_string(), why.to_string()))
        .collect();
    refused.push((HUGE.into(), V.into(), "module source tree too large".into()));
    refused.push((BASE.into(), BASE_RC.into(), "checksum mismatch".into()));
    for (m, v, why) in &refused {
        let started = Instant::now();
        let r = get(&format!("{}{}", gw.url(), url_path(m, v, "zip"))).await?;
        let body = r.text();
        ensure!(
            r.status == StatusCode::FORBIDDEN && body.contains(why.as_str()),
            "{m}@{v}: {} {body} (want 403 with {why:?})\n{}",
            r.status,
            gw.log_tail(3000)
        );
        ensure!(
            !body.contains(&w.tmp.path().display().to_string()),
            "server path in {body}"
        );
        if m == HUGE {
            ensure!(
                started.elapsed() < Duration::from_secs(5),
                "the oversized zip took {:?} to refuse",
                started.elapsed()
            );
        }
        // The go command in the client fails with the reason.
        let go = GoEnv::new(&gw.url())?;
        let e = go
            .run(
                w.tmp.path(),
                &["mod", "download", "-json", &format!("{m}@{v}")],
            )
            .await
            .err()
            .ok_or_else(|| anyhow!("go mod download {m}@{v} succeeded"))?;
        ensure!(
            format!("{e:#}").contains(why.as_str()),
            "go mod download {m}@{v} failed without the reason: {e:#}"
        );
    }
    ensure!(
        tree(&w.store)? == before,
        "refused modules left something in the store: {:?}",
        tree(&w.store)?.difference(&before).collect::<Vec<_>>()
    );
    lap(
        "native-refusals",
        "7 bad modules refused, store unchanged",
        t,
    );

    // A good module passes the same checks and is served as the upstream has it.
    let r = get(&format!("{}{}", gw.url(), url_path(MIXED, MIXED_V, "zip"))).await?;
    ensure!(
        r.status == StatusCode::OK,
        "good module: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        r.body[..] == std::fs::read(w.proxy.file(MIXED, MIXED_V, "zip"))?[..],
        "the served zip differs from the upstream's"
    );
    ensure!(tree(&w.store)? != before, "the good module was not stored");
    Ok(())
}

/// The native fetcher proves every record of the checksum database in the
/// tree its signed head names, and every head consistent with the latest
/// one it verified, from hash tiles it caches: against the tests' signed
/// database (300 made-up records first, so full tiles and a second tile
/// level), a graph of 40 modules verifies with each tile asked once; a
/// record the signed tree does not hold (the database answers the right
/// hashes, so only the proof can catch it) is refused with 403; then the
/// database forks (same key, other history): heads larger and smaller than
/// the one seen are refused with 403. Nothing refused is stored. A fetcher
/// that reaches the database only through a proxy's `/sumdb/` proves the
/// same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_fetcher_proves_records_and_tree_heads() -> Result<()> {
    use futures::StreamExt;
    use modmesh_tests::fixtures::ModuleVersion;
    use modmesh_tests::sumdb::TestSumDb;
    const T: &str = "native-proofs";
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let w = World::new()?;
    let graph: Vec<String> = (0..40)
        .map(|i| format!("example.com/graph/m{i:02}"))
        .collect();
    for m in &graph {
        w.proxy.add(&ModuleVersion {
            path: m.clone(),
            version: "v1.0.0".into(),
            time: "2024-01-01T00:00:00Z".into(),
            go_mod: Some(format!("module {m}\n")),
            files: vec![("m.go".into(), b"package m\n".to_vec())],
        })?;
    }
    let db = TestSumDb::start_with(w.proxy.root(), &["-pad", "300", "-forge", BASE]).await?;
    let spec = native_spec(
        "gw-proofs",
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
        &db.gosumdb(),
    )?;
    let gw = start_gateway(spec).await?;

    // (a) The graph and a standard module, eight at a time.
    let mut wanted: Vec<(String, String)> = graph
        .iter()
        .map(|m| (m.clone(), "v1.0.0".to_string()))
        .collect();
    wanted.push((MIXED.into(), MIXED_V.into()));
    let gw_url = gw.url();
    let replies: Vec<Result<(String, StatusCode, String)>> =
        futures::stream::iter(wanted.iter().map(|(m, v)| {
            let url = format!("{gw_url}{}", url_path(m, v, "zip"));
            async move {
                let r = get(&url).await?;
                Ok((m.clone(), r.status, r.text()))
            }
        }))
        .buffer_unordered(8)
        .collect()
        .await;
    for r in replies {
        let (m, status, body) = r?;
        ensure!(
            status == StatusCode::OK,
            "{m}: {status} {body}\n{}",
            gw.log_tail(3000)
        );
    }
    let served = db.tiles_served().await?;
    let asked: u64 = served.iter().map(|(n, _)| n).sum();
    ensure!(asked > 0, "no tile was asked: the records were not proved");
    ensure!(
        served.iter().all(|(n, _)| *n == 1),
        "a tile was asked more than once: {served:?}"
    );
    // Every lookup's proof needs the hash of the first 256 records, from
    // the second tile level: asked once for the 41 lookups.
    ensure!(
        served.iter().any(|(_, p)| p == "tile/8/1/000.p/1"),
        "the level-1 tile was never asked: {served:?}"
    );
    println!(
        "{T}: {} lookups proved with {asked} tile requests ({} distinct tiles)",
        wanted.len(),
        served.len()
    );
    lap(T, "41 modules proved in the tree", t);

    // The same proofs through a proxy that serves the database: a second
    // gateway whose fetcher has only the key (`GOSUMDB=<vkey>`, so it asks
    // its GOPROXY's `/sumdb/<name>/`, the first gateway's, for the lookup
    // and the tiles; `https://<name>` leads nowhere).
    let mut spec = embedded_spec(
        "gw-proofs-a",
        w.tmp.path(),
        &Store::Disk(w.tmp.path().join("store-a")),
        &w.upstream.url(),
    )?;
    std::fs::create_dir_all(w.tmp.path().join("store-a"))?;
    spec.set("ATHENS_SUM_DBS", db.url.clone());
    let gw_a = start_gateway(spec).await?;
    std::fs::create_dir_all(w.tmp.path().join("store-b"))?;
    let spec = native_spec(
        "gw-proofs-b",
        w.tmp.path(),
        &Store::Disk(w.tmp.path().join("store-b")),
        &gw_a.url(),
        &db.vkey,
    )?;
    let gw_b = start_gateway(spec).await?;
    let r = get(&format!(
        "{}{}",
        gw_b.url(),
        url_path(PSEUDO, PSEUDO_V, "zip")
    ))
    .await?;
    ensure!(
        r.status == StatusCode::OK,
        "through the proxy: {} {}\n{}",
        r.status,
        r.text(),
        gw_b.log_tail(3000)
    );
    let via: u64 = db.tiles_served().await?.iter().map(|(n, _)| n).sum();
    ensure!(
        via > asked,
        "no tile was asked through the proxy ({via} tiles in all)"
    );
    // A forged record is caught through the proxy too.
    let r = get(&format!(
        "{}{}",
        gw_b.url(),
        url_path(BASE, "v1.0.0", "zip")
    ))
    .await?;
    ensure!(
        r.status == StatusCode::FORBIDDEN && r.text().contains("cannot authenticate record data"),
        "forged record through the proxy: {} {}",
        r.status,
        r.text()
    );
    drop(gw_b);
    drop(gw_a);
    lap(T, "proved through a proxy serving the database", t);

    // (b) A record the signed tree does not hold.
    let before = tree(&w.store)?;
    let refused = |m: &str, v: &str, why: &'static str| {
        let url = format!("{}{}", gw.url(), url_path(m, v, "zip"));
        let m = format!("{m}@{v}");
        async move {
            let r = get(&url).await?;
            let body = r.text();
            ensure!(
                r.status == StatusCode::FORBIDDEN && body.contains(why) && body.contains(&m),
                "{m}: {} {body} (want 403 with {why:?})",
                r.status
            );
            ensure!(body.contains("SECURITY ERROR"), "{m}: {body}");
            Ok::<_, anyhow::Error>(())
        }
    };
    refused(BASE, BASE_RC, "cannot authenticate record data").await?;

    // (c) The database forks: a smaller head, then a larger one.
    db.fork(2).await?;
    refused(LEGACY, LEGACY_V, "misbehavior detected").await?;
    db.fork(1000).await?;
    refused(LIB_V2, LIB_V2_V, "misbehavior detected").await?;
    ensure!(
        tree(&w.store)? == before,
        "refused modules left something in the store: {:?}",
        tree(&w.store)?.difference(&before).collect::<Vec<_>>()
    );
    lap(T, "forged record and forked heads refused", t);
    Ok(())
}

// ------------------------------------------------- the mesh on object stores

/// The mesh (storage-svc on `kind`, lock-svc, two fetchers, two gateways):
/// the program builds through gateway A, every zip fetched upstream once;
/// the store then holds each fetched version in Athens' layout (listed
/// through the store's own API); with the upstream stopped, a fresh go
/// client builds through a restarted gateway B from the store alone.
async fn mesh_on_object_store(kind: objstores::Kind) -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let test = format!("mesh-on-{}", kind.label());
    let t = Instant::now();
    let Some(bucket) = objstores::open(kind).await? else {
        return Ok(());
    };
    lap(&test, "store ready", t);
    let mut w = World::new()?;
    let mut mesh = Mesh::start(
        w.tmp.path(),
        &Store::Env(bucket.env.clone()),
        &w.upstream.url(),
        2,
    )
    .await?;
    lap(&test, "6 processes ready", t);

    let prog = w.tmp.path().join("prog");
    write_program(&prog)?;
    build_and_run_program(&GoEnv::new(&mesh.gateways[0].url())?, &prog)
        .await
        .map_err(|e| {
            anyhow!(
                "[{test}] build through gateway A: {e:#}\n{}",
                mesh.log_tails(4000)
            )
        })?;
    lap(&test, "cold build through gateway A", t);
    assert_each_zip_fetched_once(&w.upstream)?;

    let fetched: Vec<(String, String)> = w
        .upstream
        .counts()
        .keys()
        .filter_map(|p| objstores::zip_coords(p))
        .collect();
    ensure!(
        fetched.len() >= 5,
        "[{test}] the build fetched only {fetched:?}"
    );
    let names: BTreeSet<String> = bucket.names().await?.into_iter().collect();
    for (module, version) in &fetched {
        for want in bucket.layout(module, version) {
            ensure!(
                names.contains(&want),
                "[{test}] the store lacks {want} (Athens' layout); it holds {names:#?}"
            );
        }
    }
    ensure!(
        names
            .iter()
            .all(|n| !n.contains(".tmp") && !n.contains("upload")),
        "[{test}] leftovers in the store: {names:#?}"
    );
    lap(&test, "store listed in Athens' layout", t);

    w.upstream.stop();
    restart_gateway(&mut mesh.gateways[1]).await?;
    std::fs::remove_file(prog.join("app"))?;
    build_and_run_program(&GoEnv::new(&mesh.gateways[1].url())?, &prog)
        .await
        .map_err(|e| {
            anyhow!(
                "[{test}] build through gateway B from the store alone: {e:#}\n{}",
                mesh.log_tails(4000)
            )
        })?;
    lap(
        &test,
        "build through restarted gateway B from the store alone",
        t,
    );
    mesh.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_on_s3_s3s_fs() -> Result<()> {
    mesh_on_object_store(objstores::Kind::S3OnS3sFs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_on_s3_moto() -> Result<()> {
    mesh_on_object_store(objstores::Kind::S3OnMoto).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_on_minio() -> Result<()> {
    mesh_on_object_store(objstores::Kind::Minio).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_on_gcp() -> Result<()> {
    mesh_on_object_store(objstores::Kind::Gcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_on_azureblob() -> Result<()> {
    mesh_on_object_store(objstores::Kind::AzureBlob).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_on_mongo() -> Result<()> {
    mesh_on_object_store(objstores::Kind::Mongo).await
}

/// The gateway-local tier, in a mesh of two gateways on one storage-svc:
/// warm `.info`, `.mod` and `.zip` are served while storage-svc is stopped
/// (SIGSTOP), so warm hits do not cross the gRPC hop; a delete through
/// storage-svc's gRPC API makes both gateways stop serving the version
/// within a bound (with storage-svc stopped again, neither answers it from
/// its tier), and the next request fetches and stores it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_serves_warm_hits_without_storage_and_forgets_deletes() -> Result<()> {
    tier_in_mesh(false).await
}

/// The same with the tier's disk level holding every zip (both gateways
/// share one `DiskPath`, each in its own folder): the warm zip comes from
/// disk while storage-svc is stopped, and the delete through storage-svc
/// removes both gateways' files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_disk_level_serves_warm_zips_and_forgets_deletes() -> Result<()> {
    tier_in_mesh(true).await
}

/// The zip files under the tier's `DiskPath`.
fn tier_zip_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(root)? {
        for f in std::fs::read_dir(d?.path())? {
            let p = f?.path();
            if p.extension().is_some_and(|e| e == "zip") {
                out.push(p);
            }
        }
    }
    Ok(out)
}

async fn tier_in_mesh(disk: bool) -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    const BOUND: Duration = Duration::from_secs(1);
    let _heavy = HEAVY.lock().await;
    let t = Instant::now();
    let w = World::new()?;
    let name = if disk { "tier-disk" } else { "tier" };
    let disk_path = w.tmp.path().join("tier-disk");
    let dp = disk_path.to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = if disk {
        // .info and .mod in memory, every zip on disk.
        vec![
            ("ATHENS_TIER_DISK_PATH", dp.as_str()),
            ("ATHENS_TIER_MAX_MEMORY_ZIP_BYTES", "0"),
        ]
    } else {
        vec![]
    };
    let mut mesh = Mesh::start_with_gateway_env(
        w.tmp.path(),
        &Store::Disk(w.store.clone()),
        &w.upstream.url(),
        2,
        &env,
    )
    .await?;
    let exts = ["info", "mod", "zip"];
    let want: Vec<Vec<u8>> = exts
        .iter()
        .map(|e| std::fs::read(w.proxy.file(BASE, "v1.0.0", e)))
        .collect::<std::io::Result<_>>()?;
    let urls = |g: &Proc| -> Vec<String> {
        exts.iter()
            .map(|e| format!("{}{}", g.url(), url_path(BASE, "v1.0.0", e)))
            .collect()
    };
    for g in &mesh.gateways {
        for (u, body) in urls(g).iter().zip(&want) {
            let r = get(u).await?;
            ensure!(
                r.status == 200 && r.body == body[..],
                "warming {u}: {}",
                r.status
            );
        }
    }
    if disk {
        // Each gateway's fill ends after its client got the last byte.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tier_zip_files(&disk_path)?.len() < 2 {
            ensure!(
                Instant::now() < deadline,
                "zips on disk 5 s after warming: {:?}\n{}",
                tier_zip_files(&disk_path)?,
                mesh.log_tails(3000)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    lap(name, "both gateways warm", t);

    // Warm hits with storage-svc frozen.
    let storage = Pid::from_raw(mesh.storage.pid() as i32);
    kill(storage, Signal::SIGSTOP)?;
    let frozen = async {
        for g in &mesh.gateways {
            for (u, body) in urls(g).iter().zip(&want) {
                let r = tokio::time::timeout(Duration::from_secs(3), get(u))
                    .await
                    .map_err(|_| anyhow!("{u} not answered with storage-svc stopped"))??;
                ensure!(
                    r.status == 200 && r.body == body[..],
                    "{u} with storage-svc stopped: {} {}",
                    r.status,
                    truncate(&r.text(), 200)
                );
            }
        }
        Ok(())
    }
    .await;
    kill(storage, Signal::SIGCONT)?;
    frozen?;
    lap(name, "warm hits served with storage-svc stopped", t);

    // A delete through storage-svc's gRPC API. Within BOUND both gateways
    // have forgotten it: with storage-svc stopped again, neither answers it.
    let mut client =
        modmesh_proto::pb::storage_client::StorageClient::connect(mesh.storage.url()).await?;
    let pb_c = modmesh_proto::pb::Coordinates {
        module: BASE.into(),
        version: "v1.0.0".into(),
    };
    client.delete(pb_c.clone()).await?;
    tokio::time::sleep(BOUND).await;
    kill(storage, Signal::SIGSTOP)?;
    let forgotten = async {
        for g in &mesh.gateways {
            for u in urls(g) {
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), get(&u)).await {
                    let r = r?;
                    ensure!(
                        r.status != 200,
                        "{u} still served {BOUND:?} after the delete, storage-svc stopped"
                    );
                }
            }
        }
        Ok(())
    }
    .await;
    kill(storage, Signal::SIGCONT)?;
    forgotten?;
    if disk {
        let left = tier_zip_files(&disk_path)?;
        ensure!(left.is_empty(), "zip files left after the delete: {left:?}");
    }
    lap(name, "both gateways stopped serving the deleted version", t);

    // The next request fetches and stores it again.
    for g in &mesh.gateways {
        for (u, body) in urls(g).iter().zip(&want) {
            let r = get(u).await?;
            ensure!(
                r.status == 200 && r.body == body[..],
                "{u} after the delete: {} {}",
                r.status,
                truncate(&r.text(), 300)
            );
        }
    }
    ensure!(
        client.exists(pb_c).await?.into_inner().exists,
        "the version was not stored again"
    );
    lap(name, "fetched again after the delete", t);
    mesh.stop()?;
    Ok(())
}

// ------------------------------------------- a cold miss while it arrives

/// Whether the disk store at `root` holds anything of `module`.
/// Waits (at most 20 s) until the disk store at `root` holds
/// `module@version` (a lower-case path): a streamed zip's body ends once it
/// is verified, and its save ends after.
async fn until_stored(root: &Path, module: &str, version: &str) -> Result<()> {
    let zip = root.join(module).join(version).join("source.zip");
    let t = Instant::now();
    while !zip.exists() {
        ensure!(
            t.elapsed() < Duration::from_secs(20),
            "{module}@{version} not stored within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn holds(root: &Path, module: &str) -> Result<bool> {
    Ok(stored(root)?.iter().any(|p| p.starts_with(module)))
}

/// With the upstream holding every zip at its half (the gate): `.mod` of a
/// cold version is answered while its zip is held back; a `.zip` client
/// receives its first bytes before the upstream sent the rest, then, once
/// released, the whole zip as the upstream has it, and the version is
/// stored; a module whose zip is refused (its go.mod differs from the
/// `.mod`) ends the streamed body in an error, is refused with 403 after,
/// and nothing of it is stored.
async fn streams_while_arriving(label: &str, gw: &str, w: &World, n: usize) -> Result<()> {
    use http_body_util::BodyExt;
    const SIZE: u64 = 2 << 20;
    const V: &str = "v1.0.0";
    let good = format!("example.com/stream/good{n}");
    let bad = format!("example.com/stream/bad{n}");
    let t = Instant::now();
    let good_zip = w.proxy.add_big(&good, V, SIZE)?;
    w.proxy.add_big(&bad, V, SIZE)?;
    // The bad module's .mod is not the go.mod in its zip.
    std::fs::write(w.proxy.file(&bad, V, "mod"), format!("module {bad}\n"))?;
    let want = std::fs::read(&good_zip)?;
    w.upstream.set_zip_gate(true);

    let zip_url = format!("{gw}{}", url_path(&good, V, "zip"));
    let req = hyper::Request::get(&zip_url).body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let client = http::client();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .context("no zip response head while the upstream holds the zip's second half")??;
    ensure!(
        resp.status() == StatusCode::OK,
        "{label}: zip {}",
        resp.status()
    );
    ensure!(
        resp.headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            == Some(want.len().to_string().as_str()),
        "{label}: Content-Length {:?}, the upstream's is {}",
        resp.headers().get(hyper::header::CONTENT_LENGTH),
        want.len()
    );
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.is_empty() {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .context("no zip bytes while the upstream holds the zip's second half")?
            .ok_or_else(|| anyhow!("{label}: the zip body ended empty"))??;
        if let Ok(d) = frame.into_data() {
            got.extend_from_slice(&d);
        }
    }
    ensure!(
        got.len() < want.len() / 2 && got[..] == want[..got.len()],
        "{label}: {} bytes before the upstream sent the second half",
        got.len()
    );
    lap("stream", &format!("{label}: first zip bytes while held"), t);

    // .mod answers while the zip is still held upstream; nothing is stored.
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        get(&format!("{gw}{}", url_path(&good, V, "mod"))),
    )
    .await
    .context(".mod not answered while the zip is held back")??;
    ensure!(
        m.status == StatusCode::OK
            && m.body[..] == std::fs::read(w.proxy.file(&good, V, "mod"))?[..],
        "{label}: .mod {} {}",
        m.status,
        m.text()
    );
    ensure!(
        !holds(&w.store, &good)?,
        "{label}: stored before the zip arrived"
    );

    // The bad module: its body starts, then ends in an error.
    let bad_url = format!("{gw}{}", url_path(&bad, V, "zip"));
    let req = hyper::Request::get(&bad_url).body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let bad_resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .context("no response head for the bad zip")??;
    ensure!(
        bad_resp.status() == StatusCode::OK,
        "{label}: bad zip {}",
        bad_resp.status()
    );

    w.upstream.set_zip_gate(false);
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .context("the zip did not finish once released")?
    {
        if let Ok(d) = frame?.into_data() {
            got.extend_from_slice(&d);
        }
    }
    ensure!(
        got == want,
        "{label}: the streamed zip ({} bytes) differs from the upstream's ({})",
        got.len(),
        want.len()
    );
    // The body ends once the zip is verified; the save follows.
    let saved = Instant::now();
    while !holds(&w.store, &good)? {
        ensure!(
            saved.elapsed() < Duration::from_secs(20),
            "{label}: not stored within 20 s of the zip"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bad_body = tokio::time::timeout(Duration::from_secs(60), bad_resp.into_body().collect())
        .await
        .context("the refused zip's body neither ended nor failed")?;
    ensure!(
        bad_body.is_err(),
        "{label}: the refused zip's body ended normally ({} bytes)",
        bad_body.map(|b| b.to_bytes().len()).unwrap_or(0)
    );
    // Asked again, it is fetched again and refused again: a 403 with the
    // reason, or (the zip streams before the verdict) a body cut short.
    match get(&bad_url).await {
        Err(_) => {}
        Ok(again) => ensure!(
            again.status == StatusCode::FORBIDDEN && again.text().contains("does not match"),
            "{label}: bad zip asked again: {} {}",
            again.status,
            again.text()
        ),
    }
    ensure!(
        !holds(&w.store, &bad)?,
        "{label}: the refused module was stored"
    );
    lap(
        "stream",
        &format!("{label}: released, stored, bad refused"),
        t,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_zips_stream_while_they_arrive() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let w = World::new()?;
    let mut gw = w.gateway().await?;
    streams_while_arriving("embedded", &gw.url(), &w, 1)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", gw.log_tail(4000)))?;
    stop_lets_the_fetch_end_stored(&mut gw, &w)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", gw.log_tail(4000)))?;
    let mut mesh = w.mesh().await?;
    streams_while_arriving("mesh", &mesh.gateways[0].url(), &w, 2)
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", mesh.log_tails(4000)))?;
    mesh.stop()?;
    Ok(())
}

/// A graceful stop lets a running fetch end stored (clients of a zip are
/// answered once it is verified, before its save): `.mod` of a version
/// whose zip the upstream holds at its half is answered, the gateway gets
/// SIGTERM and is still there 0.5 s later, the upstream sends the rest, and
/// the gateway exits 0 with the version stored.
async fn stop_lets_the_fetch_end_stored(gw: &mut Proc, w: &World) -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let held = "example.com/stream/held";
    w.proxy.add_big(held, "v1.0.0", 2 << 20)?;
    w.upstream.set_zip_gate(true);
    let r = get(&format!("{}{}", gw.url(), url_path(held, "v1.0.0", "mod"))).await?;
    ensure!(
        r.status == StatusCode::OK,
        ".mod while the zip is held: {}",
        r.status
    );
    kill(Pid::from_raw(gw.pid() as i32), Signal::SIGTERM)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        modmesh_tests::procs::running(gw.pid()) && !holds(&w.store, held)?,
        "the gateway left (or stored) before its fetch ended"
    );
    w.upstream.set_zip_gate(false);
    gw.stop()?;
    ensure!(
        holds(&w.store, held)?,
        "the fetch under way at SIGTERM was not stored"
    );
    Ok(())
}

/// An embedded gateway's spec whose native fetcher fetches from `goproxy`
/// and verifies against the checksum database `gosumdb` names.
fn native_spec(
    label: &str,
    dir: &Path,
    store: &Store,
    goproxy: &str,
    gosumdb: &str,
) -> Result<modmesh_tests::procs::Spec> {
    let mut spec = embedded_spec(label, dir, store, goproxy)?;
    spec.set(
        "ATHENS_GO_BINARY_ENV_VARS",
        format!("GOPROXY={goproxy};GOSUMDB={gosumdb}"),
    );
    spec.set("ATHENS_FETCHER_MODE", "native");
    Ok(spec)
}
