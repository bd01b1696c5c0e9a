//! The checksum database's tamper-evident log (RFC 6962 Merkle trees, as
//! the go command's `golang.org/x/mod/sumdb/tlog` lays them out): record
//! and node hashes, the stored-hash numbering, hash tiles, record
//! (inclusion) and tree (consistency) proofs, and the signed tree text.
//!
//! Reading hashes from tiles is split in two so the fetching can be
//! asynchronous: [`HashRead::plan`] names the tiles needed for some stored
//! hashes of a tree, [`HashRead::finish`] authenticates the fetched tiles
//! against the tree's root hash and returns the hashes.

use base64::Engine;
use sha2::{Digest, Sha256};

/// A record or tree hash.
pub type Hash = [u8; 32];

/// The size of a [`Hash`] in bytes.
pub const HASH_SIZE: usize = 32;

/// The tile height the go command uses.
pub const TILE_HEIGHT: u32 = 8;

/// The hash of the empty tree (SHA-256 of nothing).
pub fn empty_hash() -> Hash {
    Sha256::digest(b"").into()
}

/// The hash of a record: SHA-256(0x00 || data).
pub fn record_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A hash in the base64 form the database prints.
pub fn format_hash(h: &Hash) -> String {
    base64::engine::general_purpose::STANDARD.encode(h)
}

/// A hash from its base64 form.
pub fn parse_hash(s: &str) -> Option<Hash> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()?
        .try_into()
        .ok()
}

/// Why a proof or a tile read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// Inputs out of range (a record not below the tree size, a tree of
    /// size 0, an index the tree does not hold).
    Invalid(String),
    /// A tile of the wrong size, or tiles whose hashes do not lead to the
    /// tree's root hash.
    InconsistentTile(String),
    /// The proof does not lead to the expected hashes.
    Failed,
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::Invalid(why) => write!(f, "{why}"),
            ProofError::InconsistentTile(why) => write!(f, "downloaded inconsistent tile ({why})"),
            ProofError::Failed => write!(f, "invalid transparency proof"),
        }
    }
}

/// k, the largest power of 2 smaller than n, and log2(k).
fn maxpow2(n: i64) -> (i64, u32) {
    let mut l = 0u32;
    while (1i64 << (l + 1)) < n {
        l += 1;
    }
    (1i64 << l, l)
}

/// The position of hash (level, n) in the dense order hashes are stored in.
pub fn stored_hash_index(level: u32, n: i64) -> i64 {
    let mut n = n;
    for _ in 0..level {
        n = 2 * n + 1;
    }
    let mut i = 0i64;
    while n > 0 {
        i += n;
        n >>= 1;
    }
    i + level as i64
}

/// The inverse of [`stored_hash_index`]: (level, n).
pub fn split_stored_hash_index(index: i64) -> (u32, i64) {
    let mut n = index / 2;
    let mut index_n = stored_hash_index(0, n);
    loop {
        let x = index_n + 1 + (n + 1).trailing_zeros() as i64;
        if x > index {
            break;
        }
        n += 1;
        index_n = x;
    }
    let level = (index - index_n) as u32;
    (level, n >> level)
}

/// Appends the stored indexes of the hashes that make up subtree [lo, hi).
fn sub_tree_index(mut lo: i64, hi: i64, need: &mut Vec<i64>) {
    while lo < hi {
        let (k, level) = maxpow2(hi - lo + 1);
        need.push(stored_hash_index(level, lo >> level));
        lo += k;
    }
}

/// The hash of subtree [lo, hi) from the hashes [`sub_tree_index`] named,
/// and the hashes left over.
fn sub_tree_hash(mut lo: i64, hi: i64, hashes: &[Hash]) -> Result<(Hash, &[Hash]), ProofError> {
    let mut num = 0usize;
    while lo < hi {
        let (k, _) = maxpow2(hi - lo + 1);
        num += 1;
        lo += k;
    }
    if num == 0 || hashes.len() < num {
        return Err(ProofError::Invalid("too few hashes for a subtree".into()));
    }
    let mut h = hashes[num - 1];
    for i in (0..num - 1).rev() {
        h = node_hash(&hashes[i], &h);
    }
    Ok((h, &hashes[num..]))
}

