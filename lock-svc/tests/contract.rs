//! Runs every check of `modmesh_lock::contract` against every driver: each
//! `lock_contract!(driver)` line below expands to one test per check, named
//! `driver::check`. A new driver adds a constructor and one line.

use modmesh_common::server::LoopbackServer;
use modmesh_lock::client::LockClient;
use modmesh_lock::drivers::MemoryLock;
use modmesh_lock::{server, Lock};
use std::sync::Arc;

/// The in-process driver.
async fn memory() -> Arc<dyn Lock> {
    Arc::new(MemoryLock::new())
}

/// A real tonic server on a loopback port serving a `MemoryLock`, reached
/// through `LockClient`. The server lives as long as the test's runtime.
async fn grpc_memory() -> Arc<dyn Lock> {
    let server = LoopbackServer::start(
        server::routes(Arc::new(MemoryLock::new())),
        &[server::SERVICE_NAME],
    )
    .await
    .unwrap();
    let client = Arc::new(LockClient::new(&server.url).unwrap());
    // The server lives as long as the test's runtime.
    std::mem::forget(server);
    client
}

macro_rules! lock_contract {
    ($driver:ident) => {
        lock_contract!(@checks $driver:
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
        );
    };
    (@checks $driver:ident: $($check:ident),* $(,)?) => {
        mod $driver {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $check() {
                    let lock = super::$driver().await;
                    modmesh_lock::contract::$check(lock).await;
                }
            )*

            #[test]
            fn every_check_is_run() {
                assert_eq!(&[$(stringify!($check)),*], modmesh_lock::contract::CHECKS);
            }
        }
    };
}

lock_contract!(memory);
lock_contract!(grpc_memory);
