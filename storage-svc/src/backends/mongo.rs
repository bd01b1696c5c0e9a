//! The `mongo` backend, in Athens' Mongo schema so a database Athens filled
//! is served as it is and one this backend filled is readable by Athens:
//!
//! - database `DefaultDBName` (`athens`), collection `DefaultCollectionName`
//!   (`modules`): one document per version,
//!   `{_id: ObjectId, module, version, mod: BinData, info: BinData}`, with
//!   Athens' unique index on `{base_url, module, version}` (`base_url` is
//!   never written, so it is unique on module and version);
//! - the zip in the default GridFS bucket (`fs.files` / `fs.chunks`) under
//!   the name Athens gives it: the module path with `/` turned into `_`,
//!   then `_<version>.zip`.
//!
//! Documents this backend writes carry a few more fields, which Athens
//! ignores: `zip_id` (the GridFS file's id, so two modules whose GridFS
//! names collide never read each other's zip), `zip_size`, `zip_hash`
//! (`null` when the zip is no zip) and `stored_at`. Documents without them
//! (Athens') are read by GridFS name, newest revision first, as Athens does,
//! and their `stored_at` is the time in their `_id`.
//!
//! A save is create-only and never half visible: the zip is uploaded into
//! GridFS first (streamed, hashed on the way), the document is inserted
//! last, and the unique index decides between concurrent saves (the losers
//! remove their upload). Every upload is first recorded in the collection
//! `<collection>.modmesh_pending` and the record removed once the document
//! is in; uploads left behind by a crash (a record older than an hour whose
//! file no document references) are removed when the store is first used.

use crate::{
    decode_page_token, encode_page_token, ByteStream, Capabilities, CatalogPage, CreateOnly,
    SaveRequest, Storage, VersionStat, ZipReader,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{AsyncWriteExt, StreamExt, TryStreamExt};
use modmesh_common::config::{err as config_err, ConfigError, Env, Section};
use modmesh_proto::coords::compare_versions;
use modmesh_proto::{is_canonical_version, Coordinates, Error, ModulePath, Result, MAX_CHUNK};
use mongodb::bson::{self, doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, Document};
use mongodb::options::{ClientOptions, ConnectionString, IndexOptions, Tls, TlsOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The tag of this backend's catalog page tokens.
const TOKEN_TAG: &str = "mongo";
/// Pending uploads older than this are crashed saves, removed on first use.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
/// The suffix of the collection that records uploads in progress.
pub const PENDING_SUFFIX: &str = "modmesh_pending";
/// GridFS chunk size for uploads (the GridFS default, 255 KiB).
const GRIDFS_CHUNK: u32 = 255 * 1024;
/// The name of the unique index on `{module, version}`.
pub const UNIQUE_INDEX: &str = "modmesh_module_version";
/// GridFS chunks fetched per batch when reading a zip.
const CHUNK_BATCH: u32 = 8;
/// Hashes of Athens-written zips remembered by `stat`.
const HASH_CACHE_MAX: usize = 4096;

/// The `[Storage.Mongo]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct MongoConfig {
    /// `ATHENS_MONGO_STORAGE_URL`: the connection string (required).
    pub URL: String,
    /// `ATHENS_MONGO_DEFAULT_DATABASE`: the database (`athens`).
    pub DefaultDBName: String,
    /// `ATHENS_MONGO_DEFAULT_COLLECTION`: the collection (`modules`).
    pub DefaultCollectionName: String,
    /// `ATHENS_MONGO_CERT_PATH`: a PEM file of CA certificates to trust;
    /// setting it turns TLS on.
    pub CertPath: String,
    /// `ATHENS_MONGO_INSECURE`: accept any server certificate and host name
    /// (development only).
    pub Insecure: bool,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            URL: String::new(),
            DefaultDBName: "athens".into(),
            DefaultCollectionName: "modules".into(),
            CertPath: String::new(),
            Insecure: false,
        }
    }
}

