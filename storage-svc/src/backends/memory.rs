//! The `memory` backend: every version in a map under a mutex, lost on
//! restart. The zip is kept as the chunks it arrived in (never copied into
//! one buffer) and streamed back as cheap `Bytes` clones.

use crate::{
    decode_page_token, encode_page_token, ByteStream, Capabilities, CatalogPage, CreateOnly,
    SaveRequest, Storage, VersionStat, ZipReader,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use modmesh_proto::coords::compare_versions;
use modmesh_proto::{Coordinates, Error, ModulePath, Result, Version, MAX_CHUNK};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

/// Builds the memory backend (it has no configuration).
pub fn build(_: &modmesh_common::Config) -> Result<Arc<dyn crate::Storage>> {
    Ok(Arc::new(MemoryStorage::new()))
}

/// One stored version.
struct Stored {
    info: Bytes,
    go_mod: Bytes,
    zip: Arc<[Bytes]>,
    zip_size: u64,
    zip_hash: Option<String>,
    stored_at_unix_ms: i64,
}

type Modules = BTreeMap<ModulePath, BTreeMap<Version, Arc<Stored>>>;

/// The tag of this backend's catalog page tokens.
const TOKEN_TAG: &str = "memory";

/// A [`Storage`] held in this process's memory.
#[derive(Default)]
pub struct MemoryStorage {
    modules: Mutex<Modules>,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage").finish_non_exhaustive()
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Modules> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is one insert or remove), so a poisoned lock is fine.
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, c: &Coordinates) -> Result<Arc<Stored>> {
        self.lock()
            .get(&c.module)
            .and_then(|versions| versions.get(&c.version))
            .cloned()
            .ok_or_else(|| not_found(c))
    }
}

