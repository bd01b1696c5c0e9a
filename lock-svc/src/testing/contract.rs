//! The contract every [`Lock`] driver must keep, as check functions.
//!
//! Each check takes a fresh `Arc<dyn Lock>` and a [`Scale`], works on keys
//! of its own, and panics if the driver breaks the contract.
//! [`lock_contract!`](crate::lock_contract) runs every check (the names in
//! [`CHECKS`]) against a driver; `lock-svc/tests/contract.rs` does so for
//! every driver of this crate, one line each.
//!
//! Timing: the checks use TTLs of a few hundred units (milliseconds times
//! [`Scale::time`]) and allow [`Scale::slack`] for scheduling, a network hop
//! and the server's expiry sweep.
//!
//! [`outage_is_unavailable_and_recovers`] is not in [`CHECKS`]: it needs to
//! stop and start the driver's server, so each driver's tests call it with
//! a server of its own.

use super::Scale;
use crate::{hold, Lease, Lock};
use modmesh_proto::ErrorKind;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    "fencing_tokens_increase",
    "healthy_server_is_ok",
];

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
async fn is_free(lock: &Arc<dyn Lock>, key: &str, s: Scale) -> bool {
    match lock.acquire(key, s.d(5000), Duration::ZERO).await {
        Ok(l) => {
            lock.release(&l).await.expect("release");
            true
        }
        Err(e) if e.is(ErrorKind::Timeout) => false,
        Err(e) => panic!("try-lock of {key:?} failed: {e}"),
    }
}

/// An empty key and a zero TTL are `Invalid`.
pub async fn rejects_invalid_arguments(lock: Arc<dyn Lock>, s: Scale) {
    assert_kind(
        lock.acquire("", s.d(1000), ms(0)).await,
        ErrorKind::Invalid,
        "empty key",
    );
    let k = key("rejects_invalid_arguments");
    assert_kind(
        lock.acquire(&k, Duration::ZERO, ms(0)).await,
        ErrorKind::Invalid,
        "zero ttl",
    );
    assert!(
        is_free(&lock, &k, s).await,
        "a rejected acquire took the lock"
    );
}

/// 20 tasks contend for one key: never two in the critical section, every
/// one gets in, every lease id is unique, the lease says what was asked,
/// and each holder's fencing token is greater than every earlier holder's.
pub async fn mutual_exclusion(lock: Arc<dyn Lock>, s: Scale) {
    const TASKS: usize = 20;
    let k = key("mutual_exclusion");
    let inside = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (lock, k, inside, done, last_token) = (
            lock.clone(),
            k.clone(),
            inside.clone(),
            done.clone(),
            last_token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let lease = lock
                .acquire(&k, s.d(10_000), s.d(20_000))
                .await
                .expect("acquire");
            assert_eq!(lease.key, k);
            assert_eq!(lease.ttl, s.d(10_000));
            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(n, 1, "{n} holders in the critical section at once");
            let before = last_token.swap(lease.token, Ordering::SeqCst);
            assert!(
                lease.token > before,
                "fencing token {} after {before}",
                lease.token
            );
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
        is_free(&lock, &k, s).await,
        "lock still held after every release"
    );
}

/// Holding one key does not block another.
pub async fn independent_keys(lock: Arc<dyn Lock>, s: Scale) {
    let (a, b) = (key("independent_keys"), key("independent_keys"));
    let la = lock
        .acquire(&a, s.d(30_000), ms(0))
        .await
        .expect("acquire a");
    let lb = lock
        .acquire(&b, s.d(30_000), ms(0))
        .await
        .expect("a second key is blocked by the first");
    assert_ne!(la.id, lb.id);
    lock.release(&la).await.expect("release a");
    lock.release(&lb).await.expect("release b");
}

