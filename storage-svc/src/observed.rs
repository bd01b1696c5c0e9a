//! [`Observed`]: a [`Storage`] that wraps a backend with one span per call
//! (`storage.<method>`, carrying the backend's name) and the histogram
//! `modmesh_storage_call_duration_seconds{backend,method,result}`.
//! [`crate::from_config`] wraps every backend it builds.

use crate::{ByteStream, Capabilities, CatalogPage, SaveRequest, Storage, VersionStat, ZipReader};
use async_trait::async_trait;
use bytes::Bytes;
use modmesh_proto::{Coordinates, ModulePath, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// A backend with spans and latency metrics.
pub struct Observed {
    inner: Arc<dyn Storage>,
    backend: &'static str,
}

impl Observed {
    /// `inner`, observed under the name `backend` (its `StorageType`).
    pub fn wrap(inner: Arc<dyn Storage>, backend: &str) -> Arc<dyn Storage> {
        let backend: &'static str = Box::leak(backend.to_string().into_boxed_str());
        Arc::new(Observed { inner, backend })
    }

    async fn call<T>(&self, method: &'static str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let span = tracing::info_span!(
            "storage",
            otel.name = %format!("storage.{method}"),
            backend = self.backend,
            method,
        );
        let started = Instant::now();
        let r = f.instrument(span).await;
        let result = if r.is_ok() { "ok" } else { "error" };
        metrics::histogram!(
            "modmesh_storage_call_duration_seconds",
            "backend" => self.backend,
            "method" => method,
            "result" => result
        )
        .record(started.elapsed().as_secs_f64());
        r
    }
}

#[async_trait]
impl Storage for Observed {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn health(&self) -> Result<()> {
        self.call("health", self.inner.health()).await
    }
    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        self.call("list", self.inner.list(module)).await
    }
    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        self.call("info", self.inner.info(c)).await
    }
    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        self.call("go_mod", self.inner.go_mod(c)).await
    }
    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        self.call("zip", self.inner.zip(c)).await
    }
    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        self.call("exists", self.inner.exists(c)).await
    }
    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        self.call("stat", self.inner.stat(c)).await
    }
    async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
        self.call("save", self.inner.save(req, zip)).await
    }
    async fn delete(&self, c: &Coordinates) -> Result<()> {
        self.call("delete", self.inner.delete(c)).await
    }
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        self.call(
            "catalog",
            self.inner.catalog(page_token, page_size, module_prefix),
        )
        .await
    }
    async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
        self.call("presign_zip", self.inner.presign_zip(c, ttl))
            .await
    }
}
