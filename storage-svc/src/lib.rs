//! The storage service.
//!
//! [`Storage`] is the one trait every backend implements; [`server`] serves
//! any `Arc<dyn Storage>` over gRPC and [`client::StorageClient`] is a
//! `Storage` over gRPC, so callers cannot tell where their storage runs.
//! Backends live one per module under [`backends`]; [`compliance`] is the
//! suite every backend passes.

#![warn(missing_docs)]

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use modmesh_proto::{Coordinates, ModulePath, Result};
use std::sync::Arc;

pub mod backends;
pub mod client;
pub mod compliance;
pub mod server;

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
    /// The (canonical) version being saved.
    pub coordinates: Coordinates,
    /// The `.info` JSON, stored verbatim.
    pub info: Bytes,
    /// The go.mod, stored verbatim.
    pub go_mod: Bytes,
    /// The go.sum hash of the zip (`h1:...`) if known.
    pub zip_hash: Option<String>,
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
    /// (module, version) pairs in (module, version) order.
    pub entries: Vec<Coordinates>,
    /// The token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The default catalog page size (Athens' default).
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// A module store.
///
/// Contract, shared by every backend and checked by [`compliance`]:
/// - a version is visible (to `exists`, `info`, `go_mod`, `zip`, `list`,
///   `stat`, `catalog`) only once its info, go.mod and zip are all durably
///   stored; a save that fails or is interrupted leaves nothing visible;
/// - `save` is create-only: if the version is already visible it returns
///   [`ErrorKind::AlreadyExists`](modmesh_proto::ErrorKind::AlreadyExists)
///   and changes nothing; of concurrent saves of one version exactly one wins;
/// - reads of a missing version return `NotFound`; `list` of an unknown
///   module returns an empty list;
/// - zips stream in both directions; no backend needs the whole zip in
///   memory (except `memory`, whose store is memory).
#[async_trait]
pub trait Storage: Send + Sync + 'static {
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
    /// with `module_prefix`, after `page_token`.
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage>;
}

/// Builds the backend named by `StorageType` in `cfg`.
pub fn from_config(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    backends::from_config(cfg)
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

/// Checks what every backend checks before a save: the version must be
/// canonical (`vX.Y.Z[-pre][+incompatible]`), never a query.
pub fn check_save(req: &SaveRequest) -> Result<()> {
    if !req.coordinates.version.is_canonical() {
        return Err(modmesh_proto::Error::invalid(format!(
            "cannot save {}: {:?} is not a canonical version",
            req.coordinates,
            req.coordinates.version.as_str()
        )));
    }
    Ok(())
}

/// The catalog's order: module path bytewise, then version by semantic
/// version precedence ([`modmesh_proto::coords::compare_versions`]).
pub fn catalog_order(a: &Coordinates, b: &Coordinates) -> std::cmp::Ordering {
    a.module.as_str().cmp(b.module.as_str()).then_with(|| {
        modmesh_proto::coords::compare_versions(a.version.as_str(), b.version.as_str())
    })
}

/// The page token naming `last` (the last entry of a page): `module@version`,
/// base64url without padding. Opaque to callers.
pub fn encode_page_token(last: &Coordinates) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.key())
}

/// Reverses [`encode_page_token`]; `Invalid` for anything it did not make.
pub fn decode_page_token(token: &str) -> Result<Coordinates> {
    use base64::Engine;
    use modmesh_proto::Error;
    let bad = || Error::invalid(format!("malformed catalog page token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let key = String::from_utf8(raw).map_err(|_| bad())?;
    let (module, version) = key.split_once('@').ok_or_else(bad)?;
    Coordinates::new(module, version).map_err(|_| bad())
}

/// Cuts one catalog page out of `entries` (every stored pair, any order):
/// keeps modules starting with `module_prefix`, sorts by [`catalog_order`],
/// skips up to and including the entry named by `page_token`, and takes
/// `page_size` entries (0 means [`DEFAULT_PAGE_SIZE`]).
pub fn paginate(
    mut entries: Vec<Coordinates>,
    page_token: Option<&str>,
    page_size: usize,
    module_prefix: &str,
) -> Result<CatalogPage> {
    let after = match page_token.filter(|t| !t.is_empty()) {
        Some(t) => Some(decode_page_token(t)?),
        None => None,
    };
    let page_size = if page_size == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        page_size
    };
    entries.retain(|c| {
        c.module.as_str().starts_with(module_prefix)
            && after
                .as_ref()
                .is_none_or(|a| catalog_order(c, a) == std::cmp::Ordering::Greater)
    });
    entries.sort_by(catalog_order);
    entries.dedup();
    let more = entries.len() > page_size;
    entries.truncate(page_size);
    let next_page_token = if more {
        entries.last().map(encode_page_token)
    } else {
        None
    };
    Ok(CatalogPage {
        entries,
        next_page_token,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
