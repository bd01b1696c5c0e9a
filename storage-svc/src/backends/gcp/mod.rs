//! The `gcp` backend: a Google Cloud Storage bucket in Athens' layout
//! (`<module>/@v/<version>.info`, `.mod`, `.zip`, the module path decoded),
//! so a bucket Athens filled is served as it is.
//!
//! A save streams: the zip goes up first (one request when it ends within
//! one chunk, else a resumable upload in [`CHUNK`]-byte chunks, so memory
//! stays flat), created only if absent (`ifGenerationMatch=0`); the zip
//! object is the save's claim, so of concurrent saves exactly one gets it
//! and the others are `AlreadyExists`. Then go.mod, then the `.info`, again
//! with `ifGenerationMatch=0`: a version is visible (to every read, list
//! and catalog) only once its `.info` exists, and a failed, cancelled or
//! crashed save leaves no `.info`. What a failed or cancelled save wrote is
//! deleted at once; what a crashed one left (a zip without `.info`) is
//! never served, and is deleted by the next save of that version once it
//! is older than the orphan bound ([`ORPHAN_AGE`]). The `.info` carries the
//! zip's and go.mod's h1 in its metadata.
//!
//! Every call has a deadline ([`CALL_TIMEOUT`]; zip chunks and reads
//! [`DATA_TIMEOUT`] between bytes): a bucket that does not answer is
//! `Unavailable` or `Timeout`, and the backend recovers by itself when the
//! server is back.
//!
//! Presigned reads are V4 signed URLs, signed with the service account's
//! key (`JSONKey`), or by the IAM signBlob API with application default
//! credentials on Google Cloud.

use crate::hashing;
use crate::{
    ByteStream, Capabilities, CatalogPage, CreateOnly, SaveRequest, Storage, VersionStat, ZipReader,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use google_cloud_storage::client::{Client, ClientConfig};
use google_cloud_storage::http::buckets::get::GetBucketRequest;
use google_cloud_storage::http::objects::delete::DeleteObjectRequest;
use google_cloud_storage::http::objects::download::Range;
use google_cloud_storage::http::objects::get::GetObjectRequest;
use google_cloud_storage::http::objects::list::ListObjectsRequest;
use google_cloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use google_cloud_storage::http::objects::Object;
use google_cloud_storage::http::resumable_upload_client::{ChunkSize, UploadStatus};
use google_cloud_storage::sign::{SignBy, SignedURLOptions, URLStyle};
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::{Coordinates, Error, ErrorKind, ModulePath, Result};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "testing")]
pub mod testing;

/// The deadline of one metadata call (get, list, delete, a small upload).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for the next bytes of a zip going up or coming down.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(60);
/// The size of one chunk of a resumable zip upload (a multiple of 256 KiB).
pub const CHUNK: usize = 8 << 20;
/// How old a zip without `.info` (a crashed save's) must be before a save
/// deletes it and takes its place; younger ones are a save in progress.
pub const ORPHAN_AGE: Duration = Duration::from_secs(15 * 60);
/// The metadata key of the zip's h1 on the `.info` object.
pub const META_ZIP_H1: &str = "modmesh-zip-h1";
/// The metadata key of go.mod's h1 on the `.info` object.
pub const META_MOD_H1: &str = "modmesh-mod-h1";
/// The catalog token tag of this backend.
const TOKEN_TAG: &str = "gcp";

/// The `[Storage.GCP]` table, with Athens' names.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct GcpConfig {
    /// `GOOGLE_CLOUD_PROJECT`: the project (informational: the bucket
    /// names itself).
    pub ProjectID: String,
    /// `ATHENS_STORAGE_GCP_BUCKET`: the bucket (required, must exist).
    pub Bucket: String,
    /// `ATHENS_STORAGE_GCP_JSON_KEY`: a service account key, the JSON file
    /// base64-encoded. Empty: application default credentials.
    pub JSONKey: String,
    /// `STORAGE_EMULATOR_HOST` (modmesh's addition): `host:port` or a URL
    /// of a GCS emulator; requests go there without credentials.
    pub EmulatorHost: String,
}

