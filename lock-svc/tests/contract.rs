//! Runs every check of `modmesh_lock::testing::contract` against every
//! driver, each against a real server started here on loopback ports: one
//! `lock_contract!` line per driver below expands to one test per check,
//! named `driver::check`. Then what needs a server of its own: an outage
//! (server stopped and started again on the same port) per networked
//! driver, and a sentinel failover while a lock is held.
//!
//! The servers (redis with a password; a redis master + replica with three
//! sentinels; a three-member etcd cluster) start once per test binary and
//! are killed when it ends. Without them the tests print `SKIPPED`, or fail
//! under `CI=true`.

use modmesh_common::server::LoopbackServer;
use modmesh_common::Config;
use modmesh_lock::client::LockClient;
use modmesh_lock::drivers::MemoryLock;
use modmesh_lock::testing::servers::{self, Etcd, Redis, SentinelSet};
use modmesh_lock::testing::{contract, skip, Scale};
use modmesh_lock::{server, Lock};
use modmesh_proto::ErrorKind;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The in-process driver.
async fn memory() -> Option<Arc<dyn Lock>> {
    Some(Arc::new(MemoryLock::new()))
}

/// `lock` behind a real tonic server on a loopback port, reached through
/// `LockClient`. The server lives as long as the test's runtime.
async fn over_grpc(lock: Arc<dyn Lock>) -> Arc<dyn Lock> {
    let server = LoopbackServer::start(server::routes(lock), &[server::SERVICE_NAME])
        .await
        .unwrap();
    let client = Arc::new(LockClient::new(&server.url).unwrap());
    std::mem::forget(server);
    client
}

async fn grpc_memory() -> Option<Arc<dyn Lock>> {
    Some(over_grpc(Arc::new(MemoryLock::new())).await)
}

/// A driver built the way lock-svc builds it: `SingleFlightType` and the
/// driver's `ATHENS_*` variables.
fn from_env(kind: &str, env: &[(&str, &str)]) -> Arc<dyn Lock> {
    let mut all = vec![("ATHENS_SINGLE_FLIGHT_TYPE", kind)];
    all.extend_from_slice(env);
    let cfg = Config::from_text("", &all).expect("config");
    modmesh_lock::from_config(&cfg).expect("driver")
}

fn shared_redis() -> Option<&'static Redis> {
    static S: OnceLock<Option<Redis>> = OnceLock::new();
    let r = S.get_or_init(Redis::start).as_ref();
    if r.is_none() {
        skip("redis-server is not installed");
    }
    r
}

fn shared_sentinels() -> Option<&'static SentinelSet> {
    static S: OnceLock<Option<SentinelSet>> = OnceLock::new();
    let r = S.get_or_init(SentinelSet::start).as_ref();
    if r.is_none() {
        skip("redis-server or redis-sentinel is not installed");
    }
    r
}

fn shared_etcd() -> Option<&'static Etcd> {
    static S: OnceLock<Option<Etcd>> = OnceLock::new();
    let r = S.get_or_init(|| Etcd::start(3)).as_ref();
    if r.is_none() {
        skip("etcd is not installed");
    }
    r
}

fn redis_driver(r: &Redis, retries: &str) -> Arc<dyn Lock> {
    from_env(
        "redis",
        &[
            ("ATHENS_REDIS_ENDPOINT", &r.endpoint()),
            ("ATHENS_REDIS_PASSWORD", servers::REDIS_PASSWORD),
            ("ATHENS_REDIS_LOCK_TIMEOUT", "2"),
            ("ATHENS_REDIS_LOCK_MAX_RETRIES", retries),
        ],
    )
}

fn sentinel_driver(s: &SentinelSet) -> Arc<dyn Lock> {
    from_env(
        "redis-sentinel",
        &[
            ("ATHENS_REDIS_SENTINEL_ENDPOINTS", &s.endpoints().join(",")),
            ("ATHENS_REDIS_SENTINEL_MASTER_NAME", servers::MASTER_NAME),
            ("ATHENS_REDIS_SENTINEL_PASSWORD", servers::SENTINEL_PASSWORD),
            ("ATHENS_REDIS_PASSWORD", servers::REDIS_PASSWORD),
            ("ATHENS_REDIS_LOCK_TIMEOUT", "2"),
        ],
    )
}

