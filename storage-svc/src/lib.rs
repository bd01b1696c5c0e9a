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
        f.debug_struct("ZipReader").field("size", &self.size).finish()
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

/// go.sum hash of a go.mod file: `h1:` + base64(sha256("<sha256 hex>  go.mod\n")).
pub fn mod_hash(go_mod: &[u8]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let file = hex(&Sha256::digest(go_mod));
    let summary = format!("{file}  go.mod\n");
    let sum = Sha256::digest(summary.as_bytes());
    format!("h1:{}", base64::engine::general_purpose::STANDARD.encode(sum))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
