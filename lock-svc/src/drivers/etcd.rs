//! The `etcd` driver: leases as etcd leases, shared by every lock-svc
//! replica pointed at the same cluster.
//!
//! Acquiring `key` grants an etcd lease with the TTL (whole seconds, at
//! least 1: etcd's granularity; the granted TTL is what the lease reports)
//! and creates `modmesh/lock/<key>` attached to it in one transaction that
//! succeeds only if the key does not exist (`create_revision == 0`). The
//! lease id is the etcd lease id (hex); the fencing token is the key's
//! create revision, which etcd makes greater than every earlier revision.
//! A keep-alive renews the etcd lease; a release deletes the key if it is
//! still attached to that lease, then revokes the lease. A holder that
//! dies stops renewing, and etcd deletes the key when the lease expires.
//!
//! A waiter watches the key from the revision it saw it at, so a delete
//! that happens between its try and its watch is still seen, and tries
//! again on the delete event.
//!
//! Every call has a deadline ([`CALL_TIMEOUT`]); a cluster that does not
//! answer (or refuses connections) is `Unavailable`. The client reconnects
//! by itself when a member comes back.

use crate::{validate_acquire, validate_lease, Lease, Lock};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::{Error, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The prefix of lock keys.
const KEY_PREFIX: &str = "modmesh/lock/";
/// The deadline of one call to etcd.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The deadline of a health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// The `[SingleFlight.Etcd]` table, with Athens' name and default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// `ATHENS_ETCD_ENDPOINTS`: comma-separated `host:port` (or
    /// `http://host:port`) of the cluster's members.
    pub Endpoints: String,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            Endpoints: "localhost:2379,localhost:22379,localhost:32379".into(),
        }
    }
}

impl EtcdConfig {
    /// The endpoints as URLs (`http://` added where there is no scheme).
    pub fn urls(&self) -> Vec<String> {
        self.Endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                }
            })
            .collect()
    }
}

impl Section for EtcdConfig {
    const PATH: &'static str = "SingleFlight.Etcd";
    const ENV: &'static [Env] = &[Env::new("ATHENS_ETCD_ENDPOINTS", "Endpoints")];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(err(&Self::key("Endpoints"), "needs at least one endpoint"));
        }
        for u in urls {
            if !u.starts_with("http://") {
                return Err(err(
                    &Self::key("Endpoints"),
                    format!("{u:?}: only http:// endpoints are supported"),
                ));
            }
            if u["http://".len()..]
                .parse::<http_authority::Authority>()
                .is_err()
            {
                return Err(err(
                    &Self::key("Endpoints"),
                    format!("{u:?} is not host:port"),
                ));
            }
        }
        Ok(())
    }
}

/// A tiny `host:port` check (no dependency on a URL crate).
mod http_authority {
    pub struct Authority;
    impl std::str::FromStr for Authority {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let s = s.trim_end_matches('/');
            let (host, port) = s.rsplit_once(':').ok_or(())?;
            if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
                return Err(());
            }
            Ok(Authority)
        }
    }
}

/// Builds the etcd driver from `[SingleFlight.Etcd]`.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Lock>> {
    let c: EtcdConfig = cfg.section().map_err(super::config_error)?;
    Ok(Arc::new(EtcdLock::new(c.urls())))
}

/// A [`Lock`] on an etcd cluster (see the module docs).
pub struct EtcdLock {
    endpoints: Vec<String>,
    /// Made on first use (the client's balancer runs on the caller's
    /// runtime).
    client: tokio::sync::OnceCell<Client>,
}

impl std::fmt::Debug for EtcdLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLock")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

fn map_err(what: &str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let msg = format!("etcd lock: {what}: {e}");
    match &e {
        E::GRpcStatus(s) => match s.code() {
            tonic::Code::NotFound => Error::not_found(msg),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Error::invalid(msg),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Error::permission(msg),
            _ => Error::unavailable(msg),
        },
        E::TransportError(_)
        | E::IoError(_)
        | E::WatchError(_)
        | E::LeaseKeepAliveError(_)
        | E::EndpointError(_) => Error::unavailable(msg),
        _ => Error::internal(msg),
    }
}

/// The lease's TTL in etcd's whole seconds (at least 1).
fn ttl_secs(ttl: Duration) -> i64 {
    let s = ttl.as_nanos().div_ceil(1_000_000_000).max(1);
    i64::try_from(s).unwrap_or(i64::MAX)
}

fn lease_id(lease: &Lease) -> Option<i64> {
    i64::from_str_radix(&lease.id, 16).ok().filter(|id| *id > 0)
}

impl EtcdLock {
    /// A driver for the cluster at `endpoints` (`http://host:port` each).
    /// It connects on first use.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdLock {
            endpoints,
            client: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<Client> {
        let c = self
            .client
            .get_or_try_init(|| async {
                let opts = ConnectOptions::new()
                    .with_connect_timeout(CALL_TIMEOUT)
                    .with_timeout(CALL_TIMEOUT)
                    .with_keep_alive(Duration::from_secs(10), CALL_TIMEOUT);
                call("connect", Client::connect(&self.endpoints, Some(opts))).await
            })
            .await?;
        Ok(c.clone())
    }