impl Section for MongoConfig {
    const PATH: &'static str = "Storage.Mongo";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_MONGO_STORAGE_URL", "URL"),
        Env::new("ATHENS_MONGO_DEFAULT_DATABASE", "DefaultDBName"),
        Env::new("ATHENS_MONGO_DEFAULT_COLLECTION", "DefaultCollectionName"),
        Env::new("ATHENS_MONGO_CERT_PATH", "CertPath"),
        Env::new("ATHENS_MONGO_INSECURE", "Insecure"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.URL.trim().is_empty() {
            return Err(config_err(
                &Self::key("URL"),
                "required when StorageType is mongo",
            ));
        }
        ConnectionString::parse(self.URL.trim())
            .map_err(|e| config_err(&Self::key("URL"), format!("not a Mongo URL: {e}")))?;
        for (key, v) in [
            ("DefaultDBName", &self.DefaultDBName),
            ("DefaultCollectionName", &self.DefaultCollectionName),
        ] {
            if v.trim().is_empty() {
                return Err(config_err(&Self::key(key), "must not be empty"));
            }
        }
        if !self.CertPath.trim().is_empty() && !std::path::Path::new(self.CertPath.trim()).is_file()
        {
            return Err(config_err(
                &Self::key("CertPath"),
                format!("{:?} is not a readable file", self.CertPath),
            ));
        }
        Ok(())
    }
}

/// Builds the mongo backend from `[Storage.Mongo]`; it connects on first use.
pub fn build(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    let c: MongoConfig = cfg.section().map_err(super::config_error)?;
    Ok(Arc::new(MongoStorage::new(c, cfg.timeout())?))
}

/// Athens' GridFS file name of a version's zip.
pub fn grid_file_name(module: &str, version: &str) -> String {
    format!("{}_{version}.zip", module.replace('/', "_"))
}

/// What the first use sets up.
struct Conn {
    db: Database,
    modules: Collection<Document>,
    pending: Collection<Document>,
    bucket: mongodb::gridfs::GridFsBucket,
}

/// A [`Storage`] in a Mongo database, Athens' schema.
pub struct MongoStorage {
    cfg: MongoConfig,
    conn_string: ConnectionString,
    timeout: Duration,
    conn: tokio::sync::OnceCell<Conn>,
    hashes: Mutex<HashMap<String, Option<String>>>,
}

impl std::fmt::Debug for MongoStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStorage")
            .field("db", &self.cfg.DefaultDBName)
            .field("collection", &self.cfg.DefaultCollectionName)
            .finish_non_exhaustive()
    }
}

/// One stored document, decoded.
struct Doc {
    id: ObjectId,
    info: Bytes,
    go_mod: Bytes,
    zip_id: Option<Bson>,
    zip_hash: Option<Option<String>>,
    stored_at_ms: Option<i64>,
}

impl MongoStorage {
    /// A store for `cfg` (checked by [`Section::validate`] already when read
    /// through `Config::section`); `timeout` bounds connecting and server
    /// selection. Nothing is contacted until first use.
    pub fn new(cfg: MongoConfig, timeout: Duration) -> Result<Self> {
        let conn_string = ConnectionString::parse(cfg.URL.trim())
            .map_err(|e| Error::invalid(format!("Storage.Mongo.URL: not a Mongo URL: {e}")))?;
        Ok(MongoStorage {
            cfg,
            conn_string,
            timeout,
            conn: tokio::sync::OnceCell::new(),
            hashes: Mutex::new(HashMap::new()),
        })
    }

