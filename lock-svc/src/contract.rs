//! The contract every [`Lock`] driver must keep, as check functions.
//!
//! Each check takes a fresh `Arc<dyn Lock>`, works on keys of its own, and
//! panics if the driver breaks the contract. `tests/contract.rs` runs every
//! check (the names in [`CHECKS`]) against every driver; a new driver adds
//! one line there.
//!
//! Timing: the checks use TTLs of a few hundred milliseconds and allow
//! [`SLACK`] for scheduling and a network hop. A driver whose TTLs are
//! coarser than that cannot pass them as they are.

use crate::{hold, Lease, Lock};
use modmesh_proto::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The names of every check in this module, in the order they are listed.
pub const CHECKS: &[&str] = &[
    "rejects_invalid_arguments",
    "mutual_exclusion",
    "independent_keys",
    "release_wakes_waiter_promptly",
    "dead_holder_frees_within_ttl",
    "keep_alive_extends_lease",
    "wait_timeout_is_timeout",
    "keep_alive_after_takeover_is_not_found",
    "release_of_expired_lease_is_ok",
    "abandoned_waiter_does_not_take_lock",
    "guard_keeps_alive_and_frees",
];

/// Scheduling and network slack the timing checks allow.
pub const SLACK: Duration = Duration::from_millis(300);

/// How soon after a release a waiter must have the lock.
pub const WAKE_LATENCY: Duration = Duration::from_millis(200);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A key no other check (or run) uses.
fn key(check: &str) -> String {
    format!("contract/{check}/{}", uuid::Uuid::new_v4())
}

#[track_caller]
fn assert_kind<T: std::fmt::Debug>(r: modmesh_proto::Result<T>, kind: ErrorKind, what: &str) {
    match r {
        Err(e) => assert_eq!(e.kind, kind, "{what}: wrong error kind: {e}"),
        Ok(v) => panic!("{what}: expected {kind} error, got Ok({v:?})"),
    }
}

/// Try-lock: whether `key` can be taken right now (and if so, frees it).
async fn is_free(lock: &Arc<dyn Lock>, key: &str) -> bool {
    match lock.acquire(key, ms(5000), Duration::ZERO).await {
        Ok(l) => {
            lock.release(&l).await.expect("release");
            true
        }
        Err(e) if e.is(ErrorKind::Timeout) => false,
        Err(e) => panic!("try-lock of {key:?} failed: {e}"),
    }
}

/// An empty key and a zero TTL are `Invalid`.
pub async fn rejects_invalid_arguments(lock: Arc<dyn Lock>) {
    assert_kind(
        lock.acquire("", ms(1000), ms(0)).await,
        ErrorKind::Invalid,
        "empty key",
    );
    let k = key("rejects_invalid_arguments");
    assert_kind(
        lock.acquire(&k, Duration::ZERO, ms(0)).await,
        ErrorKind::Invalid,
        "zero ttl",
    );
    assert!(is_free(&lock, &k).await, "a rejected acquire took the lock");
}

