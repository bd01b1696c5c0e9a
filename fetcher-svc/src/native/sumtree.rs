//! Proving a checksum database's answers in its tree, as the go command
//! does: every signed tree head is checked to be consistent with the
//! latest one verified before for that database (kept in memory for the
//! life of the process), and every record to be in the tree its head signs
//! (an inclusion proof from hash tiles of height 8). Tiles are cached in
//! memory, bounded, once they have been authenticated.

use super::tlog::{self, Hash, HashRead, Tile, Tree, TILE_HEIGHT};
use bytes::Bytes;
use modmesh_proto::{Error, ErrorKind, Result};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// The default bound of the tile cache: 16 MiB (2048 full tiles).
pub const DEFAULT_TILE_CACHE: usize = 16 << 20;

/// A `lookup` answer: the record and the signed tree head it came with.
#[derive(Debug, Clone)]
pub struct Lookup<'a> {
    /// The record id.
    pub id: i64,
    /// The record text, exactly as answered (its lines end in `\n`).
    pub text: &'a str,
    /// The signed note of the tree head (text, blank line, signatures).
    pub note: &'a str,
    /// The tree the note signs.
    pub tree: Tree,
}

/// The latest verified heads of the databases and their tiles.
#[derive(Debug)]
pub struct TreeState {
    latest: Mutex<HashMap<String, (Tree, Arc<str>)>>,
    cache: Mutex<TileCache>,
    inflight: Mutex<HashMap<TileKey, Inflight>>,
    fetched: AtomicU64,
}

impl Default for TreeState {
    fn default() -> Self {
        TreeState::new(DEFAULT_TILE_CACHE)
    }
}

/// A tile being fetched, shared by the lookups that need it at once.
type Inflight = Arc<OnceCell<Bytes>>;

/// A tile of a database.
type TileKey = (String, Tile);

/// What one verification read: the tiles (saved once it succeeds) and the
/// fetches it started (forgotten when it ends, so lookups at the same time
/// share their data until the tiles are cached or refused).
/// The fetches are forgotten on drop, also when the lookup is abandoned.
struct Fetched<'a> {
    inflight: &'a Mutex<HashMap<TileKey, Inflight>>,
    tiles: Vec<(Tile, Bytes)>,
    cells: Vec<(TileKey, Inflight)>,
}

impl Drop for Fetched<'_> {
    fn drop(&mut self) {
        let mut inflight = lock(self.inflight);
        for (key, cell) in self.cells.drain(..) {
            if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&key);
            }
        }
    }
}

impl TreeState {
    /// No head seen yet; tiles cached up to `cache_bytes`.
    pub fn new(cache_bytes: usize) -> TreeState {
        TreeState {
            latest: Default::default(),
            cache: Mutex::new(TileCache {
                cap: cache_bytes,
                ..Default::default()
            }),
            inflight: Default::default(),
            fetched: AtomicU64::new(0),
        }
    }

    /// How many tiles were asked from databases so far.
    pub fn tiles_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The latest verified tree head of `db`.
    pub fn latest(&self, db: &str) -> Tree {
        lock(&self.latest)
            .get(db)
            .map(|(t, _)| *t)
            .unwrap_or_else(Tree::empty)
    }

