//! [`ObjectStore`]: a [`Storage`] over any S3 API (AWS S3, MinIO, DigitalOcean
//! Spaces, Alibaba OSS, ...), in one of Athens' two object layouts.
//!
//! A version is visible iff its `.info` object exists. A save uploads the
//! zip first (one `PutObject` for a zip smaller than one part, otherwise a
//! multipart upload whose parts are sized from the save's size hint), with
//! `If-None-Match: *`, so of concurrent saves exactly one creates the zip;
//! then the go.mod; then the `.info`, again with `If-None-Match: *`. A save
//! that fails or is dropped aborts its multipart upload; a crash leaves at
//! most a zip and go.mod without `.info`, which is never served and is
//! deleted by the next save of that version once it is older than
//! [`Tuning::orphan_after`]. The zip's h1 is computed while it streams (a
//! copy is spooled to a temporary file) and checked before the upload
//! completes; it is kept, with the time the version became visible, as
//! metadata of the `.info` object.

use crate::hashing;
use crate::{
    decode_page_token, encode_page_token, ByteStream, Capabilities, CatalogPage, CreateOnly,
    SaveRequest, Storage, VersionStat, ZipReader,
};
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use modmesh_proto::coords::compare_versions;
use modmesh_proto::{is_canonical_version, Coordinates, Error, ErrorKind, ModulePath, Result};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The smallest part of a multipart upload (S3's minimum is 5 MiB).
pub const MIN_PART: usize = 8 << 20;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// Metadata key (on the `.info` object) of the zip's h1.
const META_H1: &str = "modmesh-zip-h1";
/// Metadata key (on the `.info` object) of the time the version became visible.
const META_STORED_AT: &str = "modmesh-stored-at-ms";
/// Concurrent `HeadObject` calls when `list` checks candidates (fs layout).
const LIST_CONCURRENCY: usize = 16;

/// Which of Athens' object layouts a bucket uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Athens' S3, GCS and Azure layout: `<module>/@v/<version>.info`,
    /// `.mod`, `.zip`.
    AtV,
    /// Athens' MinIO layout (its disk layout): `<module>/<version>/go.mod`,
    /// `source.zip`, `<version>.info`.
    Dirs,
}

impl Layout {
    fn info_key(self, c: &Coordinates) -> String {
        match self {
            Layout::AtV => format!("{}/@v/{}.info", c.module, c.version),
            Layout::Dirs => format!("{}/{}/{}.info", c.module, c.version, c.version),
        }
    }
    fn mod_key(self, c: &Coordinates) -> String {
        match self {
            Layout::AtV => format!("{}/@v/{}.mod", c.module, c.version),
            Layout::Dirs => format!("{}/{}/go.mod", c.module, c.version),
        }
    }
    fn zip_key(self, c: &Coordinates) -> String {
        match self {
            Layout::AtV => format!("{}/@v/{}.zip", c.module, c.version),
            Layout::Dirs => format!("{}/{}/source.zip", c.module, c.version),
        }
    }

    /// The version whose `.info` object `key` is, if it is one.
    fn parse_info_key(self, key: &str) -> Option<Coordinates> {
        let (module, version) = match self {
            Layout::AtV => {
                let (module, file) = key.rsplit_once("/@v/")?;
                (module, file.strip_suffix(".info")?)
            }
            Layout::Dirs => {
                let (rest, file) = key.rsplit_once('/')?;
                let (module, version) = rest.rsplit_once('/')?;
                if file.strip_suffix(".info")? != version {
                    return None;
                }
                (module, version)
            }
        };
        if !is_canonical_version(version) {
            return None;
        }
        Coordinates::new(module, version).ok()
    }
}

/// Deadlines and bounds of an [`ObjectStore`].
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Connecting to the server.
    pub connect_timeout: Duration,
    /// One attempt of one call (a part upload included).
    pub attempt_timeout: Duration,
    /// One call with its retries.
    pub operation_timeout: Duration,
    /// Waiting for the next bytes of a response body.
    pub read_timeout: Duration,
    /// Attempts per call (1 = no retries).
    pub max_attempts: u32,
    /// A zip (and go.mod) without `.info` older than this is a crashed
    /// save's leftover and is deleted by the next save of that version; a
    /// younger one is a save in progress.
    pub orphan_after: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(180),
            read_timeout: Duration::from_secs(30),
            max_attempts: 3,
            orphan_after: Duration::from_secs(120),
        }
    }
}

