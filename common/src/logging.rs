//! Logging in Athens' formats: `plain` (human-readable) or `json` (one
//! object per line), at Athens' levels. Every line logged while handling a
//! request carries its `request_id` through the request span.

use tracing_subscriber::{fmt, EnvFilter};

/// Maps an Athens log level name to a tracing level name.
pub fn parse_level(level: &str) -> Result<&'static str, String> {
    Ok(match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "" | "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        other => return Err(format!("{other:?} is not a log level")),
    })
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: &str) {
    let level = parse_level(level).unwrap_or("info");
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            let ours = [
                "modmesh_proto",
                "modmesh_common",
                "modmesh_storage",
                "modmesh_lock",
                "modmesh_fetcher",
                "modmesh_gateway",
                "gateway",
                "storage_svc",
                "lock_svc",
                "fetcher_svc",
            ];
            let mut spec = String::from("warn");
            for c in ours {
                spec.push_str(&format!(",{c}={level}"));
            }
            EnvFilter::new(spec)
        });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
