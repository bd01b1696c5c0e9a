//! The storage service.
//!
//! [`Storage`] is the one trait every backend implements; [`server`] serves
//! any `Arc<dyn Storage>` over gRPC and [`client::StorageClient`] is a
//! `Storage` over gRPC, so callers cannot tell where their storage runs.
//! Backends live one per module under [`backends`] (`memory`, `disk`, `s3`,
//! `minio`) and declare their [`Capabilities`]; `compliance` (cargo feature
//! `testing`) is the suite every backend passes, reusable from other crates.
//! [`hashing`] checks a save's zip hash and size while it streams.

#![warn(missing_docs)]

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use modmesh_proto::{CanonicalVersion, Coordinates, ModulePath, Result};
use std::sync::Arc;
use std::time::Duration;

pub mod backends;
pub mod client;
#[cfg(feature = "testing")]
pub mod compliance;
pub mod external_server;
pub mod hashing;
pub mod observed;
pub mod server;
pub mod watch;
mod zipwire;

/// A stream of zip bytes (each item at most [`modmesh_proto::MAX_CHUNK`]).
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// A stored zip, ready to stream.
pub struct ZipReader {
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes.
    pub stream: ByteStream,
}

impl std::fmt::Debug for ZipReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZipReader")
            .field("size", &self.size)
            .finish()
    }
}

/// What a save carries besides the zip bytes.
#[derive(Debug, Clone)]
pub struct SaveRequest {
    /// The module being saved.
    pub module: ModulePath,
    /// Its version: canonical by construction, never a query.
    pub version: CanonicalVersion,
    /// The `.info` JSON, stored verbatim.
    pub info: Bytes,
    /// The go.mod, stored verbatim.
    pub go_mod: Bytes,
    /// The go.sum hash of the zip (`h1:...`) if known; a zip with another
    /// hash is refused (`Invalid`).
    pub zip_hash: Option<String>,
    /// The zip's size in bytes if known in advance; a zip of another size
    /// is refused (`Invalid`).
    pub zip_size: Option<u64>,
}

impl SaveRequest {
    /// A save of `c` (whose version must be canonical: `Invalid` otherwise)
    /// with no hash or size known.
    pub fn new(c: &Coordinates, info: impl Into<Bytes>, go_mod: impl Into<Bytes>) -> Result<Self> {
        Ok(SaveRequest {
            module: c.module.clone(),
            version: c.canonical_version()?,
            info: info.into(),
            go_mod: go_mod.into(),
            zip_hash: None,
            zip_size: None,
        })
    }

    /// The coordinates saved.
    pub fn coordinates(&self) -> Coordinates {
        Coordinates {
            module: self.module.clone(),
            version: self.version.as_version().clone(),
        }
    }
}

/// How a backend makes saves create-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOnly {
    /// The store refuses to overwrite by itself (a conditional write, an
    /// atomic rename, a lock held in this process).
    Native,
    /// The backend writes a marker last and checks for it.
    Marker,
}

/// What a backend can do, declared by [`Storage::capabilities`]. Callers ask
/// before they use an optional feature; the compliance suite runs only the
/// checks that apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// How saves are made create-only.
    pub create_only: CreateOnly,
    /// [`Storage::presign_zip`] gives URLs.
    pub presigned_reads: bool,
    /// Byte ranges of a stored zip can be read.
    pub range_reads: bool,
    /// Saves stream: the backend never holds a whole zip in memory.
    pub streamed_saves: bool,
    /// Saves whose size is not known in advance stream too.
    pub unsized_saves: bool,
    /// Other processes see what this one saves.
    pub shared: bool,
}

impl Capabilities {
    /// Nothing optional: marker create-only, no presigned or range reads,
    /// saves not streamed, not shared. Backends start from this and set what
    /// they do.
    pub const fn minimal() -> Self {
        Capabilities {
            create_only: CreateOnly::Marker,
            presigned_reads: false,
            range_reads: false,
            streamed_saves: false,
            unsized_saves: false,
            shared: false,
        }
    }

