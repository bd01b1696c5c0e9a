//! The `azureblob` backend: an Azure Blob Storage container in Athens'
//! layout (`<module>/@v/<version>.info`, `.mod`, `.zip`, the module path
//! decoded), so a container Athens filled is served as it is.
//!
//! A save streams: the zip goes up first, as one Put Blob when it fits in
//! one block (always when the save's size hint says so), else as staged
//! blocks of [`BLOCK`] bytes (block ids unique to the save) committed with
//! one Put Block List; either way created only if absent (`If-None-Match:
//! *`). The zip blob is the save's claim: of concurrent saves exactly one
//! commits it and the others are `AlreadyExists`. Then go.mod, then the
//! `.info`, again `If-None-Match: *`: a version is visible only once its
//! `.info` exists. A failed or cancelled save deletes what it wrote; a
//! crashed save's zip without `.info` is never served and is deleted by
//! the next save of that version once older than [`ORPHAN_AGE`]. The
//! `.info` blob carries the zip's and go.mod's h1 in its metadata.
//!
//! Authentication: the account key (`AccountKey`), a managed identity
//! (`ManagedIdentityResourceID` and `CredentialScope`, tokens from the
//! instance metadata service), a SAS token (`SASToken`) or a connection
//! string (`ConnectionString`, which may also name the blob endpoint).
//! Presigned reads are service SAS URLs (read-only, time-limited), made
//! with the account key.
//!
//! Every call has a deadline ([`CALL_TIMEOUT`], blocks and reads
//! [`DATA_TIMEOUT`]); an account that does not answer is `Unavailable` or
//! `Timeout`, and the backend recovers by itself when it is back.

use crate::hashing;
use crate::{
    ByteStream, Capabilities, CatalogPage, CreateOnly, SaveRequest, Storage, VersionStat, ZipReader,
};
use async_trait::async_trait;
use azure_core::prelude::*;
use azure_storage::StorageCredentials;
use azure_storage_blobs::prelude::*;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::{Coordinates, Error, ErrorKind, ModulePath, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "testing")]
pub mod testing;

/// The deadline of one metadata call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The deadline of one block upload or one read of zip bytes.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(60);
/// The size of one ranged read of a zip (streamed, never held whole).
pub const READ_RANGE: u64 = 8 << 20;
/// The size of one staged block of a zip.
pub const BLOCK: usize = 8 << 20;
/// How old a zip without `.info` must be before a save deletes it.
pub const ORPHAN_AGE: Duration = Duration::from_secs(15 * 60);
/// The metadata key of the zip's h1 on the `.info` blob.
pub const META_ZIP_H1: &str = "modmeshziph1";
/// The metadata key of go.mod's h1 on the `.info` blob.
pub const META_MOD_H1: &str = "modmeshmodh1";
/// The catalog token tag of this backend.
const TOKEN_TAG: &str = "azureblob";
/// The storage scope for managed-identity tokens when none is configured.
const DEFAULT_SCOPE: &str = "https://storage.azure.com/.default";

/// The `[Storage.AzureBlob]` table, with Athens' names (plus three of
/// modmesh's: `SASToken`, `ConnectionString`, `Endpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct AzureBlobConfig {
    /// `ATHENS_AZURE_ACCOUNT_NAME`: the storage account (required unless a
    /// connection string names it).
    pub AccountName: String,
    /// `ATHENS_AZURE_ACCOUNT_KEY`: the account key (base64).
    pub AccountKey: String,
    /// `ATHENS_AZURE_MANAGED_IDENTITY_RESOURCE_ID`: a user-assigned managed
    /// identity's resource id, used with `CredentialScope`.
    #[serde(alias = "ManagedIdentityResourceId")]
    pub ManagedIdentityResourceID: String,
    /// `ATHENS_AZURE_CREDENTIAL_SCOPE`: the token scope for the managed
    /// identity (e.g. `https://storage.azure.com/.default`).
    pub CredentialScope: String,
    /// `ATHENS_AZURE_CONTAINER_NAME`: the container (required, must exist).
    pub ContainerName: String,
    /// `ATHENS_AZURE_SAS_TOKEN` (modmesh): a SAS token for the account or
    /// container, instead of a key.
    pub SASToken: String,
    /// `AZURE_STORAGE_CONNECTION_STRING` (modmesh): a connection string
    /// (account, key or SAS, blob endpoint).
    pub ConnectionString: String,
    /// `ATHENS_AZURE_ENDPOINT` (modmesh): the blob endpoint URL, e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1` for Azurite.
    pub Endpoint: String,
}

