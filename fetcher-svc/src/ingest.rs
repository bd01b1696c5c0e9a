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
        let req = SaveRequest {
            coordinates: resolved.clone(),
            info: d.info.clone(),
            go_mod: d.go_mod,
            zip_hash: d.zip_hash.filter(|h| !h.is_empty()),
        };
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
