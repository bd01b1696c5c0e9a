//! The compose test (below).
