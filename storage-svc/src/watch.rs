//! Deletions as events: [`Watched`] wraps a storage and announces every
//! delete made through it, so that what is kept in front of a storage (the
//! gateway's tier) can forget a deleted version. Versions are immutable
//! otherwise: a delete is the one change a reader can miss.
//!
//! Over gRPC, `WatchDeletes` streams these events from storage-svc; the
//! client ([`crate::client::StorageClient`]) resubscribes after a failure
//! and says [`DeleteEvent::Missed`] each time it (re)subscribes.

use crate::{ByteStream, Capabilities, CatalogPage, SaveRequest, Storage, VersionStat, ZipReader};
use async_trait::async_trait;
use bytes::Bytes;
use modmesh_proto::{Coordinates, ModulePath, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it is told
/// [`DeleteEvent::Missed`] (as a lagged broadcast receiver).
pub const BACKLOG: usize = 1024;

/// One deletion, or the news that some may have been missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteEvent {
    /// This version was deleted.
    Deleted(Coordinates),
    /// Deletions may have been missed (a new subscription, a lag): forget
    /// everything kept.
    Missed,
}

/// A storage that announces the deletes made through it.
pub struct Watched {
    inner: Arc<dyn Storage>,
    tx: broadcast::Sender<DeleteEvent>,
}

impl Watched {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Watched {
            inner,
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

#[async_trait]
impl Storage for Watched {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn health(&self) -> Result<()> {
        self.inner.health().await
    }
    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        self.inner.list(module).await
    }
    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        self.inner.info(c).await
    }
    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        self.inner.go_mod(c).await
    }
    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        self.inner.zip(c).await
    }
    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        self.inner.exists(c).await
    }
    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        self.inner.stat(c).await
    }
    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
        self.inner.save(req, zip).await
    }
    async fn delete(&self, c: &Coordinates) -> Result<()> {
        let r = self.inner.delete(c).await;
        // Announced whatever the outcome: a failed delete may have removed
        // part of the version.
        let _ = self.tx.send(DeleteEvent::Deleted(c.clone()));
        r
    }
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        self.inner
            .catalog(page_token, page_size, module_prefix)
            .await
    }
    async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
        self.inner.presign_zip(c, ttl).await
    }
    fn watch_deletes(&self) -> Option<broadcast::Receiver<DeleteEvent>> {
        Some(self.tx.subscribe())
    }
}
