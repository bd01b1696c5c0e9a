//! The wire contract of the module proxy mesh.
//!
//! - [`pb`]: the generated protobuf messages, tonic clients and servers.
//! - [`Error`] / [`ErrorKind`]: the one error kind set, mapped to
//!   [`tonic::Status`] and back in exactly one place.
//! - [`ModulePath`] / [`Version`] / [`Coordinates`]: module coordinates,
//!   validated once at the edge and carried typed through every hop.

#![warn(missing_docs)]

pub mod coords;
pub mod error;

pub use coords::{
    is_canonical_version, is_pseudo_version, CanonicalVersion, Coordinates, ModulePath, Version,
};
pub use error::{Error, ErrorKind, Result};

/// Generated protobuf types and tonic stubs (package `modmesh.v1`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("modmesh.v1");
}

/// The encoded file descriptor set of every service, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modmesh_descriptor");

/// The largest zip chunk any hop sends in one message.
pub const MAX_CHUNK: usize = 1 << 20;

/// The largest gRPC message any service accepts: room for a 16 MiB go.mod
/// (the Go toolchain's limit) plus the rest of a save header.
pub const MAX_MESSAGE: usize = 20 << 20;