    /// From the wire message.
    pub fn from_pb(p: &modmesh_proto::pb::StorageCapabilities) -> Self {
        Capabilities {
            create_only: if p.native_create_only {
                CreateOnly::Native
            } else {
                CreateOnly::Marker
            },
            presigned_reads: p.presigned_reads,
            range_reads: p.range_reads,
            streamed_saves: p.streamed_saves,
            unsized_saves: p.unsized_saves,
            shared: p.shared,
        }
    }

    /// To the wire message.
    pub fn to_pb(&self) -> modmesh_proto::pb::StorageCapabilities {
        modmesh_proto::pb::StorageCapabilities {
            native_create_only: self.create_only == CreateOnly::Native,
            presigned_reads: self.presigned_reads,
            range_reads: self.range_reads,
            streamed_saves: self.streamed_saves,
            unsized_saves: self.unsized_saves,
            shared: self.shared,
        }
    }
}

/// Metadata of one stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStat {
    /// Which version.
    pub coordinates: Coordinates,
    /// `.info` size in bytes.
    pub info_size: u64,
    /// go.mod size in bytes.
    pub mod_size: u64,
    /// Zip size in bytes.
    pub zip_size: u64,
    /// When the version became visible (ms since the Unix epoch).
    pub stored_at_unix_ms: i64,
    /// go.sum hash of the zip, where known.
    pub zip_hash: Option<String>,
    /// go.sum hash of go.mod (`h1:...`).
    pub mod_hash: String,
}

/// One page of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogPage {
    /// (module, version) pairs, in the backend's own order.
    pub entries: Vec<Coordinates>,
    /// The token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The default catalog page size (Athens' default).
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// A module store.
///
/// Contract, shared by every backend and checked by the compliance suite
/// (`compliance`, feature `testing`):
/// - a version is visible (to `exists`, `info`, `go_mod`, `zip`, `list`,
///   `stat`, `catalog`) only once its info, go.mod and zip are all durably
///   stored; a save that fails or is interrupted leaves nothing visible;
/// - `save` is create-only: if the version is already visible it returns
///   [`ErrorKind::AlreadyExists`](modmesh_proto::ErrorKind::AlreadyExists)
///   and changes nothing; of concurrent saves of one version exactly one wins;
/// - a save whose zip does not match the request's `zip_hash` or
///   `zip_size` is `Invalid` and stores nothing; `stat` gives the zip's h1
///   whenever the zip is a valid zip (computed while saving if not given);
/// - reads of a missing version return `NotFound`; `list` of an unknown
///   module returns an empty list;
/// - zips stream in both directions; no backend needs the whole zip in
///   memory (except `memory`, whose store is memory);
/// - catalog page tokens are opaque and the backend's own: pages come in the
///   backend's order, and one page costs about one page of work.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
    /// Whether the backend can serve: `Ok` or the reason it cannot
    /// (`Unavailable`, `Timeout`, `Permission`...).
    async fn health(&self) -> Result<()>;
    /// Versions of `module`, in semantic-version order.
    async fn list(&self, module: &ModulePath) -> Result<Vec<String>>;
    /// The `.info` bytes.
    async fn info(&self, c: &Coordinates) -> Result<Bytes>;
    /// The go.mod bytes.
    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes>;
    /// The zip, streamed.
    async fn zip(&self, c: &Coordinates) -> Result<ZipReader>;
    /// Whether the version is completely stored.
    async fn exists(&self, c: &Coordinates) -> Result<bool>;
    /// Sizes, time stored and hashes.
    async fn stat(&self, c: &Coordinates) -> Result<VersionStat>;
    /// Create-only save; see the trait's contract.
    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()>;
    /// Removes a version; `NotFound` if absent.
    async fn delete(&self, c: &Coordinates) -> Result<()>;
    /// A page of stored (module, version) pairs whose module path starts
    /// with `module_prefix`, after `page_token` (a token this backend made;
    /// `Invalid` otherwise). `page_size` 0 means [`DEFAULT_PAGE_SIZE`].
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage>;
    /// A URL that serves the stored zip of `c` with a plain GET for `ttl`,
    /// or `None` where the backend cannot make one (see
    /// [`Capabilities::presigned_reads`]). `NotFound` if `c` is not stored.
    async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
        let _ = (c, ttl);
        Ok(None)
    }
    /// Deletions from now on (see [`watch`]), or `None` where this storage
    /// cannot tell (then nothing may be kept in front of it for long).
    fn watch_deletes(&self) -> Option<tokio::sync::broadcast::Receiver<watch::DeleteEvent>> {
        None
    }
}

