//! The 200 MiB zip check against every backend, one after another in one
//! test: it measures this process's peak RSS, so nothing else may run
//! beside it (this binary holds no other test).

mod common;

use common::*;
use modmesh_storage::compliance::{self, Fixture};
use std::future::Future;
use std::pin::Pin;

type Make = fn() -> Pin<Box<dyn Future<Output = Fixture> + Send>>;

#[tokio::test(flavor = "multi_thread")]
async fn large_zip_streams_in_flat_memory() {
    const MIB: u64 = 1 << 20;
    let held = compliance::LARGE_ZIP_SIZE as u64;
    // Backends that must not hold the zip first, so memory the `memory`
    // runs free (and the allocator keeps) cannot hide their growth.
    let backends: [(&str, Make, u64); 4] = [
        ("disk", || Box::pin(disk_backend()), 0),
        ("grpc_disk", || Box::pin(grpc_disk_backend()), 0),
        ("memory", || Box::pin(memory_backend()), held),
        ("grpc_memory", || Box::pin(grpc_memory_backend()), held),
    ];
    let mut failures = Vec::new();
    for (name, make, held_in_memory) in backends {
        let fixture = make().await;
        let storage = fixture.storage.clone();
        // Its own task, so one backend's failure does not hide the others'.
        let run = tokio::spawn(compliance::large_zip(storage, held_in_memory)).await;
        drop(fixture);
        match run {
            Ok(r) => println!(
                "large_zip {name}: {} MiB saved and read back in {:.1?}; peak RSS grew {} MiB (limit {} MiB)",
                r.size / MIB,
                r.elapsed,
                r.rss_growth / MIB,
                (held_in_memory + 64 * MIB) / MIB
            ),
            Err(e) => {
                println!("large_zip {name}: FAILED: {e}");
                failures.push(name);
            }
        }
    }
    assert!(failures.is_empty(), "failed: {failures:?}");
}