impl Section for GcpConfig {
    const PATH: &'static str = "Storage.GCP";
    const ENV: &'static [Env] = &[
        Env::new("GOOGLE_CLOUD_PROJECT", "ProjectID"),
        Env::new("ATHENS_STORAGE_GCP_BUCKET", "Bucket"),
        Env::new("ATHENS_STORAGE_GCP_JSON_KEY", "JSONKey"),
        Env::new("STORAGE_EMULATOR_HOST", "EmulatorHost"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.Bucket.trim().is_empty() {
            return Err(err(&Self::key("Bucket"), "is required"));
        }
        if !self.JSONKey.trim().is_empty() {
            self.service_account()
                .map_err(|e| err(&Self::key("JSONKey"), e))?;
        }
        Ok(())
    }
}

/// The parts of a service account key this backend uses.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ServiceAccount {
    /// The account's e-mail (the signer of presigned URLs).
    pub client_email: String,
    /// The PEM private key.
    pub private_key: String,
    /// The whole key as JSON.
    #[serde(skip)]
    pub json: String,
}

impl GcpConfig {
    /// The decoded `JSONKey`, if one is set.
    pub fn service_account(&self) -> std::result::Result<Option<ServiceAccount>, String> {
        use base64::Engine;
        let raw = self.JSONKey.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| format!("not base64: {e}"))?;
        let json = String::from_utf8(bytes).map_err(|_| "not UTF-8 JSON".to_string())?;
        let mut sa: ServiceAccount =
            serde_json::from_str(&json).map_err(|e| format!("not a service account key: {e}"))?;
        sa.json = json;
        Ok(Some(sa))
    }

    /// A GCS client for this table: anonymous on an emulator (signing
    /// with `JSONKey` if set), else with `JSONKey` or application default
    /// credentials.
    pub async fn client(&self) -> Result<Client> {
        let account = self
            .service_account()
            .map_err(|e| Error::invalid(format!("{}: {e}", GcpConfig::key("JSONKey"))))?;
        let mut config = ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http_client()).build()),
            ..Default::default()
        };
        if let Some(url) = self.emulator_url() {
            config.storage_endpoint = url;
            config = config.anonymous();
            if let Some(sa) = &account {
                config.default_google_access_id = Some(sa.client_email.clone());
                config.default_sign_by =
                    Some(SignBy::PrivateKey(sa.private_key.clone().into_bytes()));
            }
        } else {
            let auth = match &account {
                Some(sa) => {
                    let file = google_cloud_storage::client::google_cloud_auth::credentials::CredentialsFile::new_from_str(&sa.json)
                        .await
                        .map_err(|e| Error::invalid(format!("{}: {e}", GcpConfig::key("JSONKey"))))?;
                    config.with_credentials(file).await
                }
                None => config.with_auth().await,
            };
            config = auth.map_err(|e| {
                Error::permission(format!("gcs: credentials for {}: {e}", self.Bucket.trim()))
            })?;
        }
        if !self.ProjectID.trim().is_empty() {
            config.project_id = Some(self.ProjectID.trim().to_string());
        }
        Ok(Client::new(config))
    }

    /// The emulator's base URL, if one is set.
    pub fn emulator_url(&self) -> Option<String> {
        let h = self.EmulatorHost.trim().trim_end_matches('/');
        if h.is_empty() {
            None
        } else if h.contains("://") {
            Some(h.to_string())
        } else {
            Some(format!("http://{h}"))
        }
    }
}

/// Builds the gcp backend from `[Storage.GCP]`; a bucket that does not
/// exist is refused (`Invalid`, naming `Storage.GCP.Bucket`), as Athens
/// requires it to exist. A bucket that cannot be reached at start-up is
/// logged and checked again by every call.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    let c: GcpConfig = cfg.section().map_err(super::config_error)?;
    let storage = GcpStorage::new(c)?;
    storage.check_bucket_blocking()?;
    Ok(Arc::new(storage))
}

/// A [`Storage`] in a GCS bucket (see the module docs).
pub struct GcpStorage {
    cfg: GcpConfig,
    account: Option<ServiceAccount>,
    client: tokio::sync::OnceCell<Client>,
    orphan_age: Duration,
    call_timeout: Duration,
}

impl std::fmt::Debug for GcpStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpStorage")
            .field("bucket", &self.cfg.Bucket)
            .field("emulator", &self.cfg.EmulatorHost)
            .finish_non_exhaustive()
    }
}

/// Path-style URLs on the emulator's host, for signed URLs.
struct EmulatorStyle(String);