    /// Grants a lease and tries to create the key on it. `Ok(Ok(lease))`
    /// when taken; `Ok(Err(revision))` when held, with the revision the key
    /// was seen at.
    async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, i64>> {
        let mut c = self.client().await?;
        let k = format!("{KEY_PREFIX}{key}");
        let grant = call("lease grant", c.lease_grant(ttl_secs(ttl), None)).await?;
        let id = grant.id();
        let txn = Txn::new()
            .when([Compare::create_revision(k.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                k.as_str(),
                format!("{id:x}"),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let resp = call("create", c.txn(txn)).await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                revoke_later(c, id);
                return Err(e);
            }
        };
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            return Ok(Ok(Lease {
                key: key.to_string(),
                id: format!("{id:x}"),
                ttl: Duration::from_secs(grant.ttl().max(1) as u64),
                token: rev as u64,
            }));
        }
        revoke_later(c, id);
        Ok(Err(rev))
    }
}

/// Revokes lease `id` in the background (a grant that took nothing).
fn revoke_later(mut c: Client, id: i64) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CALL_TIMEOUT, c.lease_revoke(id)).await;
    });
}

/// Awaits one etcd call with [`CALL_TIMEOUT`], mapping its error.
async fn call<T>(
    what: &str,
    f: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| map_err(what, e)),
        Err(_) => Err(Error::unavailable(format!(
            "etcd lock: {what}: no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

#[async_trait]
impl Lock for EtcdLock {
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        validate_acquire(key, ttl)?;
        let deadline = super::memory::after(Instant::now(), wait);
        let k = format!("{KEY_PREFIX}{key}");
        let mut pause = Duration::from_millis(50);
        loop {
            let rev = match self.try_acquire(key, ttl).await? {
                Ok(lease) => {
                    tracing::debug!(key, lease = %lease.id, token = lease.token, "lock acquired");
                    return Ok(lease);
                }
                Err(rev) => rev,
            };
            if Instant::now() >= deadline {
                return Err(Error::timeout(format!(
                    "lock {key:?} still held after waiting {wait:?}"
                )));
            }
            // Watch from just after the revision the key was seen held at.
            let mut c = self.client().await?;
            let opts = WatchOptions::new().with_start_revision(rev + 1);
            let mut stream = call("watch", c.watch(k.as_str(), Some(opts))).await?;
            let wait_delete = async {
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => {
                            if m.canceled() {
                                return false;
                            }
                            if m.events()
                                .iter()
                                .any(|e| e.event_type() == EventType::Delete)
                            {
                                return true;
                            }
                        }
                        Ok(None) | Err(_) => return false,
                    }
                }
            };
            tokio::select! {
                deleted = wait_delete => {
                    if !deleted {
                        // The watch broke: try again after a pause.
                        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        let not_found = || {
            Error::not_found(format!(
                "lease {} on {:?} has expired or was released",
                lease.id, lease.key
            ))
        };
        let Some(id) = lease_id(lease) else {
            return Err(not_found());
        };
        let mut c = self.client().await?;
        // The client sends one keep-alive and reads its answer; a lease
        // etcd no longer has answers TTL 0, which it reports as an error.
        match tokio::time::timeout(CALL_TIMEOUT, c.lease_keep_alive(id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                Err(not_found())
            }
            Ok(Err(e)) => Err(map_err("keep-alive", e)),
            Err(_) => Err(Error::unavailable(format!(
                "etcd lock: keep-alive: no answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        let Some(id) = lease_id(lease) else {
            return Ok(());
        };
        let mut c = self.client().await?;
        let k = format!("{KEY_PREFIX}{}", lease.key);
        let txn = Txn::new()
            .when([Compare::lease(k.as_str(), CompareOp::Equal, id)])
            .and_then([TxnOp::delete(k.as_str(), None)]);
        let resp = call("release", c.txn(txn)).await?;
        if resp.succeeded() {
            tracing::debug!(key = %lease.key, lease = %lease.id, "lock released");
            match call("lease revoke", c.lease_revoke(id)).await {
                Ok(_) => {}
                Err(e) if e.is(modmesh_proto::ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn health(&self) -> Result<()> {
        let probe = async {
            let mut c = self.client().await?;
            call(
                "health",
                c.get(
                    format!("{KEY_PREFIX}health"),
                    Some(GetOptions::new().with_count_only()),
                ),
            )
            .await
            .map(|_| ())
        };
        match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::unavailable(e.message)),
            Err(_) => Err(Error::unavailable(format!(
                "etcd lock: health: no answer within {HEALTH_TIMEOUT:?}"
            ))),
        }
    }
}
