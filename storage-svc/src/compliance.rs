//! The compliance suite every [`Storage`] passes: Athens' storage
//! compliance tests (`pkg/storage/compliance`) plus the mesh's own promises
//! (create-only saves, one winner among concurrent saves, nothing visible
//! after an interrupted save, hashes and sizes checked, stat, catalog
//! paging, health, presigned reads, flat memory for large zips).
//!
//! Behind the cargo feature `testing`: test code, not part of the shipped
//! library, reusable by backends in other crates.
//!
//! Each check is an `async fn(Arc<dyn Storage>)` that panics on failure,
//! listed in [`CHECKS`] with the capability it needs, if any.
//! [`storage_compliance_tests!`](crate::storage_compliance_tests) expands
//! one test per check for a backend, each through [`run`], which runs the
//! check or reports it gated off by the backend's
//! [`Capabilities`]; a guard test asserts that the macro's list is exactly
//! [`CHECKS`]. Checks work in a namespace of their own (a fresh module
//! path prefix), so they can also run against a store that holds other
//! data. The large-zip check measures the process's peak memory, so [`run`]
//! runs it alone: every other check of the process waits for it.

use crate::{ByteStream, Capabilities, Coordinates, SaveRequest, Storage};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use modmesh_proto::{Error, ErrorKind, ModulePath, Result, MAX_CHUNK};
use sha2::{Digest, Sha256};
use std::any::Any;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A backend under test and whatever must live as long as it (a temporary
/// directory, a server task).
pub struct Fixture {
    /// The store under test.
    pub storage: Arc<dyn Storage>,
    skipped: Option<String>,
    excluded: Vec<(&'static str, String)>,
    _keep: Vec<Box<dyn Any + Send + Sync>>,
}

impl Fixture {
    /// A fixture of `storage` alone.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Fixture {
            storage,
            skipped: None,
            excluded: Vec::new(),
            _keep: Vec::new(),
        }
    }

    /// Why this fixture has no backend ([`Fixture::skipped`]), if so.
    pub fn skip_reason(&self) -> Option<&str> {
        self.skipped.as_deref()
    }

    /// Does not run the check `check` against this fixture, because its
    /// server (not the backend) cannot pass it: [`run`] prints
    /// `EXCLUDED: <why>`. For servers that stand in for the real one with a
    /// known gap, such as a conditional write that is not atomic.
    pub fn excluding(mut self, check: &'static str, why: impl Into<String>) -> Self {
        assert!(
            CHECKS.iter().any(|c| c.name == check),
            "no compliance check named {check:?}"
        );
        self.excluded.push((check, why.into()));
        self
    }

    /// No backend: its server is not installed here. [`run`] prints
    /// `SKIPPED: <why>` and passes — unless `CI=true` is set, where it
    /// panics (a test machine must have every server).
    pub fn skipped(why: impl Into<String>) -> Self {
        let why = why.into();
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and {why}");
        }
        Fixture {
            storage: Arc::new(crate::backends::MemoryStorage::new()),
            skipped: Some(why),
            excluded: Vec::new(),
            _keep: Vec::new(),
        }
    }

    /// Keeps `guard` alive (dropped with the fixture).
    pub fn keep(mut self, guard: impl Any + Send + Sync) -> Self {
        self._keep.push(Box::new(guard));
        self
    }
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture").finish_non_exhaustive()
    }
}

/// Expands one `#[tokio::test(flavor = "multi_thread")]` per check of
/// [`CHECKS`](crate::compliance::CHECKS) into a module `$name`, each test
/// building a fresh [`Fixture`] with `$make` (an expression evaluating to a
/// future of a `Fixture`) and running the check through
/// [`run`](crate::compliance::run); plus `every_check_runs`, the guard that
/// the list here is exactly `CHECKS`. Adding a backend is one line:
///
/// ```text
/// modmesh_storage::storage_compliance_tests!(memory, async {
///     Fixture::new(Arc::new(MemoryStorage::new()))
/// });
/// ```
#[macro_export]
macro_rules! storage_compliance_tests {
    ($name:ident, $make:expr) => {
        $crate::storage_compliance_tests!(@module $name, $make;
            not_found,
            list_order,
            list_suffix_isolation,
            delete,
            get_round_trip,
            exists_after_save,
            prerelease_is_not_a_prefix,
            create_only,
            concurrent_saves,
            interrupted_save,
            cancelled_save,
            non_canonical_rejected,
            stat,
            wrong_hash_refused,
            size_hint,
            catalog,
            health,
            capabilities_declared,
            presigned_zip,
            large_zip_flat_memory,
        );
    };
    (@module $name:ident, $make:expr; $($check:ident),* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $check() {
                    $crate::compliance::run(stringify!($check), || async { $make.await }).await;
                }
            )*
            #[test]
            fn every_check_runs() {
                $crate::compliance::assert_all_checks(&[$(stringify!($check)),*]);
            }
        }
    };
}

/// A check's function.
pub type CheckFn = fn(Arc<dyn Storage>) -> BoxFuture<'static, ()>;

/// Whether a backend's capabilities allow a check.
pub type Gate = fn(&Capabilities) -> bool;

/// One compliance check.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// Its name (the function's).
    pub name: &'static str,
    /// The capability it needs (named for the report), if any.
    pub needs: Option<(&'static str, Gate)>,
    /// Whether it must run alone in the process (it measures memory).
    pub alone: bool,
    /// The check.
    pub run: CheckFn,
}