/// A waiter gets the lock within [`Scale::wake`] of a release, long before
/// the holder's TTL, and so does each of a chain of waiters.
pub async fn release_wakes_waiter_promptly(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("release_wakes_waiter_promptly");
    let holder = lock.acquire(&k, s.d(30_000), ms(0)).await.expect("acquire");
    let waiter = {
        let (lock, k) = (lock.clone(), k.clone());
        tokio::spawn(async move {
            let l = lock.acquire(&k, s.d(30_000), s.d(2000)).await;
            (l, Instant::now())
        })
    };
    tokio::time::sleep(s.d(300)).await;
    assert!(!waiter.is_finished(), "a waiter got a held lock");
    let released = Instant::now();
    lock.release(&holder).await.expect("release");
    let (l, got) = waiter.await.expect("waiter");
    let l = l.expect("waiter acquire");
    let latency = got.saturating_duration_since(released);
    assert!(latency < s.wake, "waiter woke {latency:?} after release");
    lock.release(&l).await.expect("release");

    // A chain: five waiters behind one holder, each holding for 50 ms.
    let holder = lock.acquire(&k, s.d(30_000), ms(0)).await.expect("acquire");
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let (lock, k) = (lock.clone(), k.clone());
        waiters.push(tokio::spawn(async move {
            let l = lock
                .acquire(&k, s.d(30_000), s.d(3000))
                .await
                .expect("chain acquire");
            tokio::time::sleep(ms(50)).await;
            lock.release(&l).await.expect("chain release");
        }));
    }
    tokio::time::sleep(ms(100).max(s.d(100))).await;
    let start = Instant::now();
    lock.release(&holder).await.expect("release");
    for w in waiters {
        w.await.expect("chain waiter");
    }
    let took = start.elapsed();
    assert!(took < ms(5 * 50) + 5 * s.wake, "chain of 5 took {took:?}");
}

/// A holder that never keeps alive nor releases (a dead one) loses the lock
/// at its TTL: a waiter gets it after about the TTL and well before the TTL
/// plus [`Scale::slack`].
pub async fn dead_holder_frees_within_ttl(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("dead_holder_frees_within_ttl");
    let ttl = s.d(500);
    let asked = Instant::now();
    let dead = lock.acquire(&k, ttl, ms(0)).await.expect("acquire");
    let granted = Instant::now();
    assert_eq!(dead.ttl, ttl, "the lease's ttl is not the one asked");
    let l = lock
        .acquire(&k, s.d(5000), s.d(2000))
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
        since_grant < ttl + s.slack,
        "a dead holder's lock freed only after {since_grant:?}"
    );
    lock.release(&l).await.expect("release");
}

