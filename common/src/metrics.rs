//! Prometheus metrics: `GET /metrics` in the Prometheus text format, on the
//! gateway's HTTP port and on each gRPC service's own port (beside gRPC, on
//! the same listener: the services accept HTTP/1.1 for it).
//!
//! `StatsExporter` (`ATHENS_STATS_EXPORTER`) is `prometheus` by default, as
//! in Athens; empty turns metrics off (no recorder: the `metrics` macros of
//! the crates cost an atomic load, and `/metrics` answers 404). Other
//! values (`datadog`, `stackdriver`) are refused, as in Athens.
//!
//! The crates record with the `metrics` macros; the names are listed in
//! `docs/observability.md`. All start with `modmesh_`.

use crate::config::{err, Config, ConfigError, Env, Section};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Athens' `StatsExporter` key (top level).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct StatsConfig {
    /// `ATHENS_STATS_EXPORTER`: `prometheus` (default) or empty (off).
    pub StatsExporter: String,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            StatsExporter: "prometheus".into(),
        }
    }
}

impl Section for StatsConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[Env::new("ATHENS_STATS_EXPORTER", "StatsExporter")];

    fn validate(&self) -> Result<(), ConfigError> {
        match self.StatsExporter.trim() {
            "" | "prometheus" => Ok(()),
            other => Err(err(
                "StatsExporter",
                format!("{other:?} is not supported (supported: prometheus, or empty for off)"),
            )),
        }
    }
}

/// Histogram buckets (seconds) of every latency histogram.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder if `StatsExporter` says so. Must run
/// inside a tokio runtime (a task keeps the histograms trimmed).
pub fn init(cfg: &Config) -> Result<(), ConfigError> {
    let stats: StatsConfig = cfg.section()?;
    if stats.StatsExporter.trim().is_empty() || HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| err("StatsExporter", e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let _ = HANDLE.set(handle);
    Ok(())
}

/// The current metrics in the Prometheus text format, if metrics are on.
pub fn render() -> Option<String> {
    HANDLE.get().map(|h| h.render())
}

/// The answer to `GET /metrics`: 200 with the text format, or 404 (plain
/// text) when metrics are off.
pub fn response() -> http::Response<String> {
    let (status, ctype, body) = match render() {
        Some(text) => (200, "text/plain; version=0.0.4; charset=utf-8", text),
        None => (
            404,
            "text/plain; charset=utf-8",
            "metrics are off (StatsExporter is empty)\n".to_string(),
        ),
    };
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, ctype)
        .body(body)
        .expect("a valid response")
}

/// `routes` plus `GET /metrics` (see [`response`]), for a gRPC server that
/// accepts HTTP/1.1.
pub fn with_route(routes: tonic::service::Routes) -> tonic::service::Routes {
    let router = routes
        .into_axum_router()
        .route("/metrics", axum::routing::get(|| async { response() }));
    tonic::service::Routes::from(router)
}
