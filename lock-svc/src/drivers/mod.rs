//! Lock drivers, chosen by `SingleFlightType` from [`REGISTRY`].
//!
//! - `memory`: [`memory::MemoryLock`], one process's lock table (one
//!   lock-svc replica only);
//! - `etcd`: [`etcd::EtcdLock`], `[SingleFlight.Etcd]`;
//! - `redis`: [`redis::RedisLock`], `[SingleFlight.Redis]`;
//! - `redis-sentinel`: the redis lock on the master named by sentinels,
//!   `[SingleFlight.RedisSentinel]`;
//! - `gcp`: [`gcp::GcpLock`], objects in the `[Storage.GCP]` bucket;
//! - `azureblob`: [`azureblob::AzureBlobLock`], blob leases in the
//!   `[Storage.AzureBlob]` container.
//!
//! A new driver is one file here (its code and its config section), one
//! line in [`REGISTRY`] and one line in `tests/contract.rs`.

pub mod azureblob;
pub mod etcd;
pub mod gcp;
pub mod memory;
pub mod redis;
pub mod redis_sentinel;

use crate::Lock;
use modmesh_common::Config;
use modmesh_proto::{Error, Result};
use std::sync::Arc;

pub use etcd::EtcdLock;
pub use memory::MemoryLock;
pub use redis::RedisLock;

/// Builds a driver from the whole configuration (it reads its own section).
pub type Builder = fn(&Config) -> Result<Arc<dyn Lock>>;

/// Every `SingleFlightType` this build has a driver for, with its builder.
pub const REGISTRY: &[(&str, Builder)] = &[
    ("memory", memory::build),
    ("etcd", etcd::build),
    ("redis", redis::build),
    ("redis-sentinel", redis_sentinel::build),
    ("gcp", gcp::build),
    ("azureblob", azureblob::build),
];

/// A configuration error as an `Invalid` error (its message names the key).
/// Waits for a lock on a server that cannot notify waiters (GCS, Azure):
/// `try_once` until it yields a lease, pausing 25 ms doubling to `max_poll`
/// between tries; `Timeout` once `wait` has passed.
pub(crate) async fn poll_acquire<F, Fut>(
    key: &str,
    wait: std::time::Duration,
    max_poll: std::time::Duration,
    mut try_once: F,
) -> Result<crate::Lease>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<crate::Lease>>>,
{
    use std::time::Duration;
    use tokio::time::Instant;
    let deadline = Instant::now() + wait.min(Duration::from_secs(365 * 24 * 3600));
    let mut pause = Duration::from_millis(25);
    loop {
        if let Some(lease) = try_once().await? {
            tracing::debug!(key, lease = %lease.id, token = lease.token, "lock acquired");
            return Ok(lease);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::timeout(format!(
                "lock {key:?} still held after waiting {wait:?}"
            )));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(max_poll);
    }
}

pub(crate) fn config_error(e: modmesh_common::config::ConfigError) -> Error {
    Error::invalid(e.to_string())
}

/// The `SingleFlightType` values of [`REGISTRY`].
pub fn types() -> Vec<&'static str> {
    REGISTRY.iter().map(|(name, _)| *name).collect()
}

