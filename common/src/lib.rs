//! Plumbing shared by every binary of the mesh: the Athens-compatible
//! [`config`], [`logging`], graceful [`shutdown`] and the gRPC [`server`]
//! builder (health, reflection, request ids).

#![warn(missing_docs)]

pub mod config;
pub mod logging;
pub mod run;
pub mod server;
pub mod shutdown;

pub use config::Config;