/// The stored indexes [`tree_hash`] needs for a tree of `n` records.
pub fn tree_hash_indexes(n: i64) -> Vec<i64> {
    let mut need = Vec::new();
    sub_tree_index(0, n, &mut need);
    need
}

/// The root hash of a tree of `n` records from the hashes
/// [`tree_hash_indexes`] named.
pub fn tree_hash(n: i64, hashes: &[Hash]) -> Result<Hash, ProofError> {
    if n == 0 {
        return Ok(empty_hash());
    }
    let (h, rest) = sub_tree_hash(0, n, hashes)?;
    if !rest.is_empty() {
        return Err(ProofError::Invalid("too many hashes for a tree".into()));
    }
    Ok(h)
}

fn leaf_proof_index(lo: i64, hi: i64, n: i64, need: &mut Vec<i64>) {
    if lo + 1 == hi {
        return;
    }
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        leaf_proof_index(lo, lo + k, n, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        leaf_proof_index(lo + k, hi, n, need);
    }
}

fn leaf_proof(
    lo: i64,
    hi: i64,
    n: i64,
    hashes: &[Hash],
) -> Result<(Vec<Hash>, &[Hash]), ProofError> {
    if lo + 1 == hi {
        return Ok((Vec::new(), hashes));
    }
    let (k, _) = maxpow2(hi - lo);
    let (mut p, th, rest);
    if n < lo + k {
        let (pp, r) = leaf_proof(lo, lo + k, n, hashes)?;
        let (t, r) = sub_tree_hash(lo + k, hi, r)?;
        (p, th, rest) = (pp, t, r);
    } else {
        let (t, r) = sub_tree_hash(lo, lo + k, hashes)?;
        let (pp, r) = leaf_proof(lo + k, hi, n, r)?;
        (p, th, rest) = (pp, t, r);
    }
    p.push(th);
    Ok((p, rest))
}

/// The stored indexes [`record_proof`] needs to prove record `n` in a tree
/// of `t` records.
pub fn record_proof_indexes(t: i64, n: i64) -> Result<Vec<i64>, ProofError> {
    if t < 0 || n < 0 || n >= t {
        return Err(ProofError::Invalid(format!(
            "cannot validate record {n} in tree of size {t}"
        )));
    }
    let mut need = Vec::new();
    leaf_proof_index(0, t, n, &mut need);
    Ok(need)
}

/// The proof (RFC 6962 audit path) that a tree of `t` records holds record
/// `n`, from the hashes [`record_proof_indexes`] named.
pub fn record_proof(t: i64, n: i64, hashes: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    record_proof_indexes(t, n)?;
    let (p, rest) = leaf_proof(0, t, n, hashes)?;
    if !rest.is_empty() {
        return Err(ProofError::Invalid("too many hashes for a proof".into()));
    }
    Ok(p)
}

fn run_record_proof(p: &[Hash], lo: i64, hi: i64, n: i64, leaf: Hash) -> Result<Hash, ProofError> {
    if lo + 1 == hi {
        return if p.is_empty() {
            Ok(leaf)
        } else {
            Err(ProofError::Failed)
        };
    }
    let Some((last, p)) = p.split_last() else {
        return Err(ProofError::Failed);
    };
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        Ok(node_hash(&run_record_proof(p, lo, lo + k, n, leaf)?, last))
    } else {
        Ok(node_hash(last, &run_record_proof(p, lo + k, hi, n, leaf)?))
    }
}