impl URLStyle for EmulatorStyle {
    fn host(&self, _bucket: &str) -> String {
        self.0.clone()
    }
    fn path(&self, bucket: &str, object: &str) -> String {
        format!("{bucket}/{object}")
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(DATA_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client")
}

/// Maps a GCS error to the mesh's kinds (`what`: the call, for the message).
pub fn map_err(what: &str, e: google_cloud_storage::http::Error) -> Error {
    use google_cloud_storage::http::Error as E;
    let msg = format!("gcs: {what}: {e}");
    let status = match &e {
        E::Response(r) => Some(r.code),
        E::HttpClient(r) | E::RawResponse(r, _) => r.status().map(|s| s.as_u16()),
        _ => None,
    };
    match status {
        Some(404) => Error::not_found(msg),
        Some(409) | Some(412) => Error::already_exists(msg),
        Some(401) | Some(403) => Error::permission(msg),
        Some(400) => Error::invalid(msg),
        Some(408) => Error::timeout(msg),
        Some(_) => Error::unavailable(msg),
        None => match &e {
            E::HttpClient(r) if r.is_timeout() => Error::timeout(msg),
            E::TokenSource(_) => Error::permission(msg),
            _ => Error::unavailable(msg),
        },
    }
}

/// Awaits one call with a deadline of `limit`.
async fn call_within<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = std::result::Result<T, google_cloud_storage::http::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| map_err(what, e)),
        Err(_) => Err(Error::timeout(format!(
            "gcs: {what}: no answer within {limit:?}"
        ))),
    }
}

/// Object names of a version, Athens' S3/GCS layout.
fn name(c: &Coordinates, ext: &str) -> String {
    format!("{}/@v/{}.{ext}", c.module.as_str(), c.version.as_str())
}