/// Builds the driver named by `cfg.SingleFlightType`; an unknown type is
/// `Invalid`, listing the types that exist.
pub fn from_config(cfg: &Config) -> Result<Arc<dyn Lock>> {
    let name = cfg.SingleFlightType.trim();
    let build = modmesh_common::config::pick(REGISTRY, "SingleFlightType", name)
        .map_err(|e| Error::invalid(format!("{}: {}", e.key, e.problem)))?;
    build(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_by_single_flight_type() {
        let cfg = Config::from_text("", &[]).unwrap();
        assert!(from_config(&cfg).is_ok());
        let cfg = Config::from_text("SingleFlightType = \"floppy\"\n", &[]).unwrap();
        let e = from_config(&cfg).unwrap_err();
        assert!(e.is(modmesh_proto::ErrorKind::Invalid));
        assert!(e.message.contains("SingleFlightType"), "{e}");
        assert!(e.message.contains("memory"), "{e}");
    }

    #[test]
    fn etcd_section_athens_keys_and_env() {
        use etcd::EtcdConfig;
        let cfg = Config::from_text("", &[]).unwrap();
        let c: EtcdConfig = cfg.section().unwrap();
        assert_eq!(
            c.urls(),
            [
                "http://localhost:2379",
                "http://localhost:22379",
                "http://localhost:32379"
            ]
        );
        let text = "[SingleFlight.Etcd]\nEndpoints = \"a:1, http://b:2\"\n";
        let c: EtcdConfig = Config::from_text(text, &[]).unwrap().section().unwrap();
        assert_eq!(c.urls(), ["http://a:1", "http://b:2"]);
        let env = [("ATHENS_ETCD_ENDPOINTS", "x:9")];
        let c: EtcdConfig = Config::from_text(text, &env).unwrap().section().unwrap();
        assert_eq!(c.urls(), ["http://x:9"]);
        let bad = [("ATHENS_ETCD_ENDPOINTS", "nohost")];
        let e = Config::from_text("", &bad)
            .unwrap()
            .section::<EtcdConfig>()
            .unwrap_err();
        assert!(e.to_string().contains("SingleFlight.Etcd.Endpoints"), "{e}");
    }

    #[test]
    fn redis_section_athens_keys_and_env() {
        use self::redis::RedisConfig;
        let c: RedisConfig = Config::from_text("", &[]).unwrap().section().unwrap();
        assert_eq!(c.Endpoint, "127.0.0.1:6379");
        assert_eq!(c.Password, "");
        assert_eq!(
            (
                c.LockConfig.TTL,
                c.LockConfig.Timeout,
                c.LockConfig.MaxRetries
            ),
            (900, 15, 10)
        );
        let text = "[SingleFlight.Redis]\nEndpoint = \"h:1\"\nPassword = \"p\"\n\
                    [SingleFlight.Redis.LockConfig]\nTTL = 60\nTimeout = 5\nMaxRetries = 3\n";
        let c: RedisConfig = Config::from_text(text, &[]).unwrap().section().unwrap();
        assert_eq!((c.Endpoint.as_str(), c.Password.as_str()), ("h:1", "p"));
        assert_eq!(
            (
                c.LockConfig.TTL,
                c.LockConfig.Timeout,
                c.LockConfig.MaxRetries
            ),
            (60, 5, 3)
        );
        let env = [
            ("ATHENS_REDIS_ENDPOINT", "redis://e:2"),
            ("ATHENS_REDIS_PASSWORD", "q"),
            ("ATHENS_REDIS_LOCK_TTL", "30"),
            ("ATHENS_REDIS_LOCK_TIMEOUT", "2"),
            ("ATHENS_REDIS_LOCK_MAX_RETRIES", "1"),
        ];
        let c: RedisConfig = Config::from_text(text, &env).unwrap().section().unwrap();
        assert_eq!(
            (c.Endpoint.as_str(), c.Password.as_str()),
            ("redis://e:2", "q")
        );
        assert_eq!(
            (
                c.LockConfig.TTL,
                c.LockConfig.Timeout,
                c.LockConfig.MaxRetries
            ),
            (30, 2, 1)
        );
        for (var, val, key) in [
            (
                "ATHENS_REDIS_LOCK_TTL",
                "0",
                "SingleFlight.Redis.LockConfig.TTL",
            ),
            (
                "ATHENS_REDIS_ENDPOINT",
                "redis://:a@h:1",
                "SingleFlight.Redis.Password",
            ),
        ] {
            let env = [(var, val), ("ATHENS_REDIS_PASSWORD", "b")];
            let e = Config::from_text("", &env)
                .unwrap()
                .section::<RedisConfig>()
                .unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn redis_sentinel_section_athens_keys_and_env() {
        use redis_sentinel::RedisSentinelConfig;
        let c: RedisSentinelConfig = Config::from_text("", &[]).unwrap().section().unwrap();
        assert_eq!(c.Endpoints, ["127.0.0.1:26379"]);
        assert_eq!(c.MasterName, "redis-1");
        assert_eq!(c.SentinelPassword, "sekret");
        assert_eq!(c.LockConfig.TTL, 900);
        let env = [
            ("ATHENS_REDIS_SENTINEL_ENDPOINTS", "a:1,b:2,c:3"),
            ("ATHENS_REDIS_SENTINEL_MASTER_NAME", "m"),
            ("ATHENS_REDIS_SENTINEL_PASSWORD", "s"),
            ("ATHENS_REDIS_USERNAME", "u"),
            ("ATHENS_REDIS_PASSWORD", "p"),
            ("ATHENS_REDIS_SENTINEL_DB", "2"),
            ("ATHENS_REDIS_LOCK_MAX_RETRIES", "4"),
        ];
        let c: RedisSentinelConfig = Config::from_text("", &env).unwrap().section().unwrap();
        assert_eq!(c.Endpoints, ["a:1", "b:2", "c:3"]);
        assert_eq!(
            (
                c.MasterName.as_str(),
                c.SentinelPassword.as_str(),
                c.RedisUsername.as_str(),
                c.RedisPassword.as_str(),
                c.DB,
                c.LockConfig.MaxRetries
            ),
            ("m", "s", "u", "p", 2, 4)
        );
        // Every type builds from its defaults (no server is contacted).
        for t in types() {
            let storage = [
                ("ATHENS_STORAGE_GCP_BUCKET", "b"),
                ("ATHENS_AZURE_ACCOUNT_NAME", "a"),
                ("ATHENS_AZURE_ACCOUNT_KEY", "a2V5"),
                ("ATHENS_AZURE_CONTAINER_NAME", "c"),
            ];
            let cfg =
                Config::from_text(&format!("SingleFlightType = \"{t}\"\n"), &storage).unwrap();
            from_config(&cfg).unwrap_or_else(|e| panic!("{t}: {e}"));
        }
    }
}