/// Checks that `p` proves that the tree of `t` records with root `th` has
/// `leaf` (a [`record_hash`]) as record `n`.
pub fn check_record(p: &[Hash], t: i64, th: &Hash, n: i64, leaf: &Hash) -> Result<(), ProofError> {
    record_proof_indexes(t, n)?;
    if run_record_proof(p, 0, t, n, *leaf)? == *th {
        Ok(())
    } else {
        Err(ProofError::Failed)
    }
}

fn tree_proof_index(lo: i64, hi: i64, n: i64, need: &mut Vec<i64>) {
    if n == hi {
        if lo != 0 {
            sub_tree_index(lo, hi, need);
        }
        return;
    }
    let (k, _) = maxpow2(hi - lo);
    if n <= lo + k {
        tree_proof_index(lo, lo + k, n, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        tree_proof_index(lo + k, hi, n, need);
    }
}

fn tree_proof_rec(
    lo: i64,
    hi: i64,
    n: i64,
    hashes: &[Hash],
) -> Result<(Vec<Hash>, &[Hash]), ProofError> {
    if n == hi {
        if lo == 0 {
            return Ok((Vec::new(), hashes));
        }
        let (th, rest) = sub_tree_hash(lo, hi, hashes)?;
        return Ok((vec![th], rest));
    }
    let (k, _) = maxpow2(hi - lo);
    let (mut p, th, rest);
    if n <= lo + k {
        let (pp, r) = tree_proof_rec(lo, lo + k, n, hashes)?;
        let (t, r) = sub_tree_hash(lo + k, hi, r)?;
        (p, th, rest) = (pp, t, r);
    } else {
        let (t, r) = sub_tree_hash(lo, lo + k, hashes)?;
        let (pp, r) = tree_proof_rec(lo + k, hi, n, r)?;
        (p, th, rest) = (pp, t, r);
    }
    p.push(th);
    Ok((p, rest))
}

/// The stored indexes [`tree_proof`] needs to prove that a tree of `t`
/// records holds the tree of its first `n` as a prefix.
pub fn tree_proof_indexes(t: i64, n: i64) -> Result<Vec<i64>, ProofError> {
    if t < 1 || n < 1 || n > t {
        return Err(ProofError::Invalid(format!(
            "no tree proof between sizes {n} and {t}"
        )));
    }
    let mut need = Vec::new();
    tree_proof_index(0, t, n, &mut need);
    Ok(need)
}

/// The proof (RFC 6962 consistency proof) that a tree of `t` records holds
/// the tree of its first `n` as a prefix, from the hashes
/// [`tree_proof_indexes`] named.
pub fn tree_proof(t: i64, n: i64, hashes: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    tree_proof_indexes(t, n)?;
    let (p, rest) = tree_proof_rec(0, t, n, hashes)?;
    if !rest.is_empty() {
        return Err(ProofError::Invalid("too many hashes for a proof".into()));
    }
    Ok(p)
}

/// Runs a tree proof over [lo, hi): the implied hashes of that subtree in
/// the old tree (of `n` records, root `old`) and in the new one.
fn run_tree_proof(
    p: &[Hash],
    lo: i64,
    hi: i64,
    n: i64,
    old: Hash,
) -> Result<(Hash, Hash), ProofError> {
    if n == hi {
        if lo == 0 {
            return if p.is_empty() {
                Ok((old, old))
            } else {
                Err(ProofError::Failed)
            };
        }
        return match p {
            [h] => Ok((*h, *h)),
            _ => Err(ProofError::Failed),
        };
    }
    let Some((last, p)) = p.split_last() else {
        return Err(ProofError::Failed);
    };
    let (k, _) = maxpow2(hi - lo);
    if n <= lo + k {
        let (oh, th) = run_tree_proof(p, lo, lo + k, n, old)?;
        Ok((oh, node_hash(&th, last)))
    } else {
        let (oh, th) = run_tree_proof(p, lo + k, hi, n, old)?;
        Ok((node_hash(last, &oh), node_hash(last, &th)))
    }
}

/// Checks that `p` proves that the tree of `t` records with root `th` holds
/// as a prefix the tree of `n` records with root `h`.
pub fn check_tree(p: &[Hash], t: i64, th: &Hash, n: i64, h: &Hash) -> Result<(), ProofError> {
    tree_proof_indexes(t, n)?;
    let (h2, th2) = run_tree_proof(p, 0, t, n, *h)?;
    if h2 == *h && th2 == *th {
        Ok(())
    } else {
        Err(ProofError::Failed)
    }
}

/// A tile: `w` consecutive hashes at level `h * l` of the tree, from
/// offset `n * 2^h` (complete when `w == 2^h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tile {
    /// The height.
    pub h: u32,
    /// The tile level.
    pub l: u32,
    /// The number within the level.
    pub n: i64,
    /// The width (number of hashes).
    pub w: u32,
}

