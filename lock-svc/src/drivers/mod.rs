//! Lock drivers, chosen by `SingleFlightType` from [`REGISTRY`].
//!
//! - `memory`: [`memory::MemoryLock`], one process's lock table.
//!
//! A new driver is one file here (its code and its config section), one
//! line in [`REGISTRY`] and one line in `tests/contract.rs`.

pub mod memory;

use crate::Lock;
use modmesh_common::Config;
use modmesh_proto::{Error, Result};
use std::sync::Arc;

pub use memory::MemoryLock;

/// Builds a driver from the whole configuration (it reads its own section).
pub type Builder = fn(&Config) -> Result<Arc<dyn Lock>>;

/// Every `SingleFlightType` this build has a driver for, with its builder.
pub const REGISTRY: &[(&str, Builder)] = &[("memory", memory::build)];

/// The `SingleFlightType` values of [`REGISTRY`].
pub fn types() -> Vec<&'static str> {
    REGISTRY.iter().map(|(name, _)| *name).collect()
}

/// Builds the driver named by `cfg.SingleFlightType`; an unknown type is
/// `Invalid`, listing the types that exist.
pub fn from_config(cfg: &Config) -> Result<Arc<dyn Lock>> {
    let name = cfg.SingleFlightType.trim();
    match REGISTRY.iter().find(|(n, _)| *n == name) {
        Some((_, build)) => build(cfg),
        None => Err(Error::invalid(format!(
            "SingleFlightType: {name:?} is not supported by lock-svc (supported: {})",
            types().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_by_single_flight_type() {
        let cfg = Config::from_text("", &[]).unwrap();
        assert!(from_config(&cfg).is_ok());
        let cfg = Config::from_text("SingleFlightType = \"floppy\"\n", &[]).unwrap();
        let e = from_config(&cfg).unwrap_err();
        assert!(e.is(modmesh_proto::ErrorKind::Invalid));
        assert!(e.message.contains("SingleFlightType"), "{e}");
        assert!(e.message.contains("memory"), "{e}");
    }
}
