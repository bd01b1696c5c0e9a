//! The `redis-sentinel` driver: the [`redis`](super::redis) lock, on the
//! master that redis sentinels name. The master's address comes from
//! `SENTINEL GET-MASTER-ADDR-BY-NAME` (the first sentinel in `Endpoints`
//! that answers, checked with `ROLE`), and is asked again whenever a call
//! fails on the connection or the server answers `READONLY` (a failover
//! demoted it), so the lock follows a failover without a restart.

use super::redis::{parse_endpoint, Locator, LockConfig, RedisLock, LOCK_ENV};
use crate::Lock;
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::{Error, Result};
use std::sync::Arc;

/// The `[SingleFlight.RedisSentinel]` table, with Athens' names and defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct RedisSentinelConfig {
    /// `ATHENS_REDIS_SENTINEL_ENDPOINTS` (comma-separated): the sentinels,
    /// `host:port` each.
    pub Endpoints: Vec<String>,
    /// `ATHENS_REDIS_SENTINEL_MASTER_NAME`: the master's name in the
    /// sentinels' configuration.
    pub MasterName: String,
    /// `ATHENS_REDIS_SENTINEL_PASSWORD`: the sentinels' password (empty:
    /// none).
    pub SentinelPassword: String,
    /// `ATHENS_REDIS_USERNAME`: the ACL user on the redis servers (empty:
    /// the default user).
    pub RedisUsername: String,
    /// `ATHENS_REDIS_PASSWORD` (the same variable as
    /// `SingleFlight.Redis.Password`, as in Athens): the redis servers'
    /// password.
    pub RedisPassword: String,
    /// `ATHENS_REDIS_SENTINEL_DB`: the database number.
    pub DB: i64,
    /// The lock's tuning (the same variables as `SingleFlight.Redis`).
    pub LockConfig: LockConfig,
}

impl Default for RedisSentinelConfig {
    fn default() -> Self {
        RedisSentinelConfig {
            Endpoints: vec!["127.0.0.1:26379".into()],
            MasterName: "redis-1".into(),
            SentinelPassword: "sekret".into(),
            RedisUsername: String::new(),
            RedisPassword: String::new(),
            DB: 0,
            LockConfig: LockConfig::default(),
        }
    }
}

impl Section for RedisSentinelConfig {
    const PATH: &'static str = "SingleFlight.RedisSentinel";
    const ENV: &'static [Env] = &[
        Env::list("ATHENS_REDIS_SENTINEL_ENDPOINTS", "Endpoints", ','),
        Env::new("ATHENS_REDIS_SENTINEL_MASTER_NAME", "MasterName"),
        Env::new("ATHENS_REDIS_SENTINEL_PASSWORD", "SentinelPassword"),
        Env::new("ATHENS_REDIS_USERNAME", "RedisUsername"),
        Env::new("ATHENS_REDIS_PASSWORD", "RedisPassword"),
        Env::new("ATHENS_REDIS_SENTINEL_DB", "DB"),
        LOCK_ENV[0],
        LOCK_ENV[1],
        LOCK_ENV[2],
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        let endpoints: Vec<&String> = self
            .Endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(err(&Self::key("Endpoints"), "needs at least one sentinel"));
        }
        for e in endpoints {
            parse_endpoint(e).map_err(|p| err(&Self::key("Endpoints"), p))?;
        }
        if self.MasterName.trim().is_empty() {
            return Err(err(&Self::key("MasterName"), "must not be empty"));
        }
        if self.DB < 0 {
            return Err(err(&Self::key("DB"), "must not be negative"));
        }
        self.LockConfig.check(Self::PATH)
    }
}

/// Builds the redis-sentinel driver from `[SingleFlight.RedisSentinel]`.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Lock>> {
    let c: RedisSentinelConfig = cfg.section().map_err(super::config_error)?;
    let mut sentinels = Vec::new();
    for e in c.Endpoints.iter().filter(|e| !e.trim().is_empty()) {
        let mut info = parse_endpoint(e).map_err(Error::invalid)?;
        if !c.SentinelPassword.is_empty() {
            let s = info
                .redis_settings()
                .clone()
                .set_password(&c.SentinelPassword);
            info = info.set_redis_settings(s);
        }
        sentinels.push(info);
    }
    let mut settings = redis::RedisConnectionInfo::default().set_db(c.DB);
    if !c.RedisUsername.is_empty() {
        settings = settings.set_username(&c.RedisUsername);
    }
    if !c.RedisPassword.is_empty() {
        settings = settings.set_password(&c.RedisPassword);
    }
    Ok(Arc::new(RedisLock::new(
        Locator::Sentinel {
            sentinels,
            master: c.MasterName.trim().to_string(),
            settings,
        },
        &c.LockConfig,
    )))
}
