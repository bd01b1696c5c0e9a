//! The `disk` backend, in Athens' disk layout so an existing Athens disk
//! store is served as it is:
//!
//! ```text
//! <root>/<module path, decoded, case-sensitive, one directory per element>/<version>/
//!     go.mod
//!     source.zip
//!     <version>.info
//! ```
//!
//! A version is visible iff its directory holds all three files. Unlike
//! Athens (which writes the three files in place, one after the other), a
//! save writes them into a fresh directory under `<root>/.modmesh-tmp/`,
//! fsyncs them and renames that directory onto `<root>/<module>/<version>` in
//! one step, so a version appears whole or not at all, and a rename onto an
//! existing version fails, which makes saves create-only. A crash mid-save
//! leaves only a temporary directory that nothing reads. Temporary names
//! start with their owner's tag ([`modmesh_common::owner`]): those of a dead
//! owner are removed when the store opens and by a sweep every
//! [`SWEEP_EVERY`] while it runs (by any process sharing the root); those
//! of an unknown owner once older than [`STALE_AFTER`].
//!
//! Every path is built from the validated [`ModulePath`] elements and
//! [`Version`](modmesh_proto::Version) and checked to stay under the root.

use crate::{
    decode_page_token, encode_page_token, ByteStream, Capabilities, CatalogPage, CreateOnly,
    SaveRequest, Storage, VersionStat, ZipReader,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use modmesh_proto::coords::compare_versions;
use modmesh_proto::{is_canonical_version, Coordinates, Error, ModulePath, Result};

/// Zip reads go in pieces of this size (one message on the wire each): a
/// 1 MiB zip is one read. Memory stays bounded by a few pieces per download.
const READ_CHUNK: usize = modmesh_proto::MAX_CHUNK;
use std::collections::HashMap;
use std::io::ErrorKind as IoKind;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

/// The directory under the root that holds saves in progress.
pub const TMP_DIR: &str = ".modmesh-tmp";
/// Temporary directories older than this are removed when the store opens.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
/// The go.mod file of a version directory.
pub const MOD_FILE: &str = "go.mod";
/// The zip file of a version directory.
pub const ZIP_FILE: &str = "source.zip";
/// The tag of this backend's catalog page tokens.
const TOKEN_TAG: &str = "disk";
/// Hashes remembered by `stat` before the cache starts over.
const HASH_CACHE_MAX: usize = 4096;

/// The `[Storage.Disk]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
#[non_exhaustive]
pub struct DiskConfig {
    /// `ATHENS_DISK_STORAGE_ROOT`: the store's root directory, which must
    /// exist where the disk backend runs.
    pub RootPath: String,
}

impl modmesh_common::config::Section for DiskConfig {
    const PATH: &'static str = "Storage.Disk";
    const ENV: &'static [modmesh_common::config::Env] = &[modmesh_common::config::Env::new(
        "ATHENS_DISK_STORAGE_ROOT",
        "RootPath",
    )];
    fn validate(&self) -> std::result::Result<(), modmesh_common::config::ConfigError> {
        if self.RootPath.trim().is_empty() {
            return Err(modmesh_common::config::err(
                &Self::key("RootPath"),
                "required when StorageType is disk",
            ));
        }
        Ok(())
    }
}

/// Builds the disk backend from `[Storage.Disk]`.
pub fn build(cfg: &modmesh_common::Config) -> Result<std::sync::Arc<dyn Storage>> {
    let c: DiskConfig = cfg.section().map_err(super::config_error)?;
    Ok(std::sync::Arc::new(DiskStorage::new(c.RootPath.trim())?))
}

/// The `.info` file name of `version`.
pub fn info_file(version: &str) -> String {
    format!("{version}.info")
}

