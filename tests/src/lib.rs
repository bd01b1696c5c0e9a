//! Helpers for the end-to-end suite (`tests/e2e.rs`) and the benchmark harness
//! (`src/bin/bench.rs`).
//!
//! - [`fixtures`]: made-up Go modules with dependencies between them, written
//!   as a GOPROXY directory, plus big single-file modules.
//! - [`server`]: a static HTTP server of such a directory (the upstream and the
//!   benchmark reference) with per-path request counters, delays and stop.
//! - [`procs`]: spawning the mesh binaries with a clean environment, readiness,
//!   SIGTERM with exit-status check, peak RSS.
//! - [`topology`]: an embedded gateway, or the mesh of services.
//! - [`goclient`]: the real `go` command with an isolated environment.
//! - [`http`]: plain and raw HTTP clients.
//! - [`chains`]: package resolution through `GOPROXY` lists (nested and
//!   sub-directory packages, an unreachable `direct`, the real upstream).
//! - [`dbs`]: real PostgreSQL and MariaDB servers on loopback.
//! - [`benchsec`]: sections of the benchmark harness (the cold real graph, tracing overhead;
//!   with feature `servers`, object stores and lock drivers).
//! - `objstores` (feature `servers`): a fresh bucket on each real object
//!   store (S3 on s3s-fs and moto, MinIO, GCS, Azure Blob, Mongo), its
//!   storage-svc environment and a plain listing of what it holds.
//! - `lockservers` (feature `servers`): each shared lock driver's real
//!   server and lock-svc environment.
//! - [`obs`]: an OTLP trace receiver, test certificates, the mesh with
//!   extra environment (traces, metrics, TLS).

#![warn(missing_docs)]

pub mod benchsec;
pub mod chains;
pub mod dbs;
pub mod fixtures;
pub mod goclient;
pub mod http;
#[cfg(feature = "servers")]
pub mod lockservers;
#[cfg(feature = "servers")]
pub mod objstores;
pub mod obs;
pub mod private;
pub mod procs;
pub mod server;
pub mod sumdb;
pub mod toolchain;
pub mod topology;
