//! Sections of the benchmark harness (`src/bin/bench.rs`), one module each,
//! each called with one line from its `main` (those under feature `servers`
//! start real object stores and lock servers), and [`load`], the closed-loop
//! load generator they share.

pub mod coldgraph;
pub mod load;
#[cfg(feature = "servers")]
pub mod objstore;
pub mod tracing;
