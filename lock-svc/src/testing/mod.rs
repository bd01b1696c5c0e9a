//! What tests of any [`Lock`](crate::Lock) driver reuse (feature `testing`,
//! never in the shipped library):
//!
//! - [`contract`]: the behaviour every driver must show, as check functions
//!   that take a driver and a [`Scale`];
//! - [`lock_contract!`](crate::lock_contract): one `#[tokio::test]` per
//!   check against a driver, plus a test that the list it expands to is
//!   exactly [`contract::CHECKS`];
//! - [`servers`]: real redis, redis-sentinel and etcd servers on loopback
//!   ports, started and stopped (by PID, also on drop) by the tests.
//!
//! A driver in another crate adds a dev-dependency on `modmesh-lock` with
//! `features = ["testing"]` (and on tokio) and writes
//! `modmesh_lock::lock_contract!(my_driver, make_my_driver, Scale::…);`.

pub mod contract;
pub mod servers;

use std::time::Duration;

/// The time scale a driver is checked at.
///
/// The checks are written in "units" of one millisecond for an in-process
/// driver; a driver whose server counts leases coarsely (etcd: whole
/// seconds, at least one) multiplies every TTL and wait by [`Scale::time`].
/// Tolerances that do not grow with the TTL (a network hop, a server's
/// expiry sweep, a wake-up) are [`Scale::slack`] and [`Scale::wake`].
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// The multiplier of every TTL and wait in the checks.
    pub time: u32,
    /// How late an expiry may be seen (scheduling, a network hop, the
    /// server's expiry sweep).
    pub slack: Duration,
    /// How soon after a release a waiter must have the lock.
    pub wake: Duration,
}

impl Scale {
    /// An in-process driver (or one behind a loopback gRPC hop).
    pub const MEMORY: Scale = Scale {
        time: 1,
        slack: Duration::from_millis(300),
        wake: Duration::from_millis(200),
    };
    /// Redis: millisecond TTLs, lazy and sampled expiry, pub/sub wake-ups.
    pub const REDIS: Scale = Scale {
        time: 2,
        slack: Duration::from_millis(500),
        wake: Duration::from_millis(250),
    };
    /// etcd: whole-second lease TTLs (the shortest check TTL, 100 units,
    /// becomes 1 s) and a leader that revokes expired leases every 500 ms.
    pub const ETCD: Scale = Scale {
        time: 10,
        slack: Duration::from_millis(1500),
        wake: Duration::from_millis(300),
    };

    /// `units` scaled: `units × time` milliseconds.
    pub fn d(&self, units: u64) -> Duration {
        Duration::from_millis(units * u64::from(self.time))
    }
}

/// Prints why a test does nothing, or panics if it runs under CI (`CI` set
/// to `true`), where every real server must be present.
pub fn skip(why: &str) {
    modmesh_test_support::skip(why, "scripts/deps/20-lock.sh")
}

/// Runs every check of [`contract`] against a driver: one
/// `#[tokio::test(flavor = "multi_thread")]` per check in a module named
/// `$driver`, named after the check, plus `every_check_is_run`, which fails
/// if the checks expanded here are not exactly [`contract::CHECKS`].
///
/// `$make` is a path (resolved in the calling module) to an `async fn() ->
/// Option<Arc<dyn Lock>>`, called once per check; `None` means the driver's
/// server is missing (see [`skip`]). `$scale` is a [`Scale`] expression.
/// The calling crate needs `tokio` (macros, multi-thread runtime).
#[macro_export]
macro_rules! lock_contract {
    ($driver:ident, $make:path, $scale:expr) => {
        $crate::lock_contract!(@checks $driver, $make, ($scale);
            rejects_invalid_arguments,
            mutual_exclusion,
            independent_keys,
            release_wakes_waiter_promptly,
            dead_holder_frees_within_ttl,
            keep_alive_extends_lease,
            wait_timeout_is_timeout,
            keep_alive_after_takeover_is_not_found,
            release_of_expired_lease_is_ok,
            abandoned_waiter_does_not_take_lock,
            guard_keeps_alive_and_frees,
            fencing_tokens_increase,
            healthy_server_is_ok,
        );
    };
    (@checks $driver:ident, $make:path, $scale:expr; $($check:ident),* $(,)?) => {
        mod $driver {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[::tokio::test(flavor = "multi_thread")]
                async fn $check() {
                    let made: ::std::option::Option<::std::sync::Arc<dyn $crate::Lock>> =
                        $make().await;
                    if let ::std::option::Option::Some(lock) = made {
                        $crate::testing::contract::$check(lock, $scale).await;
                    }
                }
            )*

            #[test]
            fn every_check_is_run() {
                assert_eq!(
                    &[$(stringify!($check)),*][..],
                    $crate::testing::contract::CHECKS,
                    "lock_contract! and contract::CHECKS list different checks"
                );
            }
        }
    };
}
