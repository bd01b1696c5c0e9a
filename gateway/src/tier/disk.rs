//! The tier's optional local-disk level for zips (`[Tier] DiskPath`).
//!
//! Each gateway process keeps its files in a folder of its own,
//! `DiskPath/tier-<owner tag>-<n>` ([`modmesh_common::owner`]), so several
//! gateways may share one `DiskPath`. At start-up the folders of owners
//! that are gone (a previous run, a crash, another boot) are removed with
//! everything in them: the delete stream has no replay, so a file left by
//! a previous run may hold a version deleted since, and is never trusted.
//!
//! A file is named by a hash of its coordinates and a sequence number
//! (`<sha256 of module@version, 32 hex>-<n>.zip`): nothing a client sends
//! reaches the file system, and a file replaced or forgotten is never
//! confused with its successor. The index is a moka cache weighed by file
//! size (least recently used first, at most `DiskBytes`); its eviction
//! listener removes the file. A reader holding a file open keeps reading
//! it after its removal (POSIX semantics).
//!
//! A fill writes a zip as it streams to the client ([`DiskLevel::tee`]):
//! the chunks go through a small bounded channel to a writer thread, which
//! writes a temporary file and renames it into place only when the whole
//! zip arrived with its announced length; otherwise (storage error, client
//! gone, write error) the temporary file is removed. One fill runs at a
//! time (a busy slot leaves the read unfilled), so the folder exceeds
//! `DiskBytes` by at most the one zip in flight.

use bytes::Bytes;
use futures::StreamExt;
use modmesh_proto::{Coordinates, Error, Result};
use modmesh_storage::{ByteStream, ZipReader};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes of the chunks a file is read in.
const READ_CHUNK: usize = 256 << 10;
/// Chunks a fill may hold between the client's stream and the writer.
const FILL_BACKLOG: usize = 4;
/// What the levels' folders are called: `tier-<owner tag>-<n>`.
const PREFIX: &str = "tier-";

/// One file of the level.
#[derive(Debug)]
struct Entry {
    path: PathBuf,
    size: u64,
}

type Index = moka::sync::Cache<Coordinates, Arc<Entry>>;

/// The disk level; see the module docs.
pub(crate) struct DiskLevel {
    dir: PathBuf,
    index: Index,
    /// The one fill slot.
    fill: Arc<Semaphore>,
    seq: AtomicU64,
    min_zip: u64,
    capacity: u64,
    /// The tier's forgetting counter: a fill that started before a
    /// forgetting is not kept.
    generation: Arc<AtomicU64>,
}

/// `Tier.DiskPath`'s error for `path`.
fn path_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::invalid(format!("Tier.DiskPath: {}: {what}: {e}", path.display()))
}

