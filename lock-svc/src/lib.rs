//! The lock service: lease-based locks that make N gateways fetch each
//! module version once.
//!
//! [`Lock`] is the trait every driver implements; [`server`] serves any
//! `Arc<dyn Lock>` over gRPC and [`client::LockClient`] is a `Lock` over
//! gRPC. [`hold`] acquires a lock and keeps its lease alive until the
//! returned [`LeaseGuard`] is released or dropped.
//!
//! With the `testing` feature, [`testing`] holds the contract every driver
//! must keep (check functions and the [`lock_contract!`] macro that runs them
//! all against a driver) and a harness that starts real servers (redis,
//! redis-sentinel, etcd) on loopback ports.

#![warn(missing_docs)]

use async_trait::async_trait;
use modmesh_proto::{Error, ErrorKind, Result};
use std::sync::Arc;
use std::time::Duration;

pub mod client;
pub mod drivers;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;

/// The longest lock key accepted (a module path and version fit with room
/// to spare).
pub const MAX_KEY_LEN: usize = 2048;

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The locked key.
    pub key: String,
    /// The holder's lease id (unique per acquisition).
    pub id: String,
    /// How long the lease lives without a keep-alive (as granted: a driver
    /// may round it up to its own granularity, e.g. etcd's whole seconds).
    pub ttl: Duration,
    /// The fencing token: greater than the token of every earlier lease on
    /// the same key, never 0 for a granted lease (0 where unknown, as in a
    /// lease that reached a driver through the gRPC server).
    pub token: u64,
}

/// A lease-based lock.
///
/// Contract: at most one live lease per key; `acquire` waits (up to `wait`,
/// then `Timeout`) and is woken when the holder releases or its lease
/// expires; a lease not kept alive expires within its TTL; `keep_alive` of an
/// expired or released lease is `NotFound`; `release` of an expired lease is
/// not an error.
///
/// Spelled out (and checked by the `testing` feature's contract): a zero `wait` tries once; an
/// empty key or a zero TTL is `Invalid`; `release` frees the lock only for
/// the lease that holds it (a stale or unknown lease frees nothing, and is
/// still `Ok`); an `acquire` whose caller goes away (its future dropped)
/// stops waiting and takes nothing.
#[async_trait]
pub trait Lock: Send + Sync + 'static {
    /// Waits for and takes the lock on `key`.
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease>;
    /// Extends `lease` by its TTL: the TTL it was granted with, which drivers
    /// must remember themselves (`lease.ttl` is zero when the lease reached
    /// the driver through the gRPC server, as `LeaseRef` does not carry it).
    async fn keep_alive(&self, lease: &Lease) -> Result<()>;
    /// Frees the lock.
    async fn release(&self, lease: &Lease) -> Result<()>;
    /// Whether the lock's backend answers: `Ok`, or `Unavailable` when it
    /// does not within a short deadline.
    async fn health(&self) -> Result<()>;
}

/// Checks the arguments of [`Lock::acquire`]: a non-empty key of at most
/// [`MAX_KEY_LEN`] bytes and a non-zero TTL (`Invalid` otherwise).
pub fn validate_acquire(key: &str, ttl: Duration) -> Result<()> {
    validate_key(key)?;
    if ttl.is_zero() {
        return Err(Error::invalid("lock ttl must be greater than 0"));
    }
    Ok(())
}

/// Checks a lease passed to [`Lock::keep_alive`] or [`Lock::release`]: a
/// valid key and a non-empty id (`Invalid` otherwise).
pub fn validate_lease(lease: &Lease) -> Result<()> {
    validate_key(&lease.key)?;
    if lease.id.is_empty() {
        return Err(Error::invalid("lease id must not be empty"));
    }
    Ok(())
}

fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("lock key must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "lock key longer than {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(())
}

/// Builds the driver named by `SingleFlightType` in `cfg`.
pub fn from_config(cfg: &modmesh_common::Config) -> Result<Arc<dyn Lock>> {
    drivers::from_config(cfg)
}

/// A lease kept alive in the background (every TTL/3) until released or
/// dropped; dropping releases it in the background (or, outside a tokio
/// runtime, leaves it to expire within its TTL).
///
/// If the lease is lost while held (a keep-alive answers `NotFound`, or no
/// keep-alive has succeeded for a whole TTL) the guard stops renewing and
/// says so through [`LeaseGuard::is_lost`] and [`LeaseGuard::lost`]: from
/// then on another holder may have the lock.
#[derive(Debug)]
pub struct LeaseGuard {
    lock: Arc<dyn Lock>,
    lease: Option<Lease>,
    keeper: tokio::task::JoinHandle<()>,
    lost: tokio::sync::watch::Receiver<bool>,
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
    // The lease lives from some instant after this one.
    let asked = tokio::time::Instant::now();
    let lease = lock.acquire(key, ttl, wait).await?;
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let keeper = tokio::spawn(keep_alive_loop(lock.clone(), lease.clone(), asked, lost_tx));
    Ok(LeaseGuard {
        lock,
        lease: Some(lease),
        keeper,
        lost,
    })
}

/// Renews `lease` every TTL/3 until it is found lost.
async fn keep_alive_loop(
    lock: Arc<dyn Lock>,
    lease: Lease,
    mut renewed: tokio::time::Instant,
    lost: tokio::sync::watch::Sender<bool>,
) {
    let period = (lease.ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let sent = tokio::time::Instant::now();
        match lock.keep_alive(&lease).await {
            Ok(()) => renewed = sent,
            Err(e) if e.is(ErrorKind::NotFound) => {
                tracing::warn!(key = %lease.key, lease = %lease.id, error = %e, "lease lost");
                let _ = lost.send(true);
                return;
            }
            Err(e) => {
                if renewed.elapsed() >= lease.ttl {
                    tracing::warn!(key = %lease.key, lease = %lease.id, error = %e,
                        "lease lost: no keep-alive succeeded within its ttl");
                    let _ = lost.send(true);
                    return;
                }
                tracing::warn!(key = %lease.key, lease = %lease.id, error = %e,
                    "lease keep-alive failed; retrying");
            }
        }
    }
}

impl LeaseGuard {
    /// The held lease.
    pub fn lease(&self) -> &Lease {
        self.lease.as_ref().expect("lease present until released")
    }

    /// Whether the lease is known to be lost (see the type's docs).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is known to be lost; never while it is held.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        if rx.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
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