/// 20 tasks contend for one key: never two in the critical section, every
/// one gets in, every lease id is unique and the lease says what was asked.
pub async fn mutual_exclusion(lock: Arc<dyn Lock>) {
    const TASKS: usize = 20;
    let k = key("mutual_exclusion");
    let inside = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (lock, k, inside, done) = (lock.clone(), k.clone(), inside.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let lease = lock
                .acquire(&k, ms(10_000), ms(20_000))
                .await
                .expect("acquire");
            assert_eq!(lease.key, k);
            assert_eq!(lease.ttl, ms(10_000));
            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(n, 1, "{n} holders in the critical section at once");
            tokio::time::sleep(ms(5)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            lock.release(&lease).await.expect("release");
            done.fetch_add(1, Ordering::SeqCst);
            lease.id
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let id = t.await.expect("a contender failed");
        assert!(!id.is_empty(), "empty lease id");
        assert!(ids.insert(id), "a lease id was handed out twice");
    }
    assert_eq!(done.load(Ordering::SeqCst), TASKS);
    assert!(
        is_free(&lock, &k).await,
        "lock still held after every release"
    );
}

/// Holding one key does not block another.
pub async fn independent_keys(lock: Arc<dyn Lock>) {
    let (a, b) = (key("independent_keys"), key("independent_keys"));
    let la = lock
        .acquire(&a, ms(30_000), ms(0))
        .await
        .expect("acquire a");
    let lb = lock
        .acquire(&b, ms(30_000), ms(0))
        .await
        .expect("a second key is blocked by the first");
    assert_ne!(la.id, lb.id);
    lock.release(&la).await.expect("release a");
    lock.release(&lb).await.expect("release b");
}

/// A waiter gets the lock within [`WAKE_LATENCY`] of a release, long before
/// the holder's 30 s TTL, and so does each of a chain of waiters.
pub async fn release_wakes_waiter_promptly(lock: Arc<dyn Lock>) {
    let k = key("release_wakes_waiter_promptly");
    let holder = lock.acquire(&k, ms(30_000), ms(0)).await.expect("acquire");
    let waiter = {
        let (lock, k) = (lock.clone(), k.clone());
        tokio::spawn(async move {
            let l = lock.acquire(&k, ms(30_000), ms(2000)).await;
            (l, Instant::now())
        })
    };
    tokio::time::sleep(ms(300)).await;
    assert!(!waiter.is_finished(), "a waiter got a held lock");
    let released = Instant::now();
    lock.release(&holder).await.expect("release");
    let (l, got) = waiter.await.expect("waiter");
    let l = l.expect("waiter acquire");
    let latency = got.saturating_duration_since(released);
    assert!(
        latency < WAKE_LATENCY,
        "waiter woke {latency:?} after release"
    );
    lock.release(&l).await.expect("release");

    // A chain: five waiters behind one holder, each holding for 50 ms.
    let holder = lock.acquire(&k, ms(30_000), ms(0)).await.expect("acquire");
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let (lock, k) = (lock.clone(), k.clone());
        waiters.push(tokio::spawn(async move {
            let l = lock
                .acquire(&k, ms(30_000), ms(3000))
                .await
                .expect("chain acquire");
            tokio::time::sleep(ms(50)).await;
            lock.release(&l).await.expect("chain release");
        }));
    }
    tokio::time::sleep(ms(100)).await;
    let start = Instant::now();
    lock.release(&holder).await.expect("release");
    for w in waiters {
        w.await.expect("chain waiter");
    }
    let took = start.elapsed();
    assert!(
        took < ms(5 * 50) + 5 * WAKE_LATENCY,
        "chain of 5 took {took:?}"
    );
}

/// A holder that never keeps alive nor releases (a dead one) loses the lock
/// at its TTL: a waiter gets it after about the TTL and well before the TTL
/// plus [`SLACK`].
pub async fn dead_holder_frees_within_ttl(lock: Arc<dyn Lock>) {
    let k = key("dead_holder_frees_within_ttl");
    let ttl = ms(500);
    let asked = Instant::now();
    let _dead = lock.acquire(&k, ttl, ms(0)).await.expect("acquire");
    let granted = Instant::now();
    let l = lock
        .acquire(&k, ms(5000), ms(2000))
        .await
        .expect("a dead holder's lock was never freed");
    let got = Instant::now();
    let since_ask = got - asked;
    let since_grant = got - granted;
    assert!(
        since_ask >= ttl - ms(10),
        "the lease was taken over after {since_ask:?}, before its ttl"
    );
    assert!(
        since_grant < ttl + SLACK,
        "a dead holder's lock freed only after {since_grant:?}"
    );
    lock.release(&l).await.expect("release");
}

