//! Sections of the benchmark harness (`src/bin/bench.rs`), one module each.

pub mod tracing;
