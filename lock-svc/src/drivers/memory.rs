//! The in-process driver: one lock table in this process's memory.
//!
//! Per key the table keeps the current lease (its id and expiry instant) and
//! a [`Notify`] that waiters park on. A waiter sleeps until it is notified (a
//! release), until the holder's expiry, or until its own wait deadline,
//! whichever comes first, and then re-checks; nothing polls. A release wakes
//! one waiter; a waiter that goes away after being woken passes the wake-up
//! on (tokio's `Notify` forwards an unconsumed `notify_one`).
//!
//! Keys nobody holds or waits on are removed on release, when the last
//! waiter leaves, and by an amortised sweep that also catches leases that
//! expired without a release (dead holders), so the table stays at most
//! about twice the number of live keys.

use crate::{validate_acquire, validate_lease, Lease, Lock};
use async_trait::async_trait;
use modmesh_proto::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The smallest table size at which the sweep of idle keys runs.
const MIN_SWEEP_AT: usize = 1024;

/// An in-process [`Lock`]: exact, cheap, and shared only by the tasks of
/// this process (serve it with [`crate::server`] to share it between
/// processes).
#[derive(Debug, Default)]
pub struct MemoryLock {
    table: Mutex<Table>,
    /// How many times a waiter has parked (for tests: no busy polling).
    parks: AtomicU64,
    /// The last fencing token handed out. One counter for every key: a
    /// token greater than every earlier one is greater than every earlier
    /// one on the same key, and it survives the key leaving the table.
    tokens: AtomicU64,
}

#[derive(Debug)]
struct Table {
    keys: HashMap<String, Entry>,
    /// The table size at which the next sweep runs.
    sweep_at: usize,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            keys: HashMap::new(),
            sweep_at: MIN_SWEEP_AT,
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    holder: Option<Holder>,
    /// Waiters park here. Every waiter holds a clone of the `Arc` while it
    /// waits, so a strong count of 1 means nobody waits on this key (a
    /// waiter can only take a clone under the table mutex).
    notify: Arc<Notify>,
}

#[derive(Debug)]
struct Holder {
    id: String,
    ttl: Duration,
    expires: Instant,
}

impl Entry {
    /// The current holder, if its lease has not expired at `now`.
    fn live_holder(&self, now: Instant) -> Option<&Holder> {
        self.holder.as_ref().filter(|h| h.expires > now)
    }

    fn has_waiters(&self) -> bool {
        Arc::strong_count(&self.notify) > 1
    }

    fn idle(&self, now: Instant) -> bool {
        self.live_holder(now).is_none() && !self.has_waiters()
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(60 * 60 * 24)))
        .unwrap_or(now)
}

/// Builds the memory driver (it has no configuration).
pub fn build(_: &modmesh_common::Config) -> modmesh_proto::Result<std::sync::Arc<dyn crate::Lock>> {
    Ok(std::sync::Arc::new(MemoryLock::new()))
}

impl MemoryLock {
    /// An empty lock table.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Nothing in a critical section can panic half-way through an update
        // that matters; keep serving after a poisoning panic elsewhere.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many keys the table tracks (held, waited on, or not yet swept).
    pub fn tracked_keys(&self) -> usize {
        self.table().keys.len()
    }

    /// How many times, in total, an `acquire` has parked to wait. Each wait
    /// parks once per wake-up (release, holder expiry or keep-alive seen,
    /// deadline), never on a timer of its own.
    pub fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    /// Removes every key nobody holds or waits on.
    pub fn sweep(&self) {
        let mut t = self.table();
        let now = Instant::now();
        t.keys.retain(|_, e| !e.idle(now));
        t.sweep_at = (t.keys.len() * 2).max(MIN_SWEEP_AT);
    }
}

