//! Helpers for the end-to-end suite and the benchmark harness.