fn ms(t: Option<time::OffsetDateTime>) -> i64 {
    t.map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

/// The (module, version) of an object name `<module>/@v/<version>.info`.
fn parse_info_name(name: &str) -> Option<Coordinates> {
    let rest = name.strip_suffix(".info")?;
    let (m, v) = rest.rsplit_once("/@v/")?;
    if v.contains('/') {
        return None;
    }
    let c = Coordinates::new(m, v).ok()?;
    c.version.is_canonical().then_some(c)
}

impl GcpStorage {
    /// A backend for `cfg` (nothing is contacted yet).
    pub fn new(cfg: GcpConfig) -> Result<Self> {
        let account = cfg
            .service_account()
            .map_err(|e| Error::invalid(format!("{}: {e}", GcpConfig::key("JSONKey"))))?;
        Ok(GcpStorage {
            cfg,
            account,
            client: tokio::sync::OnceCell::new(),
            orphan_age: ORPHAN_AGE,
            call_timeout: CALL_TIMEOUT,
        })
    }

    /// The same backend, deleting crashed saves' leftovers once older than
    /// `age` rather than [`ORPHAN_AGE`].
    pub fn with_orphan_age(mut self, age: Duration) -> Self {
        self.orphan_age = age;
        self
    }

    /// The same backend with `limit` as the deadline of each metadata call
    /// rather than [`CALL_TIMEOUT`].
    pub fn with_call_timeout(mut self, limit: Duration) -> Self {
        self.call_timeout = limit;
        self
    }

    fn bucket(&self) -> String {
        self.cfg.Bucket.trim().to_string()
    }

    async fn make_client(&self) -> Result<Client> {
        self.cfg.client().await
    }

    async fn client(&self) -> Result<&Client> {
        tokio::time::timeout(
            CALL_TIMEOUT,
            self.client.get_or_try_init(|| self.make_client()),
        )
        .await
        .map_err(|_| Error::timeout("gcs: credentials: no answer"))?
    }

    /// Start-up check, from any context: a missing bucket is `Invalid`
    /// naming the key; an unreachable one is only logged.
    fn check_bucket_blocking(&self) -> Result<()> {
        let probe = GcpStorage::new(self.cfg.clone())?;
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::internal(format!("runtime: {e}")))?;
                rt.block_on(probe.health())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::internal("bucket check panicked")))
        });
        match outcome {
            Ok(()) => Ok(()),
            Err(e) if e.is(ErrorKind::NotFound) => Err(Error::invalid(format!(
                "{}: bucket {:?} does not exist (create it first, as for Athens): {}",
                GcpConfig::key("Bucket"),
                self.bucket(),
                e.message
            ))),
            Err(e) => {
                tracing::warn!(bucket = %self.bucket(), error = %e,
                    "gcs bucket not reachable at start-up; every call checks again");
                Ok(())
            }
        }
    }

    async fn head(&self, object: String) -> Result<Object> {
        let c = self.client().await?;
        call_within(
            self.call_timeout,
            "get object",
            c.get_object(&GetObjectRequest {
                bucket: self.bucket(),
                object,
                ..Default::default()
            }),
        )
        .await
    }

    async fn head_opt(&self, object: String) -> Result<Option<Object>> {
        match self.head(object).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn download(&self, object: String, generation: Option<i64>) -> Result<Bytes> {
        let c = self.client().await?;
        let req = GetObjectRequest {
            bucket: self.bucket(),
            object,
            generation,
            ..Default::default()
        };
        call_within(
            self.call_timeout,
            "download",
            c.download_object(&req, &Range::default()),
        )
        .await
        .map(Bytes::from)
    }

    async fn remove(&self, object: String, generation: Option<i64>) -> Result<()> {
        let c = self.client().await?;
        let r = call_within(
            self.call_timeout,
            "delete object",
            c.delete_object(&DeleteObjectRequest {
                bucket: self.bucket(),
                object,
                if_generation_match: generation,
                ..Default::default()
            }),
        )
        .await;
        match r {
            Err(e) if e.is(ErrorKind::NotFound) => Ok(()),
            other => other,
        }
    }

    /// A small object in one request; `create_only` adds
    /// `ifGenerationMatch=0`.
    async fn put_small(
        &self,
        object: String,
        data: Bytes,
        content_type: &'static str,
        create_only: bool,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<Object> {
        let c = self.client().await?;
        let req = UploadObjectRequest {
            bucket: self.bucket(),
            if_generation_match: create_only.then_some(0),
            ..Default::default()
        };
        let upload = match metadata {
            Some(m) => UploadType::Multipart(Box::new(Object {
                name: object,
                content_type: Some(content_type.into()),
                metadata: Some(m),
                ..Default::default()
            })),
            None => {
                let mut media = Media::new(object);
                media.content_type = content_type.into();
                media.content_length = Some(data.len() as u64);
                UploadType::Simple(media)
            }
        };
        call_within(
            self.call_timeout,
            "upload",
            c.upload_object(&req, data, &upload),
        )
        .await
    }

    /// Uploads the zip create-only, streaming: one request if it fits in a
    /// chunk, else a resumable upload in [`CHUNK`]s. Returns the object.
    async fn put_zip(
        &self,
        object: String,
        mut zip: ByteStream,
        cleanup: &mut Cleanup,
    ) -> Result<Object> {
        let c = self.client().await?.clone();
        let mut buf = BytesMut::with_capacity(CHUNK + modmesh_proto::MAX_CHUNK);
        let mut sent: u64 = 0;
        let mut session = None;
        loop {
            let next = tokio::time::timeout(DATA_TIMEOUT, zip.next())
                .await
                .map_err(|_| Error::timeout(format!("no zip bytes for {DATA_TIMEOUT:?}")))?;
            match next {
                Some(chunk) => {
                    buf.extend_from_slice(&chunk?);
                    if buf.len() <= CHUNK {
                        continue;
                    }
                }
                None => break,
            }
            // More than a chunk: more bytes follow this chunk.
            let up = match &session {
                Some(s) => s,
                None => {
                    let req = UploadObjectRequest {
                        bucket: self.bucket(),
                        if_generation_match: Some(0),
                        ..Default::default()
                    };
                    let mut media = Media::new(object.clone());
                    media.content_type = "application/zip".into();
                    let s = call_within(
                        self.call_timeout,
                        "start zip upload",
                        c.prepare_resumable_upload(&req, &UploadType::Simple(media)),
                    )
                    .await?;
                    cleanup.session = Some(s.url().to_string());
                    session.insert(s)
                }
            };
            let part = buf.split_to(CHUNK).freeze();
            let size = ChunkSize::new(sent, sent + CHUNK as u64 - 1, None);
            chunk_call(up.upload_multiple_chunk(part, &size)).await?;
            sent += CHUNK as u64;
        }
        let rest = buf.freeze();
        let obj = match session {
            None => {
                self.put_small(object, rest, "application/zip", true, None)
                    .await?
            }
            Some(up) => {
                let total = sent + rest.len() as u64;
                let size = if rest.is_empty() {
                    ChunkSize::new(sent, sent, Some(total))
                } else {
                    ChunkSize::new(sent, total - 1, Some(total))
                };
                match chunk_call(up.upload_multiple_chunk(rest, &size)).await? {
                    UploadStatus::Ok(o) => o,
                    other => {
                        return Err(Error::unavailable(format!(
                            "gcs: zip upload not complete after its last chunk: {other:?}"
                        )))
                    }
                }
            }
        };
        cleanup.session = None;
        Ok(obj)
    }

    /// Makes room for a save of `c`: `AlreadyExists` if it is stored or a
    /// save of it is in progress; deletes a crashed save's leftovers.
    async fn prepare_save(&self, c: &Coordinates) -> Result<()> {
        if self.head_opt(name(c, "info")).await?.is_some() {
            return Err(already_exists(c));
        }
        if let Some(zip) = self.head_opt(name(c, "zip")).await? {
            let created = ms(zip.time_created.or(zip.updated));
            let age = now_ms().saturating_sub(created);
            if age < self.orphan_age.as_millis() as i64 {
                return Err(Error::already_exists(format!(
                    "{c}: another save of it is in progress"
                )));
            }
            tracing::info!(version = %c, age_ms = age, "deleting a crashed save's leftovers");
            self.remove(name(c, "zip"), Some(zip.generation)).await?;
            self.remove(name(c, "mod"), None).await?;
        }
        Ok(())
    }

    async fn info_object(&self, c: &Coordinates) -> Result<Object> {
        self.head(name(c, "info")).await.map_err(|e| {
            if e.is(ErrorKind::NotFound) {
                not_found(c)
            } else {
                e
            }
        })
    }

    /// The zip's h1, computed from its bytes (for versions Athens stored).
    async fn compute_zip_hash(&self, c: &Coordinates) -> Result<Option<String>> {
        let r = self.zip(c).await?;
        let (stream, spool) = hashing::tee(r.stream)?;
        stream.try_for_each(|_| async { Ok(()) }).await?;
        let req = SaveRequest {
            module: c.module.clone(),
            version: c.canonical_version()?,
            info: Bytes::new(),
            go_mod: Bytes::new(),
            zip_hash: None,
            zip_size: None,
        };
        spool.finish(&req).await
    }

    /// One page of `.info` names after `after`, under `prefix`.
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        start: Option<String>,
        page_token: Option<String>,
        max: usize,
    ) -> Result<(Vec<Object>, Option<String>)> {
        let c = self.client().await?;
        let r = call_within(
            self.call_timeout,
            "list objects",
            c.list_objects(&ListObjectsRequest {
                bucket: self.bucket(),
                prefix: Some(prefix.to_string()).filter(|p| !p.is_empty()),
                delimiter: delimiter.map(str::to_string),
                start_offset: start,
                page_token,
                max_results: Some(max.clamp(1, 1000) as i32),
                ..Default::default()
            }),
        )
        .await?;
        Ok((r.items.unwrap_or_default(), r.next_page_token))
    }
}

