//! The `azureblob` driver: a lock is a blob lease on `modmesh-locks/<key>`
//! in the storage container (`[Storage.AzureBlob]`, as Athens' azureblob
//! single flight takes its settings from the azureblob storage).
//!
//! Acquiring takes an Azure lease of [`AZURE_LEASE`] on the blob (created
//! empty if missing), conditioned on the blob's etag as the try read it,
//! then writes under that lease the blob's metadata: the holder (the lease
//! id), the lease's expiry (this process's clock) and TTL, and an epoch one
//! greater than the one read, which is the fencing token. While a lease is
//! held, this driver renews the Azure lease every [`RENEW_EVERY`] until the
//! lease's own expiry passes (a keep-alive moves that expiry and renews at
//! once); a holder that dies stops renewing, so the Azure lease lapses
//! within [`AZURE_LEASE`], and a waiter breaks a lease whose expiry has
//! passed at once, on the condition that the blob is unchanged since it
//! read the expiry. A waiter polls with backoff (25 ms doubling to
//! [`MAX_POLL`]); a release clears the holder and releases the Azure lease.
//!
//! Athens' driver holds a 15 s lease renewed every 10 s with no TTL of its
//! own and no fencing; this one keeps the caller's TTL and gives tokens.
//! Hosts sharing a container need clocks in sync to well within the TTL.
//! Every call has a deadline; an account that does not answer is
//! `Unavailable`, and the driver recovers by itself when it is back.

use crate::{validate_acquire, validate_lease, Lease, Lock};
use async_trait::async_trait;
use azure_core::request_options::{IfMatchCondition, LeaseBreakPeriod, LeaseId, Metadata};
use azure_core::LeaseState;
use azure_storage_blobs::prelude::{BlobClient, ContainerClient};
use modmesh_proto::{Error, ErrorKind, Result};
use modmesh_storage::backends::azureblob::{map_err, AzureBlobConfig};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The deadline of one call to Azure.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The Azure lease duration (Azure allows 15 to 60 s).
pub const AZURE_LEASE: Duration = Duration::from_secs(15);
/// How often a held Azure lease is renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The longest pause between two tries of a waiter.
pub const MAX_POLL: Duration = Duration::from_millis(100);
const PREFIX: &str = "modmesh-locks/";
const META_HOLDER: &str = "holder";
const META_EXPIRES: &str = "expiresms";
const META_TTL: &str = "ttlms";
const META_EPOCH: &str = "epoch";

/// Builds the azureblob driver from `[Storage.AzureBlob]`.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Lock>> {
    let c: AzureBlobConfig = cfg.section().map_err(super::config_error)?;
    Ok(Arc::new(AzureBlobLock::new(c)?))
}

/// A [`Lock`] on Azure blob leases (see the module docs).
pub struct AzureBlobLock {
    container: ContainerClient,
    /// Renewers of the leases this driver holds, by lease id.
    renewers: Arc<Mutex<HashMap<String, tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for AzureBlobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureBlobLock")
            .field("container", &self.container.container_name())
            .finish_non_exhaustive()
    }
}