/// Builds the backend named by `StorageType` in `cfg`.
/// The backend comes wrapped in [`observed::Observed`] (spans and latency
/// metrics by backend), and deletions through it are announced to
/// [`Storage::watch_deletes`].
pub fn from_config(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(watch::Watched::new(observed::Observed::wrap(
        backends::from_config(cfg)?,
        &cfg.StorageType,
    ))))
}

/// go.sum hash of a go.mod file: `h1:` + base64(sha256("`<sha256 hex>`  go.mod\n")).
pub fn mod_hash(go_mod: &[u8]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let file = hex(&Sha256::digest(go_mod));
    let summary = format!("{file}  go.mod\n");
    let sum = Sha256::digest(summary.as_bytes());
    format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(sum)
    )
}

/// go.sum hash (`h1:`, Go's `dirhash.HashZip`) of the zip file at `path`.
///
/// Blocking: call it from `spawn_blocking`. Fails with `Invalid` if the file
/// is not a readable zip.
pub fn zip_hash(path: &std::path::Path) -> Result<String> {
    let file = std::fs::File::open(path)?;
    zip_hash_reader(std::io::BufReader::with_capacity(64 << 10, file))
}

/// go.sum hash (`h1:`) of a zip read from `reader`: for every entry, the
/// sha256 hex of its uncompressed content and its name as a line
/// `"{hex}  {name}\n"`; the lines sorted by name; `h1:` + base64 of the
/// sha256 of their concatenation. Blocking.
pub fn zip_hash_reader<R: std::io::Read + std::io::Seek>(reader: R) -> Result<String> {
    use base64::Engine;
    use modmesh_proto::Error;
    use sha2::{Digest, Sha256};
    let bad = |e: zip::result::ZipError| Error::invalid(format!("not a valid zip: {e}"));
    let mut archive = zip::ZipArchive::new(reader).map_err(bad)?;
    let mut lines: Vec<(Vec<u8>, String)> = Vec::with_capacity(archive.len());
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).map_err(bad)?;
        let name = file.name_raw().to_vec();
        if name.contains(&b'\n') {
            return Err(Error::invalid("zip entry name contains a newline"));
        }
        let mut h = Sha256::new();
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)
                .map_err(|e| Error::invalid(format!("reading zip entry: {e}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        lines.push((name, hex(&h.finalize())));
    }
    lines.sort();
    let mut summary = Sha256::new();
    for (name, sum) in &lines {
        summary.update(sum.as_bytes());
        summary.update(b"  ");
        summary.update(name);
        summary.update(b"\n");
    }
    Ok(format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(summary.finalize())
    ))
}

/// The page size a backend uses for `page_size` (0 means
/// [`DEFAULT_PAGE_SIZE`]).
pub fn page_size(page_size: usize) -> usize {
    if page_size == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        page_size
    }
}

/// An opaque page token carrying `key`, marked with `tag` (the backend's
/// name), base64url without padding.
pub fn encode_page_token(tag: &str, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tag}\n{key}"))
}

/// Reverses [`encode_page_token`] for `tag`; `Invalid` for anything else.
pub fn decode_page_token(tag: &str, token: &str) -> Result<String> {
    use base64::Engine;
    let bad = || modmesh_proto::Error::invalid(format!("malformed catalog page token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    match text.split_once('\n') {
        Some((t, key)) if t == tag && !key.is_empty() => Ok(key.to_string()),
        _ => Err(bad()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