impl Tile {
    /// The width of a complete tile.
    pub fn full_width(&self) -> u32 {
        1 << self.h
    }

    /// This tile, complete.
    pub fn full(&self) -> Tile {
        Tile {
            w: self.full_width(),
            ..*self
        }
    }

    /// Its path on the database: `tile/H/L/NNN[.p/W]`, N in 3-digit
    /// elements, all but the last prefixed with `x`.
    pub fn path(&self) -> String {
        let mut n = self.n;
        let mut s = format!("{:03}", n % 1000);
        while n >= 1000 {
            n /= 1000;
            s = format!("x{:03}/{s}", n % 1000);
        }
        let p = if self.w != self.full_width() {
            format!(".p/{}", self.w)
        } else {
            String::new()
        };
        format!("tile/{}/{}/{s}{p}", self.h, self.l)
    }
}

/// The tile of height `h` and least width that holds stored hash `index`,
/// and the byte range of the tile data that hashes to it.
fn tile_range(h: u32, index: i64) -> (Tile, usize, usize) {
    let (level, n) = split_stored_hash_index(index);
    let l = level / h;
    let level = level - l * h;
    let tn = (n << level) >> h;
    let n = n - ((tn << h) >> level);
    let w = ((n + 1) << level) as u32;
    let t = Tile { h, l, n: tn, w };
    (
        t,
        (n << level) as usize * HASH_SIZE,
        ((n + 1) << level) as usize * HASH_SIZE,
    )
}

/// The tile of height `h` and least width that holds stored hash `index`.
pub fn tile_for_index(h: u32, index: i64) -> Tile {
    tile_range(h, index).0
}

/// The subtree hash of the `2^k` hashes in `data`.
fn tile_hash(data: &[u8]) -> Hash {
    if data.len() == HASH_SIZE {
        let mut h = [0u8; 32];
        h.copy_from_slice(data);
        return h;
    }
    let half = data.len() / 2;
    node_hash(&tile_hash(&data[..half]), &tile_hash(&data[half..]))
}

/// Stored hash `index` from tile `t`'s `data` (`t` must hold it).
fn hash_from_tile(t: &Tile, data: &[u8], index: i64) -> Result<Hash, ProofError> {
    if data.len() < t.w as usize * HASH_SIZE {
        return Err(ProofError::InconsistentTile(format!(
            "{} has {} bytes",
            t.path(),
            data.len()
        )));
    }
    let (t1, start, end) = tile_range(t.h, index);
    if t.l != t1.l || t.n != t1.n || t.w < t1.w {
        return Err(ProofError::Invalid(format!(
            "index {index} is in {} not {}",
            t1.path(),
            t.path()
        )));
    }
    Ok(tile_hash(&data[start..end]))
}

/// `t`'s `k`th parent among the tiles of a tree of `n` records (`None`
/// past the tree).
fn tile_parent(t: Tile, k: u32, n: i64) -> Option<Tile> {
    let mut t = t;
    t.l += k;
    t.n >>= k * t.h;
    t.w = t.full_width();
    let max = n >> (t.l * t.h);
    if (t.n << t.h) + t.w as i64 >= max {
        if (t.n << t.h) >= max {
            return None;
        }
        t.w = (max - (t.n << t.h)) as u32;
    }
    Some(t)
}

