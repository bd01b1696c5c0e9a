//! Sections of the benchmark harness (`src/bin/bench.rs`), one module each,
//! each called with one line from its `main` (feature `servers`: they start
//! real object stores and lock servers).

pub mod objstore;
