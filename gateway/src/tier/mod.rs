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
//! An optional disk level (`[Tier] DiskPath`, [`disk`]) keeps zips of at
//! least `MinDiskZipBytes` in local files, at most `DiskBytes` of them: a
//! zip missing from memory (too big for it, or evicted) is streamed from
//! its file; one missing from both streams from storage while it is written
//! to a file. A small zip found on disk moves back into memory.
//!
//! A delete is the one change: the tier forgets a version when storage
//! announces its deletion ([`Storage::watch_deletes`]: in-process in the
//! embedded gateway, storage-svc's `WatchDeletes` stream in the mesh), and
//! forgets everything when deletions may have been missed (a new or broken
//! subscription), on both levels. A storage that cannot announce deletes
//! gets no tier.

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
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod disk;
use disk::DiskLevel;

/// `[Tier]`: the gateway-local tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct TierConfig {
    /// Bytes of files kept in memory; 0 turns the tier off.
    pub MemoryBytes: u64,
    /// The largest zip kept in memory; larger zips stream from storage
    /// (or the disk level).
    pub MaxMemoryZipBytes: u64,
    /// The folder of the disk level for zips; empty (the default): no
    /// disk level.
    pub DiskPath: String,
    /// Bytes of zips kept in `DiskPath` (by this gateway process).
    pub DiskBytes: u64,
    /// The smallest zip kept on disk (smaller ones: memory only).
    pub MinDiskZipBytes: u64,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            MemoryBytes: 64 << 20,
            MaxMemoryZipBytes: 4 << 20,
            DiskPath: String::new(),
            DiskBytes: 1 << 30,
            MinDiskZipBytes: 0,
        }
    }
}

