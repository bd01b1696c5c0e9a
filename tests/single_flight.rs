//! Single flight across instances, end to end: three gateways and two
//! fetcher-svc sharing one storage-svc and two lock-svc replicas, the
//! replicas sharing a real lock server (redis, then a three-member etcd
//! cluster). 100 concurrent cold requests for one version's `.zip`, spread
//! over the gateways, reach the upstream exactly once, and every client
//! gets the same bytes.
//!
//! Needs the binaries (`cargo build --workspace --bins`) and the servers
//! (`scripts/deps/20-lock.sh`); without the servers the tests print
//! `SKIPPED`, or fail under `CI=true`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use hyper::StatusCode;
use modmesh_lock::testing::servers::{self, Etcd, Redis};
use modmesh_lock::testing::skip;
use modmesh_tests::fixtures::{sha256_file, url_path, ProxyDir};
use modmesh_tests::http::get_sha256;
use modmesh_tests::server::StaticServer;
use modmesh_tests::topology::{SharedLockMesh, Store};

/// The two meshes never run at once (two cores).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MODULE: &str = "example.com/singleflight";
const VERSION: &str = "v1.0.0";
const REQUESTS: usize = 100;

/// Runs the 100 requests; returns how many times the upstream served the
/// zip, after checking every client got the right bytes.
async fn run(test: &str, lock_env: &[(&str, &str)]) -> Result<u64> {
    let t = Instant::now();
    let tmp = tempfile::tempdir()?;
    let proxy = ProxyDir::new(tmp.path().join("upstream"))?;
    let zip = proxy.add_big(MODULE, VERSION, 3 << 20)?;
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
        lock_env,
    )
    .await?;
    eprintln!("[{test}] mesh up in {:.1} s", t.elapsed().as_secs_f64());

    let gateways: Vec<String> = mesh.gateways.iter().map(|g| g.url()).collect();
    let path = url_path(MODULE, VERSION, "zip");
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
        "{} of {REQUESTS} requests failed; the upstream saw {fetched} request(s) for the zip\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        mesh.log_tails(4000)
    );
    mesh.stop()?;
    Ok(fetched)
}

#[track_caller]
fn assert_once(fetched: u64) {
    assert_eq!(fetched, 1, "the upstream served the zip {fetched} times");
}

/// The control: lock-svc replicas with the `memory` driver do not share
/// their locks, so the same load fetches more than once. (This is what the
/// two tests above would see if their lock server did nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_replicas_do_not_single_flight() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let fetched = run("memory", &[("ATHENS_SINGLE_FLIGHT_TYPE", "memory")]).await?;
    assert!(
        fetched >= 2,
        "two memory lock-svc replicas gave single flight ({fetched} fetch): the test cannot tell a shared lock from none"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_over_redis() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let Some(redis) = Redis::start() else {
        skip("redis-server is not installed");
        return Ok(());
    };
    let endpoint = redis.endpoint();
    run(
        "redis",
        &[
            ("ATHENS_SINGLE_FLIGHT_TYPE", "redis"),
            ("ATHENS_REDIS_ENDPOINT", &endpoint),
            ("ATHENS_REDIS_PASSWORD", servers::REDIS_PASSWORD),
        ],
    )
    .await
    .map(assert_once)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_over_etcd() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let Some(etcd) = Etcd::start(3) else {
        skip("etcd is not installed");
        return Ok(());
    };
    let endpoints = etcd.endpoints().join(",");
    run(
        "etcd",
        &[
            ("ATHENS_SINGLE_FLIGHT_TYPE", "etcd"),
            ("ATHENS_ETCD_ENDPOINTS", &endpoints),
        ],
    )
    .await
    .map(assert_once)
}