    /// The connection, set up on first use: client, Athens' index, and the
    /// removal of crashed saves' uploads. A failure is retried next time.
    async fn conn(&self) -> Result<&Conn> {
        self.conn.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Conn> {
        let mut opts = ClientOptions::parse(self.conn_string.clone())
            .await
            .map_err(|e| mongo_err("parsing the Mongo URL", e))?;
        let wait = self.timeout.min(Duration::from_secs(30));
        opts.connect_timeout = Some(wait);
        opts.server_selection_timeout = Some(wait);
        opts.app_name.get_or_insert_with(|| "modmesh".into());
        let cert = self.cfg.CertPath.trim();
        let tls_on = !cert.is_empty() || matches!(opts.tls, Some(Tls::Enabled(_)));
        if tls_on {
            let mut t = match opts.tls.take() {
                Some(Tls::Enabled(t)) => t,
                _ => TlsOptions::default(),
            };
            if !cert.is_empty() {
                t.ca_file_path = Some(PathBuf::from(cert));
            }
            if self.cfg.Insecure {
                t.allow_invalid_certificates = Some(true);
            }
            opts.tls = Some(Tls::Enabled(t));
        }
        let client = Client::with_options(opts).map_err(|e| mongo_err("connecting to Mongo", e))?;
        let db = client.database(self.cfg.DefaultDBName.trim());
        let coll_name = self.cfg.DefaultCollectionName.trim();
        let modules = db.collection::<Document>(coll_name);
        let pending = db.collection::<Document>(&format!("{coll_name}.{PENDING_SUFFIX}"));
        let bucket = db.gridfs_bucket(None);
        // Athens' index, created as Athens creates it (its failure ignored,
        // as Athens does), so both products agree on the collection...
        let athens = IndexModel::builder()
            .keys(doc! {"base_url": 1, "module": 1, "version": 1})
            .options(IndexOptions::builder().unique(true).sparse(true).build())
            .build();
        if let Err(e) = modules.create_index(athens).await {
            if is_unavailable(&e) {
                return Err(mongo_err("creating the modules index", e));
            }
            tracing::debug!(error = %e, "Athens' sparse index not created");
        }
        // ...and a plain unique index on module and version, which decides
        // between concurrent saves on every server (some skip documents
        // without `base_url` in a sparse index).
        let unique = IndexModel::builder()
            .keys(doc! {"module": 1, "version": 1})
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name(UNIQUE_INDEX.to_string())
                    .build(),
            )
            .build();
        modules.create_index(unique).await.map_err(|e| {
            mongo_err(
                "creating the unique index on module and version (are there duplicate documents?)",
                e,
            )
        })?;
        let conn = Conn {
            db,
            modules,
            pending,
            bucket,
        };
        match clean_orphans(&conn, STALE_AFTER).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed uploads of crashed saves"),
            Err(e) => tracing::warn!(error = %e, "cleaning up uploads of crashed saves"),
        }
        Ok(conn)
    }

    /// Removes uploads recorded as pending longer than `older_than` ago whose
    /// file no document references (what a crash between upload and
    /// document leaves); returns how many it removed.
    pub async fn clean_orphans(&self, older_than: Duration) -> Result<usize> {
        clean_orphans(self.conn().await?, older_than).await
    }

    async fn find_doc(&self, c: &Coordinates) -> Result<Option<Doc>> {
        let conn = self.conn().await?;
        let found = conn
            .modules
            .find_one(doc! {"module": c.module.as_str(), "version": c.version.as_str()})
            .await
            .map_err(|e| mongo_err(&format!("reading {c}"), e))?;
        found.map(|d| decode_doc(c, &d)).transpose()
    }

    async fn doc(&self, c: &Coordinates) -> Result<Doc> {
        self.find_doc(c).await?.ok_or_else(|| not_found(c))
    }

    /// The GridFS file of a stored version: by `zip_id` where the document
    /// has one, else by Athens' name, newest revision.
    async fn zip_file(
        &self,
        c: &Coordinates,
        d: &Doc,
    ) -> Result<mongodb::gridfs::FilesCollectionDocument> {
        let conn = self.conn().await?;
        let found = match &d.zip_id {
            Some(id) => conn.bucket.find_one(doc! {"_id": id.clone()}).await,
            None => {
                conn.bucket
                    .find_one(
                        doc! {"filename": grid_file_name(c.module.as_str(), c.version.as_str())},
                    )
                    .sort(doc! {"uploadDate": -1})
                    .await
            }
        }
        .map_err(|e| mongo_err(&format!("reading the zip of {c}"), e))?;
        found.ok_or_else(|| {
            Error::internal(format!(
                "{c}: the document exists but its zip is missing from GridFS ({})",
                grid_file_name(c.module.as_str(), c.version.as_str())
            ))
        })
    }

    /// Streams the chunks of the zip's GridFS file in order, a few per
    /// batch (some servers ignore the 16 MiB reply limit for large
    /// batches), checking each chunk's number and size: a missing or odd
    /// chunk ends the stream with `Internal`, never a short zip.
    async fn open_zip(&self, c: &Coordinates, d: &Doc) -> Result<ZipReader> {
        let file = self.zip_file(c, d).await?;
        let conn = self.conn().await?;
        let size = file.length;
        let chunk_size = u64::from(file.chunk_size_bytes);
        if chunk_size == 0 || chunk_size as usize > MAX_CHUNK {
            return Err(Error::internal(format!(
                "{c}: the zip's GridFS chunk size {chunk_size} is not usable"
            )));
        }
        let chunks = conn.db.collection::<Document>("fs.chunks");
        let cursor = chunks
            .find(doc! {"files_id": file.id.clone()})
            .sort(doc! {"n": 1})
            .batch_size(CHUNK_BATCH)
            .await
            .map_err(|e| mongo_err(&format!("reading the zip of {c}"), e))?;
        let what = c.to_string();
        let stream = futures::stream::unfold(
            (Some(cursor), 0u64, 0i64, what),
            move |(cursor, got, n, what)| async move {
                let mut cursor = cursor?;
                let fail =
                    |msg: String| Error::internal(format!("{what}: the zip in GridFS {msg}"));
                let next = match cursor.next().await {
                    None if got == size => return None,
                    None => Err(fail(format!(
                        "ends after {got} of {size} bytes (missing chunks)"
                    ))),
                    Some(Err(e)) => Err(mongo_err(&format!("{what}: reading the zip"), e)),
                    Some(Ok(chunk)) => chunk_data(&chunk, n, got, size, chunk_size).map_err(fail),
                };
                match next {
                    Ok(data) => {
                        let got = got + data.len() as u64;
                        Some((Ok(data), (Some(cursor), got, n + 1, what)))
                    }
                    Err(e) => Some((Err(e), (None, got, n, what))),
                }
            },
        );
        Ok(ZipReader {
            size,
            stream: stream.boxed(),
        })
    }

    /// The h1 of an Athens-written zip (no `zip_hash` field), computed once
    /// by spooling it to a temporary file, then remembered.
    async fn computed_hash(&self, c: &Coordinates, d: &Doc) -> Result<Option<String>> {
        let key = d.id.to_hex();
        if let Some(h) = self.lock_hashes().get(&key) {
            return Ok(h.clone());
        }
        let reader = self.open_zip(c, d).await?;
        let h = crate::hashing::hash_zip_stream(reader.stream).await?;
        let mut cache = self.lock_hashes();
        if cache.len() >= HASH_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, h.clone());
        Ok(h)
    }

    fn lock_hashes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.hashes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uploads the zip under `file_id`, checks size and hash; returns the
    /// hash and size.
    async fn upload(
        &self,
        conn: &Conn,
        req: &SaveRequest,
        zip: ByteStream,
        file_id: ObjectId,
    ) -> Result<(Option<String>, u64)> {
        let c = req.coordinates();
        let name = grid_file_name(c.module.as_str(), c.version.as_str());
        let (mut zip, spool) = crate::hashing::tee(zip)?;
        let mut up = conn
            .bucket
            .open_upload_stream(&name)
            .id(Bson::ObjectId(file_id))
            .chunk_size_bytes(GRIDFS_CHUNK)
            .metadata(
                doc! {"modmesh": {"module": c.module.as_str(), "version": c.version.as_str()}},
            )
            .await
            .map_err(|e| mongo_err(&format!("saving {c}"), e))?;
        let written = async {
            while let Some(chunk) = zip.next().await {
                let chunk = chunk?;
                up.write_all(&chunk)
                    .await
                    .map_err(|e| io_err(&format!("saving the zip of {c} to GridFS"), e))?;
            }
            up.close()
                .await
                .map_err(|e| io_err(&format!("saving the zip of {c} to GridFS"), e))
        }
        .await;
        if let Err(e) = written {
            let _ = up.abort().await;
            return Err(e);
        }
        let size = spool.size();
        let hash = spool.finish(req).await?;
        Ok((hash, size))
    }
}