/// A lease kept alive outlives its TTL: for 3×TTL of keep-alives a waiter
/// gets nothing (and times out); once renewals stop it expires within TTL.
pub async fn keep_alive_extends_lease(lock: Arc<dyn Lock>) {
    let k = key("keep_alive_extends_lease");
    let ttl = ms(300);
    let held = lock.acquire(&k, ttl, ms(0)).await.expect("acquire");
    let keeper = {
        let (lock, held) = (lock.clone(), held.clone());
        tokio::spawn(async move {
            for i in 0..9 {
                tokio::time::sleep(ttl / 3).await;
                if let Err(e) = lock.keep_alive(&held).await {
                    panic!("keep-alive {i} of a live lease failed: {e}");
                }
            }
        })
    };
    let start = Instant::now();
    let r = lock.acquire(&k, ttl, ms(700)).await;
    assert_kind(r, ErrorKind::Timeout, "waiting behind a kept-alive lease");
    assert!(start.elapsed() >= ms(690), "the wait ended early");
    keeper.await.expect("keeper");
    let stopped = Instant::now();
    let l = lock
        .acquire(&k, ttl, ms(2000))
        .await
        .expect("lease never expired after renewals stopped");
    let took = stopped.elapsed();
    assert!(
        took < ttl + SLACK,
        "expired {took:?} after renewals stopped"
    );
    assert_kind(
        lock.keep_alive(&held).await,
        ErrorKind::NotFound,
        "renewing the expired lease",
    );
    lock.release(&l).await.expect("release");
}

/// A wait that ends with the lock still held is `Timeout`, at about the
/// wait; a zero wait is a try-lock.
pub async fn wait_timeout_is_timeout(lock: Arc<dyn Lock>) {
    let k = key("wait_timeout_is_timeout");
    let held = lock.acquire(&k, ms(30_000), ms(0)).await.expect("acquire");
    let start = Instant::now();
    assert_kind(
        lock.acquire(&k, ms(1000), ms(200)).await,
        ErrorKind::Timeout,
        "wait 200ms",
    );
    let took = start.elapsed();
    assert!(
        took >= ms(190) && took < ms(200) + SLACK,
        "a 200 ms wait took {took:?}"
    );
    let start = Instant::now();
    assert_kind(
        lock.acquire(&k, ms(1000), ms(0)).await,
        ErrorKind::Timeout,
        "try-lock",
    );
    assert!(
        start.elapsed() < SLACK,
        "a try-lock waited {:?}",
        start.elapsed()
    );
    lock.keep_alive(&held)
        .await
        .expect("the holder's lease survives waiters timing out");
    lock.release(&held).await.expect("release");
    let l = lock
        .acquire(&k, ms(1000), ms(0))
        .await
        .expect("try-lock of a free key");
    lock.release(&l).await.expect("release");
}

/// Once a lease expires and someone else takes the lock, the old lease's
/// keep-alive is `NotFound` and its release is `Ok` but frees nothing.
pub async fn keep_alive_after_takeover_is_not_found(lock: Arc<dyn Lock>) {
    let k = key("keep_alive_after_takeover_is_not_found");
    let old = lock.acquire(&k, ms(200), ms(0)).await.expect("acquire");
    let new = lock
        .acquire(&k, ms(30_000), ms(2000))
        .await
        .expect("takeover");
    assert_ne!(old.id, new.id);
    assert_kind(
        lock.keep_alive(&old).await,
        ErrorKind::NotFound,
        "keep-alive of a taken-over lease",
    );
    lock.keep_alive(&new)
        .await
        .expect("keep-alive of the new lease");
    lock.release(&old)
        .await
        .expect("release of a taken-over lease is not an error");
    assert!(
        !is_free(&lock, &k).await,
        "a stale release freed the new holder's lock"
    );
    let forged = Lease {
        id: "not-a-lease".into(),
        ..new.clone()
    };
    lock.release(&forged)
        .await
        .expect("release of an unknown lease is not an error");
    assert_kind(
        lock.keep_alive(&forged).await,
        ErrorKind::NotFound,
        "keep-alive of an unknown lease",
    );
    assert!(!is_free(&lock, &k).await, "a forged release freed the lock");
    lock.release(&new).await.expect("release");
    assert!(is_free(&lock, &k).await);
}