#[async_trait]
impl Lock for MemoryLock {
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        validate_acquire(key, ttl)?;
        let deadline = after(Instant::now(), wait);
        loop {
            // Under the table mutex: take the lock if it is free or expired,
            // else register as a waiter before letting go of the mutex, so
            // that no release between here and the await is missed.
            let (mut notified, wake_at) = {
                let mut t = self.table();
                let now = Instant::now();
                if t.keys.len() >= t.sweep_at {
                    t.keys.retain(|_, e| !e.idle(now));
                    t.sweep_at = (t.keys.len() * 2).max(MIN_SWEEP_AT);
                }
                let entry = t.keys.entry(key.to_string()).or_default();
                let holder_expires = match entry.live_holder(now) {
                    None => {
                        let id = uuid::Uuid::new_v4().to_string();
                        let token = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
                        entry.holder = Some(Holder {
                            id: id.clone(),
                            ttl,
                            expires: after(now, ttl),
                        });
                        tracing::debug!(key, lease = %id, ?ttl, "lock acquired");
                        return Ok(Lease {
                            key: key.to_string(),
                            id,
                            ttl,
                            token,
                        });
                    }
                    Some(h) => h.expires,
                };
                if now >= deadline {
                    // The key is held, so its entry stays; the holder's
                    // release (or the sweep) removes it.
                    return Err(Error::timeout(format!(
                        "lock {key:?} still held after waiting {wait:?}"
                    )));
                }
                let mut notified = Box::pin(entry.notify.clone().notified_owned());
                notified.as_mut().enable();
                (notified, holder_expires.min(deadline))
            };
            self.parks.fetch_add(1, Ordering::Relaxed);
            // If this future is dropped here (the caller went away), the
            // `Notified` goes with it: its Arc clone is released, and a
            // wake-up it had already received is passed to the next waiter.
            tokio::select! {
                biased;
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        let mut t = self.table();
        let now = Instant::now();
        let current = t
            .keys
            .get_mut(&lease.key)
            .and_then(|e| e.holder.as_mut())
            .filter(|h| h.id == lease.id && h.expires > now);
        match current {
            Some(h) => {
                h.expires = after(now, h.ttl);
                Ok(())
            }
            None => Err(Error::not_found(format!(
                "lease {} on {:?} has expired or was released",
                lease.id, lease.key
            ))),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        validate_lease(lease)?;
        let mut t = self.table();
        let Some(entry) = t.keys.get_mut(&lease.key) else {
            return Ok(());
        };
        if entry.holder.as_ref().is_none_or(|h| h.id != lease.id) {
            // Expired and maybe taken over: not ours to free, not an error.
            return Ok(());
        }
        entry.holder = None;
        tracing::debug!(key = %lease.key, lease = %lease.id, "lock released");
        if entry.has_waiters() {
            entry.notify.notify_one();
        } else {
            t.keys.remove(&lease.key);
        }
        Ok(())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn idle_keys_are_removed() {
        let lock = Arc::new(MemoryLock::new());
        let a = lock.acquire("a", ms(10_000), ms(0)).await.unwrap();
        assert_eq!(lock.tracked_keys(), 1);
        lock.release(&a).await.unwrap();
        assert_eq!(lock.tracked_keys(), 0, "release of an unwaited key");

        // A waiter that times out leaves nothing behind once the holder goes.
        let a = lock.acquire("a", ms(10_000), ms(0)).await.unwrap();
        let e = lock.acquire("a", ms(1000), ms(20)).await.unwrap_err();
        assert!(e.is(modmesh_proto::ErrorKind::Timeout));
        lock.release(&a).await.unwrap();
        assert_eq!(lock.tracked_keys(), 0);

        // A waiter that is cancelled (its future dropped) likewise.
        let a = lock.acquire("a", ms(10_000), ms(0)).await.unwrap();
        let w = {
            let lock = lock.clone();
            tokio::spawn(async move { lock.acquire("a", ms(1000), ms(60_000)).await })
        };
        tokio::time::sleep(ms(20)).await;
        w.abort();
        let _ = w.await;
        lock.release(&a).await.unwrap();
        assert_eq!(lock.tracked_keys(), 0);

        // Dead holders are swept.
        for i in 0..10 {
            lock.acquire(&format!("k{i}"), ms(1), ms(0)).await.unwrap();
        }
        tokio::time::sleep(ms(5)).await;
        assert_eq!(lock.tracked_keys(), 10);
        lock.sweep();
        assert_eq!(lock.tracked_keys(), 0);
    }

    #[tokio::test]
    async fn table_growth_is_bounded_by_the_amortised_sweep() {
        let lock = MemoryLock::new();
        for i in 0..(MIN_SWEEP_AT * 3) {
            // Dead holders: acquired, never released, expire at once.
            lock.acquire(&format!("k{i}"), Duration::from_nanos(1), ms(0))
                .await
                .unwrap();
        }
        assert!(
            lock.tracked_keys() <= MIN_SWEEP_AT,
            "{}",
            lock.tracked_keys()
        );
    }

    #[tokio::test]
    async fn huge_durations_do_not_overflow() {
        let lock = MemoryLock::new();
        let a = lock
            .acquire("k", Duration::MAX, Duration::MAX)
            .await
            .unwrap();
        lock.keep_alive(&a).await.unwrap();
        let e = lock.acquire("k", ms(1), ms(0)).await.unwrap_err();
        assert!(e.is(modmesh_proto::ErrorKind::Timeout));
        lock.release(&a).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_sleep_rather_than_poll() {
        // A waiter behind a dead holder parks once and wakes at the holder's
        // expiry (virtual time), not before and not in small steps.
        let lock = MemoryLock::new();
        let start = Instant::now();
        lock.acquire("k", ms(5000), ms(0)).await.unwrap();
        lock.acquire("k", ms(5000), ms(60_000)).await.unwrap();
        let waited = start.elapsed();
        assert!(waited >= ms(5000) && waited < ms(5010), "{waited:?}");
        assert!(lock.parks() <= 2, "parked {} times", lock.parks());

        // Behind a holder that keeps alive every 1 s for 10 s, a waiter
        // wakes about once per keep-alive it sees, not more.
        let lock = Arc::new(MemoryLock::new());
        let held = lock.acquire("k", ms(3000), ms(0)).await.unwrap();
        let keeper = {
            let lock = lock.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(ms(1000)).await;
                    lock.keep_alive(&held).await.unwrap();
                }
                lock.release(&held).await.unwrap();
            })
        };
        let start = Instant::now();
        lock.acquire("k", ms(1000), ms(60_000)).await.unwrap();
        assert!(start.elapsed() >= ms(10_000));
        assert!(lock.parks() <= 10, "parked {} times", lock.parks());
        keeper.await.unwrap();
    }
}