/// Removes a GridFS file (its `fs.files` entry first, so no name lookup
/// finds it without its chunks), then its chunks, then its pending record.
async fn remove_upload(db: &Database, pending: &Collection<Document>, id: &ObjectId) -> Result<()> {
    db.collection::<Document>("fs.files")
        .delete_one(doc! {"_id": id})
        .await
        .map_err(|e| mongo_err("removing an upload", e))?;
    db.collection::<Document>("fs.chunks")
        .delete_many(doc! {"files_id": id})
        .await
        .map_err(|e| mongo_err("removing an upload's chunks", e))?;
    pending
        .delete_one(doc! {"_id": id})
        .await
        .map_err(|e| mongo_err("removing a pending record", e))?;
    Ok(())
}

async fn clean_orphans(conn: &Conn, older_than: Duration) -> Result<usize> {
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(UNIX_EPOCH);
    let cutoff = bson::DateTime::from_system_time(cutoff);
    let stale: Vec<Document> = conn
        .pending
        .find(doc! {"started": {"$lte": cutoff}})
        .await
        .map_err(|e| mongo_err("listing pending uploads", e))?
        .try_collect()
        .await
        .map_err(|e| mongo_err("listing pending uploads", e))?;
    let mut removed = 0;
    for p in stale {
        let Ok(id) = p.get_object_id("_id") else {
            continue;
        };
        let used = conn
            .modules
            .find_one(doc! {"zip_id": id})
            .await
            .map_err(|e| mongo_err("checking a pending upload", e))?
            .is_some();
        if used {
            conn.pending
                .delete_one(doc! {"_id": id})
                .await
                .map_err(|e| mongo_err("removing a pending record", e))?;
        } else {
            remove_upload(&conn.db, &conn.pending, &id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes the upload of a save that did not finish (also when the save's
/// future is dropped), unless disarmed.
struct UploadGuard {
    db: Database,
    pending: Collection<Document>,
    id: Option<ObjectId>,
}

impl UploadGuard {
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let (db, pending) = (self.db.clone(), self.pending.clone());
        let work = async move {
            if let Err(e) = remove_upload(&db, &pending, &id).await {
                tracing::warn!(error = %e, %id, "removing the upload of an unfinished save");
            }
        };
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(work);
        }
    }
}

fn decode_doc(c: &Coordinates, d: &Document) -> Result<Doc> {
    let bad = |what: &str| Error::internal(format!("{c}: malformed document in Mongo: {what}"));
    let id = d
        .get_object_id("_id")
        .map_err(|_| bad("_id is not an ObjectId"))?;
    let bytes = |key: &str| -> Result<Bytes> {
        match d.get(key) {
            Some(Bson::Binary(b)) => Ok(Bytes::from(b.bytes.clone())),
            Some(Bson::String(s)) => Ok(Bytes::from(s.clone().into_bytes())),
            Some(other) => Err(bad(&format!("{key} is a {:?}", other.element_type()))),
            None => Err(bad(&format!("no {key}"))),
        }
    };
    let zip_hash = match d.get("zip_hash") {
        None => None,
        Some(Bson::Null) => Some(None),
        Some(Bson::String(s)) => Some(Some(s.clone())),
        Some(other) => return Err(bad(&format!("zip_hash is a {:?}", other.element_type()))),
    };
    let stored_at_ms = match d.get("stored_at") {
        Some(Bson::DateTime(t)) => Some(t.timestamp_millis()),
        _ => None,
    };
    Ok(Doc {
        id,
        info: bytes("info")?,
        go_mod: bytes("mod")?,
        zip_id: d
            .get("zip_id")
            .filter(|b| !matches!(b, Bson::Null))
            .cloned(),
        zip_hash,
        stored_at_ms,
    })
}

/// The data of chunk number `n` of a file of `size` bytes in chunks of
/// `chunk_size`, `got` bytes read before it; what is wrong otherwise.
fn chunk_data(
    chunk: &Document,
    n: i64,
    got: u64,
    size: u64,
    chunk_size: u64,
) -> std::result::Result<Bytes, String> {
    let num = match chunk.get("n") {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) if v.fract() == 0.0 => *v as i64,
        _ => {
            return Err(format!(
                "has a chunk without a number after chunk {}",
                n - 1
            ))
        }
    };
    if num != n {
        return Err(format!("lacks chunk {n} (found chunk {num})"));
    }
    let data = match chunk.get("data") {
        Some(Bson::Binary(b)) => &b.bytes,
        _ => return Err(format!("has chunk {n} without binary data")),
    };
    let expected = chunk_size.min(size.saturating_sub(got));
    if data.len() as u64 != expected {
        return Err(format!(
            "has chunk {n} of {} bytes, expected {expected}",
            data.len()
        ));
    }
    Ok(Bytes::copy_from_slice(data))
}

fn binary(b: &Bytes) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: b.to_vec(),
    })
}

