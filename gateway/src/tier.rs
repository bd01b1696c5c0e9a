//! The gateway-local tier: a bounded in-memory copy of the immutable files
//! (`.info`, `.mod`, and zips up to `MaxMemoryZipBytes`) in front of the
//! gateway's storage, so a warm read costs no storage call (in the mesh: no
//! gRPC hop).
//!
//! Only what storage returned for a canonical version is kept (storage
//! holds complete versions only); lists and `@latest` answers never reach
//! it (they stay in the service's query cache). Entries are weighed by their
//! bytes; the least recently used go first. Zips larger than
//! `MaxMemoryZipBytes` stream from storage as before, so memory stays flat
//! whatever the zip size.
//!
//! A delete is the one change: the tier forgets a version when storage
//! announces its deletion ([`Storage::watch_deletes`]: in-process in the
//! embedded gateway, storage-svc's `WatchDeletes` stream in the mesh), and
//! forgets everything when deletions may have been missed (a new or broken
//! subscription). A storage that cannot announce deletes gets no tier.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use modmesh_common::config::{err, ConfigError, Env, Section};
use modmesh_proto::{Coordinates, ModulePath, Result};
use modmesh_storage::watch::DeleteEvent;
use modmesh_storage::{
    ByteStream, Capabilities, CatalogPage, SaveRequest, Storage, VersionStat, ZipReader,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `[Tier]`: the gateway-local tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct TierConfig {
    /// Bytes of files kept in memory; 0 turns the tier off.
    pub MemoryBytes: u64,
    /// The largest zip kept in memory; larger zips stream from storage.
    pub MaxMemoryZipBytes: u64,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            MemoryBytes: 64 << 20,
            MaxMemoryZipBytes: 4 << 20,
        }
    }
}