impl DiskLevel {
    /// Opens the level in `root` (created if missing): sweeps the folders
    /// of dead owners, makes this process's folder and checks it can be
    /// written. Errors name `Tier.DiskPath` (`Invalid`).
    pub(crate) fn open(
        root: &Path,
        capacity: u64,
        min_zip: u64,
        generation: Arc<AtomicU64>,
    ) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| path_error(root, "cannot create", e))?;
        let swept = sweep(root).map_err(|e| path_error(root, "cannot list", e))?;
        if swept > 0 {
            tracing::info!(
                swept,
                root = %root.display(),
                "tier: removed disk folders of gateways that are gone"
            );
        }
        // One folder per level: several in one process (tests) stay apart.
        static LEVELS: AtomicU64 = AtomicU64::new(0);
        let n = LEVELS.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{PREFIX}{}-{n}", modmesh_common::owner::tag()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| path_error(&dir, "cannot clear", e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| path_error(&dir, "cannot create", e))?;
        let probe = dir.join("probe");
        std::fs::write(&probe, b"probe")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| path_error(&dir, "cannot write", e))?;
        let index: Index = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_, e: &Arc<Entry>| e.size.try_into().unwrap_or(u32::MAX))
            .eviction_listener(|_, e: Arc<Entry>, _| {
                if let Err(err) = std::fs::remove_file(&e.path) {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %e.path.display(), error = %err, "tier: cannot remove a disk file");
                    }
                }
            })
            .build();
        Ok(DiskLevel {
            dir,
            index,
            fill: Arc::new(Semaphore::new(1)),
            seq: AtomicU64::new(0),
            min_zip,
            capacity,
            generation,
        })
    }

    /// This level's folder.
    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether no fill runs.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.fill.available_permits() == 1
    }

    /// Whether a zip of `size` bytes belongs on disk.
    pub(crate) fn wants(&self, size: u64) -> bool {
        size >= self.min_zip && size <= self.capacity
    }

    /// Bytes of the files kept.
    pub(crate) fn bytes(&self) -> u64 {
        self.index.weighted_size()
    }

    /// The kept zip of `c`, opened (its size checked), or `None`.
    pub(crate) async fn open_zip(&self, c: &Coordinates) -> Option<(std::fs::File, u64)> {
        let entry = self.index.get(c)?;
        let e2 = entry.clone();
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::File::open(&e2.path)?;
            let len = f.metadata()?.len();
            if len != e2.size {
                return Err(std::io::Error::other(format!(
                    "{} bytes on disk, {} expected",
                    len, e2.size
                )));
            }
            Ok(f)
        })
        .await;
        match opened {
            Ok(Ok(f)) => Some((f, entry.size)),
            Ok(Err(e)) => {
                // Evicted between the look-up and the open, or damaged.
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%c, path = %entry.path.display(), error = %e, "tier: disk file unusable, forgotten");
                }
                self.index.invalidate(c);
                None
            }
            Err(_) => None,
        }
    }

    /// Forgets `c` (its file is removed).
    pub(crate) fn forget(&self, c: &Coordinates) {
        self.index.invalidate(c);
    }

    /// Forgets everything (every file is removed).
    pub(crate) fn forget_all(&self) {
        self.index.invalidate_all();
        self.index.run_pending_tasks();
    }

    /// Names of a new temporary file and of the file it becomes for `c`.
    fn names(&self, c: &Coordinates) -> (PathBuf, PathBuf) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(c.module.as_str().as_bytes());
        h.update(b"@");
        h.update(c.version.as_str().as_bytes());
        let hex: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (
            self.dir.join(format!("tmp-{n}")),
            self.dir.join(format!("{hex}-{n}.zip")),
        )
    }

    /// Keeps the complete file `tmp` of `size` bytes as `c`'s zip, unless
    /// a forgetting happened since `gen` (then it is removed). Blocking.
    fn commit(&self, c: Coordinates, tmp: &Path, dest: PathBuf, size: u64, gen: u64) {
        if self.generation.load(Ordering::SeqCst) != gen {
            let _ = std::fs::remove_file(tmp);
            return;
        }
        if let Err(e) = std::fs::rename(tmp, &dest) {
            tracing::warn!(%c, error = %e, "tier: cannot rename a disk file into place");
            let _ = std::fs::remove_file(tmp);
            return;
        }
        self.index
            .insert(c.clone(), Arc::new(Entry { path: dest, size }));
        // A forgetting between the check and the insert: undo.
        if self.generation.load(Ordering::SeqCst) != gen {
            self.index.invalidate(&c);
        }
        // Evict now, not at the cache's next housekeeping: the folder
        // stays within its bound.
        self.index.run_pending_tasks();
    }

    /// The fill slot, if free.
    fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.fill.clone().try_acquire_owned().ok()
    }

    /// Keeps `bytes` (a whole zip read from storage) as `c`'s zip, in the
    /// background, if the fill slot is free.
    pub(crate) fn put(self: &Arc<Self>, c: &Coordinates, bytes: Bytes, gen: u64) {
        let Some(permit) = self.slot() else { return };
        let (me, c) = (self.clone(), c.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let (tmp, dest) = me.names(&c);
            match std::fs::write(&tmp, &bytes) {
                Ok(()) => me.commit(c, &tmp, dest, bytes.len() as u64, gen),
                Err(e) => {
                    tracing::warn!(%c, error = %e, "tier: cannot write a disk file");
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        });
    }

    /// `z` (read from storage for `c`), written to disk while it streams
    /// if the fill slot is free; `z` as it is otherwise.
    pub(crate) fn tee(self: &Arc<Self>, c: &Coordinates, gen: u64, z: ZipReader) -> ZipReader {
        let Some(permit) = self.slot() else { return z };
        let (tx, rx) = mpsc::channel::<Bytes>(FILL_BACKLOG);
        let (me, c2, size) = (self.clone(), c.clone(), z.size);
        // `done` is set by the stream once every byte passed with no error;
        // the writer keeps the file only then.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done2 = done.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            me.write_fill(c2, size, gen, rx, &done2);
        });
        let stream = Tee {
            inner: z.stream,
            tx: Some(tx),
            seen: 0,
            size,
            done,
        };
        ZipReader {
            size,
            stream: stream.into_stream(),
        }
    }

    /// The writer of a fill: writes what `rx` brings into a temporary
    /// file, then keeps it if the stream said it was complete. Blocking.
    fn write_fill(
        &self,
        c: Coordinates,
        size: u64,
        gen: u64,
        mut rx: mpsc::Receiver<Bytes>,
        done: &std::sync::atomic::AtomicBool,
    ) {
        let (tmp, dest) = self.names(&c);
        let written = (|| -> std::io::Result<u64> {
            let mut f = std::io::BufWriter::with_capacity(256 << 10, std::fs::File::create(&tmp)?);
            let mut n = 0u64;
            while let Some(chunk) = rx.blocking_recv() {
                f.write_all(&chunk)?;
                n += chunk.len() as u64;
            }
            f.flush()?;
            Ok(n)
        })();
        match written {
            Ok(n) if n == size && done.load(Ordering::SeqCst) => {
                self.commit(c, &tmp, dest, size, gen);
            }
            Ok(n) => {
                tracing::debug!(%c, n, size, "tier: disk fill abandoned (stream incomplete)");
                let _ = std::fs::remove_file(&tmp);
            }
            Err(e) => {
                tracing::warn!(%c, error = %e, "tier: disk fill failed");
                drop(rx);
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    /// `c`'s zip from `f` (of `size` bytes), streamed in chunks.
    pub(crate) fn stream_file(c: &Coordinates, f: std::fs::File, size: u64) -> ZipReader {
        let c = c.clone();
        let stream: ByteStream =
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(f), READ_CHUNK)
                .map(move |r| {
                    r.map_err(|e| {
                        Error::internal(format!("{c}: reading the tier's disk file: {e}"))
                    })
                })
                .boxed();
        ZipReader { size, stream }
    }
}

/// Removes the folders under `root` whose owner is gone; how many.
fn sweep(root: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(|s| s.strip_prefix(PREFIX)) else {
            continue;
        };
        // A live owner keeps its folder; a dead one, one of another boot
        // (the machine restarted) or a name holding no tag loses it.
        if modmesh_common::owner::dead(owner) == Some(false) {
            continue;
        }
        let path = entry.path();
        let r = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "tier: cannot remove"),
        }
    }
    Ok(n)
}

/// The client's stream of a fill: passes storage's chunks on and hands a
/// copy of each to the writer; says `done` once all `size` bytes passed
/// (a client that knows the length may never ask for the stream's end).
struct Tee {
    inner: ByteStream,
    tx: Option<mpsc::Sender<Bytes>>,
    seen: u64,
    size: u64,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Tee {
    fn into_stream(self) -> ByteStream {
        futures::stream::unfold(self, |mut t| async move {
            let item = t.inner.next().await;
            match &item {
                Some(Ok(chunk)) => {
                    t.seen += chunk.len() as u64;
                    if t.seen > t.size {
                        t.tx = None;
                    }
                    if let Some(tx) = &t.tx {
                        // The writer gone (a write error): stop filling.
                        if tx.send(chunk.clone()).await.is_err() {
                            t.tx = None;
                        }
                    }
                    if t.seen == t.size && t.tx.is_some() {
                        // Complete: the writer may keep the file now.
                        t.done.store(true, Ordering::SeqCst);
                        t.tx = None;
                    }
                }
                // An error before the end: the writer drops the file.
                Some(Err(_)) | None => t.tx = None,
            }
            item.map(|i| (i, t))
        })
        .boxed()
    }
}
