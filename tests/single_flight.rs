//! Single flight across instances, end to end, with every lock driver that
//! lets several lock-svc replicas share their locks: three gateways and two
//! fetcher-svc sharing one storage-svc and two lock-svc replicas, the
//! replicas sharing a real lock server (redis, redis-sentinel, a
//! three-member etcd cluster, fake-gcs-server, Azurite).
//!
//! - 100 concurrent cold requests for one version's `.zip`, spread over the
//!   gateways, reach the upstream exactly once, and every client gets the
//!   same bytes (`memory` replicas, which share nothing, are the control).
//! - The gateway holding the lock is killed (SIGKILL) in the middle of a
//!   slow fetch: the other gateways' requests finish within the lease TTL
//!   plus one fetch, and every answer is the exact bytes or an honest 5xx,
//!   never a truncated or wrong 200.
//!
//! Each lock server is started once per test binary. Needs the binaries
//! (`cargo build --workspace --bins`) and the servers
//! (`scripts/deps/20-lock.sh`, `scripts/deps/35-cloud.sh`); without a
//! server its tests print `SKIPPED`, or fail under `CI=true`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hyper::StatusCode;
use modmesh_tests::fixtures::{sha256_file, url_path, ProxyDir};
use modmesh_tests::http::get_sha256;
use modmesh_tests::lockservers::{lock_env, Driver};
use modmesh_tests::server::StaticServer;
use modmesh_tests::topology::{SharedLockMesh, Store};

/// The meshes never run at once (two cores).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const VERSION: &str = "v1.0.0";
const REQUESTS: usize = 100;

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Runs the 100 requests with `driver`; returns how many times the
/// upstream served the zip (`None`: the driver's server is missing), after
/// checking every client got the right bytes.
async fn run(driver: Driver) -> Result<Option<u64>> {
    let _heavy = HEAVY.lock().await;
    let test = format!("{driver:?}");
    let Some(env) = lock_env(driver).await else {
        return Ok(None);
    };
    let module = format!("example.com/singleflight/{}", test.to_lowercase());
    let t = Instant::now();
    let tmp = tempfile::tempdir()?;
    let proxy = ProxyDir::new(tmp.path().join("upstream"))?;
    let zip = proxy.add_big(&module, VERSION, 3 << 20)?;
    let want = sha256_file(&zip)?;
    let upstream = StaticServer::start(proxy.root())?;
    // A slow upstream keeps the fetch in flight while every request arrives.
    upstream.set_delay(Duration::from_millis(300));
    let store = tmp.path().join("store");
    std::fs::create_dir(&store)?;
    let mut mesh = SharedLockMesh::start(
        tmp.path(),
        &Store::Disk(store),
        &upstream.url(),
        (3, 2, 2),
        &pairs(&env),
    )
    .await?;
    eprintln!("[{test}] mesh up in {:.1} s", t.elapsed().as_secs_f64());

    let gateways: Vec<String> = mesh.gateways.iter().map(|g| g.url()).collect();
    let path = url_path(&module, VERSION, "zip");
    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let mut tasks = tokio::task::JoinSet::new();
    let t = Instant::now();
    for i in 0..REQUESTS {
        let url = format!("{}{path}", gateways[i % gateways.len()]);
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            (url.clone(), get_sha256(&url).await)
        });
    }
    let mut failures = Vec::new();
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        let (url, res) = done?;
        match res {
            Ok((StatusCode::OK, sha, _)) if sha == want => ok += 1,
            Ok((status, sha, len)) => {
                failures.push(format!("{url}: {status}, {len} bytes, sha256 {sha}"))
            }
            Err(e) => failures.push(format!("{url}: {e:#}")),
        }
    }
    eprintln!(
        "[{test}] {REQUESTS} cold requests over {} gateways answered in {:.1} s; upstream: {:?}",
        gateways.len(),
        t.elapsed().as_secs_f64(),
        upstream.counts()
    );
    let fetched = upstream.count(&path);
    ensure!(
        failures.is_empty() && ok == REQUESTS,
        "[{test}] {} of {REQUESTS} requests failed; the upstream saw {fetched} request(s) for the zip\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        mesh.log_tails(4000)
    );
    mesh.stop()?;
    Ok(Some(fetched))
}