macro_rules! check {
    ($f:ident) => {
        Check {
            name: stringify!($f),
            needs: None,
            alone: false,
            run: |s| Box::pin($f(s)),
        }
    };
    ($f:ident, $cap:ident) => {
        Check {
            name: stringify!($f),
            needs: Some((stringify!($cap), |c: &Capabilities| c.$cap)),
            alone: false,
            run: |s| Box::pin($f(s)),
        }
    };
}

/// Every check, in the order the macro lists them.
pub static CHECKS: &[Check] = &[
    check!(not_found),
    check!(list_order),
    check!(list_suffix_isolation),
    check!(delete),
    check!(get_round_trip),
    check!(exists_after_save),
    check!(prerelease_is_not_a_prefix),
    check!(create_only),
    check!(concurrent_saves),
    check!(interrupted_save),
    check!(cancelled_save),
    check!(non_canonical_rejected),
    check!(stat),
    check!(wrong_hash_refused),
    check!(size_hint),
    check!(catalog),
    check!(health),
    check!(capabilities_declared),
    check!(presigned_zip, presigned_reads),
    Check {
        alone: true,
        ..check!(large_zip_flat_memory, streamed_saves)
    },
];

/// Held shared by every check, exclusively by those that run alone.
static ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Runs the check `name` of [`CHECKS`] against a fixture from `make`, or
/// prints why it is gated off (the capability it needs is not declared).
/// Panics if there is no such check.
pub async fn run<F, Fut>(name: &str, make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Fixture>,
{
    let check = CHECKS
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no compliance check named {name:?}"));
    let (_shared, _alone) = if check.alone {
        (None, Some(ALONE.write().await))
    } else {
        (Some(ALONE.read().await), None)
    };
    let fixture = make().await;
    if let Some(why) = &fixture.skipped {
        println!("compliance check {name}: SKIPPED: {why}");
        return;
    }
    if let Some((_, why)) = fixture.excluded.iter().find(|(c, _)| *c == name) {
        println!("compliance check {name}: EXCLUDED for this server: {why}");
        return;
    }
    let caps = fixture.storage.capabilities();
    if let Some((cap, has)) = check.needs {
        if !has(&caps) {
            println!("compliance check {name}: gated off, the backend does not declare {cap}");
            return;
        }
    }
    (check.run)(fixture.storage.clone()).await;
    drop(fixture);
}

/// The guard: `listed` (a backend's test list) is exactly [`CHECKS`], with
/// no name twice.
pub fn assert_all_checks(listed: &[&str]) {
    let listed_set: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(listed_set.len(), listed.len(), "a check listed twice");
    let all: BTreeSet<&str> = CHECKS.iter().map(|c| c.name).collect();
    assert_eq!(listed_set, all, "the test list differs from CHECKS");
}

// ---------------------------------------------------------------- helpers

/// A module path prefix no other check (or run) uses.
pub fn namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("github.com/mm-{}", &id[..12])
}

/// Coordinates from strings that are known to be valid.
pub fn coords(module: &str, version: &str) -> Coordinates {
    Coordinates::new(module, version).expect("valid coordinates")
}

fn module(path: &str) -> ModulePath {
    ModulePath::new(path).expect("valid module path")
}

/// `data` as a zip stream of chunks of at most [`MAX_CHUNK`].
pub fn stream_of(data: &[u8]) -> ByteStream {
    let chunks: Vec<Result<Bytes>> = data
        .chunks(MAX_CHUNK)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

/// A save request of `c` (canonical) with no hash or size.
pub fn request(c: &Coordinates, info: &[u8], go_mod: &[u8]) -> SaveRequest {
    SaveRequest::new(
        c,
        Bytes::copy_from_slice(info),
        Bytes::copy_from_slice(go_mod),
    )
    .expect("a canonical version")
}

/// Saves a version with the given contents.
pub async fn save(
    s: &dyn Storage,
    c: &Coordinates,
    info: &[u8],
    go_mod: &[u8],
    zip: &[u8],
) -> Result<()> {
    s.save(request(c, info, go_mod), stream_of(zip)).await
}

/// Saves Athens' mock (`123`, `456`, `789`), panicking on failure.
pub async fn save_mock(s: &dyn Storage, c: &Coordinates) {
    save(s, c, b"123", b"456", b"789")
        .await
        .unwrap_or_else(|e| panic!("save {c}: {e}"));
}

/// Reads a whole zip, checking that every chunk is at most [`MAX_CHUNK`] and
/// that the announced size matches what arrives.
pub async fn read_zip(s: &dyn Storage, c: &Coordinates) -> Result<Vec<u8>> {
    let mut r = s.zip(c).await?;
    let mut out = Vec::new();
    while let Some(chunk) = r.stream.next().await {
        let chunk = chunk?;
        assert!(
            chunk.len() <= MAX_CHUNK,
            "zip chunk of {} bytes",
            chunk.len()
        );
        out.extend_from_slice(&chunk);
    }
    assert_eq!(
        r.size,
        out.len() as u64,
        "{c}: announced zip size differs from the bytes"
    );
    Ok(out)
}

#[track_caller]
fn expect_kind<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, what: &str) {
    match r {
        Err(e) => assert_eq!(e.kind, kind, "{what}: wrong error kind: {e}"),
        Ok(v) => panic!("{what}: expected {kind}, got Ok({v:?})"),
    }
}