impl Section for TierConfig {
    const PATH: &'static str = "Tier";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_TIER_MEMORY_BYTES", "MemoryBytes"),
        Env::new("ATHENS_TIER_MAX_MEMORY_ZIP_BYTES", "MaxMemoryZipBytes"),
        Env::new("ATHENS_TIER_DISK_PATH", "DiskPath"),
        Env::new("ATHENS_TIER_DISK_BYTES", "DiskBytes"),
        Env::new("ATHENS_TIER_MIN_DISK_ZIP_BYTES", "MinDiskZipBytes"),
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
        if !self.DiskPath.is_empty() && self.DiskBytes == 0 {
            return Err(err(
                &Self::key("DiskBytes"),
                "is 0 while DiskPath is set: leave DiskPath empty to turn the disk level off",
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
    /// The memory level; `None` when `MemoryBytes` is 0.
    cache: Option<Cache>,
    max_zip: u64,
    /// The disk level; `None` when `DiskPath` is empty.
    disk: Option<Arc<DiskLevel>>,
    /// Bumped on every forgetting: a read that started before it does not
    /// keep what it read.
    generation: Arc<AtomicU64>,
}

/// Counts a read answered by `level` (`memory`, `disk` or `storage`).
fn count(file: &'static str, level: &'static str) {
    metrics::counter!("modmesh_tier_reads_total", "file" => file, "level" => level).increment(1);
}

impl Tier {
    /// `inner` with the tier `cfg` describes in front, or `inner` itself
    /// when the tier is off (`MemoryBytes` 0 and no `DiskPath`) or `inner`
    /// cannot announce its deletes. Must be called within a tokio runtime
    /// (it spawns the task that follows deletions). A `DiskPath` that
    /// cannot be created or written is an `Invalid` error naming the key.
    pub fn wrap(inner: Arc<dyn Storage>, cfg: &TierConfig) -> Result<Arc<dyn Storage>> {
        Ok(match Self::build(inner.clone(), cfg)? {
            Some(t) => Arc::new(t),
            None => inner,
        })
    }

    /// The tier of [`Tier::wrap`], or `None` where it gives `inner`.
    fn build(inner: Arc<dyn Storage>, cfg: &TierConfig) -> Result<Option<Tier>> {
        if cfg.MemoryBytes == 0 && cfg.DiskPath.is_empty() {
            return Ok(None);
        }
        let Some(mut deletes) = inner.watch_deletes() else {
            tracing::warn!("storage does not announce deletes: no gateway-local tier");
            return Ok(None);
        };
        let cache: Option<Cache> = (cfg.MemoryBytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.MemoryBytes)
                .weigher(|(c, _): &(Coordinates, File), v: &Bytes| {
                    (v.len() + c.module.as_str().len() + c.version.as_str().len() + 64)
                        .try_into()
                        .unwrap_or(u32::MAX)
                })
                .build()
        });
        let generation = Arc::new(AtomicU64::new(0));
        let disk = if cfg.DiskPath.is_empty() {
            None
        } else {
            Some(Arc::new(DiskLevel::open(
                Path::new(&cfg.DiskPath),
                cfg.DiskBytes,
                cfg.MinDiskZipBytes,
                generation.clone(),
            )?))
        };
        let (c2, d2, g2) = (cache.clone(), disk.clone(), generation.clone());
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match deletes.recv().await {
                    Ok(DeleteEvent::Deleted(c)) => {
                        g2.fetch_add(1, Ordering::SeqCst);
                        forget(c2.as_ref(), d2.as_deref(), &c);
                        tracing::debug!(%c, "tier: deleted version forgotten");
                    }
                    Ok(DeleteEvent::Missed) | Err(RecvError::Lagged(_)) => {
                        g2.fetch_add(1, Ordering::SeqCst);
                        if let Some(c) = &c2 {
                            c.invalidate_all();
                        }
                        if let Some(d) = d2.clone() {
                            let _ = tokio::task::spawn_blocking(move || d.forget_all()).await;
                        }
                        tracing::debug!("tier: deletions may have been missed, all forgotten");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Some(Tier {
            inner,
            cache,
            max_zip: if cfg.MemoryBytes > 0 {
                cfg.MaxMemoryZipBytes
            } else {
                0
            },
            disk,
            generation,
        }))
    }

    /// Keeps `v` in memory unless a forgetting happened since `gen` was
    /// read.
    fn keep(&self, gen: u64, key: (Coordinates, File), v: Bytes) {
        let Some(cache) = &self.cache else { return };
        if self.generation.load(Ordering::SeqCst) != gen {
            return;
        }
        cache.insert(key.clone(), v);
        // A forgetting between the check and the insert: undo.
        if self.generation.load(Ordering::SeqCst) != gen {
            cache.invalidate(&key);
        }
    }

    async fn small(&self, c: &Coordinates, f: File) -> Result<Bytes> {
        let name = if f == File::Info { "info" } else { "mod" };
        let Some(cache) = &self.cache else {
            return match f {
                File::Info => self.inner.info(c).await,
                _ => self.inner.go_mod(c).await,
            };
        };
        let key = (c.clone(), f);
        if let Some(v) = cache.get(&key) {
            count(name, "memory");
            return Ok(v);
        }
        count(name, "storage");
        let gen = self.generation.load(Ordering::SeqCst);
        let v = match f {
            File::Info => self.inner.info(c).await?,
            File::Mod => self.inner.go_mod(c).await?,
            File::Zip => unreachable!("zips are read by Tier::zip"),
        };
        self.keep(gen, key, v.clone());
        Ok(v)
    }

    /// Sets the gauge of the bytes each level holds.
    fn gauges(&self) {
        if let Some(m) = &self.cache {
            metrics::gauge!("modmesh_tier_bytes", "level" => "memory")
                .set(m.weighted_size() as f64);
        }
        if let Some(d) = &self.disk {
            metrics::gauge!("modmesh_tier_bytes", "level" => "disk").set(d.bytes() as f64);
        }
    }

    /// The zip of `c` from the disk level, if kept there (a small one is
    /// moved into memory).
    async fn zip_from_disk(&self, c: &Coordinates, gen: u64) -> Option<ZipReader> {
        let disk = self.disk.as_ref()?;
        let (f, size) = disk.open_zip(c).await?;
        count("zip", "disk");
        if size > self.max_zip {
            return Some(DiskLevel::stream_file(c, f, size));
        }
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = Vec::with_capacity(size as usize);
            f.take(size + 1).read_to_end(&mut buf).map(|_| buf)
        })
        .await;
        match read {
            Ok(Ok(buf)) if buf.len() as u64 == size => {
                let v = Bytes::from(buf);
                self.keep(gen, (c.clone(), File::Zip), v.clone());
                Some(ZipReader {
                    size,
                    stream: one_chunk(v),
                })
            }
            _ => {
                disk.forget(c);
                None
            }
        }
    }
}