/// A [`Storage`] in a directory tree, Athens' disk layout.
pub struct DiskStorage {
    root: PathBuf,
    tmp: PathBuf,
    /// Serializes the publishing step (rename, leftover recovery, delete)
    /// within this process.
    commit: tokio::sync::Mutex<()>,
    /// `stat`'s zip hashes by version directory, valid while the files'
    /// identity (sizes and times) is unchanged.
    hashes: Mutex<HashMap<PathBuf, (FileId, Option<String>)>>,
    /// Held while the store lives; its temporary sweeper stops after.
    _alive: Arc<()>,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage")
            .field("root", &self.root)
            .finish()
    }
}

/// What identifies a stored zip for the hash cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    info_mtime: SystemTime,
    zip_mtime: SystemTime,
    zip_len: u64,
}

impl DiskStorage {
    /// Opens the store rooted at `root`, which must be an existing directory.
    /// Creates `<root>/.modmesh-tmp` and removes temporary directories older
    /// than [`STALE_AFTER`] (left by crashed saves). Blocking; call it at
    /// startup.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let given = root.as_ref();
        match std::fs::metadata(given) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "disk storage root {} is not a directory",
                    given.display()
                )))
            }
            Err(e) => {
                return Err(Error::invalid(format!(
                    "disk storage root {}: {e}",
                    given.display()
                )))
            }
        }
        let root = std::fs::canonicalize(given)?;
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp)?;
        sweep(&tmp);
        let alive = Arc::new(());
        start_sweeper(tmp.clone(), Arc::downgrade(&alive));
        Ok(DiskStorage {
            root,
            tmp,
            commit: tokio::sync::Mutex::new(()),
            hashes: Mutex::new(HashMap::new()),
            _alive: alive,
        })
    }

    /// The (absolute) root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn module_dir(&self, module: &ModulePath) -> Result<PathBuf> {
        join_under(&self.root, module.elements())
    }

    fn version_dir(&self, c: &Coordinates) -> Result<PathBuf> {
        join_under(
            &self.root,
            c.module
                .elements()
                .chain(std::iter::once(c.version.as_str())),
        )
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        self.tmp.join(format!(
            "{}-{}{what}",
            modmesh_common::owner::tag(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    async fn visible(&self, vdir: &Path, version: &str) -> Result<bool> {
        let (vdir, version) = (vdir.to_path_buf(), version.to_string());
        blocking(move || Ok(visible_sync(&vdir, &version)?)).await
    }

    /// The version directory of `c`, or `NotFound` if `c` is not visible.
    async fn visible_dir(&self, c: &Coordinates) -> Result<PathBuf> {
        let vdir = self.version_dir(c)?;
        if self.visible(&vdir, c.version.as_str()).await? {
            Ok(vdir)
        } else {
            Err(not_found(c))
        }
    }

    async fn read_file(&self, c: &Coordinates, name: &str) -> Result<Bytes> {
        let vdir = self.visible_dir(c).await?;
        tokio::fs::read(vdir.join(name))
            .await
            .map(Bytes::from)
            .map_err(|e| io_error(c, e))
    }

    /// Renames the finished temporary directory onto `vdir`: create-only,
    /// with one recovery from a half-written (not visible) directory.
    async fn publish(&self, c: &Coordinates, tmp: &Path, vdir: &Path) -> Result<()> {
        let _commit = self.commit.lock().await;
        let parent = vdir.parent().expect("a version dir has a parent");
        tokio::fs::create_dir_all(parent).await?;
        let err = match tokio::fs::rename(tmp, vdir).await {
            Ok(()) => return sync_dir(parent).await,
            Err(e) if occupied(&e) => e,
            Err(e) => return Err(e.into()),
        };
        let version = c.version.as_str();
        if self.visible(vdir, version).await? {
            return Err(already_exists(c));
        }
        // A directory that is there but not visible: what a crashed or
        // interrupted Athens save leaves. Move it aside (unless it holds
        // directories, i.e. another module nested under this path) and retry
        // once.
        let (d, v) = (vdir.to_path_buf(), version.to_string());
        let only_files = blocking(move || Ok(holds_only_files(&d, &v)?)).await?;
        if !only_files {
            return Err(Error::internal(format!(
                "cannot save {c}: {} is occupied and holds directories ({err})",
                vdir.display()
            )));
        }
        let aside = self.tmp_path("-leftover");
        match tokio::fs::rename(vdir, &aside).await {
            Ok(()) => {
                if self.visible(&aside, version).await? {
                    // Another process published it meanwhile: put it back.
                    let _ = tokio::fs::rename(&aside, vdir).await;
                    return Err(already_exists(c));
                }
                tracing::warn!(version = %c, "moved aside a half-written version directory");
                if let Err(e) = tokio::fs::remove_dir_all(&aside).await {
                    tracing::warn!(dir = %aside.display(), error = %e, "removing a leftover");
                }
            }
            Err(e) if e.kind() == IoKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        match tokio::fs::rename(tmp, vdir).await {
            Ok(()) => sync_dir(parent).await,
            Err(e) if occupied(&e) => Err(already_exists(c)),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the three files into `dir`, checks the zip's size and hash
    /// against `req`, and returns the hash.
    async fn write_temp(
        &self,
        req: &SaveRequest,
        zip: &mut ByteStream,
        dir: &Path,
    ) -> Result<Option<String>> {
        tokio::fs::create_dir_all(dir).await?;
        write_synced(dir.join(MOD_FILE), req.go_mod.clone()).await?;
        write_synced(dir.join(info_file(req.version.as_str())), req.info.clone()).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(ZIP_FILE))
            .await?;
        let mut size = 0u64;
        while let Some(chunk) = zip.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        crate::hashing::check_size(req, size)?;
        let path = dir.join(ZIP_FILE);
        let computed = blocking(move || Ok(crate::zip_hash(&path))).await?;
        let hash = crate::hashing::settle(req, computed)?;
        sync_dir(dir).await?;
        Ok(hash)
    }

    /// Puts the hash a save computed into the cache, so `stat` need not
    /// hash the zip again.
    async fn remember_saved_hash(&self, vdir: &Path, version: &str, hash: Option<String>) {
        let (d, v) = (vdir.to_path_buf(), version.to_string());
        let id = blocking(move || Ok(file_id(&d, &v)?)).await;
        if let Ok(id) = id {
            self.remember_hash(vdir.to_path_buf(), id, hash);
        }
    }

    fn cached_hash(&self, vdir: &Path, id: FileId) -> Option<Option<String>> {
        let cache = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(vdir)
            .filter(|(cached, _)| *cached == id)
            .map(|(_, h)| h.clone())
    }

    fn remember_hash(&self, vdir: PathBuf, id: FileId, hash: Option<String>) {
        let mut cache = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= HASH_CACHE_MAX {
            cache.clear();
        }
        cache.insert(vdir, (id, hash));
    }
}

#[async_trait]
impl Storage for DiskStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_only: CreateOnly::Native,
            range_reads: true,
            streamed_saves: true,
            unsized_saves: true,
            shared: true,
            ..Capabilities::minimal()
        }
    }

    /// The root must be a readable directory.
    async fn health(&self) -> Result<()> {
        let root = self.root.clone();
        blocking(move || {
            std::fs::read_dir(&root).map(|_| ()).map_err(|e| {
                Error::unavailable(format!("disk storage root {}: {e}", root.display()))
            })
        })
        .await
    }

    async fn list(&self, module: &ModulePath) -> Result<Vec<String>> {
        let mdir = self.module_dir(module)?;
        blocking(move || {
            let entries = match std::fs::read_dir(&mdir) {
                Ok(e) => e,
                Err(e) if gone(&e) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut versions = Vec::new();
            for entry in entries {
                let entry = entry?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !is_canonical_version(&name) || !entry.file_type()?.is_dir() {
                    continue;
                }
                if visible_sync(&entry.path(), &name)? {
                    versions.push(name);
                }
            }
            versions.sort_by(|a, b| compare_versions(a, b));
            Ok(versions)
        })
        .await
    }

    async fn info(&self, c: &Coordinates) -> Result<Bytes> {
        self.read_file(c, &info_file(c.version.as_str())).await
    }

    async fn go_mod(&self, c: &Coordinates) -> Result<Bytes> {
        self.read_file(c, MOD_FILE).await
    }

    async fn zip(&self, c: &Coordinates) -> Result<ZipReader> {
        read_zip(self.version_dir(c)?, c).await
    }

    async fn exists(&self, c: &Coordinates) -> Result<bool> {
        let vdir = self.version_dir(c)?;
        self.visible(&vdir, c.version.as_str()).await
    }

    async fn stat(&self, c: &Coordinates) -> Result<VersionStat> {
        let vdir = self.visible_dir(c).await?;
        let (d, v) = (vdir.clone(), c.version.to_string());
        let (info, go_mod, zip) = blocking(move || {
            Ok((
                std::fs::metadata(d.join(info_file(&v)))?,
                std::fs::read(d.join(MOD_FILE))?,
                std::fs::metadata(d.join(ZIP_FILE))?,
            ))
        })
        .await
        .map_err(|e| {
            if e.is(modmesh_proto::ErrorKind::NotFound) {
                not_found(c)
            } else {
                e
            }
        })?;
        let info_mtime = info.modified()?;
        let id = FileId {
            info_mtime,
            zip_mtime: zip.modified()?,
            zip_len: zip.len(),
        };
        let zip_hash = match self.cached_hash(&vdir, id) {
            Some(h) => h,
            None => {
                let path = vdir.join(ZIP_FILE);
                let h = blocking(move || Ok(crate::zip_hash(&path).ok())).await?;
                self.remember_hash(vdir, id, h.clone());
                h
            }
        };
        Ok(VersionStat {
            coordinates: c.clone(),
            info_size: info.len(),
            mod_size: go_mod.len() as u64,
            zip_size: zip.len(),
            stored_at_unix_ms: unix_ms(info_mtime),
            zip_hash,
            mod_hash: crate::mod_hash(&go_mod),
        })
    }

    async fn save(&self, req: SaveRequest, mut zip: ByteStream) -> Result<()> {
        let c = req.coordinates();
        let vdir = self.version_dir(&c)?;
        if self.visible(&vdir, c.version.as_str()).await? {
            return Err(already_exists(&c));
        }
        let guard = TempDir::new(self.tmp_path(""));
        let result = async {
            let hash = self.write_temp(&req, &mut zip, guard.path()).await?;
            self.publish(&c, guard.path(), &vdir).await?;
            Ok(hash)
        }
        .await;
        match result {
            Ok(hash) => {
                guard.disarm();
                self.remember_saved_hash(&vdir, c.version.as_str(), hash)
                    .await;
                Ok(())
            }
            Err(e) => {
                guard.remove().await;
                Err(e)
            }
        }
    }

    async fn delete(&self, c: &Coordinates) -> Result<()> {
        let vdir = self.version_dir(c)?;
        let _commit = self.commit.lock().await;
        if !self.visible(&vdir, c.version.as_str()).await? {
            return Err(not_found(c));
        }
        let version = c.version.to_string();
        let dir = vdir.clone();
        blocking(move || {
            // The .info file first: without it the version is invisible.
            for name in [info_file(&version), MOD_FILE.into(), ZIP_FILE.into()] {
                match std::fs::remove_file(dir.join(name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == IoKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // Keep the directory if it holds anything else (a nested module).
            let _ = std::fs::remove_dir(&dir);
            if let Some(parent) = dir.parent() {
                let _ = sync_dir_blocking(parent);
            }
            Ok(())
        })
        .await?;
        self.hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&vdir);
        Ok(())
    }

    /// Walks the tree in sorted order from the token's version directory
    /// and stops after one page: pages in (path components) order.
    async fn catalog(
        &self,
        page_token: Option<&str>,
        page_size: usize,
        module_prefix: &str,
    ) -> Result<CatalogPage> {
        let after = match page_token.filter(|t| !t.is_empty()) {
            Some(t) => Some(token_components(t)?),
            None => None,
        };
        let size = crate::page_size(page_size);
        let (root, prefix) = (self.root.clone(), module_prefix.to_string());
        let mut entries = blocking(move || {
            let mut walk = Walk {
                prefix,
                after,
                limit: size + 1,
                found: Vec::new(),
            };
            walk.visit(&root, &mut Vec::new())?;
            Ok(walk.found)
        })
        .await?;
        let more = entries.len() > size;
        entries.truncate(size);
        let next_page_token = if more {
            entries.last().map(|c: &Coordinates| {
                encode_page_token(TOKEN_TAG, &format!("{}/{}", c.module, c.version))
            })
        } else {
            None
        };
        Ok(CatalogPage {
            entries,
            next_page_token,
        })
    }
}

/// The path components a disk page token names (a version directory).
fn token_components(token: &str) -> Result<Vec<String>> {
    let bad = || Error::invalid(format!("malformed catalog page token {token:?}"));
    let key = decode_page_token(TOKEN_TAG, token)?;
    let (module, version) = key.rsplit_once('/').ok_or_else(bad)?;
    Coordinates::new(module, version).map_err(|_| bad())?;
    Ok(key.split('/').map(str::to_string).collect())
}

/// One catalog page's walk. A pre-order walk that visits each directory's
/// entries sorted by name meets version directories in the order of their
/// path components, so a page starts right after the token's directory and
/// skips every subtree that lies wholly before it.
struct Walk {
    prefix: String,
    after: Option<Vec<String>>,
    limit: usize,
    found: Vec<Coordinates>,
}

impl Walk {
    /// Visits the subdirectories of `dir` (whose components below the root
    /// are `comps`); returns once `limit` entries are found.
    fn visit(&mut self, dir: &Path, comps: &mut Vec<String>) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !matches!(entry.file_type(), Ok(t) if t.is_dir()) {
                continue;
            }
            names.push(name);
        }
        names.sort();
        let module = comps.join("/");
        for name in names {
            if self.found.len() >= self.limit {
                break;
            }
            let path = dir.join(&name);
            comps.push(name);
            let r = self.visit_child(&path, comps, &module);
            comps.pop();
            r?;
        }
        Ok(())
    }

    /// `path` is the directory named by `comps`, a child of `module`'s.
    fn visit_child(&mut self, path: &Path, comps: &mut Vec<String>, module: &str) -> Result<()> {
        let name = comps.last().expect("a child").as_str();
        let is_after = self
            .after
            .as_ref()
            .is_none_or(|t| comps.as_slice() > t.as_slice());
        if is_after
            && !module.is_empty()
            && is_canonical_version(name)
            && module.starts_with(&self.prefix)
            && visible_sync(path, name)?
        {
            if let Ok(c) = Coordinates::new(module, name) {
                self.found.push(c);
            }
        }
        let rel = comps.join("/");
        let wanted = rel.starts_with(&self.prefix) || self.prefix.starts_with(&format!("{rel}/"));
        // A subtree lies wholly before the token unless the token is in it.
        let before = self
            .after
            .as_ref()
            .is_some_and(|t| comps.as_slice() < t.as_slice() && !t.starts_with(comps));
        if wanted && !before {
            self.visit(path, comps)?;
        }
        Ok(())
    }
}

/// `root` joined with `elems`, each of which must be exactly one normal path
/// component (no `..`, `.`, separators, or leading dot); the result is
/// checked to be `root` plus normal components only.
fn join_under<'a>(root: &Path, elems: impl IntoIterator<Item = &'a str>) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    let mut n = 0;
    for elem in elems {
        let mut comps = Path::new(elem).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(c)), None) if c == elem && !elem.starts_with('.') => {
                path.push(elem)
            }
            _ => {
                return Err(Error::invalid(format!(
                    "path element {elem:?} would leave the storage root"
                )))
            }
        }
        n += 1;
    }
    let under = path
        .strip_prefix(root)
        .map(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))))
        .unwrap_or(false);
    if n == 0 || !under {
        return Err(Error::invalid("path would leave the storage root"));
    }
    Ok(path)
}

