//! The lock service: lease-based locks that make N gateways fetch each
//! module version once.
//!
//! [`Lock`] is the trait every driver implements; [`server`] serves any
//! `Arc<dyn Lock>` over gRPC and [`client::LockClient`] is a `Lock` over
//! gRPC. [`hold`] acquires a lock and keeps its lease alive until the
//! returned [`LeaseGuard`] is released or dropped.

#![warn(missing_docs)]

use async_trait::async_trait;
use modmesh_proto::Result;
use std::sync::Arc;
use std::time::Duration;

pub mod client;
pub mod drivers;
pub mod server;

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The locked key.
    pub key: String,
    /// The holder's lease id (unique per acquisition).
    pub id: String,
    /// How long the lease lives without a keep-alive.
    pub ttl: Duration,
}

/// A lease-based lock.
///
/// Contract: at most one live lease per key; `acquire` waits (up to `wait`,
/// then `Timeout`) and is woken when the holder releases or its lease
/// expires; a lease not kept alive expires within its TTL; `keep_alive` of an
/// expired or released lease is `NotFound`; `release` of an expired lease is
/// not an error.
#[async_trait]
pub trait Lock: Send + Sync + 'static {
    /// Waits for and takes the lock on `key`.
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease>;
    /// Extends `lease` by its TTL.
    async fn keep_alive(&self, lease: &Lease) -> Result<()>;
    /// Frees the lock.
    async fn release(&self, lease: &Lease) -> Result<()>;
}

/// Builds the driver named by `SingleFlightType` in `cfg`.
pub fn from_config(cfg: &modmesh_common::Config) -> Result<Arc<dyn Lock>> {
    drivers::from_config(cfg)
}

/// A lease kept alive in the background (every TTL/3) until released or
/// dropped; dropping releases it in the background.
#[derive(Debug)]
pub struct LeaseGuard {
    lock: Arc<dyn Lock>,
    lease: Option<Lease>,
    keeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for dyn Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Lock")
    }
}

/// Acquires `key` and keeps its lease alive until the guard goes.
pub async fn hold(
    lock: Arc<dyn Lock>,
    key: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<LeaseGuard> {
    let lease = lock.acquire(key, ttl, wait).await?;
    let keeper = {
        let lock = lock.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            let period = (lease.ttl / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(period).await;
                if let Err(e) = lock.keep_alive(&lease).await {
                    tracing::warn!(key = %lease.key, error = %e, "lease keep-alive failed");
                    if e.is(modmesh_proto::ErrorKind::NotFound) {
                        return;
                    }
                }
            }
        })
    };
    Ok(LeaseGuard {
        lock,
        lease: Some(lease),
        keeper,
    })
}

impl LeaseGuard {
    /// The held lease.
    pub fn lease(&self) -> &Lease {
        self.lease.as_ref().expect("lease present until released")
    }

    /// Stops the keep-alive and releases the lock.
    pub async fn release(mut self) -> Result<()> {
        self.keeper.abort();
        match self.lease.take() {
            Some(lease) => self.lock.release(&lease).await,
            None => Ok(()),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.keeper.abort();
        if let Some(lease) = self.lease.take() {
            let lock = self.lock.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = lock.release(&lease).await;
                });
            }
        }
    }
}
