//! The storage backends, one module each, and [`from_config`], which picks
//! one by `StorageType`.
//!
//! A new backend is one file here, one arm in [`from_config`] and one line
//! in the compliance test list (`tests/compliance.rs`).

use crate::Storage;
use modmesh_proto::{Error, Result};
use std::sync::Arc;

pub mod disk;
pub mod memory;

pub use disk::DiskStorage;
pub use memory::MemoryStorage;

/// Builds the backend named by `cfg.StorageType`: `memory` or `disk`
/// (rooted at `Storage.Disk.RootPath`). Anything else is `Invalid`.
pub fn from_config(cfg: &modmesh_common::Config) -> Result<Arc<dyn Storage>> {
    match cfg.StorageType.trim() {
        "memory" => Ok(Arc::new(MemoryStorage::new())),
        "disk" => {
            let root = &cfg.Storage.Disk.RootPath;
            if root.trim().is_empty() {
                return Err(Error::invalid(
                    "Storage.Disk.RootPath: required when StorageType is disk",
                ));
            }
            Ok(Arc::new(DiskStorage::new(root)?))
        }
        other => Err(Error::invalid(format!(
            "StorageType: {other:?} is not supported (supported: memory, disk)"
        ))),
    }
}