/// A lease kept alive outlives its TTL: for 3×TTL of keep-alives a waiter
/// gets nothing (and times out); once renewals stop it expires within TTL.
pub async fn keep_alive_extends_lease(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("keep_alive_extends_lease");
    let ttl = s.d(300);
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
    let r = lock.acquire(&k, ttl, s.d(700)).await;
    assert_kind(r, ErrorKind::Timeout, "waiting behind a kept-alive lease");
    assert!(start.elapsed() >= s.d(700) - ms(10), "the wait ended early");
    keeper.await.expect("keeper");
    let stopped = Instant::now();
    let l = lock
        .acquire(&k, ttl, s.d(2000))
        .await
        .expect("lease never expired after renewals stopped");
    let took = stopped.elapsed();
    assert!(
        took < ttl + s.slack,
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
pub async fn wait_timeout_is_timeout(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("wait_timeout_is_timeout");
    let held = lock.acquire(&k, s.d(30_000), ms(0)).await.expect("acquire");
    let start = Instant::now();
    let wait = s.d(200);
    assert_kind(
        lock.acquire(&k, s.d(1000), wait).await,
        ErrorKind::Timeout,
        "a wait",
    );
    let took = start.elapsed();
    assert!(
        took >= wait - ms(10) && took < wait + s.slack,
        "a {wait:?} wait took {took:?}"
    );
    let start = Instant::now();
    assert_kind(
        lock.acquire(&k, s.d(1000), ms(0)).await,
        ErrorKind::Timeout,
        "try-lock",
    );
    assert!(
        start.elapsed() < s.slack,
        "a try-lock waited {:?}",
        start.elapsed()
    );
    lock.keep_alive(&held)
        .await
        .expect("the holder's lease survives waiters timing out");
    lock.release(&held).await.expect("release");
    let l = lock
        .acquire(&k, s.d(1000), ms(0))
        .await
        .expect("try-lock of a free key");
    lock.release(&l).await.expect("release");
}

/// Once a lease expires and someone else takes the lock, the old lease's
/// keep-alive is `NotFound` and its release is `Ok` but frees nothing.
pub async fn keep_alive_after_takeover_is_not_found(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("keep_alive_after_takeover_is_not_found");
    let old = lock.acquire(&k, s.d(200), ms(0)).await.expect("acquire");
    let new = lock
        .acquire(&k, s.d(30_000), s.d(2000))
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
        !is_free(&lock, &k, s).await,
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
    assert!(
        !is_free(&lock, &k, s).await,
        "a forged release freed the lock"
    );
    lock.release(&new).await.expect("release");
    assert!(is_free(&lock, &k, s).await);
}

/// Releasing an expired lease (twice, even) is `Ok`; renewing an expired or
/// released lease is `NotFound`.
pub async fn release_of_expired_lease_is_ok(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("release_of_expired_lease_is_ok");
    let l = lock.acquire(&k, s.d(100), ms(0)).await.expect("acquire");
    tokio::time::sleep(s.d(100) + s.slack).await;
    assert_kind(
        lock.keep_alive(&l).await,
        ErrorKind::NotFound,
        "keep-alive of an expired lease",
    );
    lock.release(&l).await.expect("release of an expired lease");
    lock.release(&l)
        .await
        .expect("second release of an expired lease");
    assert!(is_free(&lock, &k, s).await);
    let l = lock.acquire(&k, s.d(30_000), ms(0)).await.expect("acquire");
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
/// rather than held for the waiter's TTL.
pub async fn abandoned_waiter_does_not_take_lock(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("abandoned_waiter_does_not_take_lock");
    let held = lock.acquire(&k, s.d(30_000), ms(0)).await.expect("acquire");
    let waiter = {
        let (lock, k) = (lock.clone(), k.clone());
        tokio::spawn(async move { lock.acquire(&k, s.d(30_000), s.d(30_000)).await })
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
    // waiter within `wake`) and hold it for its TTL.
    tokio::time::sleep(s.wake).await;
    assert!(
        is_free(&lock, &k, s).await,
        "an abandoned waiter took the lock"
    );
}

/// [`hold`]'s guard renews the lease past its TTL, frees the lock on
/// `release` and on drop, and reports a lease lost behind its back.
pub async fn guard_keeps_alive_and_frees(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("guard_keeps_alive_and_frees");
    let ttl = s.d(300);
    let guard = hold(lock.clone(), &k, ttl, s.d(1000)).await.expect("hold");
    assert_eq!(guard.lease().key, k);
    tokio::time::sleep(s.d(1000)).await;
    assert!(!is_free(&lock, &k, s).await, "a guarded lease expired");
    assert!(!guard.is_lost());
    lock.keep_alive(guard.lease())
        .await
        .expect("the guarded lease is live");
    guard.release().await.expect("guard release");
    assert!(
        is_free(&lock, &k, s).await,
        "guard release did not free the lock"
    );

    // Dropping the guard frees the lock (long before its TTL).
    let guard = hold(lock.clone(), &k, s.d(30_000), s.d(1000))
        .await
        .expect("hold");
    let waiter = {
        let (lock, k) = (lock.clone(), k.clone());
        tokio::spawn(async move { lock.acquire(&k, s.d(1000), s.d(2000)).await })
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
        took < s.wake + ms(100),
        "freed {took:?} after the guard was dropped"
    );
    lock.release(&l).await.expect("release");

    // A lease freed behind the guard's back is reported lost.
    let guard = hold(lock.clone(), &k, ttl, s.d(1000)).await.expect("hold");
    lock.release(guard.lease())
        .await
        .expect("release behind the guard");
    tokio::time::timeout(ttl + s.slack, guard.lost())
        .await
        .expect("the guard did not notice its lease was gone");
    assert!(guard.is_lost());
    guard
        .release()
        .await
        .expect("release of a lost guard is not an error");
}

/// Every lease carries a fencing token: never 0, greater than the token of
/// every earlier lease on the same key (after a release, and after a dead
/// holder's lease expired and was taken over).
pub async fn fencing_tokens_increase(lock: Arc<dyn Lock>, s: Scale) {
    let k = key("fencing_tokens_increase");
    let mut last = 0;
    for _ in 0..3 {
        let l = lock.acquire(&k, s.d(30_000), ms(0)).await.expect("acquire");
        assert!(l.token > last, "token {} after {last}", l.token);
        last = l.token;
        lock.release(&l).await.expect("release");
    }
    // Another key's leases do not make this key's tokens go back.
    let other = lock
        .acquire(&key("fencing_tokens_increase"), s.d(30_000), ms(0))
        .await
        .expect("acquire another key");
    assert_ne!(other.token, 0, "a granted lease has token 0");
    lock.release(&other).await.expect("release");
    let dead = lock.acquire(&k, s.d(100), ms(0)).await.expect("acquire");
    assert!(dead.token > last, "token {} after {last}", dead.token);
    let taker = lock
        .acquire(&k, s.d(30_000), s.d(2000))
        .await
        .expect("takeover");
    assert!(
        taker.token > dead.token,
        "the taker's token {} is not above the dead holder's {}",
        taker.token,
        dead.token
    );
    lock.release(&taker).await.expect("release");
}

/// A driver whose server is up says so.
pub async fn healthy_server_is_ok(lock: Arc<dyn Lock>, _s: Scale) {
    lock.health().await.expect("health of a running server");
}

/// A server outage (`stop`) makes every call `Unavailable` (not `Internal`,
/// not `NotFound`: a guard keeps retrying rather than giving its lease up)
/// within `s.slack` plus a few seconds; once the server is back on the same
/// address (`start`), the same driver works again without a restart.
pub async fn outage_is_unavailable_and_recovers(
    lock: Arc<dyn Lock>,
    s: Scale,
    stop: impl FnOnce(),
    start: impl FnOnce(),
) {
    let k = key("outage");
    let l = lock
        .acquire(&k, s.d(30_000), ms(0))
        .await
        .expect("acquire before the outage");
    lock.health().await.expect("health before the outage");
    stop();
    let bound = ms(10_000) + s.slack;
    let timed = |what: &'static str, took: Duration| {
        assert!(
            took < bound,
            "{what} took {took:?} while the server is down"
        );
    };
    let t = Instant::now();
    assert_kind(
        lock.acquire(&key("outage"), s.d(1000), ms(0)).await,
        ErrorKind::Unavailable,
        "acquire while the server is down",
    );
    timed("acquire", t.elapsed());
    let t = Instant::now();
    assert_kind(
        lock.keep_alive(&l).await,
        ErrorKind::Unavailable,
        "keep-alive while the server is down",
    );
    timed("keep-alive", t.elapsed());
    let t = Instant::now();
    assert_kind(
        lock.health().await,
        ErrorKind::Unavailable,
        "health while the server is down",
    );
    timed("health", t.elapsed());
    start();
    // Back: the driver reconnects by itself.
    let t = Instant::now();
    let l = loop {
        match lock.acquire(&key("outage"), s.d(30_000), s.d(1000)).await {
            Ok(l) => break l,
            Err(e) if e.is(ErrorKind::Unavailable) && t.elapsed() < ms(30_000) => {
                tokio::time::sleep(ms(200)).await;
            }
            Err(e) => panic!("acquire after the server came back: {e}"),
        }
    };
    lock.health().await.expect("health after the outage");
    lock.keep_alive(&l)
        .await
        .expect("keep-alive after the outage");
    lock.release(&l).await.expect("release after the outage");
}