fn not_found(c: &Coordinates) -> Error {
    Error::not_found(format!("{c} not found"))
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl Storage for MemoryStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_only: CreateOnly::Native,
            ..Capabilities::minimal()
        }
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let mut versions: Vec<String> = self
            .lock()
            .get(module)
            .map(|v| v.keys().map(|v| v.as_str().to_string()).collect())
            .unwrap_or_default();
        versions.sort_by(|a, b| compare_versions(a, b));
        Ok(versions)
    }

    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        Ok(self.get(c)?.info.clone())
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        Ok(self.get(c)?.go_mod.clone())
    }

    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        let stored = self.get(c)?;
        let chunks = stored.zip.clone();
        let stream = futures::stream::iter((0..chunks.len()).map(move |i| Ok(chunks[i].clone())));
        Ok(ZipReader {
            size: stored.zip_size,
            stream: stream.boxed(),
        })
    }

    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        Ok(self.get(c).is_ok())
    }

    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        let s = self.get(c)?;
        Ok(VersionStat {
            coordinates: c.clone(),
            info_size: s.info.len() as u64,
            mod_size: s.go_mod.len() as u64,
            zip_size: s.zip_size,
            stored_at_unix_ms: s.stored_at_unix_ms,
            zip_hash: s.zip_hash.clone(),
            mod_hash: crate::mod_hash(&s.go_mod),
        })
    }

    async fn save(&self, req: SaveRequest, mut zip: ByteStream) -> Result<()> {
        let c = req.coordinates();
        if self.get(&c).is_ok() {
            return Err(Error::already_exists(format!("{c} already exists")));
        }
        let mut chunks = Vec::new();
        let mut zip_size = 0u64;
        while let Some(item) = zip.next().await {
            let mut chunk = item?;
            zip_size += chunk.len() as u64;
            while chunk.len() > MAX_CHUNK {
                chunks.push(chunk.split_to(MAX_CHUNK));
            }
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
        }
        crate::hashing::check_size(&req, zip_size)?;
        let chunks: Arc<[Bytes]> = chunks.into();
        let hashed = chunks.clone();
        let computed =
            tokio::task::spawn_blocking(move || crate::zip_hash_reader(ChunkReader::new(hashed)))
                .await
                .map_err(|e| Error::internal(format!("hashing task failed: {e}")))?;
        let zip_hash = crate::hashing::settle(&req, computed)?;
        let stored = Arc::new(Stored {
            info: req.info,
            go_mod: req.go_mod,
            zip: chunks,
            zip_size,
            zip_hash,
            stored_at_unix_ms: now_unix_ms(),
        });
        let mut modules = self.lock();
        let versions = modules.entry(c.module.clone()).or_default();
        if versions.contains_key(&c.version) {
            return Err(Error::already_exists(format!("{c} already exists")));
        }
        versions.insert(c.version, stored);
        Ok(())
    }

    async fn delete(&self, c: &Coordinates) -> Result<()> {
        let mut modules = self.lock();
        let versions = modules.get_mut(&c.module).ok_or_else(|| not_found(c))?;
        versions.remove(&c.version).ok_or_else(|| not_found(c))?;
        if versions.is_empty() {
            modules.remove(&c.module);
        }
        Ok(())
    }

    /// Ranges over the map from the token's (module, version): pages in
    /// (module path, version string) order.
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        let after =
            match page_token.filter(|t| !t.is_empty()) {
                Some(t) => {
                    let key = decode_page_token(TOKEN_TAG, t)?;
                    let (m, v) = key.split_once('@').ok_or_else(|| {
                        Error::invalid(format!("malformed catalog page token {t:?}"))
                    })?;
                    Some(Coordinates::new(m, v).map_err(|_| {
                        Error::invalid(format!("malformed catalog page token {t:?}"))
                    })?)
                }
                None => None,
            };
        let size = crate::page_size(page_size);
        let modules = self.lock();
        let start: &str = match &after {
            Some(a) if a.module.as_str() >= module_prefix => a.module.as_str(),
            _ => module_prefix,
        };
        let mut entries = Vec::new();
        let mut more = false;
        let range = modules.range::<str, _>((Bound::Included(start), Bound::Unbounded));
        'modules: for (m, versions) in range {
            if !m.as_str().starts_with(module_prefix) {
                break;
            }
            let from = match &after {
                Some(a) if &a.module == m => Bound::Excluded(a.version.clone()),
                _ => Bound::Unbounded,
            };
            for v in versions.range((from, Bound::Unbounded)).map(|(v, _)| v) {
                if entries.len() == size {
                    more = true;
                    break 'modules;
                }
                entries.push(Coordinates {
                    module: m.clone(),
                    version: v.clone(),
                });
            }
        }
        let next_page_token = if more {
            entries
                .last()
                .map(|c: &Coordinates| encode_page_token(TOKEN_TAG, &c.key()))
        } else {
            None
        };
        Ok(CatalogPage {
            entries,
            next_page_token,
        })
    }
}

/// `Read + Seek` over stored chunks, for hashing a zip without joining it.
struct ChunkReader {
    chunks: Arc<[Bytes]>,
    /// Start offset of each chunk.
    starts: Vec<u64>,
    len: u64,
    pos: u64,
}

impl ChunkReader {
    fn new(chunks: Arc<[Bytes]>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut len = 0u64;
        for c in chunks.iter() {
            starts.push(len);
            len += c.len() as u64;
        }
        ChunkReader {
            chunks,
            starts,
            len,
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        // The chunk holding `pos`: the last one starting at or before it.
        let i = self.starts.partition_point(|&s| s <= self.pos) - 1;
        let chunk = &self.chunks[i];
        let off = (self.pos - self.starts[i]) as usize;
        let n = buf.len().min(chunk.len() - off);
        buf[..n].copy_from_slice(&chunk[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ChunkReader {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_reader_reads_and_seeks_across_chunks() {
        let chunks: Arc<[Bytes]> = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"d"),
            Bytes::from_static(b"efgh"),
        ]
        .into();
        let mut r = ChunkReader::new(chunks);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdefgh");
        r.seek(SeekFrom::End(-5)).unwrap();
        let mut buf = [0u8; 3];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"def");
        r.seek(SeekFrom::Current(-1)).unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "fgh");
        assert!(r.seek(SeekFrom::Current(-100)).is_err());
    }
}