impl Drop for AzureBlobLock {
    fn drop(&mut self) {
        for (_, t) in self
            .renewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            t.abort();
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Awaits one call with [`CALL_TIMEOUT`]; anything but a conflict, a
/// precondition or a missing blob is `Unavailable`.
async fn call<T>(what: &str, f: impl Future<Output = azure_core::Result<T>>) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| {
            let e = map_err(what, e);
            match e.kind {
                ErrorKind::NotFound | ErrorKind::AlreadyExists | ErrorKind::Invalid => e,
                _ => Error::unavailable(e.message),
            }
        }),
        Err(_) => Err(Error::unavailable(format!(
            "azure lock: {what}: no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// The etag a lease break is conditioned on (the SDK's Break Lease has no
/// `If-Match` of its own; [`ConditionalBreak`] adds it).
#[derive(Debug, Clone)]
struct BreakIfMatch(String);

/// Adds `If-Match` to requests whose context carries a [`BreakIfMatch`].
#[derive(Debug)]
struct ConditionalBreak;

#[async_trait]
impl azure_core::Policy for ConditionalBreak {
    async fn send(
        &self,
        ctx: &azure_core::Context,
        request: &mut azure_core::Request,
        next: &[Arc<dyn azure_core::Policy>],
    ) -> azure_core::Result<azure_core::Response> {
        if let Some(BreakIfMatch(etag)) = ctx.get::<BreakIfMatch>() {
            request.insert_header(azure_core::headers::IF_MATCH, etag.clone());
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// What the lock blob says.
struct State {
    etag: String,
    lease: Option<LeaseState>,
    holder: String,
    expires: i64,
    ttl: i64,
    epoch: u64,
}

fn meta(holder: &str, expires: i64, ttl: i64, epoch: u64) -> Metadata {
    let mut m = Metadata::new();
    m.insert(META_HOLDER, holder.to_string());
    m.insert(META_EXPIRES, expires.to_string());
    m.insert(META_TTL, ttl.to_string());
    m.insert(META_EPOCH, epoch.to_string());
    m
}

fn is_conflict(e: &Error) -> bool {
    e.is(ErrorKind::AlreadyExists) || e.is(ErrorKind::NotFound) || e.is(ErrorKind::Invalid)
}

impl AzureBlobLock {
    /// A driver on the container of `cfg` (it connects on first use).
    pub fn new(cfg: AzureBlobConfig) -> Result<Self> {
        let container = cfg
            .container_client_with(vec![Arc::new(ConditionalBreak)])
            .map_err(super::config_error)?;
        Ok(AzureBlobLock {
            container,
            renewers: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn blob(&self, key: &str) -> BlobClient {
        self.container.blob_client(format!("{PREFIX}{key}"))
    }

    async fn state(&self, blob: &BlobClient) -> Result<Option<State>> {
        let r = call("get properties", blob.get_properties().into_future()).await;
        let b = match r {
            Ok(r) => r.blob,
            Err(e) if e.is(ErrorKind::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let m = b.metadata.unwrap_or_default();
        let num = |k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        Ok(Some(State {
            etag: b.properties.etag.to_string(),
            lease: b.properties.lease_state,
            holder: m.get(META_HOLDER).cloned().unwrap_or_default(),
            expires: num(META_EXPIRES),
            ttl: num(META_TTL),
            epoch: num(META_EPOCH).max(0) as u64,
        }))
    }

    /// One try: the lease, or `None` while someone else holds the lock.
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        let blob = self.blob(key);
        let st = match self.state(&blob).await? {
            Some(st) => st,
            None => {
                let r = call(
                    "create lock blob",
                    blob.put_block_blob(Vec::<u8>::new())
                        .if_match(IfMatchCondition::NotMatch("*".into()))
                        .into_future(),
                )
                .await;
                match r {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(e),
                }
                return self.try_acquire_known(key, ttl).await;
            }
        };
        self.take(key, ttl, &blob, st).await
    }

    async fn try_acquire_known(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        let blob = self.blob(key);
        match self.state(&blob).await? {
            Some(st) => self.take(key, ttl, &blob, st).await,
            None => Ok(None),
        }
    }

    async fn take(
        &self,
        key: &str,
        ttl: Duration,
        blob: &BlobClient,
        st: State,
    ) -> Result<Option<Lease>> {
        let busy = matches!(
            st.lease,
            Some(LeaseState::Leased) | Some(LeaseState::Breaking)
        );
        if busy {
            if st.expires > now_ms() {
                return Ok(None);
            }
            // The holder's lease has expired: break the Azure lease now.
            self.break_if_unchanged(blob, &st.etag).await?;
        }
        let id = uuid::Uuid::new_v4();
        let r = call(
            "acquire lease",
            blob.acquire_lease(azure_core::request_options::LeaseDuration::Seconds(
                AZURE_LEASE.as_secs() as u8,
            ))
            .proposed_lease_id(LeaseId::from(id))
            .if_match(IfMatchCondition::Match(st.etag.clone()))
            .into_future(),
        )
        .await;
        match r {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        let lease_id = LeaseId::from(id);
        let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
        let epoch = st.epoch + 1;
        let id = id.to_string();
        let r = call(
            "write lock metadata",
            blob.set_metadata()
                .lease_id(lease_id)
                .if_match(IfMatchCondition::Match(st.etag))
                .metadata(meta(&id, now_ms().saturating_add(ttl_ms), ttl_ms, epoch))
                .into_future(),
        )
        .await;
        match r {
            Ok(_) => {}
            Err(e) => {
                let lease = blob.blob_lease_client(lease_id);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CALL_TIMEOUT, lease.release().into_future()).await;
                });
                return if is_conflict(&e) { Ok(None) } else { Err(e) };
            }
        }
        self.start_renewer(key, &id);
        Ok(Some(Lease {
            key: key.to_string(),
            id,
            ttl,
            token: epoch,
        }))
    }

    /// Breaks the Azure lease on `blob` at once, only if the blob's etag is
    /// still `etag` (a waiter that read before someone else took over must
    /// not break the new lease). `Ok(false)` when the blob changed.
    async fn break_if_unchanged(&self, blob: &BlobClient, etag: &str) -> Result<bool> {
        let mut ctx = azure_core::Context::new();
        ctx.insert(BreakIfMatch(etag.to_string()));
        let r = call(
            "break lease",
            blob.break_lease()
                .lease_break_period(LeaseBreakPeriod::from(Duration::ZERO))
                .context(ctx)
                .into_future(),
        )
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The lock blob's etag (for tests of stale breaks).
    #[cfg(feature = "testing")]
    pub async fn etag(&self, key: &str) -> Result<Option<String>> {
        Ok(self.state(&self.blob(key)).await?.map(|st| st.etag))
    }

    /// [`Self::break_if_unchanged`] on `key`'s blob (for tests).
    #[cfg(feature = "testing")]
    pub async fn break_stale(&self, key: &str, etag: &str) -> Result<bool> {
        self.break_if_unchanged(&self.blob(key), etag).await
    }

    /// Renews the Azure lease of `id` every [`RENEW_EVERY`] until the lock
    /// blob no longer names it as holder or its expiry passes.
    fn start_renewer(&self, key: &str, id: &str) {
        let mut renewers = self.renewers.lock().unwrap_or_else(|p| p.into_inner());
        if renewers.get(id).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(lease_id) = id.parse::<LeaseId>() else {
            return;
        };
        let (blob, id_s, all) = (self.blob(key), id.to_string(), self.renewers.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let st = call("get properties", blob.get_properties().into_future()).await;
                if let Ok(r) = &st {
                    let m = r.blob.metadata.clone().unwrap_or_default();
                    let expires: i64 = m
                        .get(META_EXPIRES)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if m.get(META_HOLDER) != Some(&id_s) || expires <= now_ms() {
                        break;
                    }
                }
                let r = call(
                    "renew lease",
                    blob.blob_lease_client(lease_id).renew().into_future(),
                )
                .await;
                if let Err(e) = r {
                    if is_conflict(&e) {
                        break;
                    }
                }
            }
            all.lock().unwrap_or_else(|p| p.into_inner()).remove(&id_s);
        });
        renewers.insert(id.to_string(), task);
    }

    fn stop_renewer(&self, id: &str) {
        if let Some(t) = self
            .renewers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            t.abort();
        }
    }
}

#[async_trait]
impl Lock for AzureBlobLock {
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        validate_acquire(key, ttl)?;
        super::poll_acquire(key, wait, MAX_POLL, || self.try_acquire(key, ttl)).await
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        let gone = || {
            Error::not_found(format!(
                "lease {} on {:?} has expired or was released",
                lease.id, lease.key
            ))
        };
        let Ok(lease_id) = lease.id.parse::<LeaseId>() else {
            return Err(gone());
        };
        let blob = self.blob(&lease.key);
        let Some(st) = self.state(&blob).await? else {
            return Err(gone());
        };
        if st.holder != lease.id || st.expires <= now_ms() {
            return Err(gone());
        }
        let renewed = call(
            "renew lease",
            blob.blob_lease_client(lease_id).renew().into_future(),
        )
        .await;
        match renewed {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Err(gone()),
            Err(e) => return Err(e),
        }
        let r = call(
            "write lock metadata",
            blob.set_metadata()
                .lease_id(lease_id)
                .if_match(IfMatchCondition::Match(st.etag))
                .metadata(meta(
                    &lease.id,
                    now_ms().saturating_add(st.ttl.max(1)),
                    st.ttl,
                    st.epoch,
                ))
                .into_future(),
        )
        .await;
        match r {
            Ok(_) => {
                self.start_renewer(&lease.key, &lease.id);
                Ok(())
            }
            Err(e) if is_conflict(&e) => Err(gone()),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        self.stop_renewer(&lease.id);
        let Ok(lease_id) = lease.id.parse::<LeaseId>() else {
            return Ok(());
        };
        let blob = self.blob(&lease.key);
        let Some(st) = self.state(&blob).await? else {
            return Ok(());
        };
        if st.holder != lease.id {
            return Ok(());
        }
        let cleared = call(
            "clear lock metadata",
            blob.set_metadata()
                .lease_id(lease_id)
                .if_match(IfMatchCondition::Match(st.etag))
                .metadata(meta("", 0, st.ttl, st.epoch))
                .into_future(),
        )
        .await;
        match cleared {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        match call(
            "release lease",
            blob.blob_lease_client(lease_id).release().into_future(),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn health(&self) -> Result<()> {
        call("health", self.container.get_properties().into_future())
            .await
            .map(|_| ())
            .map_err(|e| Error::unavailable(e.message))
    }
}

/// Test helpers (feature `testing`).
#[cfg(feature = "testing")]
pub mod testing {
    use super::*;
    use crate::testing::Scale;
    use modmesh_storage::backends::azureblob::testing::{container_name, shared, Azurite};

    /// Azure: millisecond expiries checked by polling waiters (up to
    /// [`MAX_POLL`] apart) over HTTP.
    pub const SCALE: Scale = Scale {
        time: 5,
        slack: Duration::from_millis(2000),
        wake: Duration::from_millis(800),
    };

    /// A driver on a fresh container of `az`, built from
    /// `[Storage.AzureBlob]` environment overrides as lock-svc builds it.
    pub async fn driver_on(az: &Azurite) -> Arc<dyn Lock> {
        driver_in(az, &container_name()).await
    }

    /// A driver on `container` of `az` (created if missing).
    pub async fn driver_in(az: &Azurite, container: &str) -> Arc<dyn Lock> {
        let _ = az
            .config(container)
            .container_client()
            .expect("client")
            .create()
            .await;
        let endpoint = az.endpoint();
        let cfg = modmesh_common::Config::from_text(
            "",
            &[
                ("ATHENS_SINGLE_FLIGHT_TYPE", "azureblob"),
                (
                    "ATHENS_AZURE_ACCOUNT_NAME",
                    modmesh_storage::backends::azureblob::testing::ACCOUNT,
                ),
                (
                    "ATHENS_AZURE_ACCOUNT_KEY",
                    modmesh_storage::backends::azureblob::testing::KEY,
                ),
                ("ATHENS_AZURE_CONTAINER_NAME", container),
                ("ATHENS_AZURE_ENDPOINT", &endpoint),
            ],
        )
        .expect("config");
        crate::from_config(&cfg).expect("azureblob driver")
    }

    /// The concrete driver on `container` of `az` (created if missing).
    pub async fn concrete_in(az: &Azurite, container: &str) -> AzureBlobLock {
        let cfg = az.config(container);
        let _ = cfg.container_client().expect("client").create().await;
        AzureBlobLock::new(cfg).expect("azureblob driver")
    }

    /// A driver on the shared Azurite, or `None` when it is missing.
    pub async fn driver() -> Option<Arc<dyn Lock>> {
        match shared() {
            Some(az) => Some(driver_on(az).await),
            None => None,
        }
    }
}