impl Section for AzureBlobConfig {
    const PATH: &'static str = "Storage.AzureBlob";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_AZURE_ACCOUNT_NAME", "AccountName"),
        Env::new("ATHENS_AZURE_ACCOUNT_KEY", "AccountKey"),
        Env::new(
            "ATHENS_AZURE_MANAGED_IDENTITY_RESOURCE_ID",
            "ManagedIdentityResourceID",
        ),
        Env::new("ATHENS_AZURE_CREDENTIAL_SCOPE", "CredentialScope"),
        Env::new("ATHENS_AZURE_CONTAINER_NAME", "ContainerName"),
        Env::new("ATHENS_AZURE_SAS_TOKEN", "SASToken"),
        Env::new("AZURE_STORAGE_CONNECTION_STRING", "ConnectionString"),
        Env::new("ATHENS_AZURE_ENDPOINT", "Endpoint"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.ContainerName.trim().is_empty() {
            return Err(err(&Self::key("ContainerName"), "is required"));
        }
        self.location()?;
        self.credentials()?;
        Ok(())
    }
}

/// Where and as whom: the account, the blob endpoint and the credentials.
#[derive(Debug, Clone)]
pub struct Access {
    /// The account name.
    pub account: String,
    /// The blob endpoint (`https://<account>.blob.core.windows.net` unless
    /// configured).
    pub endpoint: String,
    /// The account key, when there is one (presigned reads need it).
    pub key: Option<String>,
    /// The credentials for requests.
    pub credentials: StorageCredentials,
}

impl AzureBlobConfig {
    fn connection_string(
        &self,
    ) -> std::result::Result<Option<azure_storage::ConnectionString<'_>>, ConfigError> {
        let cs = self.ConnectionString.trim();
        if cs.is_empty() {
            return Ok(None);
        }
        azure_storage::ConnectionString::new(cs)
            .map(Some)
            .map_err(|e| err(&Self::key("ConnectionString"), e.to_string()))
    }

    /// The account and blob endpoint.
    fn location(&self) -> std::result::Result<(String, String), ConfigError> {
        let cs = self.connection_string()?;
        let account = match (
            self.AccountName.trim(),
            cs.as_ref().and_then(|c| c.account_name),
        ) {
            ("", Some(a)) => a.to_string(),
            ("", None) => return Err(err(&Self::key("AccountName"), "is required")),
            (a, _) => a.to_string(),
        };
        let endpoint = match (
            self.Endpoint.trim(),
            cs.as_ref().and_then(|c| c.blob_endpoint),
        ) {
            ("", Some(e)) => e.to_string(),
            ("", None) => format!("https://{account}.blob.core.windows.net"),
            (e, _) => e.to_string(),
        };
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(err(
                &Self::key("Endpoint"),
                format!("{endpoint:?} is not a URL"),
            ));
        }
        Ok((account, endpoint.trim_end_matches('/').to_string()))
    }

    /// The credentials, in order: account key, SAS token, connection
    /// string, managed identity (Athens: a key, or an identity and scope).
    fn credentials(
        &self,
    ) -> std::result::Result<(StorageCredentials, Option<String>), ConfigError> {
        let (account, _) = self.location()?;
        let key = self.AccountKey.trim();
        if !key.is_empty() {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .map_err(|_| err(&Self::key("AccountKey"), "is not base64"))?;
            return Ok((
                StorageCredentials::access_key(account, key.to_string()),
                Some(key.to_string()),
            ));
        }
        let sas = self.SASToken.trim();
        if !sas.is_empty() {
            let c = StorageCredentials::sas_token(sas.trim_start_matches('?'))
                .map_err(|e| err(&Self::key("SASToken"), e.to_string()))?;
            return Ok((c, None));
        }
        if let Some(cs) = self.connection_string()? {
            let c = cs
                .storage_credentials()
                .map_err(|e| err(&Self::key("ConnectionString"), e.to_string()))?;
            return Ok((c, cs.account_key.map(str::to_string)));
        }
        let id = self.ManagedIdentityResourceID.trim();
        if !id.is_empty() {
            let scope = match self.CredentialScope.trim() {
                "" => DEFAULT_SCOPE.to_string(),
                s => s.to_string(),
            };
            let cred = Arc::new(ManagedIdentity::new(id.to_string(), scope));
            return Ok((StorageCredentials::token_credential(cred), None));
        }
        Err(err(
            &Self::key("AccountKey"),
            "is required (or ManagedIdentityResourceID with CredentialScope, SASToken or ConnectionString)",
        ))
    }

    /// The account, endpoint and credentials this table describes.
    pub fn access(&self) -> std::result::Result<Access, ConfigError> {
        let (account, endpoint) = self.location()?;
        let (credentials, key) = self.credentials()?;
        Ok(Access {
            account,
            endpoint,
            key,
            credentials,
        })
    }

    /// A client of the container, with no retries of its own (callers
    /// have deadlines) and connect/read timeouts.
    pub fn container_client(&self) -> std::result::Result<ContainerClient, ConfigError> {
        self.container_client_with(Vec::new())
    }

    /// [`AzureBlobConfig::container_client`] with `per_call` policies run
    /// on every request before it is signed.
    pub fn container_client_with(
        &self,
        per_call: Vec<Arc<dyn azure_core::Policy>>,
    ) -> std::result::Result<ContainerClient, ConfigError> {
        let a = self.access()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(DATA_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| err(Self::PATH, format!("HTTP client: {e}")))?;
        let location = azure_storage::CloudLocation::Custom {
            account: a.account,
            uri: a.endpoint,
        };
        let options = azure_core::ClientOptions::default()
            .per_call_policies(per_call)
            .retry(azure_core::RetryOptions::none())
            .transport(azure_core::TransportOptions::new(Arc::new(http)));
        Ok(ClientBuilder::with_location(location, a.credentials)
            .client_options(options)
            .container_client(self.ContainerName.trim()))
    }
}

