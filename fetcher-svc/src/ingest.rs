//! Ingest: the step every fetcher shares between "the upstream has it" and
//! "it is stored": the already-stored check (once per miss) and the save.
//!
//! [`Ingest::download`] asks storage once whether the version is stored,
//! before fetching when the request names a canonical version, after the
//! fetch resolved it when the request was a query (`latest`, a branch);
//! otherwise it saves what the fetch produced. Saves are create-only, so a
//! concurrent save of the same version by another fetcher is a success.

use crate::Fetched;
use bytes::Bytes;
use modmesh_proto::{Coordinates, ErrorKind, Result, Version};
use modmesh_storage::{ByteStream, SaveRequest, Storage};
use std::future::Future;
use std::sync::Arc;

/// One module version as an upstream delivered it, ready to be saved.
pub struct Downloaded {
    /// The canonical version the request resolved to.
    pub version: Version,
    /// Its `.info` JSON.
    pub info: Bytes,
    /// Its go.mod.
    pub go_mod: Bytes,
    /// Its zip, as a stream of chunks.
    pub zip: ByteStream,
    /// The zip's go.sum hash (`h1:...`), if the fetcher knows it.
    pub zip_hash: Option<String>,
    /// The zip's size in bytes, if the fetcher knows it.
    pub zip_size: Option<u64>,
}

impl std::fmt::Debug for Downloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloaded")
            .field("version", &self.version)
            .field("zip_hash", &self.zip_hash)
            .finish_non_exhaustive()
    }
}

/// Saves what a fetcher downloads into a [`Storage`], unless stored.
#[derive(Clone)]
pub struct Ingest {
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

impl Ingest {
    /// Ingest into `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Ingest { storage }
    }

    /// The storage saved into.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The stored `.info` of `c`, if the version is stored. A stored `.info`
    /// means the whole version is (saves become visible at once), so one
    /// read answers. A storage failure counts as "not stored" (logged): the
    /// save that follows is create-only.
    async fn stored(&self, c: &Coordinates) -> Option<Bytes> {
        match self.storage.info(c).await {
            Ok(info) => Some(info),
            Err(e) if e.is(ErrorKind::NotFound) => None,
            Err(e) => {
                tracing::warn!(coordinates = %c, error = %e, "storage check failed; fetching anyway");
                None
            }
        }
    }