/// A signed tree head: the tree size and its root hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tree {
    /// The number of records.
    pub n: i64,
    /// The root hash.
    pub hash: Hash,
}

impl Tree {
    /// The empty tree.
    pub fn empty() -> Tree {
        Tree {
            n: 0,
            hash: empty_hash(),
        }
    }

    /// Parses a signed note's text: `go.sum database tree\n<N>\n<hash>\n`
    /// (further lines ignored; N below 2^50).
    pub fn parse(text: &str) -> Option<Tree> {
        let rest = text.strip_prefix("go.sum database tree\n")?;
        let mut lines = rest.splitn(3, '\n');
        let n_s = lines.next()?;
        let h_s = lines.next()?;
        lines.next()?;
        // Sizes past 2^50 records are refused: no log is that large, and
        // the index arithmetic stays far from overflowing.
        let n: i64 = n_s.parse().ok().filter(|n| (0..1 << 50).contains(n))?;
        if n.to_string() != n_s || text.len() > 1_000_000 {
            return None;
        }
        Some(Tree {
            n,
            hash: parse_hash(h_s)?,
        })
    }
}

/// A read of stored hashes of a tree through its tiles.
#[derive(Debug, Clone)]
pub struct HashRead {
    tree: Tree,
    indexes: Vec<i64>,
    tiles: Vec<Tile>,
    /// The stored indexes of the tree hash and the tile holding each.
    stx: Vec<(i64, usize)>,
    /// The tile holding each asked index.
    index_tile: Vec<usize>,
}

impl HashRead {
    /// The tiles of height `h` to read `indexes` of `tree`: those that
    /// authenticate against the root hash first, parents before children.
    pub fn plan(tree: Tree, h: u32, indexes: &[i64]) -> Result<HashRead, ProofError> {
        let mut order: std::collections::HashMap<Tile, usize> = Default::default();
        let mut tiles = Vec::new();
        let mut stx = Vec::new();
        for x in tree_hash_indexes(tree.n) {
            let t = tile_parent(tile_for_index(h, x), 0, tree.n)
                .ok_or_else(|| ProofError::Invalid(format!("index {x} not in the tree")))?;
            let j = *order.entry(t).or_insert_with(|| {
                tiles.push(t);
                tiles.len() - 1
            });
            stx.push((x, j));
        }
        let end = stored_hash_index(0, tree.n);
        let mut index_tile = Vec::with_capacity(indexes.len());
        for &x in indexes {
            if x < 0 || x >= end {
                return Err(ProofError::Invalid(format!(
                    "index {x} not in a tree of size {}",
                    tree.n
                )));
            }
            let t = tile_for_index(h, x);
            // Walk up to a tile already planned (authenticated), then
            // back down, planning each child after its parent.
            let mut k = 0;
            let found = loop {
                let p = tile_parent(t, k, tree.n)
                    .ok_or_else(|| ProofError::Invalid(format!("index {x} has no tile")))?;
                if let Some(&j) = order.get(&p) {
                    break j;
                }
                k += 1;
            };
            let mut mine = found;
            for kk in (0..k).rev() {
                let p = tile_parent(t, kk, tree.n)
                    .ok_or_else(|| ProofError::Invalid(format!("index {x} has no tile")))?;
                if p.w != p.full_width() {
                    return Err(ProofError::Invalid(format!(
                        "tile {} has a parent but is not full",
                        p.path()
                    )));
                }
                tiles.push(p);
                order.insert(p, tiles.len() - 1);
                mine = tiles.len() - 1;
            }
            index_tile.push(mine);
        }
        Ok(HashRead {
            tree,
            indexes: indexes.to_vec(),
            tiles,
            stx,
            index_tile,
        })
    }

