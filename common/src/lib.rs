//! Plumbing shared by every binary of the mesh: the Athens-compatible
//! [`config`], [`logging`], the [`request_id`] layer (ids and one request
//! log line per request, HTTP and gRPC), graceful [`shutdown`] and the gRPC
//! [`server`] builder (health, reflection, deadlines), and observability
//! and security of the hops: [`telemetry`] (OpenTelemetry traces),
//! [`metrics`] (Prometheus) and [`security`] (TLS, mTLS, a shared token).

#![warn(missing_docs)]

pub mod balance;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod owner;
pub mod request_id;
pub mod run;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use config::Config;
