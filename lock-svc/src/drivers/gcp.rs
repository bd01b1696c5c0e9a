//! The `gcp` driver: a lock is an object in the storage bucket
//! (`[Storage.GCP]`, as Athens' gcp single flight takes its settings from
//! the gcp storage), named `modmesh-locks/<key>`.
//!
//! Every write of the lock object is conditional on the generation the
//! writer read (`ifGenerationMatch`, `0` for "absent"), so of racing
//! writers exactly one wins. Its metadata holds the holder (a random lease
//! id), the lease's expiry (this process's clock, in ms since the epoch)
//! and TTL. Acquiring creates the object, or overwrites one whose lease has
//! expired or was released; the fencing token is the generation that write
//! made, which GCS makes greater for every new write of the name. A
//! keep-alive rewrites the expiry on the generation it read (checking the
//! holder and expiry first); a release rewrites the object as free. A
//! waiter polls with backoff (25 ms doubling to [`MAX_POLL`]), so a dead
//! holder's lease frees at its TTL.
//!
//! Unlike Athens (whose gcp single flight takes no lock at all, so every
//! instance runs the fetch), this is a real lease. Hosts sharing a bucket
//! need clocks in sync to well within the TTL.
//!
//! Every call has a deadline; a bucket that does not answer is
//! `Unavailable`, and the driver recovers by itself when it is back.

use crate::{validate_acquire, validate_lease, Lease, Lock};
use async_trait::async_trait;
use google_cloud_storage::client::Client;
use google_cloud_storage::http::buckets::get::GetBucketRequest;
use google_cloud_storage::http::objects::get::GetObjectRequest;
use google_cloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use google_cloud_storage::http::objects::Object;
use modmesh_proto::{Error, ErrorKind, Result};
use modmesh_storage::backends::gcp::{map_err, GcpConfig};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The deadline of one call to GCS.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two tries of a waiter.
pub const MAX_POLL: Duration = Duration::from_millis(100);
/// Where lock objects live in the bucket.
const PREFIX: &str = "modmesh-locks/";
const META_EXPIRES: &str = "modmesh-expires-ms";
const META_TTL: &str = "modmesh-ttl-ms";
const META_HOLDER: &str = "modmesh-holder";

/// Builds the gcp driver from `[Storage.GCP]`.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Lock>> {
    let c: GcpConfig = cfg.section().map_err(super::config_error)?;
    Ok(Arc::new(GcpLock::new(c)))
}

/// A [`Lock`] on GCS objects (see the module docs).
pub struct GcpLock {
    cfg: GcpConfig,
    client: tokio::sync::OnceCell<Client>,
}