    /// Verifies `lookup` (its signature already checked) from database
    /// `db`: its head is consistent with the latest one seen (and becomes
    /// the latest when newer), and its record is in its tree. `fetch` GETs
    /// a path of the database (`tile/...`). A proof that fails is
    /// `Permission` (the message starts as the go command's do, after
    /// `verifying <module>@<version>: `); a tile that cannot be fetched is
    /// `Unavailable` or `Timeout`.
    pub async fn verify<F, Fut>(&self, db: &str, lookup: &Lookup<'_>, fetch: F) -> Result<()>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        let mut fetched = Fetched {
            inflight: &self.inflight,
            tiles: Vec::new(),
            cells: Vec::new(),
        };
        let r = self.verify_in(db, lookup, &fetch, &mut fetched).await;
        if r.is_ok() {
            let mut cache = lock(&self.cache);
            for (t, data) in fetched.tiles.drain(..) {
                cache.put(db, t, data);
            }
        }
        r
    }

    async fn verify_in<F, Fut>(
        &self,
        db: &str,
        lookup: &Lookup<'_>,
        fetch: &F,
        fetched: &mut Fetched<'_>,
    ) -> Result<()>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        self.merge(db, lookup, fetch, fetched).await?;
        let tree = lookup.tree;
        let leaf = tlog::record_hash(lookup.text.as_bytes());
        let indexes = tlog::record_proof_indexes(tree.n, lookup.id)
            .map_err(|e| Error::permission(format!("checksum database {db}: {e}")))?;
        let hashes = if indexes.is_empty() {
            Vec::new()
        } else {
            self.read(db, tree, &indexes, fetch, fetched).await?
        };
        let proof = tlog::record_proof(tree.n, lookup.id, &hashes)
            .map_err(|e| Error::permission(format!("checksum database {db}: {e}")))?;
        if tlog::check_record(&proof, tree.n, &tree.hash, lookup.id, &leaf).is_err() {
            tracing::error!(
                db,
                record = lookup.id,
                tree = tree.n,
                "record not in the signed tree"
            );
            return Err(Error::permission(format!(
                "cannot authenticate record data in server response\n\nSECURITY ERROR\nThe checksum database {db} answered with record {} that its signed tree of {} records does not hold.",
                lookup.id, tree.n
            )));
        }
        Ok(())
    }

    /// Merges the lookup's head into the timeline of `db` (see
    /// [`TreeState::verify`]).
    async fn merge<F, Fut>(
        &self,
        db: &str,
        lookup: &Lookup<'_>,
        fetch: &F,
        fetched: &mut Fetched<'_>,
    ) -> Result<()>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        let tree = lookup.tree;
        loop {
            let (latest, latest_note) = lock(&self.latest)
                .get(db)
                .cloned()
                .unwrap_or_else(|| (Tree::empty(), Arc::from("")));
            if tree.n <= latest.n {
                return self
                    .check_trees(
                        db,
                        (tree, lookup.note),
                        (latest, &latest_note),
                        fetch,
                        fetched,
                    )
                    .await;
            }
            self.check_trees(
                db,
                (latest, &latest_note),
                (tree, lookup.note),
                fetch,
                fetched,
            )
            .await?;
            let mut heads = lock(&self.latest);
            let now = heads.get(db).map(|(t, _)| *t).unwrap_or_else(Tree::empty);
            if now == latest {
                heads.insert(db.to_string(), (tree, Arc::from(lookup.note)));
                return Ok(());
            }
        }
    }

    /// Checks that `older` is a prefix of `newer`, from `newer`'s tiles.
    async fn check_trees<F, Fut>(
        &self,
        db: &str,
        (older, older_note): (Tree, &str),
        (newer, newer_note): (Tree, &str),
        fetch: &F,
        fetched: &mut Fetched<'_>,
    ) -> Result<()>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        if older.n == 0 {
            if older.hash == tlog::empty_hash() {
                return Ok(());
            }
            return Err(misbehavior(
                db,
                older_note,
                newer_note,
                &tlog::empty_hash(),
                &[],
            ));
        }
        if older.n == newer.n {
            if older.hash == newer.hash {
                return Ok(());
            }
            return Err(misbehavior(db, older_note, newer_note, &newer.hash, &[]));
        }
        let indexes = tlog::tree_proof_indexes(newer.n, older.n)
            .map_err(|e| Error::permission(format!("checksum database {db}: {e}")))?;
        let hashes = self.read(db, newer, &indexes, fetch, fetched).await?;
        let proof = tlog::tree_proof(newer.n, older.n, &hashes)
            .map_err(|e| Error::permission(format!("checksum database {db}: {e}")))?;
        if tlog::check_tree(&proof, newer.n, &newer.hash, older.n, &older.hash).is_ok() {
            return Ok(());
        }
        // The newer tree's own hash for the older size, for the report.
        let idx = tlog::tree_hash_indexes(older.n);
        let hashes = self.read(db, newer, &idx, fetch, fetched).await?;
        let h = tlog::tree_hash(older.n, &hashes)
            .map_err(|e| Error::permission(format!("checksum database {db}: {e}")))?;
        Err(misbehavior(db, older_note, newer_note, &h, &proof))
    }

    /// Stored hashes `indexes` of `tree`, from tiles authenticated against
    /// its root hash.
    async fn read<F, Fut>(
        &self,
        db: &str,
        tree: Tree,
        indexes: &[i64],
        fetch: &F,
        fetched: &mut Fetched<'_>,
    ) -> Result<Vec<Hash>>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        let plan = HashRead::plan(tree, TILE_HEIGHT, indexes)
            .map_err(|e| Error::permission(format!("checksum database {db}: {e}")))?;
        let got =
            futures::future::join_all(plan.tiles().iter().map(|t| self.tile(db, *t, fetch))).await;
        let mut data = Vec::with_capacity(got.len());
        for (d, cell) in got {
            if let Some(cell) = cell {
                fetched.cells.push(cell);
            }
            data.push(d?);
        }
        let hashes = plan.finish(&data).map_err(|e| {
            tracing::warn!(db, reason = %e, "checksum database tiles refused");
            Error::permission(format!("checksum database {db}: {e}"))
        })?;
        fetched.tiles.extend(plan.tiles().iter().copied().zip(data));
        Ok(hashes)
    }

    /// Tile `t` of `db`: from the cache (a wider tile holds it), else asked
    /// once however many lookups need it at the same time (and the fetch
    /// started, which the verification that started it forgets when it
    /// ends, after caching the tile if it proved good).
    #[allow(clippy::type_complexity)]
    async fn tile<F, Fut>(
        &self,
        db: &str,
        t: Tile,
        fetch: &F,
    ) -> (
        Result<Bytes>,
        Option<((String, Tile), Arc<OnceCell<Bytes>>)>,
    )
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        if let Some(d) = lock(&self.cache).get(db, t) {
            return (Ok(d), None);
        }
        let key = (db.to_string(), t);
        let (cell, mine) = match lock(&self.inflight).entry(key.clone()) {
            Entry::Occupied(e) => (e.get().clone(), false),
            Entry::Vacant(e) => (e.insert(Inflight::default()).clone(), true),
        };
        let r = cell
            .get_or_try_init(|| self.fetch_tile(t, fetch))
            .await
            .cloned();
        (r, mine.then_some((key, cell)))
    }

    /// GETs tile `t`; a partial tile the database no longer has is read from
    /// the full one, as the go command does.
    async fn fetch_tile<F, Fut>(&self, t: Tile, fetch: &F) -> Result<Bytes>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("modmesh_sumdb_tiles_fetched_total").increment(1);
        let want = t.w as usize * tlog::HASH_SIZE;
        let first = match fetch(t.path()).await {
            Ok(d) => return Ok(d),
            Err(e) => e,
        };
        let missing = matches!(first.kind, ErrorKind::NotFound | ErrorKind::Gone);
        if missing && t.w < t.full_width() {
            self.fetched.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("modmesh_sumdb_tiles_fetched_total").increment(1);
            if let Ok(d) = fetch(t.full().path()).await {
                if d.len() >= want {
                    return Ok(d.slice(..want));
                }
            }
        }
        // A tile the database signed for but does not serve is its fault.
        Err(if missing {
            Error::unavailable(first.message)
        } else {
            first
        })
    }
}