/// A [`Storage`] in an S3 bucket.
#[derive(Clone)]
pub struct ObjectStore {
    client: Client,
    bucket: String,
    layout: Layout,
    tuning: Tuning,
    /// The backend's name, in messages and page tokens.
    name: &'static str,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("name", &self.name)
            .field("bucket", &self.bucket)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// Maps an SDK error to our kinds: no answer is `Unavailable` (or `Timeout`),
/// 404 `NotFound`, 403 `Permission`, 412 `AlreadyExists`, 5xx and throttling
/// `Unavailable`, 400 `Invalid`.
pub(crate) fn sdk_error<E>(what: &str, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let msg = format!("{what}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::TimeoutError(_) => Error::timeout(msg),
        SdkError::DispatchFailure(d) if d.is_timeout() => Error::timeout(msg),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Error::unavailable(msg),
        SdkError::ServiceError(se) => match se.raw().status().as_u16() {
            404 => Error::not_found(msg),
            401 | 403 => Error::permission(msg),
            409 | 412 => Error::already_exists(msg),
            400 => Error::invalid(msg),
            408 | 429 | 500..=599 => Error::unavailable(msg),
            _ => Error::internal(msg),
        },
        _ => Error::internal(msg),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What `HeadObject` says of a `.info` object.
struct InfoHead {
    size: u64,
    stored_at_ms: i64,
    zip_hash: Option<String>,
}

/// Aborts a multipart upload unless disarmed, also when the save future is
/// dropped mid-way.
struct UploadGuard {
    armed: Option<(Client, String, String, String)>,
}

impl UploadGuard {
    fn disarm(&mut self) {
        self.armed = None;
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if let Some((client, bucket, key, id)) = self.armed.take() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let r = client
                        .abort_multipart_upload()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&id)
                        .send()
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(%key, error = %DisplayErrorContext(&e), "aborting a multipart upload");
                    }
                });
            }
        }
    }
}

impl ObjectStore {
    /// A store over `client`'s bucket `bucket` in `layout`; `name` names the
    /// backend in messages and page tokens.
    pub fn new(
        client: Client,
        bucket: impl Into<String>,
        layout: Layout,
        tuning: Tuning,
        name: &'static str,
    ) -> Self {
        ObjectStore {
            client,
            bucket: bucket.into(),
            layout,
            tuning,
            name,
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The S3 client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Its deadlines and bounds.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// Checks that the bucket exists; if it does not, creates it when
    /// `create`, else fails with `Invalid` naming `key` (the config key of
    /// the bucket).
    pub async fn ensure_bucket(&self, create: bool, key: &str) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = sdk_error(&format!("bucket {:?}", self.bucket), e);
                if !e.is(ErrorKind::NotFound) {
                    return Err(e);
                }
                if !create {
                    return Err(Error::invalid(format!(
                        "{key}: bucket {:?} does not exist",
                        self.bucket
                    )));
                }
                let mut create_req = self.client.create_bucket().bucket(&self.bucket);
                // Outside us-east-1 a bucket names its region.
                let region = self.client.config().region().map(|r| r.to_string());
                if let Some(r) = region.filter(|r| r != "us-east-1") {
                    create_req = create_req.create_bucket_configuration(
                        aws_sdk_s3::types::CreateBucketConfiguration::builder()
                            .location_constraint(r.as_str().into())
                            .build(),
                    );
                }
                match create_req.send().await {
                    Ok(_) => {
                        tracing::info!(bucket = %self.bucket, "created the bucket");
                        Ok(())
                    }
                    Err(e) => {
                        let e = sdk_error(&format!("{key}: creating bucket {:?}", self.bucket), e);
                        if e.is(ErrorKind::AlreadyExists) {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    }
                }
            }
        }
    }

