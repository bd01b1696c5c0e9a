//! The GOPROXY HTTP gateway.
//!
//! A request path is decoded once ([`route::parse`]) into a typed
//! [`route::Route`]; handlers ([`app`]) serve from [`Storage`] and, on a
//! miss, take the single-flight lock, re-check, fetch (the fetcher stores)
//! and serve. Errors become HTTP statuses in one place ([`error`]). The
//! services behind it are in-process or remote ([`wire`]); the gateway
//! cannot tell which.
//!
//! [`Storage`]: modmesh_storage::Storage

#![warn(missing_docs)]

pub mod app;
pub mod edge;
pub mod error;
pub mod flight;
pub mod modes;
pub mod observe;
pub mod route;
pub mod service;
pub mod sumdb;
pub mod tier;
pub mod wire;

pub use app::{router, AppState};
pub use service::{ModuleService, Settings};
pub use wire::Services;
