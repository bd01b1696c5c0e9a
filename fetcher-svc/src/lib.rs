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

/// What a fetcher reports while a download runs (see
/// [`Fetcher::download_progress`]), in this order: at most one
/// `Metadata`, then for each zip transfer a `ZipStart` and its `ZipData`.
/// A second `ZipStart` means the transfer restarted (another upstream of
/// the list): the bytes sent before it are void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The resolved version's `.info` and `.mod`, exactly as they will be
    /// stored; the go.mod's hash is the checksum database's (when the
    /// module is checked).
    Metadata {
        /// The canonical version.
        version: Version,
        /// Its `.info` JSON.
        info: Bytes,
        /// Its go.mod.
        go_mod: Bytes,
    },
    /// A zip transfer begins; `size` is the upstream's `Content-Length`.
    ZipStart {
        /// The announced size, when known.
        size: Option<u64>,
    },
    /// The next bytes of the zip, unchecked.
    ZipData(Bytes),
    /// The zip whose bytes were sent passed every check (its h1 is the
    /// checksum database's, when the module is checked); it is being saved.
    Verified,
}

/// Where a fetcher sends its [`Event`]s. Sending never fails: when nobody
/// listens any more the event is dropped and the download goes on.
#[derive(Debug, Clone)]
pub struct Progress {
    tx: Option<tokio::sync::mpsc::Sender<Event>>,
}

impl Progress {
    /// A sink and the receiver of its events, holding at most `cap` unread.
    pub fn channel(cap: usize) -> (Progress, tokio::sync::mpsc::Receiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::channel(cap.max(1));
        (Progress { tx: Some(tx) }, rx)
    }

    /// A sink nobody listens to.
    pub fn none() -> Progress {
        Progress { tx: None }
    }

    /// Sends `e`, waiting while the listener is behind.
    pub async fn send(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e).await;
        }
    }
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
    /// [`Fetcher::download`], reporting what it has as it goes to
    /// `progress`; the result is the verdict (stored, or why not). Nothing
    /// reported is stored unless the verdict is `Ok`. The default reports
    /// nothing.
    async fn download_progress(&self, c: &Coordinates, progress: Progress) -> Result<Fetched> {
        drop(progress);
        self.download(c).await
    }
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