impl Section for TierConfig {
    const PATH: &'static str = "Tier";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_TIER_MEMORY_BYTES", "MemoryBytes"),
        Env::new("ATHENS_TIER_MAX_MEMORY_ZIP_BYTES", "MaxMemoryZipBytes"),
    ];
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.MemoryBytes > 0 && self.MaxMemoryZipBytes > self.MemoryBytes / 4 {
            return Err(err(
                &Self::key("MaxMemoryZipBytes"),
                format!(
                    "{} is more than a quarter of MemoryBytes ({}): one zip would crowd out the rest",
                    self.MaxMemoryZipBytes, self.MemoryBytes
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum File {
    Info,
    Mod,
    Zip,
}

type Cache = moka::sync::Cache<(Coordinates, File), Bytes>;

/// A storage with the tier in front; see the module docs.
pub struct Tier {
    inner: Arc<dyn Storage>,
    cache: Cache,
    max_zip: u64,
    /// Bumped on every forgetting: a read that started before it does not
    /// keep what it read.
    generation: Arc<AtomicU64>,
}

impl Tier {
    /// `inner` with the tier `cfg` describes in front, or `inner` itself
    /// when the tier is off or `inner` cannot announce its deletes. Must be
    /// called within a tokio runtime (it spawns the task that follows
    /// deletions).
    pub fn wrap(inner: Arc<dyn Storage>, cfg: &TierConfig) -> Arc<dyn Storage> {
        if cfg.MemoryBytes == 0 {
            return inner;
        }
        let Some(mut deletes) = inner.watch_deletes() else {
            tracing::warn!("storage does not announce deletes: no gateway-local tier");
            return inner;
        };
        let cache: Cache = moka::sync::Cache::builder()
            .max_capacity(cfg.MemoryBytes)
            .weigher(|(c, _): &(Coordinates, File), v: &Bytes| {
                (v.len() + c.module.as_str().len() + c.version.as_str().len() + 64)
                    .try_into()
                    .unwrap_or(u32::MAX)
            })
            .build();
        let generation = Arc::new(AtomicU64::new(0));
        let (c2, g2) = (cache.clone(), generation.clone());
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match deletes.recv().await {
                    Ok(DeleteEvent::Deleted(c)) => {
                        g2.fetch_add(1, Ordering::SeqCst);
                        for f in [File::Info, File::Mod, File::Zip] {
                            c2.invalidate(&(c.clone(), f));
                        }
                        tracing::debug!(%c, "tier: deleted version forgotten");
                    }
                    Ok(DeleteEvent::Missed) | Err(RecvError::Lagged(_)) => {
                        g2.fetch_add(1, Ordering::SeqCst);
                        c2.invalidate_all();
                        tracing::debug!("tier: deletions may have been missed, all forgotten");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Arc::new(Tier {
            inner,
            cache,
            max_zip: cfg.MaxMemoryZipBytes,
            generation,
        })
    }

    /// Keeps `v` unless a forgetting happened since `gen` was read.
    fn keep(&self, gen: u64, key: (Coordinates, File), v: Bytes) {
        if self.generation.load(Ordering::SeqCst) != gen {
            return;
        }
        self.cache.insert(key.clone(), v);
        // A forgetting between the check and the insert: undo.
        if self.generation.load(Ordering::SeqCst) != gen {
            self.cache.invalidate(&key);
        }
    }

    async fn small(&self, c: &Coordinates, f: File) -> Result<Bytes> {
        let key = (c.clone(), f);
        if let Some(v) = self.cache.get(&key) {
            return Ok(v);
        }
        let gen = self.generation.load(Ordering::SeqCst);
        let v = match f {
            File::Info => self.inner.info(c).await?,
            File::Mod => self.inner.go_mod(c).await?,
            File::Zip => unreachable!("zips are read by Tier::zip"),
        };
        self.keep(gen, key, v.clone());
        Ok(v)
    }
}

fn one_chunk(b: Bytes) -> ByteStream {
    futures::stream::once(async move { Ok(b) }).boxed()
}

#[async_trait]
impl Storage for Tier {
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
        self.small(c, File::Info).await
    }
    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        self.small(c, File::Mod).await
    }
    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        let key = (c.clone(), File::Zip);
        if let Some(v) = self.cache.get(&key) {
            return Ok(ZipReader {
                size: v.len() as u64,
                stream: one_chunk(v),
            });
        }
        let gen = self.generation.load(Ordering::SeqCst);
        let mut z = self.inner.zip(c).await?;
        if z.size > self.max_zip {
            return Ok(z);
        }
        let mut buf = BytesMut::with_capacity(z.size as usize);
        while let Some(chunk) = z.stream.next().await {
            let chunk = chunk?;
            if (buf.len() + chunk.len()) as u64 > z.size {
                return Err(modmesh_proto::Error::internal(format!(
                    "{c}: storage sent more zip bytes than its size {}",
                    z.size
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        if buf.len() as u64 != z.size {
            return Err(modmesh_proto::Error::internal(format!(
                "{c}: storage sent {} zip bytes of {}",
                buf.len(),
                z.size
            )));
        }
        let v = buf.freeze();
        self.keep(gen, key, v.clone());
        Ok(ZipReader {
            size: z.size,
            stream: one_chunk(v),
        })
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
        // Forgotten here as well as on the announcement, which may come late.
        self.generation.fetch_add(1, Ordering::SeqCst);
        for f in [File::Info, File::Mod, File::Zip] {
            self.cache.invalidate(&(c.clone(), f));
        }
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
    async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
        self.inner.presign_zip(c, ttl).await
    }
    fn watch_deletes(&self) -> Option<tokio::sync::broadcast::Receiver<DeleteEvent>> {
        self.inner.watch_deletes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modmesh_proto::ErrorKind;
    use modmesh_storage::backends::MemoryStorage;
    use modmesh_storage::watch::Watched;

    async fn save(s: &dyn Storage, c: &Coordinates, zip: &'static [u8]) {
        let req = SaveRequest::new(c, &b"{}"[..], &b"module x\n"[..]).unwrap();
        s.save(req, one_chunk(Bytes::from_static(zip)))
            .await
            .unwrap();
    }

    async fn read_zip(s: &dyn Storage, c: &Coordinates) -> Result<Vec<u8>> {
        let mut z = s.zip(c).await?;
        let mut out = Vec::new();
        while let Some(b) = z.stream.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    /// Files read once are served by the tier even after they vanish from
    /// the backend unannounced; a big zip is not kept; an announced delete
    /// (in-process, as in the embedded gateway) is forgotten.
    #[tokio::test]
    async fn keeps_small_files_and_forgets_announced_deletes() {
        let raw: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let watched: Arc<dyn Storage> = Arc::new(Watched::new(raw.clone()));
        let cfg = TierConfig {
            MemoryBytes: 1 << 20,
            MaxMemoryZipBytes: 16,
        };
        let tier = Tier::wrap(watched.clone(), &cfg);
        let small = Coordinates::new("example.com/small", "v1.0.0").unwrap();
        let big = Coordinates::new("example.com/big", "v1.0.0").unwrap();
        save(&*watched, &small, b"small").await;
        save(&*watched, &big, b"a zip of more than sixteen bytes").await;
        assert_eq!(tier.info(&small).await.unwrap(), &b"{}"[..]);
        assert_eq!(tier.go_mod(&small).await.unwrap(), &b"module x\n"[..]);
        assert_eq!(read_zip(&*tier, &small).await.unwrap(), b"small");
        assert_eq!(read_zip(&*tier, &big).await.unwrap().len(), 32);

        // Gone from the backend without an announcement: the small files
        // are still served from the tier, the big zip is not.
        raw.delete(&small).await.unwrap();
        raw.delete(&big).await.unwrap();
        assert_eq!(tier.info(&small).await.unwrap(), &b"{}"[..]);
        assert_eq!(read_zip(&*tier, &small).await.unwrap(), b"small");
        let e = read_zip(&*tier, &big).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);

        // Stored again and deleted with an announcement: forgotten.
        save(&*watched, &small, b"small").await;
        watched.delete(&small).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tier.info(&small).await {
                Err(e) if e.kind == ErrorKind::NotFound => break,
                other => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "still served 2 s after the delete: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        assert_eq!(
            read_zip(&*tier, &small).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            tier.go_mod(&small).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn config_refuses_a_zip_bound_crowding_out_the_rest() {
        let cfg = modmesh_common::Config::from_text(
            "[Tier]\nMemoryBytes = 1000\n",
            &[("ATHENS_TIER_MAX_MEMORY_ZIP_BYTES", "500")],
        )
        .unwrap();
        let e = cfg.section::<TierConfig>().unwrap_err();
        assert!(e.to_string().contains("Tier.MaxMemoryZipBytes"), "{e}");
        let ok = modmesh_common::Config::from_text("", &[("ATHENS_TIER_MEMORY_BYTES", "0")])
            .unwrap()
            .section::<TierConfig>()
            .unwrap();
        assert_eq!(ok.MemoryBytes, 0);
    }
}