/// The identity of the stored files of `vdir` for the hash cache.
fn file_id(vdir: &Path, version: &str) -> std::io::Result<FileId> {
    let info = std::fs::metadata(vdir.join(info_file(version)))?;
    let zip = std::fs::metadata(vdir.join(ZIP_FILE))?;
    Ok(FileId {
        info_mtime: info.modified()?,
        zip_mtime: zip.modified()?,
        zip_len: zip.len(),
    })
}

/// Whether `vdir` holds `<version>.info`, `go.mod` and `source.zip`.
fn visible_sync(vdir: &Path, version: &str) -> std::io::Result<bool> {
    for name in [info_file(version), MOD_FILE.into(), ZIP_FILE.into()] {
        match std::fs::metadata(vdir.join(name)) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(false),
            Err(e) if gone(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Whether `dir` holds no directories (a half-written version, not a
/// nested module).
fn holds_only_files(dir: &Path, _version: &str) -> std::io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                if e?.file_type()?.is_dir() {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if gone(&e) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Errors that mean "not there".
fn gone(e: &std::io::Error) -> bool {
    matches!(e.kind(), IoKind::NotFound | IoKind::NotADirectory)
}

/// Errors of a rename onto an existing target.
fn occupied(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        IoKind::DirectoryNotEmpty | IoKind::AlreadyExists | IoKind::NotADirectory
    )
}

fn not_found(c: &Coordinates) -> Error {
    Error::not_found(format!("{c} not found"))
}

fn already_exists(c: &Coordinates) -> Error {
    Error::already_exists(format!("{c} already exists"))
}

fn io_error(c: &Coordinates, e: std::io::Error) -> Error {
    if gone(&e) {
        not_found(c)
    } else {
        e.into()
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}

/// The zip of the version in `vdir`: one blocking call checks that the
/// version is visible, opens the zip and reads its first piece; each later
/// piece is one blocking read straight into the buffer that is sent (no
/// copy through an async file's buffer, one thread hand-off per MiB rather
/// than per 128 KiB).
/// A piece that ends early (a file cut short under us) ends the stream;
/// the size check of whoever reads it then fails the download.
async fn read_zip(vdir: PathBuf, c: &Coordinates) -> Result<ZipReader> {
    let chunk = READ_CHUNK;
    let version = c.version.as_str().to_string();
    let opened = blocking(move || {
        Ok((|| {
            if !visible_sync(&vdir, &version)? {
                return Ok(None);
            }
            let mut file = std::fs::File::open(vdir.join(ZIP_FILE))?;
            let size = file.metadata()?.len();
            let first = read_piece(&mut file, (size as usize).min(chunk))?;
            Ok(Some((file, size, first)))
        })())
    })
    .await?
    .map_err(|e| io_error(c, e))?;
    let Some((file, size, first)) = opened else {
        return Err(not_found(c));
    };
    let left = size - first.len() as u64;
    let rest = futures::stream::try_unfold((file, left), move |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = (left as usize).min(chunk);
        let (file, b) = blocking(move || {
            let b = read_piece(&mut file, want)?;
            Ok((file, b))
        })
        .await?;
        if b.is_empty() {
            return Ok(None);
        }
        let left = left - b.len() as u64;
        Ok(Some((b, (file, left))))
    });
    let head = futures::stream::iter((!first.is_empty()).then_some(Ok(first)));
    Ok(ZipReader {
        size,
        stream: head.chain(rest).boxed(),
    })
}

/// Up to `want` bytes of `file` from where it stands, read into a buffer of
/// exactly that capacity (not zeroed first, never copied afterwards).
fn read_piece(file: &mut std::fs::File, want: usize) -> std::io::Result<Bytes> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(want);
    file.by_ref().take(want as u64).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Writes `data` to a new file at `path` and fsyncs it.
async fn write_synced(path: PathBuf, data: Bytes) -> Result<()> {
    blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(&data)?;
        f.sync_all()?;
        Ok(())
    })
    .await
}

fn sync_dir_blocking(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// fsyncs a directory, so the entries made in it are durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    blocking(move || Ok(sync_dir_blocking(&dir)?)).await
}

/// How often a running store looks for temporaries of dead owners.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Removes what crashed saves left in `tmp` (see [`remove_stale`]) and logs
/// how much.
fn sweep(tmp: &Path) -> usize {
    let removed = remove_stale(tmp, STALE_AFTER);
    if removed > 0 {
        tracing::info!(removed, dir = %tmp.display(), "removed temporary save directories of crashed saves");
    }
    removed
}

/// Sweeps `tmp` every [`SWEEP_EVERY`] while `alive` can be upgraded (only
/// inside a tokio runtime).
fn start_sweeper(tmp: PathBuf, alive: std::sync::Weak<()>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            if alive.upgrade().is_none() {
                return;
            }
            let t = tmp.clone();
            let _ = tokio::task::spawn_blocking(move || sweep(&t)).await;
        }
    });
}