impl std::fmt::Debug for GcpLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpLock")
            .field("bucket", &self.cfg.Bucket)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn call<T>(
    what: &str,
    f: impl Future<Output = std::result::Result<T, google_cloud_storage::http::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| {
            let e = map_err(what, e);
            // Anything but a precondition or a missing object is the
            // server's trouble: retryable, never "not found".
            match e.kind {
                ErrorKind::NotFound | ErrorKind::AlreadyExists | ErrorKind::Invalid => e,
                _ => Error::unavailable(e.message),
            }
        }),
        Err(_) => Err(Error::unavailable(format!(
            "gcs lock: {what}: no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

fn meta_i64(o: &Object, k: &str) -> i64 {
    o.metadata
        .as_ref()
        .and_then(|m| m.get(k))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn lease_meta(holder: &str, ttl_ms: i64, expires: i64) -> HashMap<String, String> {
    HashMap::from([
        (META_HOLDER.to_string(), holder.to_string()),
        (META_EXPIRES.to_string(), expires.to_string()),
        (META_TTL.to_string(), ttl_ms.to_string()),
    ])
}

fn holder(o: &Object) -> &str {
    o.metadata
        .as_ref()
        .and_then(|m| m.get(META_HOLDER))
        .map(String::as_str)
        .unwrap_or("")
}

impl GcpLock {
    /// A driver on the bucket of `cfg` (it connects on first use).
    pub fn new(cfg: GcpConfig) -> Self {
        GcpLock {
            cfg,
            client: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&Client> {
        match tokio::time::timeout(
            CALL_TIMEOUT,
            self.client.get_or_try_init(|| self.cfg.client()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::unavailable("gcs lock: credentials: no answer")),
        }
    }

    fn bucket(&self) -> String {
        self.cfg.Bucket.trim().to_string()
    }

    fn object(key: &str) -> String {
        format!("{PREFIX}{key}")
    }

    /// Writes the lock object with `meta` if its generation is
    /// `if_generation` (0: absent). `Ok(None)` when the precondition fails.
    async fn write(
        &self,
        key: &str,
        meta: HashMap<String, String>,
        if_generation: i64,
    ) -> Result<Option<Object>> {
        let c = self.client().await?;
        let req = UploadObjectRequest {
            bucket: self.bucket(),
            if_generation_match: Some(if_generation),
            ..Default::default()
        };
        let meta = UploadType::Multipart(Box::new(Object {
            name: Self::object(key),
            content_type: Some("text/plain".into()),
            metadata: Some(meta),
            ..Default::default()
        }));
        match call("write lock", c.upload_object(&req, Vec::<u8>::new(), &meta)).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is(ErrorKind::AlreadyExists) || e.is(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Object>> {
        let c = self.client().await?;
        let r = call(
            "read lock",
            c.get_object(&GetObjectRequest {
                bucket: self.bucket(),
                object: Self::object(key),
                ..Default::default()
            }),
        )
        .await;
        match r {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One try: the lease, or `None` while someone else holds the lock.
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
        let meta = || lease_meta(&id, ttl_ms, now_ms().saturating_add(ttl_ms));
        let if_generation = match self.read(key).await? {
            None => 0,
            Some(held) if meta_i64(&held, META_EXPIRES) > now_ms() => return Ok(None),
            // Expired or released: overwrite it; of several waiters one wins.
            Some(held) => held.generation,
        };
        Ok(self
            .write(key, meta(), if_generation)
            .await?
            .map(|o| Lease {
                key: key.to_string(),
                id: id.clone(),
                ttl,
                token: o.generation as u64,
            }))
    }
}

#[async_trait]
impl Lock for GcpLock {
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
        let Some(o) = self.read(&lease.key).await? else {
            return Err(gone());
        };
        if holder(&o) != lease.id || meta_i64(&o, META_EXPIRES) <= now_ms() {
            return Err(gone());
        }
        let ttl_ms = meta_i64(&o, META_TTL).max(1);
        let meta = lease_meta(&lease.id, ttl_ms, now_ms().saturating_add(ttl_ms));
        match self.write(&lease.key, meta, o.generation).await? {
            Some(_) => Ok(()),
            None => Err(gone()),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        let Some(o) = self.read(&lease.key).await? else {
            return Ok(());
        };
        if holder(&o) != lease.id {
            return Ok(());
        }
        // Free: an expiry in the past, written only over the lease's own
        // generation (a takeover in between makes this a no-op).
        let ttl_ms = meta_i64(&o, META_TTL);
        self.write(&lease.key, lease_meta("", ttl_ms, 0), o.generation)
            .await
            .map(|_| ())
    }

    async fn health(&self) -> Result<()> {
        let c = self.client().await?;
        call(
            "health",
            c.get_bucket(&GetBucketRequest {
                bucket: self.bucket(),
                ..Default::default()
            }),
        )
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
    use modmesh_storage::backends::gcp::testing::{shared, FakeGcs};

    /// GCS: millisecond expiries checked by polling waiters (up to
    /// [`MAX_POLL`] apart) over HTTP.
    pub const SCALE: Scale = Scale {
        time: 5,
        slack: Duration::from_millis(2000),
        wake: Duration::from_millis(800),
    };

    /// A driver on a fresh bucket of `gcs`, built from `[Storage.GCP]`
    /// environment overrides as lock-svc builds it.
    pub async fn driver_on(gcs: &FakeGcs) -> Arc<dyn Lock> {
        let bucket = format!(
            "mm-lock-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        driver_in(gcs, &bucket).await
    }

    /// A driver on `bucket` of `gcs` (created here).
    pub async fn driver_in(gcs: &FakeGcs, bucket: &str) -> Arc<dyn Lock> {
        gcs.create_bucket(bucket).await;
        let cfg = modmesh_common::Config::from_text(
            "",
            &[
                ("ATHENS_SINGLE_FLIGHT_TYPE", "gcp"),
                ("ATHENS_STORAGE_GCP_BUCKET", bucket),
                ("STORAGE_EMULATOR_HOST", &gcs.host()),
            ],
        )
        .expect("config");
        crate::from_config(&cfg).expect("gcp driver")
    }

    /// A driver on the shared fake-gcs-server, or `None` when it is missing.
    pub async fn driver() -> Option<Arc<dyn Lock>> {
        match shared() {
            Some(gcs) => Some(driver_on(gcs).await),
            None => None,
        }
    }
}