impl GcpStorage {
    /// The zip (create-only), go.mod, then the `.info` (create-only); what
    /// was written is recorded in `cleanup`.
    async fn save_parts(
        &self,
        c: &Coordinates,
        req: &SaveRequest,
        zip: ByteStream,
        cleanup: &mut Cleanup,
    ) -> Result<()> {
        let (stream, spool) = hashing::tee(zip)?;
        let zip_obj = match self.put_zip(name(c, "zip"), stream, cleanup).await {
            Ok(o) => o,
            Err(e) if e.is(ErrorKind::AlreadyExists) => {
                return Err(Error::already_exists(format!(
                    "{c}: another save of it won ({})",
                    e.message
                )))
            }
            Err(e) => return Err(e),
        };
        cleanup.zip = Some((zip_obj.name.clone(), zip_obj.generation));
        let zip_h1 = spool.finish(req).await?;
        cleanup.go_mod = Some(name(c, "mod"));
        self.put_small(
            name(c, "mod"),
            req.go_mod.clone(),
            "text/plain; charset=utf-8",
            false,
            None,
        )
        .await?;
        let mut meta = HashMap::new();
        meta.insert(META_ZIP_H1.to_string(), zip_h1.unwrap_or_default());
        meta.insert(META_MOD_H1.to_string(), crate::mod_hash(&req.go_mod));
        match self
            .put_small(
                name(c, "info"),
                req.info.clone(),
                "application/json",
                true,
                Some(meta),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is(ErrorKind::AlreadyExists) => {
                // Someone else's .info: theirs is the stored version, and
                // the zip under it is not ours to delete.
                cleanup.storage = None;
                Err(already_exists(c))
            }
            Err(e) => Err(e),
        }
    }
}