/// A managed identity's token, from the instance metadata service, for the
/// configured scope (Athens' `ManagedIdentityResourceID` and
/// `CredentialScope`).
#[derive(Debug)]
struct ManagedIdentity {
    resource_id: String,
    scope: String,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<azure_core::auth::AccessToken>>,
}

impl ManagedIdentity {
    fn new(resource_id: String, scope: String) -> Self {
        ManagedIdentity {
            resource_id,
            scope,
            http: reqwest::Client::new(),
            cache: tokio::sync::Mutex::new(None),
        }
    }
}

#[async_trait]
impl azure_core::auth::TokenCredential for ManagedIdentity {
    async fn get_token(
        &self,
        _scopes: &[&str],
    ) -> azure_core::Result<azure_core::auth::AccessToken> {
        use azure_core::error::{Error as AzErr, ErrorKind as AzKind};
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.as_ref() {
            if t.expires_on > time::OffsetDateTime::now_utc() + time::Duration::minutes(2) {
                return Ok(t.clone());
            }
        }
        let resource = self.scope.trim_end_matches("/.default");
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
            expires_on: String,
        }
        let t: Token = self
            .http
            .get("http://169.254.169.254/metadata/identity/oauth2/token")
            .query(&[
                ("api-version", "2018-02-01"),
                ("resource", resource),
                ("msi_res_id", self.resource_id.as_str()),
            ])
            .header("Metadata", "true")
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AzErr::full(AzKind::Credential, e, "managed identity token"))?
            .json()
            .await
            .map_err(|e| AzErr::full(AzKind::Credential, e, "managed identity token"))?;
        let secs: i64 = t.expires_on.parse().unwrap_or(0);
        let expires = time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        let token = azure_core::auth::AccessToken::new(t.access_token, expires);
        *cache = Some(token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().await = None;
        Ok(())
    }
}

/// Builds the azureblob backend from `[Storage.AzureBlob]`; a container
/// that does not exist is refused (`Invalid`, naming
/// `Storage.AzureBlob.ContainerName`), as Athens requires it to exist.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    let c: AzureBlobConfig = cfg.section().map_err(super::config_error)?;
    let storage = AzureBlobStorage::new(c)?;
    storage.check_container_blocking()?;
    Ok(Arc::new(storage))
}

/// A [`Storage`] in an Azure Blob container (see the module docs).
pub struct AzureBlobStorage {
    cfg: AzureBlobConfig,
    container: ContainerClient,
    has_key: bool,
    orphan_age: Duration,
    call_timeout: Duration,
}