/// Asserts that `c` is not visible in any way.
pub async fn assert_absent(s: &dyn Storage, c: &Coordinates) {
    let what = |op: &str| format!("{op} {c}");
    assert!(!s.exists(c).await.expect("exists"), "{c} exists");
    expect_kind(s.info(c).await, ErrorKind::NotFound, &what("info"));
    expect_kind(s.go_mod(c).await, ErrorKind::NotFound, &what("go_mod"));
    expect_kind(
        s.zip(c).await.map(|r| r.size),
        ErrorKind::NotFound,
        &what("zip"),
    );
    expect_kind(s.stat(c).await, ErrorKind::NotFound, &what("stat"));
    let listed = s.list(&c.module).await.expect("list");
    assert!(
        !listed.contains(&c.version.to_string()),
        "{c} listed: {listed:?}"
    );
    let page = s
        .catalog(None, 0, c.module.as_str())
        .await
        .expect("catalog");
    assert!(!page.entries.contains(c), "{c} catalogued");
}

/// Asserts that `c` is stored with exactly these contents.
pub async fn assert_stored(
    s: &dyn Storage,
    c: &Coordinates,
    info: &[u8],
    go_mod: &[u8],
    zip: &[u8],
) {
    assert!(s.exists(c).await.expect("exists"), "{c} does not exist");
    assert_eq!(s.info(c).await.expect("info"), info, "{c} info");
    assert_eq!(s.go_mod(c).await.expect("go_mod"), go_mod, "{c} go.mod");
    let got = read_zip(s, c).await.expect("zip");
    assert!(
        got == zip,
        "{c}: zip differs ({} bytes, expected {})",
        got.len(),
        zip.len()
    );
}

/// Deterministic bytes (a seeded xoshiro256**), fast enough to make
/// hundreds of MiB.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    /// A generator seeded from `seed` (through splitmix64).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let mut words = out.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let k = rest.len();
        rest.copy_from_slice(&last[..k]);
        out
    }
}

/// The h1 hash of a file set, computed from the plain contents (not from a
/// zip), to check what backends compute from zips.
pub fn expected_h1(files: &[(&str, &[u8])]) -> String {
    modmesh_test_support::h1_of_files(files)
}