fn not_found(c: &Coordinates) -> Error {
    Error::not_found(format!("{c} not found"))
}

fn already_exists(c: &Coordinates) -> Error {
    Error::already_exists(format!("{c} already exists"))
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        ErrorKind::InsertMany(i) => i
            .write_errors
            .as_ref()
            .is_some_and(|w| w.iter().any(|w| w.code == 11000)),
        _ => false,
    }
}

fn is_unavailable(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    ) || e.contains_label("RetryableWriteError")
}

/// A driver error as ours: unreachable servers are `Unavailable`, the rest
/// `Internal`, with what we were doing.
fn mongo_err(what: &str, e: mongodb::error::Error) -> Error {
    if is_unavailable(&e) {
        Error::unavailable(format!("{what}: Mongo unreachable: {e}"))
    } else {
        Error::internal(format!("{what}: {e}"))
    }
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    match e
        .get_ref()
        .and_then(|i| i.downcast_ref::<mongodb::error::Error>())
    {
        Some(m) => mongo_err(what, m.clone()),
        None => Error::unavailable(format!("{what}: {e}")),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        if "\\^$.|?*+()[]{}/-".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl Storage for MongoStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_only: CreateOnly::Native,
            streamed_saves: true,
            unsized_saves: true,
            shared: true,
            ..Capabilities::minimal()
        }
    }

    async fn health(&self) -> Result<()> {
        let conn = self.conn().await?;
        conn.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(|e| mongo_err("ping", e))
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let conn = self.conn().await?;
        let docs: Vec<Document> = conn
            .modules
            .find(doc! {"module": module.as_str()})
            .projection(doc! {"version": 1})
            .await
            .map_err(|e| mongo_err(&format!("listing {module}"), e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err(&format!("listing {module}"), e))?;
        let mut versions: Vec<String> = docs
            .iter()
            .filter_map(|d| d.get_str("version").ok())
            .filter(|v| is_canonical_version(v))
            .map(str::to_string)
            .collect();
        versions.sort_by(|a, b| compare_versions(a, b));
        versions.dedup();
        Ok(versions)
    }

    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        Ok(self.doc(c).await?.info)
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        Ok(self.doc(c).await?.go_mod)
    }

    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        let d = self.doc(c).await?;
        self.open_zip(c, &d).await
    }

    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        let conn = self.conn().await?;
        let n = conn
            .modules
            .count_documents(doc! {"module": c.module.as_str(), "version": c.version.as_str()})
            .await
            .map_err(|e| mongo_err(&format!("checking {c}"), e))?;
        Ok(n > 0)
    }

    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        let d = self.doc(c).await?;
        let file = self.zip_file(c, &d).await?;
        let zip_hash = match &d.zip_hash {
            Some(h) => h.clone(),
            None => self.computed_hash(c, &d).await?,
        };
        Ok(VersionStat {
            coordinates: c.clone(),
            info_size: d.info.len() as u64,
            mod_size: d.go_mod.len() as u64,
            zip_size: file.length,
            stored_at_unix_ms: d
                .stored_at_ms
                .unwrap_or_else(|| d.id.timestamp().timestamp_millis()),
            zip_hash,
            mod_hash: crate::mod_hash(&d.go_mod),
        })
    }

    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
        let c = req.coordinates();
        if self.exists(&c).await? {
            return Err(already_exists(&c));
        }
        let conn = self.conn().await?;
        let file_id = ObjectId::new();
        conn.pending
            .insert_one(doc! {"_id": file_id, "started": bson::DateTime::now()})
            .await
            .map_err(|e| mongo_err(&format!("saving {c}"), e))?;
        let guard = UploadGuard {
            db: conn.db.clone(),
            pending: conn.pending.clone(),
            id: Some(file_id),
        };
        let (hash, size) = self.upload(conn, &req, zip, file_id).await?;
        let hash_bson = match &hash {
            Some(h) => Bson::String(h.clone()),
            None => Bson::Null,
        };
        let document = doc! {
            "_id": ObjectId::new(),
            "module": c.module.as_str(),
            "version": c.version.as_str(),
            "mod": binary(&req.go_mod),
            "info": binary(&req.info),
            "zip_id": file_id,
            "zip_size": size as i64,
            "zip_hash": hash_bson,
            "stored_at": bson::DateTime::from_millis(now_ms()),
        };
        match conn.modules.insert_one(document).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => return Err(already_exists(&c)),
            Err(e) => return Err(mongo_err(&format!("saving {c}"), e)),
        }
        guard.disarm();
        if let Err(e) = conn.pending.delete_one(doc! {"_id": file_id}).await {
            tracing::warn!(error = %e, version = %c, "removing a pending record");
        }
        Ok(())
    }

    async fn delete(&self, c: &Coordinates) -> Result<()> {
        let d = self.doc(c).await?;
        let conn = self.conn().await?;
        let r = conn
            .modules
            .delete_one(doc! {"_id": d.id})
            .await
            .map_err(|e| mongo_err(&format!("deleting {c}"), e))?;
        if r.deleted_count == 0 {
            return Err(not_found(c));
        }
        self.lock_hashes().remove(&d.id.to_hex());
        // The version is gone with its document; now its zip.
        let removed = match &d.zip_id {
            Some(id) => match id {
                Bson::ObjectId(oid) => remove_upload(&conn.db, &conn.pending, oid).await,
                other => conn
                    .bucket
                    .delete(other.clone())
                    .await
                    .map_err(|e| mongo_err(&format!("deleting the zip of {c}"), e)),
            },
            None => conn
                .bucket
                .delete_by_name(grid_file_name(c.module.as_str(), c.version.as_str()))
                .await
                .map_err(|e| mongo_err(&format!("deleting the zip of {c}"), e)),
        };
        if let Err(e) = removed {
            tracing::warn!(error = %e, version = %c, "the version is deleted but its zip was not removed");
        }
        Ok(())
    }

    /// Pages in `_id` order (insertion order), as Athens' catalog does.
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        let after =
            match page_token.filter(|t| !t.is_empty()) {
                Some(t) => {
                    let key = decode_page_token(TOKEN_TAG, t)?;
                    Some(ObjectId::parse_str(&key).map_err(|_| {
                        Error::invalid(format!("malformed catalog page token {t:?}"))
                    })?)
                }
                None => None,
            };
        let size = crate::page_size(page_size);
        let mut filter = Document::new();
        if let Some(id) = after {
            filter.insert("_id", doc! {"$gt": id});
        }
        if !module_prefix.is_empty() {
            filter.insert(
                "module",
                doc! {"$regex": format!("^{}", regex_escape(module_prefix))},
            );
        }
        let conn = self.conn().await?;
        let docs: Vec<Document> = conn
            .modules
            .find(filter)
            .projection(doc! {"module": 1, "version": 1})
            .sort(doc! {"_id": 1})
            .limit(size as i64 + 1)
            .await
            .map_err(|e| mongo_err("catalog", e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err("catalog", e))?;
        let more = docs.len() > size;
        let mut entries = Vec::new();
        let mut last = None;
        for d in docs.iter().take(size) {
            last = d.get_object_id("_id").ok();
            let (Ok(m), Ok(v)) = (d.get_str("module"), d.get_str("version")) else {
                tracing::warn!(doc = ?d.get("_id"), "catalog: skipping a malformed document");
                continue;
            };
            match Coordinates::new(m, v) {
                Ok(c) if is_canonical_version(v) => entries.push(c),
                _ => tracing::warn!(
                    module = m,
                    version = v,
                    "catalog: skipping a malformed document"
                ),
            }
        }
        let next_page_token = if more {
            last.map(|id| encode_page_token(TOKEN_TAG, &id.to_hex()))
        } else {
            None
        };
        Ok(CatalogPage {
            entries,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn athens_grid_file_names() {
        assert_eq!(
            grid_file_name("github.com/gomods/athens", "v1.0.0"),
            "github.com_gomods_athens_v1.0.0.zip"
        );
    }

    #[test]
    fn prefixes_are_escaped_for_regex() {
        assert_eq!(regex_escape("a.b/c+d"), "a\\.b\\/c\\+d");
    }
}