impl std::fmt::Debug for AzureBlobStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureBlobStorage")
            .field("container", &self.cfg.ContainerName)
            .finish_non_exhaustive()
    }
}

/// Maps an Azure error to the mesh's kinds.
pub fn map_err(what: &str, e: azure_core::Error) -> Error {
    let msg = format!("azure blob: {what}: {e}");
    match e.as_http_error() {
        Some(h) => match h.status() as u16 {
            404 => Error::not_found(msg),
            409 | 412 => Error::already_exists(msg),
            401 | 403 => Error::permission(msg),
            400 => Error::invalid(msg),
            408 => Error::timeout(msg),
            _ => Error::unavailable(msg),
        },
        None => match e.kind() {
            azure_core::error::ErrorKind::Credential => Error::permission(msg),
            azure_core::error::ErrorKind::DataConversion => Error::internal(msg),
            _ => Error::unavailable(msg),
        },
    }
}

/// The Azure error code of `e` (`BlobAlreadyExists`, `LeaseAlreadyPresent`...).
pub fn error_code(e: &azure_core::Error) -> Option<String> {
    e.as_http_error()
        .and_then(|h| h.error_code().map(str::to_string))
}

/// Awaits one call with `limit`, mapping its error.
pub async fn call<T>(
    what: &str,
    limit: Duration,
    f: impl Future<Output = azure_core::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| map_err(what, e)),
        Err(_) => Err(Error::timeout(format!(
            "azure blob: {what}: no answer within {limit:?}"
        ))),
    }
}

fn name(c: &Coordinates, ext: &str) -> String {
    format!("{}/@v/{}.{ext}", c.module.as_str(), c.version.as_str())
}

fn parse_info_name(name: &str) -> Option<Coordinates> {
    let rest = name.strip_suffix(".info")?;
    let (m, v) = rest.rsplit_once("/@v/")?;
    if v.contains('/') {
        return None;
    }
    let c = Coordinates::new(m, v).ok()?;
    c.version.is_canonical().then_some(c)
}

fn not_found(c: &Coordinates) -> Error {
    Error::not_found(format!("{c} is not stored"))
}

fn already_exists(c: &Coordinates) -> Error {
    Error::already_exists(format!("{c} is already stored"))
}

fn missing_as(c: &Coordinates) -> impl Fn(Error) -> Error + '_ {
    move |e| {
        if e.is(ErrorKind::NotFound) {
            not_found(c)
        } else {
            e
        }
    }
}

fn ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn if_none_match() -> IfMatchCondition {
    IfMatchCondition::NotMatch("*".to_string())
}