    /// Aborts multipart uploads started more than `older_than` ago (left by
    /// crashed saves: their parts are invisible but cost storage); returns
    /// how many. Looks at one listing page (up to 1000 uploads) per call.
    pub async fn sweep_stale_uploads(&self, older_than: Duration) -> Result<usize> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("listing the uploads of {:?}", self.bucket), e))?;
        let now = now_ms();
        let mut aborted = 0;
        for u in out.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            let started = u
                .initiated()
                .and_then(|t| t.to_millis().ok())
                .unwrap_or(now);
            if now - started < older_than.as_millis() as i64 {
                continue;
            }
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("aborting the upload of {key}"), e))?;
            aborted += 1;
        }
        Ok(aborted)
    }

    async fn head_info(&self, c: &Coordinates) -> Result<Option<InfoHead>> {
        let key = self.layout.info_key(c);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(h) => {
                let meta = h.metadata();
                let stored_at_ms = meta
                    .and_then(|m| m.get(META_STORED_AT))
                    .and_then(|v| v.parse().ok())
                    .or_else(|| h.last_modified().and_then(|t| t.to_millis().ok()))
                    .unwrap_or(0);
                Ok(Some(InfoHead {
                    size: h.content_length().unwrap_or(0).max(0) as u64,
                    stored_at_ms,
                    zip_hash: meta.and_then(|m| m.get(META_H1)).cloned(),
                }))
            }
            Err(e) => {
                let e = sdk_error(&format!("{c}: HEAD {key}"), e);
                if e.is(ErrorKind::NotFound) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// `NotFound` unless `c` is visible.
    async fn require_visible(&self, c: &Coordinates) -> Result<InfoHead> {
        self.head_info(c)
            .await?
            .ok_or_else(|| Error::not_found(format!("{c} not found")))
    }

    async fn get_small(&self, c: &Coordinates, key: &str) -> Result<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("{c}: GET {key}"), e))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| Error::unavailable(format!("{c}: reading {key}: {e}")))?;
        Ok(data.into_bytes())
    }

    /// The body of `key` as a stream of chunks of at most `MAX_CHUNK`.
    async fn get_stream(&self, c: &Coordinates, key: &str) -> Result<(u64, ByteStream)> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("{c}: GET {key}"), e))?;
        let size = out.content_length().unwrap_or(0).max(0) as u64;
        let what = format!("{c}: reading {key}");
        let stream = futures::stream::unfold(
            (out.body, Bytes::new(), what),
            |(mut body, mut pending, what)| async move {
                loop {
                    if !pending.is_empty() {
                        let n = pending.len().min(modmesh_proto::MAX_CHUNK);
                        let piece = pending.split_to(n);
                        return Some((Ok(piece), (body, pending, what)));
                    }
                    match body.next().await {
                        Some(Ok(b)) => pending = b,
                        Some(Err(e)) => {
                            let e = Error::unavailable(format!("{what}: {e}"));
                            return Some((Err(e), (body, Bytes::new(), what)));
                        }
                        None => return None,
                    }
                }
            },
        )
        .boxed();
        Ok((size, stream))
    }

    async fn delete_key(&self, c: &Coordinates, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("{c}: DELETE {key}"), e))?;
        Ok(())
    }

    async fn put_small(
        &self,
        c: &Coordinates,
        key: &str,
        data: Bytes,
        content_type: &str,
        create_only: bool,
        meta: Vec<(&str, String)>,
    ) -> Result<()> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(S3Body::from(data));
        if create_only {
            req = req.if_none_match("*");
        }
        for (k, v) in meta {
            req = req.metadata(k, v);
        }
        req.send()
            .await
            .map_err(|e| sdk_error(&format!("{c}: PUT {key}"), e))?;
        Ok(())
    }

    /// Uploads the zip create-only: one PUT if it fits in one part, else a
    /// multipart upload (aborted if anything fails or the save is dropped).
    /// The hash and size are settled before the zip becomes an object.
    async fn upload_zip(&self, req: &SaveRequest, zip: ByteStream) -> Result<Option<String>> {
        let c = req.coordinates();
        let key = self.layout.zip_key(&c);
        let part_size = match req.zip_size {
            Some(n) => (n.div_ceil(MAX_PARTS) as usize).max(MIN_PART),
            None => MIN_PART,
        };
        let (mut zip, spool) = hashing::tee(zip)?;
        let mut buf =
            BytesMut::with_capacity(part_size.min(req.zip_size.unwrap_or(u64::MAX) as usize));
        let mut upload: Option<(String, UploadGuard)> = None;
        let mut parts: Vec<CompletedPart> = Vec::new();
        loop {
            let next = zip.next().await;
            let end = match next {
                Some(Ok(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    false
                }
                Some(Err(e)) => return Err(e),
                None => true,
            };
            if buf.len() < part_size && !end {
                continue;
            }
            if end && upload.is_none() {
                // The whole zip fits in one part.
                let hash = spool.finish(req).await?;
                self.put_small(
                    &c,
                    &key,
                    buf.freeze(),
                    "application/octet-stream",
                    true,
                    vec![],
                )
                .await?;
                return Ok(hash);
            }
            if upload.is_none() {
                let out = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&key)
                    .content_type("application/octet-stream")
                    .send()
                    .await
                    .map_err(|e| sdk_error(&format!("{c}: starting the upload of {key}"), e))?;
                let id = out
                    .upload_id()
                    .ok_or_else(|| Error::internal(format!("{c}: no upload id for {key}")))?
                    .to_string();
                let guard = UploadGuard {
                    armed: Some((
                        self.client.clone(),
                        self.bucket.clone(),
                        key.clone(),
                        id.clone(),
                    )),
                };
                upload = Some((id, guard));
            }
            let (id, _) = upload.as_ref().expect("started");
            // Full parts while there are any; at the end, whatever is left
            // (S3 lets only the last part be small).
            while buf.len() >= part_size || (end && !buf.is_empty()) {
                let n = buf.len().min(part_size);
                let part = buf.split_to(n).freeze();
                let number = parts.len() as i32 + 1;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&key)
                    .upload_id(id)
                    .part_number(number)
                    .body(S3Body::from(part))
                    .send()
                    .await
                    .map_err(|e| sdk_error(&format!("{c}: uploading part {number} of {key}"), e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                );
            }
            if end {
                break;
            }
        }
        let total = spool.size();
        let hash = spool.finish(req).await?;
        let (id, mut guard) = upload.expect("a multipart upload");
        let done = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(&id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match done {
            Ok(_) => {
                guard.disarm();
                Ok(hash)
            }
            // Some S3 servers answer 200 with a body the SDK cannot read
            // (another root element): the upload completed if the object
            // is there with every byte.
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 200 => {
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&format!("{c}: HEAD {key}"), e))?;
                if head.content_length() == Some(total as i64) {
                    guard.disarm();
                    Ok(hash)
                } else {
                    Err(Error::internal(format!(
                        "{c}: completing the upload of {key}: unreadable answer {:?}",
                        se.err()
                    )))
                }
            }
            Err(e) => Err(sdk_error(
                &format!("{c}: completing the upload of {key}"),
                e,
            )),
        }
    }

    /// The zip of `c` exists but `c` is not visible: a save in progress, or a
    /// crashed save's leftover. Deletes a leftover older than
    /// `orphan_after` (then `Ok(true)`: try again); otherwise waits for the
    /// other save to make `c` visible (`AlreadyExists`), up to the
    /// operation deadline (`Unavailable`).
    async fn resolve_occupied(&self, c: &Coordinates) -> Result<bool> {
        let zip_key = self.layout.zip_key(c);
        let deadline = tokio::time::Instant::now() + self.tuning.operation_timeout;
        loop {
            if self.head_info(c).await?.is_some() {
                return Err(Error::already_exists(format!("{c} already exists")));
            }
            let head = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&zip_key)
                .send()
                .await;
            let modified = match head {
                Ok(h) => h.last_modified().and_then(|t| t.to_millis().ok()),
                Err(e) => {
                    let e = sdk_error(&format!("{c}: HEAD {zip_key}"), e);
                    if e.is(ErrorKind::NotFound) {
                        return Ok(true); // gone meanwhile: try again
                    }
                    return Err(e);
                }
            };
            let age_ms = now_ms() - modified.unwrap_or(0);
            if age_ms > self.tuning.orphan_after.as_millis() as i64 {
                tracing::warn!(version = %c, age_ms, "deleting the leftovers of a crashed save");
                self.delete_key(c, &self.layout.mod_key(c)).await?;
                self.delete_key(c, &zip_key).await?;
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "{c}: another save has been in progress for {age_ms} ms"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One page of `.info` keys under `prefix`, after `start_after`, of
    /// modules whose path starts with `module_prefix` (in the `@v` layout,
    /// `m/@v/` keys also start with `m/`: those are skipped), through
    /// as many bucket listing pages as it takes (with the bucket's
    /// continuation tokens); `limit` entries at most, plus whether more follow.
    async fn scan(
        &self,
        prefix: &str,
        module_prefix: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<(String, Coordinates)>, bool)> {
        let mut found = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys(1000);
            if let Some(t) = &continuation {
                req = req.continuation_token(t);
            } else if let Some(s) = &start_after {
                req = req.start_after(s);
            }
            let out = req
                .send()
                .await
                .map_err(|e| sdk_error(&format!("listing {prefix:?}"), e))?;
            for obj in out.contents() {
                let Some(key) = obj.key() else { continue };
                if let Some(c) = self.layout.parse_info_key(key) {
                    if !c.module.as_str().starts_with(module_prefix) {
                        continue;
                    }
                    if found.len() == limit {
                        return Ok((found, true));
                    }
                    found.push((key.to_string(), c));
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => continuation = Some(t.to_string()),
                _ => return Ok((found, false)),
            }
        }
    }
}

#[async_trait]
impl Storage for ObjectStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_only: CreateOnly::Native,
            presigned_reads: true,
            range_reads: true,
            streamed_saves: true,
            unsized_saves: true,
            shared: true,
        }
    }

    /// The bucket answers `HeadBucket`.
    async fn health(&self) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| {
                let e = sdk_error(&format!("{}: bucket {:?}", self.name, self.bucket), e);
                if e.is(ErrorKind::NotFound) {
                    Error::unavailable(e.message)
                } else {
                    e
                }
            })?;
        Ok(())
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let mut versions: Vec<String> = match self.layout {
            Layout::AtV => {
                let prefix = format!("{module}/@v/");
                let (found, _) = self.scan(&prefix, "", None, usize::MAX).await?;
                found
                    .into_iter()
                    .filter(|(_, c)| &c.module == module)
                    .map(|(_, c)| c.version.to_string())
                    .collect()
            }
            Layout::Dirs => {
                // Version "directories" under the module, then their .info.
                let prefix = format!("{module}/");
                let mut candidates = Vec::new();
                let mut continuation: Option<String> = None;
                loop {
                    let mut req = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(&prefix)
                        .delimiter("/");
                    if let Some(t) = &continuation {
                        req = req.continuation_token(t);
                    }
                    let out = req
                        .send()
                        .await
                        .map_err(|e| sdk_error(&format!("listing {prefix:?}"), e))?;
                    for p in out.common_prefixes() {
                        let Some(p) = p.prefix() else { continue };
                        let v = p[prefix.len()..].trim_end_matches('/');
                        if is_canonical_version(v) {
                            candidates.push(v.to_string());
                        }
                    }
                    match out.next_continuation_token() {
                        Some(t) if out.is_truncated() == Some(true) => {
                            continuation = Some(t.to_string())
                        }
                        _ => break,
                    }
                }
                let checks = futures::stream::iter(candidates.into_iter().map(|v| async move {
                    let c = Coordinates {
                        module: module.clone(),
                        version: modmesh_proto::Version::new(v.clone())?,
                    };
                    Ok::<_, Error>(self.head_info(&c).await?.map(|_| v))
                }))
                .buffer_unordered(LIST_CONCURRENCY)
                .collect::<Vec<_>>()
                .await;
                let mut visible = Vec::new();
                for r in checks {
                    if let Some(v) = r? {
                        visible.push(v);
                    }
                }
                visible
            }
        };
        versions.sort_by(|a, b| compare_versions(a, b));
        Ok(versions)
    }

    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        self.get_small(c, &self.layout.info_key(c)).await
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        self.require_visible(c).await?;
        self.get_small(c, &self.layout.mod_key(c)).await
    }

    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        self.require_visible(c).await?;
        let (size, stream) = self.get_stream(c, &self.layout.zip_key(c)).await?;
        Ok(ZipReader { size, stream })
    }

    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        Ok(self.head_info(c).await?.is_some())
    }

    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        let info = self.require_visible(c).await?;
        let zip_key = self.layout.zip_key(c);
        let zip = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&zip_key)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("{c}: HEAD {zip_key}"), e))?;
        let zip_size = zip.content_length().unwrap_or(0).max(0) as u64;
        let go_mod = self.get_small(c, &self.layout.mod_key(c)).await?;
        let zip_hash = match info.zip_hash {
            Some(h) => Some(h),
            // Filled by another program (Athens): hash it now, from a copy
            // spooled to a temporary file.
            None => {
                let (_, stream) = self.get_stream(c, &zip_key).await?;
                let (mut tee, spool) = hashing::tee(stream)?;
                while let Some(chunk) = tee.next().await {
                    chunk?;
                }
                let req = SaveRequest::new(c, Bytes::new(), Bytes::new())?;
                spool.finish(&req).await?
            }
        };
        Ok(VersionStat {
            coordinates: c.clone(),
            info_size: info.size,
            mod_size: go_mod.len() as u64,
            zip_size,
            stored_at_unix_ms: info.stored_at_ms,
            zip_hash,
            mod_hash: crate::mod_hash(&go_mod),
        })
    }

    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
        let c = req.coordinates();
        if self.head_info(&c).await?.is_some() {
            return Err(Error::already_exists(format!("{c} already exists")));
        }
        // The zip first, create-only: of concurrent saves exactly one
        // creates it. The stream can be consumed once, so a leftover found
        // on the way is cleared before the upload by the HEAD below.
        let zip_key = self.layout.zip_key(&c);
        let leftover = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&zip_key)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) => {
                let e = sdk_error(&format!("{c}: HEAD {zip_key}"), e);
                if !e.is(ErrorKind::NotFound) {
                    return Err(e);
                }
                false
            }
        };
        if leftover {
            self.resolve_occupied(&c).await?;
        }
        let zip_hash = match self.upload_zip(&req, zip).await {
            Ok(h) => h,
            Err(e) if e.is(ErrorKind::AlreadyExists) => {
                // Another save created the zip first: it wins (AlreadyExists
                // once it is visible), unless it never finished.
                self.resolve_occupied(&c).await?;
                return Err(Error::unavailable(format!(
                    "{c}: a concurrent save did not finish; nothing stored, try again"
                )));
            }
            Err(e) => return Err(e),
        };
        let mod_key = self.layout.mod_key(&c);
        self.put_small(
            &c,
            &mod_key,
            req.go_mod.clone(),
            "text/plain",
            false,
            vec![],
        )
        .await?;
        let mut meta = vec![(META_STORED_AT, now_ms().to_string())];
        if let Some(h) = &zip_hash {
            meta.push((META_H1, h.clone()));
        }
        let info_key = self.layout.info_key(&c);
        match self
            .put_small(
                &c,
                &info_key,
                req.info.clone(),
                "application/json",
                true,
                meta,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is(ErrorKind::AlreadyExists) => {
                Err(Error::already_exists(format!("{c} already exists")))
            }
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, c: &Coordinates) -> Result<()> {
        self.require_visible(c).await?;
        // The .info first: without it the version is invisible.
        self.delete_key(c, &self.layout.info_key(c)).await?;
        self.delete_key(c, &self.layout.mod_key(c)).await?;
        self.delete_key(c, &self.layout.zip_key(c)).await
    }

    /// Pages through the bucket listing from the token's `.info` key: pages
    /// in the bucket's key order.
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        let after = match page_token.filter(|t| !t.is_empty()) {
            Some(t) => {
                let key = decode_page_token(self.name, t)?;
                if self.layout.parse_info_key(&key).is_none() {
                    return Err(Error::invalid(format!(
                        "malformed catalog page token {t:?}"
                    )));
                }
                Some(key)
            }
            None => None,
        };
        let size = crate::page_size(page_size);
        let (found, more) = self.scan(module_prefix, module_prefix, after, size).await?;
        let next_page_token = if more {
            found.last().map(|(k, _)| encode_page_token(self.name, k))
        } else {
            None
        };
        Ok(CatalogPage {
            entries: found.into_iter().map(|(_, c)| c).collect(),
            next_page_token,
        })
    }

    async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
        self.require_visible(c).await?;
        let cfg = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| Error::invalid(format!("presigned URL lifetime {ttl:?}: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.layout.zip_key(c))
            .presigned(cfg)
            .await
            .map_err(|e| sdk_error(&format!("{c}: presigning"), e))?;
        Ok(Some(req.uri().to_string()))
    }
}