/// Awaits a zip chunk's upload with [`DATA_TIMEOUT`].
async fn chunk_call<T>(
    f: impl Future<Output = std::result::Result<T, google_cloud_storage::http::Error>>,
) -> Result<T> {
    match tokio::time::timeout(DATA_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| map_err("zip chunk", e)),
        Err(_) => Err(Error::timeout(format!(
            "gcs: zip chunk: no answer within {DATA_TIMEOUT:?}"
        ))),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn not_found(c: &Coordinates) -> Error {
    Error::not_found(format!("{c} is not stored"))
}

fn already_exists(c: &Coordinates) -> Error {
    Error::already_exists(format!("{c} is already stored"))
}

/// What a save wrote: deleted before a failed save returns, or in the
/// background if the save is dropped, before its `.info` is written.
struct Cleanup {
    storage: Option<(Client, String)>,
    session: Option<String>,
    zip: Option<(String, i64)>,
    go_mod: Option<String>,
}

impl Cleanup {
    fn disarm(&mut self) {
        self.storage = None;
    }
}

impl Cleanup {
    /// Takes what is to be deleted, leaving the guard disarmed.
    fn take(&mut self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let (client, bucket) = self.storage.take()?;
        let (session, zip, go_mod) = (self.session.take(), self.zip.take(), self.go_mod.take());
        if session.is_none() && zip.is_none() && go_mod.is_none() {
            return None;
        }
        Some(async move {
            if let Some(url) = session {
                let _ =
                    tokio::time::timeout(CALL_TIMEOUT, client.get_resumable_upload(url).cancel())
                        .await;
            }
            if let Some(object) = go_mod {
                let _ = tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.delete_object(&DeleteObjectRequest {
                        bucket: bucket.clone(),
                        object,
                        ..Default::default()
                    }),
                )
                .await;
            }
            if let Some((object, generation)) = zip {
                let _ = tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.delete_object(&DeleteObjectRequest {
                        bucket,
                        object,
                        if_generation_match: Some(generation),
                        ..Default::default()
                    }),
                )
                .await;
            }
        })
    }

    /// Deletes what the failed save wrote, before the error is returned
    /// (so a retry right after finds nothing in its way).
    async fn run(mut self) {
        if let Some(work) = self.take() {
            work.await;
        }
    }
}

impl Drop for Cleanup {
    /// A save dropped mid-way: delete in the background.
    fn drop(&mut self) {
        if let Some(work) = self.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(work);
            }
        }
    }
}