    /// The tiles to fetch, in order.
    pub fn tiles(&self) -> &[Tile] {
        &self.tiles
    }

    /// Authenticates `data` (one entry per tile of [`HashRead::tiles`])
    /// against the tree's root hash and returns the hashes asked.
    pub fn finish<D: AsRef<[u8]>>(&self, data: &[D]) -> Result<Vec<Hash>, ProofError> {
        if data.len() != self.tiles.len() {
            return Err(ProofError::Invalid("one tile data per tile".into()));
        }
        for (t, d) in self.tiles.iter().zip(data) {
            if d.as_ref().len() != t.w as usize * HASH_SIZE {
                return Err(ProofError::InconsistentTile(format!(
                    "{} has {} bytes, not {}",
                    t.path(),
                    d.as_ref().len(),
                    t.w as usize * HASH_SIZE
                )));
            }
        }
        if self.tree.n == 0 {
            return Err(ProofError::Invalid("the empty tree has no hashes".into()));
        }
        // The tiles of the tree hash lead to the root.
        let hash_at = |j: usize, x: i64| hash_from_tile(&self.tiles[j], data[j].as_ref(), x);
        let mut th: Option<Hash> = None;
        for &(x, j) in self.stx.iter().rev() {
            let h = hash_at(j, x)?;
            th = Some(match th {
                None => h,
                Some(r) => node_hash(&h, &r),
            });
        }
        if th != Some(self.tree.hash) {
            return Err(ProofError::InconsistentTile(format!(
                "the tiles do not lead to the root hash of tree {}",
                self.tree.n
            )));
        }
        // Each further (full) tile hashes to its entry in its parent.
        let first_child = self
            .stx
            .iter()
            .map(|(_, j)| j + 1)
            .max()
            .unwrap_or_default();
        for i in first_child..self.tiles.len() {
            let t = self.tiles[i];
            let p = tile_parent(t, 1, self.tree.n)
                .ok_or_else(|| ProofError::Invalid(format!("{} lost its parent", t.path())))?;
            let j = self
                .tiles
                .iter()
                .position(|x| *x == p)
                .ok_or_else(|| ProofError::Invalid(format!("{} lost its parent", t.path())))?;
            let want = hash_from_tile(&p, data[j].as_ref(), stored_hash_index(p.l * p.h, t.n))?;
            if want != tile_hash(data[i].as_ref()) {
                return Err(ProofError::InconsistentTile(format!(
                    "{} does not hash to its entry in {}",
                    t.path(),
                    p.path()
                )));
            }
        }
        self.indexes
            .iter()
            .zip(&self.index_tile)
            .map(|(&x, &j)| hash_at(j, x))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_indexes_round_trip() {
        for x in 0..5000 {
            let (l, n) = split_stored_hash_index(x);
            assert_eq!(stored_hash_index(l, n), x);
        }
        assert_eq!(
            format_hash(&empty_hash()),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn tree_notes() {
        let h = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let t = Tree::parse(&format!("go.sum database tree\n5\n{h}\nmore\n")).unwrap();
        assert_eq!((t.n, t.hash), (5, empty_hash()));
        for bad in [
            format!("go.sum database tree\n05\n{h}\n"),
            format!("go.sum database tree\n-1\n{h}\n"),
            format!("go.sum database tree\n{}\n{h}\n", 1i64 << 50),
            format!("go.sum database tree\n5\n{h}"),
            format!("other tree\n5\n{h}\n"),
            "go.sum database tree\n5\nAAAA\n".to_string(),
        ] {
            assert_eq!(Tree::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tile_paths() {
        let t = Tile {
            h: 3,
            l: 4,
            n: 1234067,
            w: 1,
        };
        assert_eq!(t.path(), "tile/3/4/x001/x234/067.p/1");
        assert_eq!(t.full().path(), "tile/3/4/x001/x234/067");
    }
}