/// Removes entries of `tmp` whose owner is dead, and those of an unknown
/// owner last modified longer than `age` ago; returns how many it removed.
fn remove_stale(tmp: &Path, age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = match modmesh_common::owner::dead(&name) {
            Some(dead) => dead,
            None => meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|d| d > age),
        };
        if !old {
            continue;
        }
        let path = entry.path();
        let r = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing a stale temporary")
            }
        }
    }
    removed
}

/// A temporary save directory, removed unless disarmed, also when the save
/// future is dropped mid-way (a cancelled request).
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn new(path: PathBuf) -> Self {
        TempDir(Some(path))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().expect("armed")
    }

    /// Keeps the directory (it was renamed into place).
    fn disarm(mut self) {
        self.0 = None;
    }

    /// Removes the directory now.
    async fn remove(mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = tokio::fs::remove_dir_all(&p).await {
                if e.kind() != IoKind::NotFound {
                    tracing::warn!(dir = %p.display(), error = %e, "removing a temporary save directory");
                }
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let rm = move || {
                let _ = std::fs::remove_dir_all(&p);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(rm);
                }
                Err(_) => rm(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_paths_stay_under_root() {
        let root = Path::new("/srv/store");
        assert_eq!(
            join_under(root, ["example.com", "Foo", "v1.0.0"]).unwrap(),
            PathBuf::from("/srv/store/example.com/Foo/v1.0.0")
        );
        for bad in [
            vec![".."],
            vec!["example.com", ".."],
            vec!["."],
            vec!["a/b"],
            vec!["/etc"],
            vec!["a/"],
            vec![""],
            vec![".modmesh-tmp"],
            vec![],
        ] {
            let e = join_under(root, bad.iter().copied()).unwrap_err();
            assert_eq!(e.kind, modmesh_proto::ErrorKind::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("old")).unwrap();
        std::fs::write(dir.path().join("old/source.zip"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("new")).unwrap();
        assert_eq!(remove_stale(dir.path(), Duration::from_secs(3600)), 0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(remove_stale(dir.path(), Duration::from_millis(10)), 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn temporaries_of_dead_owners_are_removed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let me = modmesh_common::owner::tag();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        let boot = me.split_once('p').unwrap().0;
        let dead = dir.path().join(format!("{boot}p{pid}s1-abc"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("source.zip"), b"x").unwrap();
        let live = dir.path().join(format!("{me}-def"));
        std::fs::create_dir(&live).unwrap();
        assert_eq!(remove_stale(dir.path(), Duration::from_secs(3600)), 1);
        assert!(!dead.exists() && live.is_dir());
    }
}