    /// Downloads `c` with `fetch` unless stored, and saves the result.
    /// Storage is asked once whether the version is there.
    pub async fn download<F, Fut>(&self, c: &Coordinates, fetch: F) -> Result<Fetched>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Downloaded>>,
    {
        let canonical = c.version.is_canonical();
        if canonical {
            if let Some(info) = self.stored(c).await {
                return Ok(Fetched {
                    version: c.version.clone(),
                    info,
                });
            }
        }
        let d = fetch().await?;
        let resolved = Coordinates {
            module: c.module.clone(),
            version: d.version,
        };
        if !canonical {
            if let Some(info) = self.stored(&resolved).await {
                return Ok(Fetched {
                    version: resolved.version,
                    info,
                });
            }
        }
        let mut req = SaveRequest::new(&resolved, d.info.clone(), d.go_mod)?;
        req.zip_hash = d.zip_hash.filter(|h| !h.is_empty());
        req.zip_size = d.zip_size;
        match self.storage.save(req, d.zip).await {
            Ok(()) => tracing::info!(coordinates = %resolved, "module stored"),
            Err(e) if e.is(ErrorKind::AlreadyExists) => {
                tracing::debug!(coordinates = %resolved, "stored meanwhile by another fetcher")
            }
            Err(e) => return Err(e),
        }
        Ok(Fetched {
            version: resolved.version,
            info: d.info,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use futures::StreamExt;
    use modmesh_proto::{Error, ModulePath};
    use modmesh_storage::backends::memory::MemoryStorage;
    use modmesh_storage::{CatalogPage, VersionStat, ZipReader};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A memory storage counting the reads that answer "stored?" and the
    /// saves.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStorage,
        checks: AtomicUsize,
        saves: AtomicUsize,
    }

    #[async_trait]
    impl Storage for Counting {
        fn capabilities(&self) -> modmesh_storage::Capabilities {
            self.inner.capabilities()
        }
        async fn health(&self) -> Result<()> {
            self.inner.health().await
        }
        async fn list(&self, m: &ModulePath) -> Result<Vec<String>> {
            self.inner.list(m).await
        }
        async fn info(&self, c: &Coordinates) -> Result<Bytes> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            self.inner.info(c).await
        }
        async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
            self.inner.go_mod(c).await
        }
        async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
            self.inner.zip(c).await
        }
        async fn exists(&self, c: &Coordinates) -> Result<bool> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            self.inner.exists(c).await
        }
        async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
            self.inner.stat(c).await
        }
        async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
            self.saves.fetch_add(1, Ordering::SeqCst);
            self.inner.save(req, zip).await
        }
        async fn delete(&self, c: &Coordinates) -> Result<()> {
            self.inner.delete(c).await
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
    }

    fn zip_of(module: &str, version: &str) -> Bytes {
        use std::io::Write;
        let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zw.start_file(
            format!("{module}@{version}/go.mod"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zw.write_all(format!("module {module}\n").as_bytes())
            .unwrap();
        Bytes::from(zw.finish().unwrap().into_inner())
    }

    fn downloaded(version: &str) -> Downloaded {
        let zip = zip_of("example.com/a", version);
        Downloaded {
            version: Version::new(version).unwrap(),
            info: Bytes::from(format!("{{\"Version\":\"{version}\"}}")),
            go_mod: Bytes::from_static(b"module example.com/a\n"),
            zip: futures::stream::once(async move { Ok(zip) }).boxed(),
            zip_hash: None,
            zip_size: None,
        }
    }

    #[tokio::test]
    async fn one_stored_check_per_miss_and_none_fetched_when_stored() {
        let storage = Arc::new(Counting::default());
        let ingest = Ingest::new(storage.clone());
        let c = Coordinates::new("example.com/a", "v1.0.0").unwrap();

        // A miss of a canonical version: one check, one fetch, one save.
        let got = ingest
            .download(&c, || async { Ok(downloaded("v1.0.0")) })
            .await
            .unwrap();
        assert_eq!(got.version.as_str(), "v1.0.0");
        assert_eq!(storage.checks.load(Ordering::SeqCst), 1);
        assert_eq!(storage.saves.load(Ordering::SeqCst), 1);
        assert!(storage.inner.exists(&c).await.unwrap());

        // Stored: one check, no fetch, no save.
        let got = ingest
            .download(&c, || async {
                Err::<Downloaded, _>(Error::internal("must not fetch"))
            })
            .await
            .unwrap();
        assert_eq!(&got.info[..], b"{\"Version\":\"v1.0.0\"}");
        assert_eq!(storage.checks.load(Ordering::SeqCst), 2);
        assert_eq!(storage.saves.load(Ordering::SeqCst), 1);

        // A query: fetched, then one check of the resolved version; stored
        // already, so no save.
        let q = Coordinates::new("example.com/a", "latest").unwrap();
        let got = ingest
            .download(&q, || async { Ok(downloaded("v1.0.0")) })
            .await
            .unwrap();
        assert_eq!(got.version.as_str(), "v1.0.0");
        assert_eq!(storage.checks.load(Ordering::SeqCst), 3);
        assert_eq!(storage.saves.load(Ordering::SeqCst), 1);

        // A query resolving to a new version: one check, one save.
        let got = ingest
            .download(&q, || async { Ok(downloaded("v1.1.0")) })
            .await
            .unwrap();
        assert_eq!(got.version.as_str(), "v1.1.0");
        assert_eq!(storage.checks.load(Ordering::SeqCst), 4);
        assert_eq!(storage.saves.load(Ordering::SeqCst), 2);

        // Fetch errors keep their kind and save nothing.
        let c2 = Coordinates::new("example.com/a", "v2.0.0+incompatible").unwrap();
        let e = ingest
            .download(&c2, || async {
                Err::<Downloaded, _>(Error::not_found("not there"))
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(storage.saves.load(Ordering::SeqCst), 2);
    }
}