#[async_trait]
impl Storage for GcpStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_only: CreateOnly::Native,
            presigned_reads: self.account.is_some() || self.cfg.emulator_url().is_none(),
            range_reads: false,
            streamed_saves: true,
            unsized_saves: true,
            shared: true,
        }
    }

    async fn health(&self) -> Result<()> {
        let c = self.client().await?;
        call_within(
            self.call_timeout,
            "get bucket",
            c.get_bucket(&GetBucketRequest {
                bucket: self.bucket(),
                ..Default::default()
            }),
        )
        .await
        .map(|_| ())
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let prefix = format!("{}/@v/", module.as_str());
        let mut versions = Vec::new();
        let mut token = None;
        loop {
            let (items, next) = self
                .list_page(&prefix, Some("/"), None, token, 1000)
                .await?;
            for o in items {
                if let Some(c) = parse_info_name(&o.name) {
                    if c.module == *module {
                        versions.push(c.version.to_string());
                    }
                }
            }
            match next {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        versions.sort_by(|a, b| modmesh_proto::coords::compare_versions(a, b));
        versions.dedup();
        Ok(versions)
    }

    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        self.download(name(c, "info"), None).await.map_err(|e| {
            if e.is(ErrorKind::NotFound) {
                not_found(c)
            } else {
                e
            }
        })
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        let (info, go_mod) = tokio::join!(self.info_object(c), self.download(name(c, "mod"), None));
        info?;
        go_mod.map_err(|e| {
            if e.is(ErrorKind::NotFound) {
                not_found(c)
            } else {
                e
            }
        })
    }

    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        let (info, zip) = tokio::join!(self.info_object(c), self.head(name(c, "zip")));
        info?;
        let zip = zip.map_err(|e| {
            if e.is(ErrorKind::NotFound) {
                not_found(c)
            } else {
                e
            }
        })?;
        let client = self.client().await?;
        let req = GetObjectRequest {
            bucket: self.bucket(),
            object: zip.name.clone(),
            generation: Some(zip.generation),
            ..Default::default()
        };
        let stream = call_within(
            self.call_timeout,
            "download zip",
            client.download_streamed_object(&req, &Range::default()),
        )
        .await?;
        let stream = stream
            .map_err(|e| map_err("reading zip", e))
            .flat_map(|r| futures::stream::iter(rechunk(r)))
            .boxed();
        Ok(ZipReader {
            size: zip.size.max(0) as u64,
            stream,
        })
    }

    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        Ok(self.head_opt(name(c, "info")).await?.is_some())
    }

    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        let (info, go_mod, zip) = tokio::join!(
            self.info_object(c),
            self.head(name(c, "mod")),
            self.head(name(c, "zip"))
        );
        let info = info?;
        let missing = |e: Error| {
            if e.is(ErrorKind::NotFound) {
                not_found(c)
            } else {
                e
            }
        };
        let (go_mod, zip) = (go_mod.map_err(missing)?, zip.map_err(missing)?);
        let meta = info.metadata.clone().unwrap_or_default();
        let mod_hash = match meta.get(META_MOD_H1) {
            Some(h) => h.clone(),
            None => crate::mod_hash(&self.download(go_mod.name.clone(), None).await?),
        };
        let zip_hash = match meta.get(META_ZIP_H1) {
            Some(h) if h.is_empty() => None,
            Some(h) => Some(h.clone()),
            None => self.compute_zip_hash(c).await?,
        };
        Ok(VersionStat {
            coordinates: c.clone(),
            info_size: info.size.max(0) as u64,
            mod_size: go_mod.size.max(0) as u64,
            zip_size: zip.size.max(0) as u64,
            stored_at_unix_ms: ms(info.time_created.or(info.updated)),
            zip_hash,
            mod_hash,
        })
    }

    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
        let c = req.coordinates();
        self.prepare_save(&c).await?;
        let client = self.client().await?.clone();
        let mut cleanup = Cleanup {
            storage: Some((client, self.bucket())),
            session: None,
            zip: None,
            go_mod: None,
        };
        let result = self.save_parts(&c, &req, zip, &mut cleanup).await;
        if result.is_err() {
            cleanup.run().await;
        } else {
            cleanup.disarm();
        }
        result
    }

    async fn delete(&self, c: &Coordinates) -> Result<()> {
        self.info_object(c).await?;
        // The .info first: without it the version is invisible.
        self.remove(name(c, "info"), None).await?;
        self.remove(name(c, "mod"), None).await?;
        self.remove(name(c, "zip"), None).await?;
        Ok(())
    }

    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        let after = match page_token.filter(|t| !t.is_empty()) {
            Some(t) => Some(crate::decode_page_token(TOKEN_TAG, t)?),
            None => None,
        };
        let size = crate::page_size(page_size);
        let mut found: Vec<(String, Coordinates)> = Vec::new();
        let mut gcs_token = None;
        loop {
            let (items, next) = self
                .list_page(
                    module_prefix,
                    None,
                    after.clone(),
                    gcs_token,
                    3 * (size + 1),
                )
                .await?;
            for o in items {
                if after.as_deref().is_some_and(|a| o.name.as_str() <= a) {
                    continue;
                }
                if let Some(c) = parse_info_name(&o.name) {
                    if c.module.as_str().starts_with(module_prefix) {
                        found.push((o.name, c));
                    }
                }
                if found.len() > size {
                    break;
                }
            }
            if found.len() > size {
                break;
            }
            match next {
                Some(t) if !t.is_empty() => gcs_token = Some(t),
                _ => break,
            }
        }
        let next_page_token = if found.len() > size {
            found.truncate(size);
            found
                .last()
                .map(|(key, _)| crate::encode_page_token(TOKEN_TAG, key))
        } else {
            None
        };
        Ok(CatalogPage {
            entries: found.into_iter().map(|(_, c)| c).collect(),
            next_page_token,
        })
    }

    async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
        if !self.capabilities().presigned_reads {
            return Ok(None);
        }
        self.info_object(c).await?;
        let client = self.client().await?;
        let mut opts = SignedURLOptions {
            expires: ttl.min(Duration::from_secs(7 * 24 * 3600)),
            ..Default::default()
        };
        if let Some(url) = self.cfg.emulator_url() {
            let (scheme, host) = url.split_once("://").unwrap_or(("http", url.as_str()));
            opts.insecure = scheme == "http";
            opts.style = Box::new(EmulatorStyle(host.to_string()));
        }
        client
            .signed_url(&self.bucket(), &name(c, "zip"), None, None, opts)
            .await
            .map(Some)
            .map_err(|e| Error::permission(format!("gcs: signing a URL for {c}: {e}")))
    }
}