fn etcd_driver(e: &Etcd) -> Arc<dyn Lock> {
    from_env(
        "etcd",
        &[("ATHENS_ETCD_ENDPOINTS", &e.endpoints().join(","))],
    )
}

async fn redis() -> Option<Arc<dyn Lock>> {
    shared_redis().map(|r| redis_driver(r, "10"))
}

async fn grpc_redis() -> Option<Arc<dyn Lock>> {
    match shared_redis() {
        Some(r) => Some(over_grpc(redis_driver(r, "10")).await),
        None => None,
    }
}

async fn redis_sentinel() -> Option<Arc<dyn Lock>> {
    shared_sentinels().map(sentinel_driver)
}

async fn etcd() -> Option<Arc<dyn Lock>> {
    shared_etcd().map(etcd_driver)
}

modmesh_lock::lock_contract!(memory, memory, Scale::MEMORY);
modmesh_lock::lock_contract!(grpc_memory, grpc_memory, Scale::MEMORY);
modmesh_lock::lock_contract!(redis, redis, Scale::REDIS);
modmesh_lock::lock_contract!(grpc_redis, grpc_redis, Scale::REDIS);
modmesh_lock::lock_contract!(redis_sentinel, redis_sentinel, Scale::REDIS);
modmesh_lock::lock_contract!(etcd, etcd, Scale::ETCD);
modmesh_lock::lock_contract!(
    gcp,
    modmesh_lock::drivers::gcp::testing::driver,
    modmesh_lock::drivers::gcp::testing::SCALE
);
modmesh_lock::lock_contract!(
    azureblob,
    modmesh_lock::drivers::azureblob::testing::driver,
    modmesh_lock::drivers::azureblob::testing::SCALE
);

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_is_unavailable_and_recovers() {
    let Some(r) = Redis::start() else {
        return skip("redis-server is not installed");
    };
    let lock = redis_driver(&r, "2");
    let r = Mutex::new(r);
    contract::outage_is_unavailable_and_recovers(
        lock,
        Scale::REDIS,
        || r.lock().unwrap().stop(),
        || r.lock().unwrap().restart(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_outage_is_unavailable_and_recovers() {
    let Some(e) = Etcd::start(1) else {
        return skip("etcd is not installed");
    };
    let lock = etcd_driver(&e);
    let e = Mutex::new(e);
    contract::outage_is_unavailable_and_recovers(
        lock,
        Scale::ETCD,
        || e.lock().unwrap().stop(),
        || e.lock().unwrap().restart(),
    )
    .await;
}

/// A lock held across a sentinel failover stays held: the new master has
/// the key (replicated), so a second lock-svc replica's try-lock is refused
/// after the failover; the holder's guard renews on the new master and
/// never reports the lease lost; its release wakes the other replica's
/// waiter promptly, with a greater fencing token.
#[tokio::test(flavor = "multi_thread")]
async fn sentinel_failover_keeps_single_flight() {
    let Some(mut set) = SentinelSet::start() else {
        return skip("redis-server or redis-sentinel is not installed");
    };
    let a = sentinel_driver(&set);
    let b = sentinel_driver(&set);
    let key = "example.com/failover@v1.0.0";
    let ttl = Duration::from_secs(4);
    let guard = modmesh_lock::hold(a.clone(), key, ttl, Duration::ZERO)
        .await
        .expect("hold before the failover");
    let e = b.acquire(key, ttl, Duration::ZERO).await.unwrap_err();
    assert!(e.is(ErrorKind::Timeout), "{e}");
    // Let the replica have the key before it is promoted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = set.master_port().unwrap();
    let new = tokio::task::block_in_place(|| set.failover());
    assert_ne!(old, new);
    // Each lock-svc replica notices the new master within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // New requests after the failover: still single flight.
    let e = b.acquire(key, ttl, Duration::ZERO).await.unwrap_err();
    assert!(e.is(ErrorKind::Timeout), "acquire after the failover: {e}");
    // Through two TTLs the guard renews on the new master.
    tokio::time::sleep(ttl * 2).await;
    assert!(!guard.is_lost(), "the guard lost its lease in the failover");
    let e = b.acquire(key, ttl, Duration::ZERO).await.unwrap_err();
    assert!(e.is(ErrorKind::Timeout), "{e}");

    let token = guard.lease().token;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let l = b.acquire(key, ttl, Duration::from_secs(10)).await;
            (l, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    guard.release().await.expect("release after the failover");
    let (l, got) = waiter.await.unwrap();
    let l = l.expect("the waiter gets the lock");
    let took = got.saturating_duration_since(released);
    assert!(took < Scale::REDIS.wake, "woken {took:?} after the release");
    assert!(l.token > token, "token {} after {token}", l.token);
    b.release(&l).await.unwrap();
    a.health().await.expect("health after the failover");
}

/// A server that accepts connections and never answers: every driver's
/// health check and calls end within their deadlines as `Unavailable`.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_server_is_unavailable_within_the_deadline() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let sink = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let redis = from_env(
        "redis",
        &[
            ("ATHENS_REDIS_ENDPOINT", &addr),
            ("ATHENS_REDIS_LOCK_TIMEOUT", "1"),
            ("ATHENS_REDIS_LOCK_MAX_RETRIES", "3"),
        ],
    );
    let etcd = from_env("etcd", &[("ATHENS_ETCD_ENDPOINTS", &addr)]);
    for (name, lock, bound) in [
        ("redis", redis, Duration::from_secs(3)),
        ("etcd", etcd, Duration::from_secs(5)),
    ] {
        let t = Instant::now();
        let e = lock.health().await.unwrap_err();
        assert!(e.is(ErrorKind::Unavailable), "{name} health: {e}");
        assert!(t.elapsed() < bound, "{name} health took {:?}", t.elapsed());
        let t = Instant::now();
        let e = lock
            .acquire("k", Duration::from_secs(5), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.is(ErrorKind::Unavailable), "{name} acquire: {e}");
        assert!(t.elapsed() < bound, "{name} acquire took {:?}", t.elapsed());
    }
    sink.abort();
}

/// The redis servers behind the sentinels stop (master and replica) and
/// come back on the same ports: `Unavailable` meanwhile, then the driver
/// finds the master through the sentinels again by itself.
#[tokio::test(flavor = "multi_thread")]
async fn sentinel_outage_is_unavailable_and_recovers() {
    let Some(set) = SentinelSet::start() else {
        return skip("redis-server or redis-sentinel is not installed");
    };
    let lock = sentinel_driver(&set);
    let set = Mutex::new(set);
    contract::outage_is_unavailable_and_recovers(
        lock,
        Scale::REDIS,
        || {
            let mut s = set.lock().unwrap();
            s.master.stop();
            s.replica.stop();
        },
        || {
            let mut s = set.lock().unwrap();
            s.master.restart();
            s.replica.restart();
        },
    )
    .await;
}

/// Runs `f` to completion on a runtime of its own (from sync code inside a
/// test's runtime: server set-up after a restart).
fn block_on_side<F: std::future::Future<Output = ()> + Send>(f: F) {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
        .join()
        .unwrap()
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn gcp_outage_is_unavailable_and_recovers() {
    use modmesh_storage::backends::gcp::testing::{create_bucket_at, FakeGcs};
    let Some(gcs) = FakeGcs::start() else { return };
    let bucket = "mm-lock-outage".to_string();
    let lock = modmesh_lock::drivers::gcp::testing::driver_in(&gcs, &bucket).await;
    let url = gcs.url();
    let gcs = Mutex::new(gcs);
    contract::outage_is_unavailable_and_recovers(
        lock,
        modmesh_lock::drivers::gcp::testing::SCALE,
        || gcs.lock().unwrap().proc.stop(),
        || {
            gcs.lock().unwrap().proc.restart();
            block_on_side(create_bucket_at(&url, &bucket));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn azureblob_outage_is_unavailable_and_recovers() {
    use modmesh_storage::backends::azureblob::testing::{container_name, Azurite};
    let Some(az) = Azurite::start() else { return };
    let container = container_name();
    let lock = modmesh_lock::drivers::azureblob::testing::driver_in(&az, &container).await;
    let cfg = az.config(&container);
    let az = Mutex::new(az);
    contract::outage_is_unavailable_and_recovers(
        lock,
        modmesh_lock::drivers::azureblob::testing::SCALE,
        || az.lock().unwrap().proc.stop(),
        || {
            az.lock().unwrap().proc.restart();
            block_on_side(async move {
                cfg.container_client().unwrap().create().await.unwrap();
            });
        },
    )
    .await;
}

/// A lease with a TTL longer than Azure's 15 s lease stays held past 15 s
/// with no keep-alive (the driver renews the Azure lease); a holder that
/// dies (its driver gone, renewals stopped) frees the lock once the Azure
/// lease lapses, within 15 s, long before its 60 s TTL.
#[tokio::test(flavor = "multi_thread")]
async fn azureblob_lease_renewed_while_held_and_lapses_when_holder_dies() {
    use modmesh_lock::drivers::azureblob::{testing, AZURE_LEASE};
    let Some(az) = modmesh_storage::backends::azureblob::testing::shared() else {
        return;
    };
    let container = modmesh_storage::backends::azureblob::testing::container_name();
    let a = testing::driver_in(az, &container).await;
    let b = testing::driver_in(az, &container).await;
    let key = "example.com/renewed@v1.0.0";
    let held = a
        .acquire(key, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    tokio::time::sleep(AZURE_LEASE + Duration::from_secs(3)).await;
    let e = b
        .acquire(key, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(e.is(ErrorKind::Timeout), "the held lease lapsed: {e}");
    a.keep_alive(&held).await.expect("still held");
    // The holder dies: its driver (and renewer) goes, nothing released.
    drop(a);
    let died = Instant::now();
    let l = b
        .acquire(key, Duration::from_secs(5), Duration::from_secs(30))
        .await
        .expect("a dead holder's lock frees");
    let took = died.elapsed();
    assert!(
        took < AZURE_LEASE + Duration::from_secs(3),
        "freed {took:?} after the holder died"
    );
    assert!(l.token > held.token);
    b.release(&l).await.unwrap();
}

/// A waiter that saw an expired lease but was overtaken by another waiter
/// cannot break the new holder's lease: breaks are conditional on the blob
/// being unchanged since it was read.
#[tokio::test(flavor = "multi_thread")]
async fn azureblob_stale_break_spares_the_new_holder() {
    use modmesh_lock::drivers::azureblob::testing::concrete_in;
    let Some(az) = modmesh_storage::backends::azureblob::testing::shared() else {
        return;
    };
    let container = modmesh_storage::backends::azureblob::testing::container_name();
    let a = concrete_in(az, &container).await;
    let b = concrete_in(az, &container).await;
    let key = "example.com/stale-break@v1.0.0";
    let old = a
        .acquire(key, Duration::from_millis(200), Duration::ZERO)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stale = a.etag(key).await.unwrap().expect("the lock blob");
    let new = b
        .acquire(key, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .expect("takeover of an expired lease");
    assert!(new.token > old.token);
    assert!(
        !a.break_stale(key, &stale).await.unwrap(),
        "a break on a stale etag went through"
    );
    b.keep_alive(&new)
        .await
        .expect("the new holder's lease survives");
    let e = a
        .acquire(key, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(e.is(ErrorKind::Timeout), "{e}");
    b.release(&new).await.unwrap();
}