/// 100 cold requests over `driver` reach the upstream once.
async fn single_flight(driver: Driver) -> Result<()> {
    if let Some(fetched) = run(driver).await? {
        assert_eq!(
            fetched, 1,
            "{driver:?}: the upstream served the zip {fetched} times"
        );
    }
    Ok(())
}

/// The control: lock-svc replicas with the `memory` driver do not share
/// their locks, so the same load fetches more than once. (This is what the
/// tests below would see if their lock server did nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_replicas_do_not_single_flight() -> Result<()> {
    let fetched = run(Driver::Memory)
        .await?
        .context("memory needs no server")?;
    assert!(
        fetched >= 2,
        "two memory lock-svc replicas gave single flight ({fetched} fetch): the test cannot tell a shared lock from none"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_over_redis() -> Result<()> {
    single_flight(Driver::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_over_redis_sentinel() -> Result<()> {
    single_flight(Driver::RedisSentinel).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_over_etcd() -> Result<()> {
    single_flight(Driver::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_over_gcp() -> Result<()> {
    single_flight(Driver::Gcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_over_azureblob() -> Result<()> {
    single_flight(Driver::AzureBlob).await
}

// ------------------------------------------------ a lock holder killed

/// The lease TTL the gateways ask for (`ATHENS_LOCK_TTL`, seconds).
const KILL_TTL: Duration = Duration::from_secs(2);
/// The zip's size and the upstream's rate: one fetch takes about 4 s.
const KILL_ZIP: u64 = 2 << 20;
const KILL_RATE: u64 = 512 << 10;
/// Requests waiting on the lock at the other gateways.
const WAITERS: usize = 20;
/// What the bound allows beyond TTL + one fetch: the go command's start in
/// the fetcher, storing the zip, a lock server's expiry sweep (etcd counts
/// whole seconds), and a loaded machine.
const KILL_SLACK: Duration = Duration::from_secs(6);

/// Gateway A takes the lock and starts a slow fetch; 20 requests queue at
/// gateways B and C; A is killed with SIGKILL. The waiters all finish
/// within TTL + one fetch (+ slack) of the kill, and every answer is the
/// exact bytes or an honest 5xx; A's own client gets the exact bytes or a
/// broken connection, never a short or wrong 200.
async fn holder_killed(driver: Driver) -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let test = format!("kill-{driver:?}");
    let Some(env) = lock_env(driver).await else {
        return Ok(());
    };
    let module = format!(
        "example.com/killed/{}",
        format!("{driver:?}").to_lowercase()
    );
    let tmp = tempfile::tempdir()?;
    let proxy = ProxyDir::new(tmp.path().join("upstream"))?;
    let zip = proxy.add_big(&module, VERSION, KILL_ZIP)?;
    let want = sha256_file(&zip)?;
    let upstream = StaticServer::start(proxy.root())?;
    upstream.set_throttle(KILL_RATE);
    let one_fetch = Duration::from_secs_f64(KILL_ZIP as f64 / KILL_RATE as f64);
    let store = tmp.path().join("store");
    std::fs::create_dir(&store)?;
    let ttl = KILL_TTL.as_secs().to_string();
    let mut mesh = SharedLockMesh::start_with_gateway_env(
        tmp.path(),
        &Store::Disk(store),
        &upstream.url(),
        (3, 2, 2),
        &pairs(&env),
        &[("ATHENS_LOCK_TTL", &ttl)],
    )
    .await?;
    let path = url_path(&module, VERSION, "zip");
    let urls: Vec<String> = mesh
        .gateways
        .iter()
        .map(|g| format!("{}{path}", g.url()))
        .collect();

    // Gateway A takes the lock: its fetch reaches the upstream.
    let holder = tokio::spawn(get_sha256_owned(urls[0].clone()));
    let t = Instant::now();
    while upstream.count(&path) == 0 {
        ensure!(
            t.elapsed() < Duration::from_secs(30),
            "[{test}] the upstream never saw the zip request\n{}",
            mesh.log_tails(3000)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut waiters = tokio::task::JoinSet::new();
    for i in 0..WAITERS {
        let url = urls[1 + i % 2].clone();
        waiters.spawn(async move {
            let r = get_sha256(&url).await;
            (url, r, Instant::now())
        });
    }
    // Let them queue on the lock, then kill the holder mid-fetch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = mesh.gateways.remove(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let t_kill = Instant::now();
    ensure!(
        upstream.count(&path) == 1,
        "[{test}] the waiters did not wait: {:?}",
        upstream.counts()
    );
    drop(killed);

    let mut bad = Vec::new();
    let (mut ok, mut honest) = (0, 0);
    let mut last = t_kill;
    while let Some(done) = waiters.join_next().await {
        let (url, res, at) = done?;
        last = last.max(at);
        match res {
            Ok((StatusCode::OK, sha, _)) if sha == want => ok += 1,
            Ok((status, _, _)) if status.is_server_error() => honest += 1,
            Ok((status, sha, len)) => bad.push(format!("{url}: {status}, {len} bytes, {sha}")),
            Err(e) => bad.push(format!("{url}: {e:#}")),
        }
    }
    let took = last - t_kill;
    let bound = KILL_TTL + one_fetch + KILL_SLACK;
    eprintln!(
        "[{test}] {WAITERS} waiters: {ok} exact, {honest} 5xx, {} bad; the last answered {:.1} s after the kill (bound {:.1} s); upstream zip requests: {}",
        bad.len(),
        took.as_secs_f64(),
        bound.as_secs_f64(),
        upstream.count(&path)
    );
    ensure!(
        bad.is_empty(),
        "[{test}] answers that are neither the exact bytes nor a 5xx:\n{}\n{}",
        bad.join("\n"),
        mesh.log_tails(4000)
    );
    ensure!(
        ok > 0,
        "[{test}] no waiter got the zip after the holder died\n{}",
        mesh.log_tails(4000)
    );
    ensure!(
        took <= bound,
        "[{test}] the waiters took {took:?} after the kill (TTL {KILL_TTL:?} + one fetch {one_fetch:?} + {KILL_SLACK:?})"
    );
    match holder.await? {
        Ok((StatusCode::OK, sha, _)) => ensure!(
            sha == want,
            "[{test}] the killed gateway's client got a wrong 200"
        ),
        Ok((status, _, len)) => ensure!(
            status.is_server_error(),
            "[{test}] the killed gateway's client got {status} ({len} bytes)"
        ),
        Err(_) => {} // the connection broke: honest
    }
    // What is stored is whole: a fresh request gets the exact bytes.
    let (status, sha, _) = get_sha256(&urls[1]).await?;
    ensure!(
        status == StatusCode::OK && sha == want,
        "[{test}] after the kill the zip is {status} {sha}"
    );
    ensure!(
        upstream.count(&path) <= 2,
        "[{test}] the zip was fetched {} times",
        upstream.count(&path)
    );
    mesh.stop()?;
    Ok(())
}

async fn get_sha256_owned(url: String) -> Result<(StatusCode, String, u64)> {
    get_sha256(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_holder_over_redis() -> Result<()> {
    holder_killed(Driver::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_holder_over_etcd() -> Result<()> {
    holder_killed(Driver::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_holder_over_redis_sentinel() -> Result<()> {
    holder_killed(Driver::RedisSentinel).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_holder_over_gcp() -> Result<()> {
    holder_killed(Driver::Gcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_holder_over_azureblob() -> Result<()> {
    holder_killed(Driver::AzureBlob).await
}