/// Releasing an expired lease (twice, even) is `Ok`; renewing an expired or
/// released lease is `NotFound`.
pub async fn release_of_expired_lease_is_ok(lock: Arc<dyn Lock>) {
    let k = key("release_of_expired_lease_is_ok");
    let l = lock.acquire(&k, ms(100), ms(0)).await.expect("acquire");
    tokio::time::sleep(ms(300)).await;
    assert_kind(
        lock.keep_alive(&l).await,
        ErrorKind::NotFound,
        "keep-alive of an expired lease",
    );
    lock.release(&l).await.expect("release of an expired lease");
    lock.release(&l)
        .await
        .expect("second release of an expired lease");
    assert!(is_free(&lock, &k).await);
    let l = lock.acquire(&k, ms(30_000), ms(0)).await.expect("acquire");
    lock.release(&l).await.expect("release");
    assert_kind(
        lock.keep_alive(&l).await,
        ErrorKind::NotFound,
        "keep-alive of a released lease",
    );
    lock.release(&l).await.expect("second release");
}

/// A waiter whose caller gives up (its future dropped) does not go on to
/// take the lock: after the holder releases, the key is free at once
/// rather than held for the waiter's 30 s TTL.
pub async fn abandoned_waiter_does_not_take_lock(lock: Arc<dyn Lock>) {
    let k = key("abandoned_waiter_does_not_take_lock");
    let held = lock.acquire(&k, ms(30_000), ms(0)).await.expect("acquire");
    let waiter = {
        let (lock, k) = (lock.clone(), k.clone());
        tokio::spawn(async move { lock.acquire(&k, ms(30_000), ms(30_000)).await })
    };
    tokio::time::sleep(ms(200)).await;
    waiter.abort();
    assert!(
        waiter.await.is_err_and(|e| e.is_cancelled()),
        "waiter was not abandoned"
    );
    // Give a remote driver time to hear that the caller went away.
    tokio::time::sleep(ms(200)).await;
    lock.release(&held).await.expect("release");
    // A waiter still alive would have the lock by now (a release wakes a
    // waiter within WAKE_LATENCY) and hold it for its 30 s TTL.
    tokio::time::sleep(WAKE_LATENCY).await;
    assert!(
        is_free(&lock, &k).await,
        "an abandoned waiter took the lock"
    );
}

/// [`hold`]'s guard renews the lease past its TTL, frees the lock on
/// `release` and on drop, and reports a lease lost behind its back.
pub async fn guard_keeps_alive_and_frees(lock: Arc<dyn Lock>) {
    let k = key("guard_keeps_alive_and_frees");
    let guard = hold(lock.clone(), &k, ms(300), ms(1000))
        .await
        .expect("hold");
    assert_eq!(guard.lease().key, k);
    tokio::time::sleep(ms(1000)).await;
    assert!(!is_free(&lock, &k).await, "a guarded lease expired");
    assert!(!guard.is_lost());
    lock.keep_alive(guard.lease())
        .await
        .expect("the guarded lease is live");
    guard.release().await.expect("guard release");
    assert!(
        is_free(&lock, &k).await,
        "guard release did not free the lock"
    );

    // Dropping the guard frees the lock (long before the 30 s TTL).
    let guard = hold(lock.clone(), &k, ms(30_000), ms(1000))
        .await
        .expect("hold");
    let waiter = {
        let (lock, k) = (lock.clone(), k.clone());
        tokio::spawn(async move { lock.acquire(&k, ms(1000), ms(2000)).await })
    };
    tokio::time::sleep(ms(100)).await;
    let dropped = Instant::now();
    drop(guard);
    let l = waiter
        .await
        .expect("waiter")
        .expect("dropping the guard did not free the lock");
    let took = dropped.elapsed();
    assert!(
        took < WAKE_LATENCY + ms(100),
        "freed {took:?} after the guard was dropped"
    );
    lock.release(&l).await.expect("release");

    // A lease freed behind the guard's back is reported lost.
    let guard = hold(lock.clone(), &k, ms(300), ms(1000))
        .await
        .expect("hold");
    lock.release(guard.lease())
        .await
        .expect("release behind the guard");
    tokio::time::timeout(ms(300) + SLACK, guard.lost())
        .await
        .expect("the guard did not notice its lease was gone");
    assert!(guard.is_lost());
    guard
        .release()
        .await
        .expect("release of a lost guard is not an error");
}
