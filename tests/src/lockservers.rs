//! The lock drivers lock-svc replicas can share locks through, with their
//! real servers (feature `servers`): [`lock_env`] starts a driver's server
//! once per process (redis, redis-sentinel, a three-member etcd cluster,
//! fake-gcs-server, Azurite) through the lock and storage crates' test
//! harnesses, and gives the lock-svc environment that points at it.

use std::sync::OnceLock;

use modmesh_lock::testing::servers::{self, Etcd, Redis, SentinelSet};
use modmesh_lock::testing::skip;
use modmesh_storage::backends::cloud_servers::CloudServer;
use modmesh_storage::backends::{azureblob, gcp};

/// A lock driver of the lock-svc replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `memory`: each replica has its own table (shares nothing).
    Memory,
    /// `redis`, one server with a password.
    Redis,
    /// `redis-sentinel`: a master, a replica and three sentinels.
    RedisSentinel,
    /// `etcd`: a three-member cluster.
    Etcd,
    /// `gcp`: lock objects in a fake-gcs-server bucket.
    Gcp,
    /// `azureblob`: blob leases in an Azurite container.
    AzureBlob,
}

impl Driver {
    /// Every driver, memory first.
    pub const ALL: [Driver; 6] = [
        Driver::Memory,
        Driver::Redis,
        Driver::RedisSentinel,
        Driver::Etcd,
        Driver::Gcp,
        Driver::AzureBlob,
    ];
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

/// The lock-svc environment for `d`, its server started once per test
/// process; `None` (after [`skip`]) when the server is not installed.
pub async fn lock_env(d: Driver) -> Option<Vec<(String, String)>> {
    static REDIS: OnceLock<Option<Redis>> = OnceLock::new();
    static SENTINELS: OnceLock<Option<SentinelSet>> = OnceLock::new();
    static ETCD: OnceLock<Option<Etcd>> = OnceLock::new();
    let ty = |t: &str| kv("ATHENS_SINGLE_FLIGHT_TYPE", t);
    Some(match d {
        Driver::Memory => vec![ty("memory")],
        Driver::Redis => {
            let Some(r) = REDIS.get_or_init(Redis::start) else {
                skip("redis-server is not installed");
                return None;
            };
            vec![
                ty("redis"),
                kv("ATHENS_REDIS_ENDPOINT", r.endpoint()),
                kv("ATHENS_REDIS_PASSWORD", servers::REDIS_PASSWORD),
            ]
        }
        Driver::RedisSentinel => {
            let Some(s) = SENTINELS.get_or_init(SentinelSet::start) else {
                skip("redis-server or redis-sentinel is not installed");
                return None;
            };
            vec![
                ty("redis-sentinel"),
                kv("ATHENS_REDIS_SENTINEL_ENDPOINTS", s.endpoints().join(",")),
                kv("ATHENS_REDIS_SENTINEL_MASTER_NAME", servers::MASTER_NAME),
                kv("ATHENS_REDIS_SENTINEL_PASSWORD", servers::SENTINEL_PASSWORD),
                kv("ATHENS_REDIS_PASSWORD", servers::REDIS_PASSWORD),
            ]
        }
        Driver::Etcd => {
            let Some(e) = ETCD.get_or_init(|| Etcd::start(3)) else {
                skip("etcd is not installed");
                return None;
            };
            vec![
                ty("etcd"),
                kv("ATHENS_ETCD_ENDPOINTS", e.endpoints().join(",")),
            ]
        }
        // The cloud drivers keep their locks in the storage bucket's
        // settings (as Athens' do); the harness skips when it is missing.
        Driver::Gcp | Driver::AzureBlob => {
            let server: &dyn CloudServer = if d == Driver::Gcp {
                gcp::testing::shared()?
            } else {
                azureblob::testing::shared()?
            };
            let bucket = server.new_bucket().await;
            let mut env = server.env(&bucket);
            env.push(ty(if d == Driver::Gcp { "gcp" } else { "azureblob" }));
            env
        }
    })
}
