//! Lock drivers, chosen by `SingleFlightType`.
//!
//! - `memory`: [`memory::MemoryLock`], one process's lock table.
//!
//! A new driver implements [`crate::Lock`], gets a match arm here and one
//! line in `tests/contract.rs`.

pub mod memory;

use crate::Lock;
use modmesh_proto::{Error, Result};
use std::sync::Arc;

pub use memory::MemoryLock;

/// The `SingleFlightType` values this build has a driver for.
pub const TYPES: &[&str] = &["memory"];

/// Builds the driver named by `cfg.SingleFlightType`.
pub fn from_config(cfg: &modmesh_common::Config) -> Result<Arc<dyn Lock>> {
    match cfg.SingleFlightType.trim() {
        "memory" => Ok(Arc::new(MemoryLock::new())),
        other => Err(Error::invalid(format!(
            "SingleFlightType: {other:?} is not supported by lock-svc (supported: {})",
            TYPES.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_by_single_flight_type() {
        let mut cfg = modmesh_common::Config::default();
        assert!(from_config(&cfg).is_ok());
        cfg.SingleFlightType = "redis".into();
        let e = from_config(&cfg).unwrap_err();
        assert!(e.is(modmesh_proto::ErrorKind::Invalid));
        assert!(e.message.contains("SingleFlightType"), "{e}");
    }
}