/// Forgets the three files of `c` on both levels.
fn forget(cache: Option<&Cache>, disk: Option<&DiskLevel>, c: &Coordinates) {
    if let Some(cache) = cache {
        for f in [File::Info, File::Mod, File::Zip] {
            cache.invalidate(&(c.clone(), f));
        }
    }
    if let Some(d) = disk {
        d.forget(c);
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
        if let Some(v) = self.cache.as_ref().and_then(|m| m.get(&key)) {
            count("zip", "memory");
            return Ok(ZipReader {
                size: v.len() as u64,
                stream: one_chunk(v),
            });
        }
        let gen = self.generation.load(Ordering::SeqCst);
        if let Some(z) = self.zip_from_disk(c, gen).await {
            return Ok(z);
        }
        count("zip", "storage");
        self.gauges();
        let mut z = self.inner.zip(c).await?;
        if z.size > self.max_zip {
            return Ok(match &self.disk {
                Some(d) if d.wants(z.size) => d.tee(c, gen, z),
                _ => z,
            });
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
        if let Some(d) = &self.disk {
            if d.wants(z.size) {
                d.put(c, v.clone(), gen);
            }
        }
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
        forget(self.cache.as_ref(), self.disk.as_deref(), c);
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
            ..TierConfig::default()
        };
        let tier = Tier::wrap(watched.clone(), &cfg).unwrap();
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

    /// A storage that counts zip reads and can break zip streams midway.
    #[derive(Default)]
    struct Counting {
        inner: Option<Arc<dyn Storage>>,
        zips: std::sync::atomic::AtomicUsize,
        broken: std::sync::atomic::AtomicBool,
    }

    impl Counting {
        fn over(inner: Arc<dyn Storage>) -> Arc<Counting> {
            Arc::new(Counting {
                inner: Some(inner),
                ..Counting::default()
            })
        }
        fn inner(&self) -> &dyn Storage {
            &**self.inner.as_ref().unwrap()
        }
        fn zips(&self) -> usize {
            self.zips.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Storage for Counting {
        fn capabilities(&self) -> Capabilities {
            self.inner().capabilities()
        }
        async fn health(&self) -> Result<()> {
            self.inner().health().await
        }
        async fn list(&self, m: &ModulePath) -> Result<Vec<String>> {
            self.inner().list(m).await
        }
        async fn info(&self, c: &Coordinates) -> Result<Bytes> {
            self.inner().info(c).await
        }
        async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
            self.inner().go_mod(c).await
        }
        async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
            self.zips.fetch_add(1, Ordering::SeqCst);
            let z = self.inner().zip(c).await?;
            let mut all = BytesMut::new();
            let mut s = z.stream;
            while let Some(b) = s.next().await {
                all.extend_from_slice(&b?);
            }
            let all = all.freeze();
            // In 64 KiB chunks; broken: half the bytes, then an error.
            let items: Vec<Result<Bytes>> = if self.broken.load(Ordering::SeqCst) {
                vec![
                    Ok(all.slice(..all.len() / 2)),
                    Err(modmesh_proto::Error::unavailable("storage went away")),
                ]
            } else {
                (0..all.len())
                    .step_by(64 << 10)
                    .map(|i| Ok(all.slice(i..all.len().min(i + (64 << 10)))))
                    .collect()
            };
            Ok(ZipReader {
                size: z.size,
                stream: futures::stream::iter(items).boxed(),
            })
        }
        async fn exists(&self, c: &Coordinates) -> Result<bool> {
            self.inner().exists(c).await
        }
        async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
            self.inner().stat(c).await
        }
        async fn save(&self, req: SaveRequest, zip: ByteStream) -> Result<()> {
            self.inner().save(req, zip).await
        }
        async fn delete(&self, c: &Coordinates) -> Result<()> {
            self.inner().delete(c).await
        }
        async fn catalog(&self, t: Option<&str>, n: usize, p: &str) -> Result<CatalogPage> {
            self.inner().catalog(t, n, p).await
        }
        async fn presign_zip(&self, c: &Coordinates, ttl: Duration) -> Result<Option<String>> {
            self.inner().presign_zip(c, ttl).await
        }
        fn watch_deletes(&self) -> Option<tokio::sync::broadcast::Receiver<DeleteEvent>> {
            self.inner().watch_deletes()
        }
    }

    /// A zip of `n` bytes, different for each `seed`.
    fn zip_of(n: usize, seed: u8) -> Bytes {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    async fn save_bytes(s: &dyn Storage, c: &Coordinates, zip: Bytes) {
        let req = SaveRequest::new(c, &b"{}"[..], &b"module x\n"[..]).unwrap();
        s.save(req, one_chunk(zip)).await.unwrap();
    }

    /// Waits until the disk level runs no fill.
    async fn settle(t: &Tier) {
        let d = t.disk.as_ref().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !d.idle() {
            assert!(std::time::Instant::now() < deadline, "a fill still runs");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// (number, total bytes) of the files in the level's folder.
    fn folder(t: &Tier) -> (usize, u64) {
        let d = t.disk.as_ref().unwrap();
        let mut n = (0, 0);
        for e in std::fs::read_dir(d.dir()).unwrap() {
            n.0 += 1;
            n.1 += e.unwrap().metadata().unwrap().len();
        }
        n
    }

    /// A tier with a disk level in `dir` over a counting, announcing
    /// memory storage.
    fn disk_tier(dir: &Path, memory: u64, disk: u64) -> (Tier, Arc<Counting>, Arc<dyn Storage>) {
        let watched: Arc<dyn Storage> = Arc::new(Watched::new(Arc::new(MemoryStorage::new())));
        let counting = Counting::over(watched.clone());
        let cfg = TierConfig {
            MemoryBytes: memory,
            MaxMemoryZipBytes: memory / 4,
            DiskPath: dir.to_str().unwrap().into(),
            DiskBytes: disk,
            MinDiskZipBytes: 0,
        };
        let tier = Tier::build(counting.clone(), &cfg).unwrap().unwrap();
        (tier, counting, watched)
    }

    /// Warm zips come from disk with no storage read: a big one (never in
    /// memory) and a small one after the memory level dropped it; the
    /// folder stays within `DiskBytes` as zips come and go (least recently
    /// used first).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_level_serves_warm_zips_and_stays_within_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (tier, counting, watched) = disk_tier(tmp.path(), 64 << 10, 100_000);
        let big = Coordinates::new("example.com/big", "v1.0.0").unwrap();
        let small = Coordinates::new("example.com/small", "v1.0.0").unwrap();
        let (big_zip, small_zip) = (zip_of(40_000, 1), zip_of(5_000, 2));
        save_bytes(&*watched, &big, big_zip.clone()).await;
        save_bytes(&*watched, &small, small_zip.clone()).await;

        // (One fill at a time: each is let finish.)
        assert_eq!(read_zip(&tier, &big).await.unwrap(), big_zip);
        settle(&tier).await;
        assert_eq!(read_zip(&tier, &small).await.unwrap(), small_zip);
        settle(&tier).await;
        assert_eq!(counting.zips(), 2);
        assert_eq!(folder(&tier), (2, 45_000));

        // The memory level drops the small zip (as an eviction would).
        tier.cache.as_ref().unwrap().invalidate_all();
        for _ in 0..3 {
            assert_eq!(read_zip(&tier, &big).await.unwrap(), big_zip);
            assert_eq!(read_zip(&tier, &small).await.unwrap(), small_zip);
        }
        assert_eq!(counting.zips(), 2, "warm zips were read from storage");
        // The small one is back in memory.
        assert!(tier
            .cache
            .as_ref()
            .unwrap()
            .contains_key(&(small.clone(), File::Zip)));

        // Six more 40 kB zips through a 100 kB level: never more than
        // 100 kB kept, one zip in flight at most.
        for i in 0..6u8 {
            let c = Coordinates::new(&format!("example.com/m{i}"), "v1.0.0").unwrap();
            let z = zip_of(40_000, 10 + i);
            save_bytes(&*watched, &c, z.clone()).await;
            let mut r = tier.zip(&c).await.unwrap();
            let mut got = BytesMut::new();
            while let Some(b) = r.stream.next().await {
                got.extend_from_slice(&b.unwrap());
                assert!(folder(&tier).1 <= 100_000 + 40_000, "{:?}", folder(&tier));
            }
            assert_eq!(got.freeze(), z);
            settle(&tier).await;
            let (n, bytes) = folder(&tier);
            assert!(bytes <= 100_000, "{n} files of {bytes} bytes kept");
        }
        // The latest two are on disk, the first ones are gone.
        let zips = counting.zips();
        let last = Coordinates::new("example.com/m5", "v1.0.0").unwrap();
        read_zip(&tier, &last).await.unwrap();
        assert_eq!(counting.zips(), zips, "the latest zip was not on disk");
        read_zip(&tier, &big).await.unwrap();
        assert_eq!(counting.zips(), zips + 1, "the oldest zip was not evicted");
    }

    /// A fill whose stream breaks (storage fails midway) or is dropped
    /// (the client went away) leaves no file and no entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_incomplete_fill_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (tier, counting, watched) = disk_tier(tmp.path(), 0, 1 << 20);
        let c = Coordinates::new("example.com/big", "v1.0.0").unwrap();
        let z = zip_of(300_000, 3);
        save_bytes(&*watched, &c, z.clone()).await;

        counting.broken.store(true, Ordering::SeqCst);
        let e = read_zip(&tier, &c).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        settle(&tier).await;
        assert_eq!(folder(&tier), (0, 0), "a broken fill left a file");

        counting.broken.store(false, Ordering::SeqCst);
        let mut r = tier.zip(&c).await.unwrap();
        let first = r.stream.next().await.unwrap().unwrap();
        assert!((first.len() as u64) < r.size);
        drop(r);
        settle(&tier).await;
        assert_eq!(folder(&tier), (0, 0), "a dropped fill left a file");

        // Nothing was kept: the next read goes to storage, and fills, even
        // when its reader stops at the announced length (as an HTTP body
        // with a Content-Length does) without asking for the end.
        let before = counting.zips();
        let mut r = tier.zip(&c).await.unwrap();
        let mut got = BytesMut::new();
        while (got.len() as u64) < r.size {
            got.extend_from_slice(&r.stream.next().await.unwrap().unwrap());
        }
        assert_eq!(got.freeze(), z);
        assert_eq!(counting.zips(), before + 1);
        settle(&tier).await;
        drop(r);
        assert_eq!(folder(&tier), (1, 300_000));
    }

    /// A delete through the tier and an announced delete (made beside it)
    /// both remove the disk file; the version is then not served from disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deletes_remove_disk_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (tier, counting, watched) = disk_tier(tmp.path(), 0, 1 << 20);
        let a = Coordinates::new("example.com/a", "v1.0.0").unwrap();
        let b = Coordinates::new("example.com/b", "v1.0.0").unwrap();
        for (c, seed) in [(&a, 4), (&b, 5)] {
            save_bytes(&*watched, c, zip_of(20_000, seed)).await;
            read_zip(&tier, c).await.unwrap();
            settle(&tier).await;
        }
        assert_eq!(folder(&tier), (2, 40_000));

        tier.delete(&a).await.unwrap();
        assert_eq!(folder(&tier), (1, 20_000));
        assert_eq!(
            read_zip(&tier, &a).await.unwrap_err().kind,
            ErrorKind::NotFound
        );

        // Deleted beside the tier, announced: within 2 s the file is gone
        // and the zip is not served.
        watched.delete(&b).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while folder(&tier).0 > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "file kept 2 s after the delete"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = counting.zips();
        assert_eq!(
            read_zip(&tier, &b).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(counting.zips(), before + 1);

        // Deletions missed (what the tier does on `Missed`): every file goes.
        for i in 0..3u8 {
            let c = Coordinates::new(&format!("example.com/c{i}"), "v1.0.0").unwrap();
            save_bytes(&*watched, &c, zip_of(10_000, 20 + i)).await;
            read_zip(&tier, &c).await.unwrap();
            settle(&tier).await;
        }
        assert_eq!(folder(&tier), (3, 30_000));
        tier.disk.as_ref().unwrap().forget_all();
        assert_eq!(folder(&tier), (0, 0));
    }

    /// At start the level removes the folders of dead owners (and any
    /// `tier-` name holding no live owner's tag), keeps a live owner's and
    /// anything else; a folder that cannot be made is refused, naming
    /// `Tier.DiskPath`.
    #[tokio::test]
    async fn start_sweeps_dead_folders_and_refuses_a_bad_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let tag = modmesh_common::owner::tag();
        let boot = &tag[1..tag.find('p').unwrap()];
        let dead = root.join(format!("tier-b{boot}p{pid}s1-0"));
        let live = root.join(format!("tier-{tag}-999"));
        for d in [&dead, &live, &root.join("tier-junk"), &root.join("mine")] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("x.zip"), b"x").unwrap();
        }
        std::fs::write(dead.join("tmp-0"), b"partial").unwrap();
        let (tier, _, _) = disk_tier(root, 0, 1 << 20);
        let mut left: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let own = tier.disk.as_ref().unwrap().dir().file_name().unwrap();
        let mut want = vec![
            "mine".to_string(),
            own.to_str().unwrap().to_string(),
            format!("tier-{tag}-999"),
        ];
        want.sort();
        assert_eq!(left, want);

        let file = root.join("a-file");
        std::fs::write(&file, b"").unwrap();
        let cfg = TierConfig {
            DiskPath: file.join("sub").to_str().unwrap().into(),
            ..TierConfig::default()
        };
        let storage: Arc<dyn Storage> = Arc::new(Watched::new(Arc::new(MemoryStorage::new())));
        let e = Tier::wrap(storage, &cfg).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.to_string().contains("Tier.DiskPath"), "{e}");

        let e = modmesh_common::Config::from_text(
            "[Tier]\nDiskPath = \"/tmp/x\"\n",
            &[("ATHENS_TIER_DISK_BYTES", "0")],
        )
        .unwrap()
        .section::<TierConfig>()
        .unwrap_err();
        assert!(e.to_string().contains("Tier.DiskBytes"), "{e}");
    }
}