impl AzureBlobStorage {
    /// A backend for `cfg` (nothing is contacted yet).
    pub fn new(cfg: AzureBlobConfig) -> Result<Self> {
        let container = cfg.container_client().map_err(super::config_error)?;
        let has_key = cfg.access().map_err(super::config_error)?.key.is_some();
        Ok(AzureBlobStorage {
            cfg,
            container,
            has_key,
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

    fn check_container_blocking(&self) -> Result<()> {
        let cfg = self.cfg.clone();
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::internal(format!("runtime: {e}")))?;
                let probe = AzureBlobStorage::new(cfg)?;
                rt.block_on(probe.health())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::internal("container check panicked")))
        });
        match outcome {
            Ok(()) => Ok(()),
            Err(e) if e.is(ErrorKind::NotFound) => Err(Error::invalid(format!(
                "{}: container {:?} does not exist (create it first, as for Athens): {}",
                AzureBlobConfig::key("ContainerName"),
                self.cfg.ContainerName.trim(),
                e.message
            ))),
            Err(e) => {
                tracing::warn!(container = %self.cfg.ContainerName, error = %e,
                    "azure container not reachable at start-up; every call checks again");
                Ok(())
            }
        }
    }

    fn blob(&self, name: String) -> BlobClient {
        self.container.blob_client(name)
    }

    async fn props(&self, name: String) -> Result<azure_storage_blobs::blob::Blob> {
        call(
            "get properties",
            self.call_timeout,
            self.blob(name).get_properties().into_future(),
        )
        .await
        .map(|r| r.blob)
    }

    async fn props_opt(&self, name: String) -> Result<Option<azure_storage_blobs::blob::Blob>> {
        match self.props(name).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn content(&self, name: String) -> Result<Bytes> {
        call("get blob", self.call_timeout, self.blob(name).get_content())
            .await
            .map(Bytes::from)
    }

    async fn remove(&self, name: String, etag: Option<String>) -> Result<()> {
        let mut b = self.blob(name).delete();
        if let Some(etag) = etag {
            b = b.if_match(IfMatchCondition::Match(etag));
        }
        match call("delete blob", self.call_timeout, b.into_future()).await {
            Ok(_) => Ok(()),
            Err(e) if e.is(ErrorKind::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn put_small(
        &self,
        name: String,
        data: Bytes,
        content_type: &'static str,
        create_only: bool,
        metadata: Option<Metadata>,
    ) -> Result<String> {
        let mut b = self
            .blob(name)
            .put_block_blob(data)
            .content_type(content_type);
        if create_only {
            b = b.if_match(if_none_match());
        }
        if let Some(m) = metadata {
            b = b.metadata(m);
        }
        call("put blob", DATA_TIMEOUT, b.into_future())
            .await
            .map(|r| r.etag)
    }

    /// Uploads the zip create-only, streaming; returns its etag.
    async fn put_zip(
        &self,
        object: String,
        size_hint: Option<u64>,
        mut zip: ByteStream,
    ) -> Result<String> {
        let save_id = uuid::Uuid::new_v4().simple().to_string();
        let blob = self.blob(object.clone());
        // A known small size goes up in one request as soon as it is all here.
        let one_shot = size_hint.is_some_and(|n| n as usize <= BLOCK);
        let mut buf = BytesMut::with_capacity(BLOCK + modmesh_proto::MAX_CHUNK);
        let mut blocks: Vec<BlobBlockType> = Vec::new();
        loop {
            let next = tokio::time::timeout(DATA_TIMEOUT, zip.next())
                .await
                .map_err(|_| Error::timeout(format!("no zip bytes for {DATA_TIMEOUT:?}")))?;
            match next {
                Some(chunk) => {
                    buf.extend_from_slice(&chunk?);
                    if one_shot || buf.len() <= BLOCK {
                        continue;
                    }
                }
                None => break,
            }
            let part = buf.split_to(BLOCK).freeze();
            let id = BlockId::new(Bytes::from(format!("{save_id}-{:08}", blocks.len())));
            call(
                "put block",
                DATA_TIMEOUT,
                blob.put_block(id.clone(), part).into_future(),
            )
            .await?;
            blocks.push(BlobBlockType::new_uncommitted(id));
        }
        let rest = buf.freeze();
        if blocks.is_empty() {
            return self
                .put_small(object, rest, "application/zip", true, None)
                .await;
        }
        if !rest.is_empty() {
            let id = BlockId::new(Bytes::from(format!("{save_id}-{:08}", blocks.len())));
            call(
                "put block",
                DATA_TIMEOUT,
                blob.put_block(id.clone(), rest).into_future(),
            )
            .await?;
            blocks.push(BlobBlockType::new_uncommitted(id));
        }
        let commit = blob
            .put_block_list(BlockList { blocks })
            .content_type("application/zip")
            .if_match(if_none_match())
            .into_future();
        match tokio::time::timeout(self.call_timeout, commit).await {
            Ok(Ok(r)) => Ok(r.etag),
            Ok(Err(e)) => {
                let code = error_code(&e);
                let mapped = map_err("put block list", e);
                // Another save committed first (and so discarded our blocks).
                if code.as_deref() == Some("InvalidBlockList")
                    && self.props_opt(object).await?.is_some()
                {
                    return Err(Error::already_exists(mapped.message));
                }
                Err(mapped)
            }
            Err(_) => Err(Error::timeout(format!(
                "azure blob: put block list: no answer within {:?}",
                self.call_timeout
            ))),
        }
    }

    async fn prepare_save(&self, c: &Coordinates) -> Result<()> {
        if self.props_opt(name(c, "info")).await?.is_some() {
            return Err(already_exists(c));
        }
        if let Some(zip) = self.props_opt(name(c, "zip")).await? {
            let created = zip.properties.creation_time;
            let age = time::OffsetDateTime::now_utc() - created;
            if age < self.orphan_age {
                return Err(Error::already_exists(format!(
                    "{c}: another save of it is in progress"
                )));
            }
            tracing::info!(version = %c, "deleting a crashed save's leftovers");
            self.remove(name(c, "zip"), Some(zip.properties.etag.to_string()))
                .await?;
            self.remove(name(c, "mod"), None).await?;
        }
        Ok(())
    }

    async fn info_props(&self, c: &Coordinates) -> Result<azure_storage_blobs::blob::Blob> {
        self.props(name(c, "info")).await.map_err(missing_as(c))
    }

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

    /// One listing page: blobs (name, with the marker to resume at) and
    /// the next marker.
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: bool,
        marker: Option<String>,
        max: usize,
    ) -> Result<(Vec<String>, Option<String>)> {
        let mut b = self.container.list_blobs().max_results(MaxResults::new(
            std::num::NonZeroU32::new(max.clamp(1, 5000) as u32).expect("non-zero"),
        ));
        if !prefix.is_empty() {
            b = b.prefix(prefix.to_string());
        }
        if delimiter {
            b = b.delimiter("/".to_string());
        }
        if let Some(m) = marker {
            b = b.marker(NextMarker::new(m));
        }
        let mut pages = b.into_stream();
        let page = tokio::time::timeout(self.call_timeout, pages.next())
            .await
            .map_err(|_| Error::timeout("azure blob: list blobs: no answer"))?;
        let Some(page) = page else {
            return Ok((Vec::new(), None));
        };
        let page = page.map_err(|e| map_err("list blobs", e))?;
        let names = page.blobs.blobs().map(|b| b.name.clone()).collect();
        let next = page
            .next_marker
            .map(|m| m.as_str().to_string())
            .filter(|m| !m.is_empty());
        Ok((names, next))
    }
}

impl AzureBlobStorage {
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
        let etag = match self.put_zip(name(c, "zip"), req.zip_size, stream).await {
            Ok(e) => e,
            Err(e) if e.is(ErrorKind::AlreadyExists) => {
                return Err(Error::already_exists(format!(
                    "{c}: another save of it won ({})",
                    e.message
                )))
            }
            Err(e) => return Err(e),
        };
        cleanup.zip = Some((name(c, "zip"), etag));
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
        let mut meta = Metadata::new();
        meta.insert(META_ZIP_H1, zip_h1.unwrap_or_default());
        meta.insert(META_MOD_H1, crate::mod_hash(&req.go_mod));
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
                // Someone else's .info: theirs is the stored version.
                cleanup.container = None;
                Err(already_exists(c))
            }
            Err(e) => Err(e),
        }
    }
}