/// The go command's report of a database whose heads fork.
fn misbehavior(db: &str, older: &str, newer: &str, h: &Hash, proof: &[Hash]) -> Error {
    let indent = |s: &str| s.trim_end().replace('\n', "\n\t");
    tracing::error!(
        db,
        "checksum database misbehavior: inconsistent signed tree heads"
    );
    let mut msg = format!(
        "SECURITY ERROR\ngo.sum database server misbehavior detected!\n\nold database:\n\t{}\nnew database:\n\t{}\nproof of misbehavior:\n\t{}",
        indent(older),
        indent(newer),
        tlog::format_hash(h)
    );
    for p in proof {
        msg.push_str("\n\t");
        msg.push_str(&tlog::format_hash(p));
    }
    Error::permission(msg)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Authenticated tiles: the widest seen of each (database, level, number),
/// evicting the least recently used past `cap` bytes.
#[derive(Debug, Default)]
struct TileCache {
    map: HashMap<(String, u32, i64), (Bytes, u64)>,
    bytes: usize,
    tick: u64,
    cap: usize,
}

impl TileCache {
    fn get(&mut self, db: &str, t: Tile) -> Option<Bytes> {
        let want = t.w as usize * tlog::HASH_SIZE;
        self.tick += 1;
        let tick = self.tick;
        let (d, used) = self.map.get_mut(&(db.to_string(), t.l, t.n))?;
        if d.len() < want {
            return None;
        }
        *used = tick;
        Some(d.slice(..want))
    }

    fn put(&mut self, db: &str, t: Tile, data: Bytes) {
        let key = (db.to_string(), t.l, t.n);
        if self
            .map
            .get(&key)
            .is_some_and(|(d, _)| d.len() >= data.len())
        {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        if let Some((old, _)) = self.map.insert(key, (data, self.tick)) {
            self.bytes -= old.len();
        }
        while self.bytes > self.cap {
            let Some(k) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((d, _)) = self.map.remove(&k) {
                self.bytes -= d.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_widest_tile_within_its_bound() {
        let mut c = TileCache {
            cap: 3 * 32,
            ..Default::default()
        };
        let t = |n, w| Tile { h: 8, l: 0, n, w };
        c.put("db", t(0, 2), Bytes::from(vec![1u8; 64]));
        assert_eq!(c.get("db", t(0, 1)).unwrap().len(), 32);
        assert!(c.get("db", t(0, 3)).is_none());
        // A wider one supersedes it; a narrower one does not.
        c.put("db", t(0, 3), Bytes::from(vec![2u8; 96]));
        c.put("db", t(0, 1), Bytes::from(vec![3u8; 32]));
        assert_eq!(c.get("db", t(0, 2)).unwrap()[..], [2u8; 64][..]);
        assert_eq!(c.bytes, 96);
        // Past the bound, the least recently used goes.
        c.put("db", t(1, 1), Bytes::from(vec![4u8; 32]));
        assert!(c.get("db", t(0, 1)).is_none());
        assert!(c.get("db", t(1, 1)).is_some());
        assert!(c.bytes <= 96);
    }
}