/// Splits a downloaded piece into pieces of at most
/// [`modmesh_proto::MAX_CHUNK`].
fn rechunk(r: Result<Bytes>) -> Vec<Result<Bytes>> {
    match r {
        Ok(mut b) => {
            let mut out = Vec::with_capacity(b.len() / modmesh_proto::MAX_CHUNK + 1);
            while b.len() > modmesh_proto::MAX_CHUNK {
                out.push(Ok(b.split_to(modmesh_proto::MAX_CHUNK)));
            }
            if !b.is_empty() {
                out.push(Ok(b));
            }
            out
        }
        Err(e) => vec![Err(e)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        let c = Coordinates::new("example.com/A/b", "v1.2.3-pre.1").unwrap();
        assert_eq!(name(&c, "info"), "example.com/A/b/@v/v1.2.3-pre.1.info");
        assert_eq!(parse_info_name(&name(&c, "info")), Some(c));
        assert_eq!(parse_info_name("example.com/a/@v/v1.0.0.zip"), None);
        assert_eq!(parse_info_name("example.com/a/@v/x/v1.0.0.info"), None);
        assert_eq!(parse_info_name("example.com/a/@v/master.info"), None);
    }

    #[test]
    fn config_keys_and_env() {
        use base64::Engine;
        use modmesh_common::Config;
        let e = Config::from_text("", &[])
            .unwrap()
            .section::<GcpConfig>()
            .unwrap_err();
        assert!(e.to_string().contains("Storage.GCP.Bucket"), "{e}");
        let text = "[Storage.GCP]\nProjectID = \"p\"\nBucket = \"b\"\n";
        let c: GcpConfig = Config::from_text(text, &[]).unwrap().section().unwrap();
        assert_eq!((c.ProjectID.as_str(), c.Bucket.as_str()), ("p", "b"));
        assert_eq!(c.emulator_url(), None);
        let key = base64::engine::general_purpose::STANDARD
            .encode(r#"{"type":"service_account","client_email":"a@b","private_key":"k"}"#);
        let env = [
            ("GOOGLE_CLOUD_PROJECT", "p2"),
            ("ATHENS_STORAGE_GCP_BUCKET", "b2"),
            ("ATHENS_STORAGE_GCP_JSON_KEY", key.as_str()),
            ("STORAGE_EMULATOR_HOST", "127.0.0.1:9"),
        ];
        let c: GcpConfig = Config::from_text(text, &env).unwrap().section().unwrap();
        assert_eq!((c.ProjectID.as_str(), c.Bucket.as_str()), ("p2", "b2"));
        assert_eq!(c.service_account().unwrap().unwrap().client_email, "a@b");
        assert_eq!(c.emulator_url().as_deref(), Some("http://127.0.0.1:9"));
        let e = Config::from_text(text, &[("ATHENS_STORAGE_GCP_JSON_KEY", "%%")])
            .unwrap()
            .section::<GcpConfig>()
            .unwrap_err();
        assert!(e.to_string().contains("Storage.GCP.JSONKey"), "{e}");
    }
}