/// A zip of `files` (deflated and stored entries alternating).
pub fn make_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (i, (name, data)) in files.iter().enumerate() {
        let method = if i % 2 == 0 {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        w.start_file(
            *name,
            SimpleFileOptions::default().compression_method(method),
        )
        .expect("zip entry");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

// ----------------------------------------------------------------- checks

/// Athens' `testNotFound`: reads and delete of a missing version are
/// `NotFound`, `exists` is false, and an unknown module lists empty.
pub async fn not_found(s: Arc<dyn Storage>) {
    let ns = namespace();
    let c = coords(&format!("{ns}/athens"), "v1.0.0");
    expect_kind(s.delete(&c).await, ErrorKind::NotFound, "delete");
    assert_absent(&*s, &c).await;
    assert_eq!(s.list(&c.module).await.expect("list"), Vec::<String>::new());
    // A module that exists does not make another version of it exist.
    save_mock(&*s, &coords(&format!("{ns}/athens"), "v1.0.1")).await;
    assert_absent(&*s, &c).await;
    expect_kind(
        s.delete(&c).await,
        ErrorKind::NotFound,
        "delete of a sibling",
    );
}

/// Athens' `testList`, with semantic-version order: saved out of order,
/// listed as v1.1.0 < v1.2.0-rc.1 < v1.2.0 < v1.3.0 < v1.10.0.
pub async fn list_order(s: Arc<dyn Storage>) {
    let m = format!("{}/list", namespace());
    for v in ["v1.10.0", "v1.2.0", "v1.1.0", "v1.3.0", "v1.2.0-rc.1"] {
        save_mock(&*s, &coords(&m, v)).await;
    }
    assert_eq!(
        s.list(&module(&m)).await.expect("list"),
        ["v1.1.0", "v1.2.0-rc.1", "v1.2.0", "v1.3.0", "v1.10.0"]
    );
}

/// Athens' `testListSuffix`: `one/two`, `one/two/v2` and `one/two-other`
/// never mix, and `one` (a prefix of all) lists empty.
pub async fn list_suffix_isolation(s: Arc<dyn Storage>) {
    let ns = namespace();
    let two = format!("{ns}/one/two");
    let v2 = format!("{ns}/one/two/v2");
    let other = format!("{ns}/one/two-other");
    save_mock(&*s, &coords(&two, "v1.1.0")).await;
    save_mock(&*s, &coords(&v2, "v2.0.0")).await;
    save_mock(&*s, &coords(&v2, "v2.1.0")).await;
    save_mock(&*s, &coords(&other, "v1.0.0")).await;
    assert_eq!(s.list(&module(&two)).await.expect("list"), ["v1.1.0"]);
    assert_eq!(
        s.list(&module(&v2)).await.expect("list"),
        ["v2.0.0", "v2.1.0"]
    );
    assert_eq!(s.list(&module(&other)).await.expect("list"), ["v1.0.0"]);
    let one = s.list(&module(&format!("{ns}/one"))).await.expect("list");
    assert!(one.is_empty(), "{ns}/one lists {one:?}");
    let two_o = s
        .list(&module(&format!("{ns}/one/two-o")))
        .await
        .expect("list");
    assert!(two_o.is_empty(), "{ns}/one/two-o lists {two_o:?}");
    assert!(!s.exists(&coords(&two, "v2.0.0")).await.expect("exists"));
}

/// Athens' `testDelete`: after delete the version is gone everywhere, a
/// second delete is `NotFound`, siblings stay, and it can be saved again.
pub async fn delete(s: Arc<dyn Storage>) {
    let m = format!("{}/delete", namespace());
    let c = coords(&m, "v1.0.0");
    let sibling = coords(&m, "v1.0.1");
    save_mock(&*s, &c).await;
    save_mock(&*s, &sibling).await;
    s.delete(&c).await.expect("delete");
    assert_absent(&*s, &c).await;
    expect_kind(s.delete(&c).await, ErrorKind::NotFound, "second delete");
    assert_stored(&*s, &sibling, b"123", b"456", b"789").await;
    assert_eq!(s.list(&module(&m)).await.expect("list"), ["v1.0.1"]);
    save(&*s, &c, b"i2", b"m2", b"z2")
        .await
        .expect("save after delete");
    assert_stored(&*s, &c, b"i2", b"m2", b"z2").await;
}

/// Athens' `testGet`: info, go.mod and zip round-trip with the zip's size;
/// plus a multi-chunk zip (sent in uneven chunks) read back in chunks of at
/// most `MAX_CHUNK`.
pub async fn get_round_trip(s: Arc<dyn Storage>) {
    let m = format!("{}/get", namespace());
    let c = coords(&m, "v1.0.0");
    save_mock(&*s, &c).await;
    assert_stored(&*s, &c, b"123", b"456", b"789").await;
    assert_eq!(s.zip(&c).await.expect("zip").size, 3);

    let big = Rng::new(7).bytes(2 * MAX_CHUNK + 12345);
    let sizes = [1, 1000, MAX_CHUNK, 777_777];
    let mut chunks = Vec::new();
    let mut at = 0;
    for n in sizes {
        chunks.push(Ok(Bytes::copy_from_slice(&big[at..at + n])));
        at += n;
    }
    chunks.push(Ok(Bytes::copy_from_slice(&big[at..])));
    let c2 = coords(&m, "v1.1.0");
    let info = br#"{"Version":"v1.1.0","Time":"2024-01-02T03:04:05Z"}"#;
    s.save(
        request(&c2, info, b"module x\n"),
        futures::stream::iter(chunks).boxed(),
    )
    .await
    .expect("save big");
    assert_stored(&*s, &c2, info, b"module x\n", &big).await;
    assert_eq!(s.zip(&c2).await.expect("zip").size, big.len() as u64);
}

/// Athens' `testExists`: true after save, false for another version.
pub async fn exists_after_save(s: Arc<dyn Storage>) {
    let m = format!("{}/exists", namespace());
    let c = coords(&m, "v1.0.0");
    assert!(!s.exists(&c).await.expect("exists"));
    save_mock(&*s, &c).await;
    assert!(s.exists(&c).await.expect("exists"));
    assert!(!s.exists(&coords(&m, "v1.0.1")).await.expect("exists"));
}

/// Athens' `testShouldNotExist`: `v1.2.3-pre.1` stored never makes
/// `v1.2.3-pre` (or `v1.2.3`) exist.
pub async fn prerelease_is_not_a_prefix(s: Arc<dyn Storage>) {
    let m = format!("{}/pre", namespace());
    save_mock(&*s, &coords(&m, "v1.2.3-pre.1")).await;
    for v in ["v1.2.3-pre", "v1.2.3", "v1.2.3-pre.10"] {
        assert_absent(&*s, &coords(&m, v)).await;
    }
    assert_eq!(s.list(&module(&m)).await.expect("list"), ["v1.2.3-pre.1"]);
}

/// A second save of a stored version is `AlreadyExists` and changes nothing.
pub async fn create_only(s: Arc<dyn Storage>) {
    let m = format!("{}/create-only", namespace());
    let c = coords(&m, "v1.0.0");
    save(&*s, &c, b"info-1", b"mod-1", b"zip-1")
        .await
        .expect("first save");
    let before = s.stat(&c).await.expect("stat");
    expect_kind(
        save(&*s, &c, b"info-2", b"mod-2", b"zip-two").await,
        ErrorKind::AlreadyExists,
        "second save",
    );
    expect_kind(
        save(&*s, &c, b"info-1", b"mod-1", b"zip-1").await,
        ErrorKind::AlreadyExists,
        "identical second save",
    );
    assert_stored(&*s, &c, b"info-1", b"mod-1", b"zip-1").await;
    assert_eq!(s.stat(&c).await.expect("stat"), before);
    assert_eq!(s.list(&module(&m)).await.expect("list"), ["v1.0.0"]);
}

/// 16 concurrent saves of one version with different contents: exactly one
/// wins, the others get `AlreadyExists`, and the stored version is all the
/// winner's.
pub async fn concurrent_saves(s: Arc<dyn Storage>) {
    const N: usize = 16;
    let m = format!("{}/race", namespace());
    let c = coords(&m, "v1.0.0");
    let content = |i: usize| {
        (
            format!(r#"{{"Version":"v1.0.0","Saver":{i}}}"#).into_bytes(),
            format!("module {m} // saver {i}\n").into_bytes(),
            Rng::new(i as u64).bytes(MAX_CHUNK + MAX_CHUNK / 2 + i),
        )
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (s, c, barrier) = (s.clone(), c.clone(), barrier.clone());
        let (info, go_mod, zip) = content(i);
        tasks.push(tokio::spawn(async move {
            // Chunks that yield between them, so the saves interleave.
            let chunks: Vec<Bytes> = zip.chunks(256 << 10).map(Bytes::copy_from_slice).collect();
            let stream = futures::stream::iter(chunks)
                .then(|b| async move {
                    tokio::task::yield_now().await;
                    Ok(b)
                })
                .boxed();
            barrier.wait().await;
            s.save(request(&c, &info, &go_mod), stream).await
        }));
    }
    let mut winners = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("save task") {
            Ok(()) => winners.push(i),
            Err(e) => assert_eq!(e.kind, ErrorKind::AlreadyExists, "saver {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (info, go_mod, zip) = content(winners[0]);
    assert_stored(&*s, &c, &info, &go_mod, &zip).await;
    assert_eq!(s.list(&module(&m)).await.expect("list"), ["v1.0.0"]);
}

/// A zip stream that yields `bytes` bytes and then the error `err`.
pub fn failing_stream(bytes: usize, err: Error) -> ByteStream {
    let data = Rng::new(99).bytes(bytes);
    let chunks: Vec<Result<Bytes>> = data
        .chunks(MAX_CHUNK)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .chain(std::iter::once(Err(err)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

/// A save whose zip stream fails (after 3 MiB, or at once) returns that
/// error and leaves nothing visible; a later full save succeeds.
pub async fn interrupted_save(s: Arc<dyn Storage>) {
    let m = format!("{}/interrupted", namespace());
    let mut saved: Vec<&str> = Vec::new();
    for (v, bytes) in [("v1.0.0", 3 * MAX_CHUNK + 17), ("v1.0.1", 0)] {
        let c = coords(&m, v);
        let err = Error::unavailable("upstream connection reset");
        let r = s
            .save(request(&c, b"info", b"mod"), failing_stream(bytes, err))
            .await;
        expect_kind(r, ErrorKind::Unavailable, "interrupted save");
        assert_absent(&*s, &c).await;
        assert_eq!(s.list(&module(&m)).await.expect("list"), saved);
        let zip = Rng::new(5).bytes(bytes + 1);
        save(&*s, &c, b"info", b"mod", &zip)
            .await
            .expect("full save after an interrupted one");
        assert_stored(&*s, &c, b"info", b"mod", &zip).await;
        saved.push(v);
    }
}

/// A save abandoned mid-stream (its future dropped, as when a client goes
/// away) leaves nothing visible; a later full save succeeds.
pub async fn cancelled_save(s: Arc<dyn Storage>) {
    let m = format!("{}/cancelled", namespace());
    let c = coords(&m, "v1.0.0");
    let head = Rng::new(3).bytes(2 * MAX_CHUNK);
    let stalled = stream_of(&head).chain(futures::stream::pending()).boxed();
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        s.save(request(&c, b"info", b"mod"), stalled),
    )
    .await;
    assert!(r.is_err(), "a save whose zip never ends finished: {r:?}");
    assert_absent(&*s, &c).await;
    // The abandoned save may still be unwinding elsewhere (another hop);
    // it must never become visible.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_absent(&*s, &c).await;
    save(&*s, &c, b"info", b"mod", b"zip")
        .await
        .expect("save after a cancelled one");
    assert_stored(&*s, &c, b"info", b"mod", b"zip").await;
}

/// Saves need a canonical version: a query such as `master` cannot make a
/// save request (`Invalid`), so nothing of it reaches the store.
pub async fn non_canonical_rejected(s: Arc<dyn Storage>) {
    let m = format!("{}/queries", namespace());
    for v in ["master", "v1", "v1.2", "latest", "v1.0.0+meta"] {
        let c = coords(&m, v);
        expect_kind(
            SaveRequest::new(&c, Bytes::from_static(b"i"), Bytes::from_static(b"m")),
            ErrorKind::Invalid,
            &format!("save request of {c}"),
        );
        assert!(!s.exists(&c).await.expect("exists"), "{c} exists");
    }
    assert!(s.list(&module(&m)).await.expect("list").is_empty());
}

/// `stat`: sizes, the time the version became visible, the go.mod hash, and
/// the zip's h1: computed while saving when not given, kept when given (and
/// right), never made up for bytes that are no zip.
pub async fn stat(s: Arc<dyn Storage>) {
    let m = format!("{}/stat", namespace());
    let prefix = format!("{m}@v1.0.0");
    let files_owned = [
        (
            format!("{prefix}/go.mod"),
            format!("module {m}\n\ngo 1.21\n").into_bytes(),
        ),
        (
            format!("{prefix}/a.go"),
            b"package stat\n\nconst A = 1\n".repeat(50),
        ),
        (format!("{prefix}/b/c.txt"), Rng::new(11).bytes(70_000)),
        (format!("{prefix}/LICENSE"), b"MIT\n".to_vec()),
    ];
    let files: Vec<(&str, &[u8])> = files_owned
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let zip = make_zip(&files);
    let h1 = expected_h1(&files);
    let go_mod = files[0].1;
    let mod_h1 = expected_h1(&[("go.mod", go_mod)]);
    let info = br#"{"Version":"v1.0.0","Time":"2023-05-06T07:08:09Z"}"#;

    let c = coords(&m, "v1.0.0");
    let before = now_ms();
    s.save(request(&c, info, go_mod), stream_of(&zip))
        .await
        .expect("save");
    let after = now_ms();
    let st = s.stat(&c).await.expect("stat");
    assert_eq!(st.coordinates, c);
    assert_eq!(st.info_size, info.len() as u64);
    assert_eq!(st.mod_size, go_mod.len() as u64);
    assert_eq!(st.zip_size, zip.len() as u64);
    assert_eq!(st.mod_hash, mod_h1);
    assert_eq!(
        st.zip_hash.as_deref(),
        Some(h1.as_str()),
        "zip hash of {c}, saved without one"
    );
    assert!(
        st.stored_at_unix_ms >= before - 2000 && st.stored_at_unix_ms <= after + 2000,
        "stored_at {} not within [{before}, {after}]",
        st.stored_at_unix_ms
    );
    assert_eq!(s.stat(&c).await.expect("stat again"), st, "stat is stable");

    // A hash given with the save is known from then on.
    let c2 = coords(&m, "v1.1.0");
    let mut req = request(&c2, info, go_mod);
    req.zip_hash = Some(h1.clone());
    s.save(req, stream_of(&zip)).await.expect("save with hash");
    assert_eq!(
        s.stat(&c2).await.expect("stat").zip_hash.as_deref(),
        Some(h1.as_str())
    );

    // Bytes that are no zip have no h1.
    let c3 = coords(&m, "v1.2.0");
    save_mock(&*s, &c3).await;
    let st3 = s.stat(&c3).await.expect("stat of the mock");
    assert_eq!((st3.info_size, st3.mod_size, st3.zip_size), (3, 3, 3));
    assert_eq!(st3.zip_hash, None, "an h1 for bytes that are no zip");
    assert_eq!(st3.mod_hash, expected_h1(&[("go.mod", b"456")]));

    expect_kind(
        s.stat(&coords(&m, "v9.9.9")).await,
        ErrorKind::NotFound,
        "stat of a missing version",
    );
}

/// `catalog`: pages of a small size across several modules, in the
/// backend's own order, whose union is exactly what was saved, with no
/// repeats; prefix filters are string prefixes of the module path; deleted
/// and failed saves are absent; a malformed token is `Invalid`.
pub async fn catalog(s: Arc<dyn Storage>) {
    let ns = namespace();
    // Saved out of order; listed here in catalog order.
    let expected: Vec<Coordinates> = [
        ("a", "v1.0.0"),
        ("a", "v1.1.0"),
        ("a", "v1.2.0"),
        ("a", "v1.10.0"),
        ("a-b", "v0.1.0"),
        ("a/v2", "v2.0.0"),
        ("b", "v1.0.0-rc.1"),
        ("b", "v1.0.0"),
        ("c/d/e", "v0.0.1"),
    ]
    .iter()
    .map(|(m, v)| coords(&format!("{ns}/{m}"), v))
    .collect();
    let mut order: Vec<usize> = (0..expected.len()).collect();
    order.reverse();
    order.swap(0, 4);
    for i in order {
        save_mock(&*s, &expected[i]).await;
    }
    let deleted = coords(&format!("{ns}/b"), "v0.9.0");
    save_mock(&*s, &deleted).await;
    s.delete(&deleted).await.expect("delete");
    let failed = coords(&format!("{ns}/c/d/e"), "v0.0.2");
    let r = s
        .save(
            request(&failed, b"i", b"m"),
            failing_stream(10, Error::internal("boom")),
        )
        .await;
    assert!(r.is_err());

    // Walks every page; checks page sizes and that tokens end the walk.
    async fn walk(s: &dyn Storage, size: usize, prefix: &str) -> (Vec<Coordinates>, usize) {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = s
                .catalog(token.as_deref(), size, prefix)
                .await
                .expect("catalog");
            pages += 1;
            assert!(pages < 10_000, "catalog never ends");
            assert!(
                page.entries.len() <= size,
                "page of {} > {size}",
                page.entries.len()
            );
            all.extend(page.entries.iter().cloned());
            match page.next_page_token {
                Some(t) => {
                    assert_eq!(page.entries.len(), size, "a short page with a next token");
                    token = Some(t);
                }
                None => return (all, pages),
            }
        }
    }

    // The same set, whatever the order, and never an entry twice.
    fn same(got: &[Coordinates], want: &[Coordinates], what: &str) {
        let set: BTreeSet<&Coordinates> = got.iter().collect();
        assert_eq!(set.len(), got.len(), "{what}: repeated entries in {got:?}");
        let want: BTreeSet<&Coordinates> = want.iter().collect();
        assert_eq!(set, want, "{what}");
    }

    let (all, pages) = walk(&*s, 2, &ns).await;
    same(&all, &expected, &format!("catalog of {ns} in pages of 2"));
    assert_eq!(pages, expected.len().div_ceil(2));
    let (all3, pages) = walk(&*s, 3, &ns).await;
    same(&all3, &expected, &format!("catalog of {ns} in pages of 3"));
    assert!((3..=4).contains(&pages), "{pages} pages of 3 for 9 entries");
    assert_eq!(all, all3, "the order changed between walks");

    let page = s.catalog(None, 0, &ns).await.expect("default page size");
    same(&page.entries, &expected, "one default page");
    assert_eq!(page.next_page_token, None);

    let (a, _) = walk(&*s, 4, &format!("{ns}/a")).await;
    same(&a, &expected[..6], &format!("prefix {ns}/a"));
    let (a_slash, _) = walk(&*s, 4, &format!("{ns}/a/")).await;
    same(&a_slash, &expected[5..6], &format!("prefix {ns}/a/"));
    let (none, pages) = walk(&*s, 4, &format!("{ns}/zzz")).await;
    assert!(none.is_empty() && pages == 1);

    // Everything, without a prefix: a superset, no repeats.
    let (everything, _) = walk(&*s, 1000, "").await;
    let set: BTreeSet<&Coordinates> = everything.iter().collect();
    assert_eq!(set.len(), everything.len(), "repeated entries");
    for c in &expected {
        assert!(set.contains(c), "{c} missing from the full catalog");
    }

    for bad in ["!!!", "bm90LWEtdG9rZW4", "Zm9vQA"] {
        expect_kind(
            s.catalog(Some(bad), 2, &ns).await,
            ErrorKind::Invalid,
            &format!("token {bad:?}"),
        );
    }
}

/// A real zip of a few files for `m@v`, and its h1.
fn real_zip(m: &str, v: &str, seed: u64) -> (Vec<u8>, String) {
    let prefix = format!("{m}@{v}");
    let files_owned = [
        (
            format!("{prefix}/go.mod"),
            format!("module {m}\n").into_bytes(),
        ),
        (format!("{prefix}/x.go"), Rng::new(seed).bytes(5000)),
    ];
    let files: Vec<(&str, &[u8])> = files_owned
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    (make_zip(&files), expected_h1(&files))
}

/// A save whose zip has another h1 than the one it carries is `Invalid`
/// and stores nothing; so is a hash given for bytes that are no zip; the
/// right hash is accepted and kept.
pub async fn wrong_hash_refused(s: Arc<dyn Storage>) {
    let m = format!("{}/hash", namespace());
    let c = coords(&m, "v1.0.0");
    let (zip, h1) = real_zip(&m, "v1.0.0", 1);
    let (_, other_h1) = real_zip(&m, "v1.0.0", 2);
    assert_ne!(h1, other_h1);
    for (what, bytes, hash) in [
        ("a wrong hash", zip.as_slice(), other_h1.as_str()),
        (
            "a hash for bytes that are no zip",
            b"789".as_slice(),
            h1.as_str(),
        ),
        ("a malformed hash", zip.as_slice(), "h1:nonsense"),
    ] {
        let mut req = request(&c, b"info", b"mod");
        req.zip_hash = Some(hash.to_string());
        expect_kind(
            s.save(req, stream_of(bytes)).await,
            ErrorKind::Invalid,
            &format!("save with {what}"),
        );
        assert_absent(&*s, &c).await;
    }
    let mut req = request(&c, b"info", b"mod");
    req.zip_hash = Some(h1.clone());
    s.save(req, stream_of(&zip))
        .await
        .expect("save with the right hash");
    assert_stored(&*s, &c, b"info", b"mod", &zip).await;
    assert_eq!(s.stat(&c).await.expect("stat").zip_hash, Some(h1));
}

/// A save may announce its zip's size: the right size stores (also across
/// several chunks), any other is `Invalid` and stores nothing.
pub async fn size_hint(s: Arc<dyn Storage>) {
    let m = format!("{}/sized", namespace());
    let zip = Rng::new(8).bytes(3 * MAX_CHUNK + 17);
    let n = zip.len() as u64;
    for (v, announced) in [("v1.0.0", n + 1), ("v1.0.1", n - 1), ("v1.0.2", 0)] {
        let c = coords(&m, v);
        let mut req = request(&c, b"info", b"mod");
        req.zip_size = Some(announced);
        expect_kind(
            s.save(req, stream_of(&zip)).await,
            ErrorKind::Invalid,
            &format!("save of {n} bytes announced as {announced}"),
        );
        assert_absent(&*s, &c).await;
    }
    for (v, data) in [("v1.1.0", zip.as_slice()), ("v1.1.1", b"".as_slice())] {
        let c = coords(&m, v);
        let mut req = request(&c, b"info", b"mod");
        req.zip_size = Some(data.len() as u64);
        s.save(req, stream_of(data))
            .await
            .expect("save with its size");
        assert_stored(&*s, &c, b"info", b"mod", data).await;
    }
    assert_eq!(
        s.list(&module(&m)).await.expect("list"),
        ["v1.1.0", "v1.1.1"]
    );
}

/// A running backend reports itself healthy.
pub async fn health(s: Arc<dyn Storage>) {
    s.health().await.expect("a running backend is healthy");
}

/// What a backend declares holds: without presigned reads, `presign_zip`
/// answers `None`; with them, a missing version is `NotFound`.
pub async fn capabilities_declared(s: Arc<dyn Storage>) {
    let caps = s.capabilities();
    let m = format!("{}/caps", namespace());
    let c = coords(&m, "v1.0.0");
    save_mock(&*s, &c).await;
    let ttl = Duration::from_secs(60);
    if caps.presigned_reads {
        expect_kind(
            s.presign_zip(&coords(&m, "v9.0.0"), ttl).await,
            ErrorKind::NotFound,
            "presign of a missing version",
        );
    } else {
        assert_eq!(s.presign_zip(&c, ttl).await.expect("presign"), None);
    }
    if caps.unsized_saves {
        assert!(caps.streamed_saves, "unsized saves stream, so saves stream");
    }
}

/// A presigned URL serves the stored zip with a plain GET (no credentials).
pub async fn presigned_zip(s: Arc<dyn Storage>) {
    let m = format!("{}/presigned", namespace());
    let c = coords(&m, "v1.0.0");
    let zip = Rng::new(12).bytes(2 * MAX_CHUNK + 5);
    save(&*s, &c, b"info", b"mod", &zip).await.expect("save");
    let url = s
        .presign_zip(&c, Duration::from_secs(300))
        .await
        .expect("presign")
        .expect("a backend declaring presigned reads gives a URL");
    let resp = reqwest::get(&url).await.expect("GET the presigned URL");
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let body = resp.bytes().await.expect("body");
    assert!(body == zip, "the presigned URL served other bytes");
    expect_kind(
        s.presign_zip(&coords(&m, "v9.0.0"), Duration::from_secs(60))
            .await,
        ErrorKind::NotFound,
        "presign of a missing version",
    );
}

/// [`large_zip`] for a backend that streams saves (nothing held in memory).
pub async fn large_zip_flat_memory(s: Arc<dyn Storage>) {
    let r = large_zip(s, 0).await;
    println!(
        "large_zip: {} MiB saved and read back in {:.1?}; peak RSS grew {} MiB",
        r.size >> 20,
        r.elapsed,
        r.rss_growth >> 20
    );
}

// ------------------------------------------------------------- large zip

/// The size [`large_zip`] saves: 200 MiB.
pub const LARGE_ZIP_SIZE: usize = 200 << 20;

/// What [`large_zip`] measured.
#[derive(Debug, Clone, Copy)]
pub struct LargeZipReport {
    /// Bytes saved and read back.
    pub size: u64,
    /// Growth of the process's peak resident memory during the check.
    pub rss_growth: u64,
    /// How long saving and reading back took.
    pub elapsed: Duration,
}

/// Resets this process's peak RSS (`VmHWM`) to its current RSS and returns
/// it, in bytes. Linux only.
pub fn reset_peak_rss() -> u64 {
    // Hand freed memory back first, so memory other checks freed (and the
    // allocator kept) cannot hide this check's growth.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; it has no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    modmesh_test_support::reset_peak_rss("self").expect("write /proc/self/clear_refs");
    modmesh_test_support::self_peak_rss()
}

/// This process's peak RSS (`VmHWM`) in bytes. Linux only.
pub fn peak_rss() -> u64 {
    modmesh_test_support::self_peak_rss()
}

/// Saves a 200 MiB zip, generated on the fly in 1 MiB chunks from a seeded
/// RNG and hashed while generated, reads it back streaming, and checks size
/// and sha256 — and that the process's peak RSS grew by less than
/// `held_in_memory + 64 MiB` (`held_in_memory`: what the backend must keep,
/// 200 MiB for `memory`, 0 for every other backend).
///
/// Measures the whole process: run it alone.
pub async fn large_zip(s: Arc<dyn Storage>, held_in_memory: u64) -> LargeZipReport {
    const CHUNKS: usize = LARGE_ZIP_SIZE / MAX_CHUNK;
    let m = format!("{}/large", namespace());
    let c = coords(&m, "v1.0.0");
    let baseline = reset_peak_rss();
    let start = Instant::now();

    let sent = Arc::new(Mutex::new(Sha256::new()));
    let hasher = sent.clone();
    let stream = futures::stream::unfold((Rng::new(2024), 0usize), move |(mut rng, i)| {
        let hasher = hasher.clone();
        async move {
            if i == CHUNKS {
                return None;
            }
            let chunk = rng.bytes(MAX_CHUNK);
            hasher.lock().expect("hasher").update(&chunk);
            Some((Ok(Bytes::from(chunk)), (rng, i + 1)))
        }
    })
    .boxed();
    s.save(
        request(&c, br#"{"Version":"v1.0.0"}"#, b"module large\n"),
        stream,
    )
    .await
    .expect("save 200 MiB");
    let sent = sent.lock().expect("hasher").clone().finalize();

    let mut r = s.zip(&c).await.expect("zip");
    assert_eq!(r.size, LARGE_ZIP_SIZE as u64, "announced size");
    let mut got = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = r.stream.next().await {
        let chunk = chunk.expect("zip chunk");
        assert!(
            chunk.len() <= MAX_CHUNK,
            "zip chunk of {} bytes",
            chunk.len()
        );
        n += chunk.len() as u64;
        got.update(&chunk);
    }
    drop(r);
    let elapsed = start.elapsed();
    assert_eq!(n, LARGE_ZIP_SIZE as u64, "bytes read back");
    assert!(
        got.finalize() == sent,
        "sha256 of the zip read back differs"
    );

    let rss_growth = peak_rss().saturating_sub(baseline);
    let limit = held_in_memory + (64 << 20);
    s.delete(&c).await.expect("delete the large zip");
    assert!(
        rss_growth < limit,
        "peak RSS grew by {} MiB, limit {} MiB",
        rss_growth >> 20,
        limit >> 20
    );
    LargeZipReport {
        size: n,
        rss_growth,
        elapsed,
    }
}
