//! The fetcher service: runs the Go toolchain against the upstream.
//!
//! [`Fetcher`] is the trait; [`gocmd::GoFetcher`] runs the real `go`
//! command and saves what it downloads into a [`Storage`] through
//! [`ingest::Ingest`] (the already-stored check and the save, shared by
//! every fetcher); [`server`] serves any `Arc<dyn Fetcher>` over gRPC and
//! [`client::FetcherClient`] is a `Fetcher` over gRPC.

#![warn(missing_docs)]

use async_trait::async_trait;
use bytes::Bytes;
use modmesh_proto::{Coordinates, ModulePath, Result, Version};

pub mod client;
pub mod gocmd;
pub mod ingest;
pub mod native;
pub mod private;
pub mod server;
pub mod sumdb;

pub use modmesh_storage::Storage;

/// A downloaded and stored module version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The canonical version the request resolved to.
    pub version: Version,
    /// Its `.info` JSON.
    pub info: Bytes,
}

/// Talks to the upstream.
///
/// Errors: a module or version an upstream said is not there is `NotFound`;
/// a run over the timeout is `Timeout`; an unreachable or failing upstream
/// is `Unavailable`; an upstream's refusal is `Permission`; `Internal` only
/// for local faults. Messages carry no server paths.
#[async_trait]
pub trait Fetcher: Send + Sync + 'static {
    /// Downloads module@version (a version or a query) and saves it into
    /// storage unless already stored; returns the resolved version and info.
    async fn download(&self, c: &Coordinates) -> Result<Fetched>;
    /// The upstream's versions of `module` (releases and pre-releases).
    async fn list(&self, module: &ModulePath) -> Result<Vec<String>>;
    /// Resolves a query (`latest`, a branch, a revision, a version) to its
    /// `.info` JSON without downloading the module.
    async fn query(&self, c: &Coordinates) -> Result<Bytes>;
    /// Whether the fetcher can work: for the go fetcher, the go binary
    /// runs; for a client, the remote service reports itself serving.
    async fn health(&self) -> Result<()>;
    /// The body of `path` (`lookup/...`, `tile/...`, `latest`) of the
    /// checksum database named `db` (see [`sumdb`]). A fetcher that
    /// serves no checksum database answers `NotFound`.
    async fn sumdb(&self, db: &str, path: &str) -> Result<Bytes> {
        let _ = path;
        Err(modmesh_proto::Error::not_found(format!(
            "checksum database {db:?} is not proxied"
        )))
    }
}
