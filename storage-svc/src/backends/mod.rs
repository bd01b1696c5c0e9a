//! The storage backends, one module each, and [`from_config`], which picks
//! one by `StorageType` from [`REGISTRY`].
//!
//! A new backend is one file here (its code and its config [`Section`]), one
//! line in [`REGISTRY`] and one line in the compliance test list
//! (`tests/compliance.rs`).
//!
//! [`Section`]: modmesh_common::config::Section

use crate::Storage;
use modmesh_common::Config;
use modmesh_proto::{Error, Result};
use std::sync::Arc;

pub mod azureblob;
#[cfg(feature = "testing")]
pub mod cloud_servers;
pub mod disk;
pub mod external;
pub mod gcp;
pub mod memory;
pub mod minio;
pub mod mongo;
pub mod s3;

pub use disk::DiskStorage;
pub use external::ExternalStorage;
pub use memory::MemoryStorage;
pub use mongo::MongoStorage;
pub use s3::ObjectStore;

/// Builds a backend from the whole configuration (it reads its own section).
pub type Builder = fn(&Config) -> Result<Arc<dyn Storage>>;

/// Every `StorageType` this build serves, with its builder.
pub const REGISTRY: &[(&str, Builder)] = &[
    ("memory", memory::build),
    ("disk", disk::build),
    ("mongo", mongo::build),
    ("external", external::build),
    ("s3", s3::build),
    ("minio", minio::build),
    ("gcp", gcp::build),
    ("azureblob", azureblob::build),
];

/// The `StorageType` values of [`REGISTRY`].
pub fn types() -> Vec<&'static str> {
    REGISTRY.iter().map(|(name, _)| *name).collect()
}

/// Builds the backend named by `cfg.StorageType`; an unknown type is
/// `Invalid`, listing the types that exist.
pub fn from_config(cfg: &Config) -> Result<Arc<dyn Storage>> {
    let name = cfg.StorageType.trim();
    let build =
        modmesh_common::config::pick(REGISTRY, "StorageType", name).map_err(config_error)?;
    build(cfg)
}

/// A configuration error as an `Invalid` error naming the key.
pub fn config_error(e: modmesh_common::config::ConfigError) -> Error {
    Error::invalid(format!("{}: {}", e.key, e.problem))
}
