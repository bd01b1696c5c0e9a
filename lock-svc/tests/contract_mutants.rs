//! The contract checks can fail: each test here breaks `MemoryLock` in one
//! way and asserts that the check meant to catch that fault panics.

use async_trait::async_trait;
use modmesh_lock::drivers::MemoryLock;
use modmesh_lock::testing::{contract, Scale};
use modmesh_lock::{Lease, Lock};
use modmesh_proto::{Error, ErrorKind, Result};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Grants every acquire without locking.
    NoExclusion,
    /// Lets zero TTLs through.
    AcceptsZeroTtl,
    /// Release frees nothing (the lease lingers until its TTL).
    ReleaseFreesNothing,
    /// Leases live 20× longer than asked.
    IgnoresTtl,
    /// Keep-alive answers Ok without renewing.
    KeepAliveNoop,
    /// Keep-alive answers Ok even for a lost lease.
    KeepAliveAlwaysOk,
    /// Release of a lost lease is NotFound.
    ReleaseOfLostFails,
    /// A wait that runs out is reported as Unavailable.
    WrongTimeoutKind,
    /// The wait goes on after its caller gives up.
    DetachedWaits,
    /// Releases free whatever holds the key, lease id or not.
    ReleaseIgnoresId,
    /// Every lease carries the same fencing token.
    ConstantToken,
    /// Health says Unavailable while the driver works.
    Unhealthy,
}

struct Mutant {
    inner: Arc<MemoryLock>,
    fault: Fault,
    /// The latest lease granted per key.
    current: Mutex<HashMap<String, Lease>>,
}

#[async_trait]
impl Lock for Mutant {
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        let ttl = match self.fault {
            Fault::IgnoresTtl => ttl * 20,
            Fault::AcceptsZeroTtl if ttl.is_zero() => Duration::from_millis(1),
            _ => ttl,
        };
        match self.fault {
            Fault::NoExclusion => Ok(Lease {
                key: key.into(),
                id: uuid::Uuid::new_v4().to_string(),
                ttl,
                token: 1,
            }),
            Fault::ConstantToken => {
                let lease = self.inner.acquire(key, ttl, wait).await?;
                Ok(Lease { token: 7, ..lease })
            }
            Fault::WrongTimeoutKind => {
                self.inner
                    .acquire(key, ttl, wait)
                    .await
                    .map_err(|e| match e.kind {
                        ErrorKind::Timeout => Error::unavailable(e.message),
                        _ => e,
                    })
            }
            Fault::DetachedWaits => {
                let (inner, key) = (self.inner.clone(), key.to_string());
                tokio::spawn(async move { inner.acquire(&key, ttl, wait).await })
                    .await
                    .unwrap()
            }
            _ => {
                let lease = self.inner.acquire(key, ttl, wait).await?;
                let mut current = self.current.lock().unwrap();
                current.insert(key.to_string(), lease.clone());
                Ok(lease)
            }
        }
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        match self.fault {
            Fault::KeepAliveNoop => Ok(()),
            Fault::KeepAliveAlwaysOk => {
                let _ = self.inner.keep_alive(lease).await;
                Ok(())
            }
            _ => self.inner.keep_alive(lease).await,
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        match self.fault {
            Fault::ReleaseFreesNothing | Fault::NoExclusion => Ok(()),
            Fault::ReleaseOfLostFails => {
                self.inner.keep_alive(lease).await?;
                self.inner.release(lease).await
            }
            Fault::ReleaseIgnoresId => {
                let current = self.current.lock().unwrap().get(&lease.key).cloned();
                self.inner.release(current.as_ref().unwrap_or(lease)).await
            }
            _ => self.inner.release(lease).await,
        }
    }

    async fn health(&self) -> Result<()> {
        match self.fault {
            Fault::Unhealthy => Err(Error::unavailable("mutant")),
            _ => self.inner.health().await,
        }
    }
}

/// Runs `check` against a `MemoryLock` broken by `fault` and asserts it fails.
async fn must_fail<F, Fut>(fault: Fault, check: F)
where
    F: FnOnce(Arc<dyn Lock>, Scale) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let lock: Arc<dyn Lock> = Arc::new(Mutant {
        inner: Arc::new(MemoryLock::new()),
        fault,
        current: Mutex::default(),
    });
    let r = tokio::spawn(check(lock, Scale::MEMORY)).await;
    assert!(
        r.as_ref().is_err_and(|e| e.is_panic()),
        "the check passed against a driver with fault {fault:?}"
    );
}

macro_rules! mutant {
    ($name:ident, $fault:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            must_fail(Fault::$fault, contract::$check).await;
        }
    };
}

mutant!(no_exclusion_is_caught, NoExclusion, mutual_exclusion);
mutant!(
    zero_ttl_is_caught,
    AcceptsZeroTtl,
    rejects_invalid_arguments
);
mutant!(
    release_that_frees_nothing_is_caught,
    ReleaseFreesNothing,
    release_wakes_waiter_promptly
);
mutant!(
    ignored_ttl_is_caught,
    IgnoresTtl,
    dead_holder_frees_within_ttl
);
mutant!(
    noop_keep_alive_is_caught,
    KeepAliveNoop,
    keep_alive_extends_lease
);
mutant!(
    noop_keep_alive_breaks_the_guard,
    KeepAliveNoop,
    guard_keeps_alive_and_frees
);
mutant!(
    keep_alive_of_lost_lease_is_caught,
    KeepAliveAlwaysOk,
    keep_alive_after_takeover_is_not_found
);
mutant!(
    release_of_lost_lease_failing_is_caught,
    ReleaseOfLostFails,
    release_of_expired_lease_is_ok
);
mutant!(
    wrong_timeout_kind_is_caught,
    WrongTimeoutKind,
    wait_timeout_is_timeout
);
mutant!(
    detached_waits_are_caught,
    DetachedWaits,
    abandoned_waiter_does_not_take_lock
);
mutant!(
    release_ignoring_ids_is_caught,
    ReleaseIgnoresId,
    keep_alive_after_takeover_is_not_found
);
mutant!(
    constant_fencing_token_is_caught,
    ConstantToken,
    fencing_tokens_increase
);
mutant!(
    constant_fencing_token_breaks_exclusion_order,
    ConstantToken,
    mutual_exclusion
);
mutant!(unhealthy_driver_is_caught, Unhealthy, healthy_server_is_ok);
