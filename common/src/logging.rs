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
    init_traced(level, format, None)
}

/// The crates of the mesh (their log targets).
const OURS: [&str; 11] = [
    "modmesh",
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

/// [`init`], plus an OpenTelemetry layer exporting the mesh's spans (at
/// info and above, whatever the log level) through `tracer`, if any.
pub fn init_traced(level: &str, format: &str, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let level = parse_level(level).unwrap_or("info");
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            let mut spec = String::from("warn");
            for c in OURS {
                spec.push_str(&format!(",{c}={level}"));
            }
            EnvFilter::new(spec)
        });
    let otel = tracer.map(|t| {
        let targets = tracing_subscriber::filter::Targets::new()
            .with_targets(OURS.map(|c| (c, tracing::Level::INFO)));
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_filter(targets)
    });
    let fmt_layer = if format == "json" {
        fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel)
        .try_init();
}