/// What a save wrote: deleted before a failed save returns, or in the
/// background if the save is dropped, before its `.info` is written.
struct Cleanup {
    container: Option<ContainerClient>,
    zip: Option<(String, String)>,
    go_mod: Option<String>,
}

impl Cleanup {
    /// Takes what is to be deleted, leaving the guard disarmed.
    fn take(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let container = self.container.take()?;
        let (zip, go_mod) = (self.zip.take(), self.go_mod.take());
        if zip.is_none() && go_mod.is_none() {
            return None;
        }
        Some(async move {
            if let Some(m) = go_mod {
                let _ = tokio::time::timeout(
                    CALL_TIMEOUT,
                    container.blob_client(m).delete().into_future(),
                )
                .await;
            }
            if let Some((z, etag)) = zip {
                let _ = tokio::time::timeout(
                    CALL_TIMEOUT,
                    container
                        .blob_client(z)
                        .delete()
                        .if_match(IfMatchCondition::Match(etag))
                        .into_future(),
                )
                .await;
            }
        })
    }

    /// Deletes what the failed save wrote, before the error is returned.
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
impl Storage for AzureBlobStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_only: CreateOnly::Native,
            presigned_reads: self.has_key,
            range_reads: false,
            streamed_saves: true,
            unsized_saves: true,
            shared: true,
        }
    }

    async fn health(&self) -> Result<()> {
        call(
            "get container properties",
            self.call_timeout,
            self.container.get_properties().into_future(),
        )
        .await
        .map(|_| ())
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let prefix = format!("{}/@v/", module.as_str());
        let mut versions = Vec::new();
        let mut marker = None;
        loop {
            let (names, next) = self.list_page(&prefix, true, marker, 5000).await?;
            for n in names {
                if let Some(c) = parse_info_name(&n) {
                    if c.module == *module {
                        versions.push(c.version.to_string());
                    }
                }
            }
            match next {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        versions.sort_by(|a, b| modmesh_proto::coords::compare_versions(a, b));
        versions.dedup();
        Ok(versions)
    }

    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        self.content(name(c, "info")).await.map_err(missing_as(c))
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        let (info, go_mod) = tokio::join!(self.info_props(c), self.content(name(c, "mod")));
        info?;
        go_mod.map_err(missing_as(c))
    }

    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        let (info, zip) = tokio::join!(self.info_props(c), self.props(name(c, "zip")));
        info?;
        let zip = zip.map_err(missing_as(c))?;
        let size = zip.properties.content_length;
        // Ranges above 4 MiB: the SDK asks for no per-range CRC then.
        let pages = self
            .blob(zip.name.clone())
            .get()
            .chunk_size(READ_RANGE)
            .into_stream();
        let etag = zip.properties.etag.to_string();
        let stream = pages
            .map_err(|e| map_err("get blob", e))
            .and_then(move |r| {
                let same = r.blob.properties.etag.to_string() == etag;
                async move {
                    if !same {
                        return Err(Error::unavailable(
                            "azure blob: the zip changed while being read",
                        ));
                    }
                    Ok(r.data.map_err(|e| map_err("reading zip", e)))
                }
            })
            .try_flatten()
            .flat_map(|r| futures::stream::iter(rechunk(r)))
            .boxed();
        let stream = if size == 0 {
            futures::stream::empty().boxed()
        } else {
            stream
        };
        Ok(ZipReader { size, stream })
    }

    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        Ok(self.props_opt(name(c, "info")).await?.is_some())
    }

    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        let (info, go_mod, zip) = tokio::join!(
            self.info_props(c),
            self.props(name(c, "mod")),
            self.props(name(c, "zip"))
        );
        let info = info?;
        let (go_mod, zip) = (go_mod.map_err(missing_as(c))?, zip.map_err(missing_as(c))?);
        let meta = info.metadata.clone().unwrap_or_default();
        let mod_hash = match meta.get(META_MOD_H1) {
            Some(h) => h.clone(),
            None => crate::mod_hash(&self.content(go_mod.name.clone()).await?),
        };
        let zip_hash = match meta.get(META_ZIP_H1) {
            Some(h) if h.is_empty() => None,
            Some(h) => Some(h.clone()),
            None => self.compute_zip_hash(c).await?,
        };
        Ok(VersionStat {
            coordinates: c.clone(),
            info_size: info.properties.content_length,
            mod_size: go_mod.properties.content_length,
            zip_size: zip.properties.content_length,
            stored_at_unix_ms: ms(info.properties.creation_time),
            zip_hash,
            mod_hash,
        })
    }

    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
        let c = req.coordinates();
        self.prepare_save(&c).await?;
        let mut cleanup = Cleanup {
            container: Some(self.container.clone()),
            zip: None,
            go_mod: None,
        };
        let result = self.save_parts(&c, &req, zip, &mut cleanup).await;
        if result.is_err() {
            cleanup.run().await;
        } else {
            cleanup.container = None;
        }
        result
    }

    async fn delete(&self, c: &Coordinates) -> Result<()> {
        self.info_props(c).await?;
        self.remove(name(c, "info"), None).await?;
        self.remove(name(c, "mod"), None).await?;
        self.remove(name(c, "zip"), None).await?;
        Ok(())
    }

    /// Pages through the container listing with Azure's own markers; the
    /// token carries the marker of the listing page it stopped in and the
    /// last name it gave.
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        let (mut marker, after) = match page_token.filter(|t| !t.is_empty()) {
            Some(t) => {
                let raw = crate::decode_page_token(TOKEN_TAG, t)?;
                let (m, last) = raw
                    .split_once('\n')
                    .ok_or_else(|| Error::invalid(format!("malformed catalog page token {t:?}")))?;
                (
                    Some(m.to_string()).filter(|m| !m.is_empty()),
                    Some(last.to_string()),
                )
            }
            None => (None, None),
        };
        let size = crate::page_size(page_size);
        let mut found: Vec<(String, Option<String>, Coordinates)> = Vec::new();
        loop {
            let (names, next) = self
                .list_page(module_prefix, false, marker.clone(), 3 * (size + 1))
                .await?;
            for n in names {
                if after.as_deref().is_some_and(|a| n.as_str() <= a) {
                    continue;
                }
                if let Some(c) = parse_info_name(&n) {
                    if c.module.as_str().starts_with(module_prefix) {
                        found.push((n, marker.clone(), c));
                    }
                }
            }
            if found.len() > size {
                break;
            }
            match next {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        let next_page_token = if found.len() > size {
            found.truncate(size);
            found.last().map(|(key, m, _)| {
                crate::encode_page_token(
                    TOKEN_TAG,
                    &format!("{}\n{key}", m.clone().unwrap_or_default()),
                )
            })
        } else {
            None
        };
        Ok(CatalogPage {
            entries: found.into_iter().map(|(_, _, c)| c).collect(),
            next_page_token,
        })
    }

    async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
        if !self.has_key {
            return Ok(None);
        }
        self.info_props(c).await?;
        let blob = self.blob(name(c, "zip"));
        let expiry = time::OffsetDateTime::now_utc() + ttl;
        let perms = azure_storage::shared_access_signature::service_sas::BlobSasPermissions {
            read: true,
            ..Default::default()
        };
        let sas = blob
            .shared_access_signature(perms, expiry)
            .await
            .map_err(|e| map_err("make a SAS", e))?;
        let url = blob
            .generate_signed_blob_url(&sas)
            .map_err(|e| map_err("make a SAS URL", e))?;
        Ok(Some(url.to_string()))
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
    use modmesh_common::Config;

    #[test]
    fn config_keys_and_env() {
        let e = Config::from_text("", &[])
            .unwrap()
            .section::<AzureBlobConfig>()
            .unwrap_err();
        assert!(
            e.to_string().contains("Storage.AzureBlob.ContainerName"),
            "{e}"
        );
        let e = Config::from_text(
            "[Storage.AzureBlob]\nContainerName = \"c\"\nAccountName = \"a\"\n",
            &[],
        )
        .unwrap()
        .section::<AzureBlobConfig>()
        .unwrap_err();
        assert!(
            e.to_string().contains("Storage.AzureBlob.AccountKey"),
            "{e}"
        );
        let text = "[Storage.AzureBlob]\nAccountName = \"a\"\nAccountKey = \"a2V5\"\nContainerName = \"c\"\n";
        let c: AzureBlobConfig = Config::from_text(text, &[]).unwrap().section().unwrap();
        let a = c.access().unwrap();
        assert_eq!(a.endpoint, "https://a.blob.core.windows.net");
        assert_eq!(a.key.as_deref(), Some("a2V5"));
        let env = [
            ("ATHENS_AZURE_ACCOUNT_NAME", "b"),
            ("ATHENS_AZURE_MANAGED_IDENTITY_RESOURCE_ID", "/sub/x/id"),
            (
                "ATHENS_AZURE_CREDENTIAL_SCOPE",
                "https://storage.azure.com/.default",
            ),
            ("ATHENS_AZURE_CONTAINER_NAME", "d"),
            ("ATHENS_AZURE_ENDPOINT", "http://127.0.0.1:1/b"),
        ];
        let c: AzureBlobConfig = Config::from_text("", &env).unwrap().section().unwrap();
        assert_eq!(
            (
                c.AccountName.as_str(),
                c.ContainerName.as_str(),
                c.ManagedIdentityResourceID.as_str()
            ),
            ("b", "d", "/sub/x/id")
        );
        let a = c.access().unwrap();
        assert_eq!(a.endpoint, "http://127.0.0.1:1/b");
        assert_eq!(a.key, None);
        let cs = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:2/devstoreaccount1;";
        let c: AzureBlobConfig = Config::from_text(
            "[Storage.AzureBlob]\nContainerName = \"c\"\n",
            &[("AZURE_STORAGE_CONNECTION_STRING", cs)],
        )
        .unwrap()
        .section()
        .unwrap();
        let a = c.access().unwrap();
        assert_eq!(a.account, "devstoreaccount1");
        assert_eq!(a.endpoint, "http://127.0.0.1:2/devstoreaccount1");
        assert_eq!(a.key.as_deref(), Some("a2V5"));
    }

    #[test]
    fn names_parse_back() {
        let c = Coordinates::new("example.com/A/b", "v2.0.0+incompatible").unwrap();
        assert_eq!(parse_info_name(&name(&c, "info")), Some(c));
        assert_eq!(parse_info_name("lease/example.com/a@v1.0.0"), None);
    }
}
