//! OpenTelemetry traces across the mesh.
//!
//! Off by default. On when `TraceExporter = "otlp"` (`ATHENS_TRACE_EXPORTER`),
//! or when `OTEL_TRACES_EXPORTER=otlp`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true`
//! turns it off whatever else says. Spans go by OTLP/gRPC to
//! `TraceExporterURL`, else to the `OTEL_EXPORTER_OTLP_*` endpoint, else to
//! `http://localhost:4317`. The sampler is `OTEL_TRACES_SAMPLER` (and `_ARG`)
//! when set, else `ParentBased(TraceIdRatio(TraceSamplingFraction))`; the
//! batch processor reads `OTEL_BSP_*`; `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` name the service (default: the binary's name).
//!
//! When off, no layer is installed and [`inject`] returns at once.
//!
//! W3C `traceparent` crosses every gRPC hop: [`inject`] (called by
//! [`crate::request_id::propagate`], the interceptor of every client of the
//! mesh) opens a client span and writes its context into the call's
//! metadata; [`ServerTraceLayer`] (installed by
//! [`crate::server::serve_grpc`]) reads it and opens the server span as its
//! child.

use crate::config::{err, ConfigError, Env, Section};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Athens' trace keys (top level).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct TraceConfig {
    /// `ATHENS_TRACE_EXPORTER`: `otlp` or empty (off). `jaeger`, `datadog`
    /// and `stackdriver` are accepted with a warning and export nothing, as
    /// in Athens.
    pub TraceExporter: String,
    /// `ATHENS_TRACE_EXPORTER_URL`: the OTLP/gRPC endpoint. Empty: the
    /// `OTEL_EXPORTER_OTLP_*` variables, else `http://localhost:4317`.
    pub TraceExporterURL: String,
    /// `ATHENS_TRACE_SAMPLING_FRACTION`: share of new traces sampled
    /// (a caller's sampling decision is followed).
    pub TraceSamplingFraction: f64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            TraceExporter: String::new(),
            TraceExporterURL: String::new(),
            TraceSamplingFraction: 1.0,
        }
    }
}

impl Section for TraceConfig {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_TRACE_EXPORTER", "TraceExporter"),
        Env::new("ATHENS_TRACE_EXPORTER_URL", "TraceExporterURL"),
        Env::new("ATHENS_TRACE_SAMPLING_FRACTION", "TraceSamplingFraction"),
    ];

    fn validate(&self) -> Result<(), ConfigError> {
        match self.TraceExporter.trim() {
            "" | "otlp" | "jaeger" | "datadog" | "stackdriver" => {}
            other => {
                return Err(err(
                    "TraceExporter",
                    format!("{other:?} is not supported (supported: otlp, or empty for off)"),
                ))
            }
        }
        let url = self.TraceExporterURL.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(err(
                "TraceExporterURL",
                format!("{url:?} must start with http:// or https://"),
            ));
        }
        if !(0.0..=1.0).contains(&self.TraceSamplingFraction) {
            return Err(err("TraceSamplingFraction", "must be between 0 and 1"));
        }
        Ok(())
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// Whether traces are exported by this process.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Where spans go, if tracing is on for `cfg` and the environment `env`.
/// `Some("")` means "the exporter's own `OTEL_EXPORTER_OTLP_*` lookup".
pub fn endpoint(cfg: &TraceConfig, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    let exporter = cfg.TraceExporter.trim();
    let from_env = set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "otlp")
        || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if exporter == "otlp" || (exporter.is_empty() && from_env) {
        Some(cfg.TraceExporterURL.trim().to_string())
    } else {
        None
    }
}

/// Sets up the tracer of this process (named `component` unless
/// `OTEL_SERVICE_NAME` says otherwise) if `cfg` and the environment turn
/// traces on; returns it for the subscriber's layer. Must run inside a
/// tokio runtime.
pub fn init(
    cfg: &TraceConfig,
    component: &str,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracer>, String> {
    if matches!(
        cfg.TraceExporter.trim(),
        "jaeger" | "datadog" | "stackdriver"
    ) {
        eprintln!(
            "{component}: TraceExporter {:?} is no longer supported; no traces are exported",
            cfg.TraceExporter.trim()
        );
        return Ok(None);
    }
    let Some(url) = endpoint(cfg, |k| std::env::var(k).ok()) else {
        return Ok(None);
    };
    use opentelemetry_otlp::WithExportConfig;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if !url.is_empty() {
        exporter = exporter.with_endpoint(url);
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("TraceExporterURL: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name(component.to_string());
    }
    let mut builder = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if std::env::var("OTEL_TRACES_SAMPLER").map_or(true, |v| v.trim().is_empty()) {
        use opentelemetry_sdk::trace::Sampler;
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.TraceSamplingFraction,
        ))));
    }
    let provider = builder.build();
    let tracer = provider.tracer(component.to_string());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider);
    ON.store(true, Ordering::Relaxed);
    Ok(Some(tracer))
}

/// Exports the spans still buffered and stops the exporter (at the end of
/// `main`). Does nothing when tracing is off.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
        let _ = p.shutdown();
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Keeps a call's client span open while the request is on its way.
#[derive(Clone)]
struct ClientSpan(#[allow(dead_code)] tracing::Span);

/// For a client interceptor: opens a client span for the call (child of the
/// current span) and writes its W3C `traceparent` into the metadata. The
/// span ends when the transport is done with the request.
pub fn inject(req: &mut tonic::Request<()>) {
    if !enabled() {
        return;
    }
    let (service, method) = req
        .extensions()
        .get::<tonic::GrpcMethod<'static>>()
        .map(|m| (m.service().to_string(), m.method().to_string()))
        .unwrap_or_default();
    let span = tracing::info_span!(
        "grpc.client",
        otel.name = %format!("{service}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut()))
    });
    req.extensions_mut().insert(ClientSpan(span));
}

/// The parent context a request carries in its headers (`traceparent`).
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// The server layer of [`crate::server::serve_grpc`] when tracing is on:
/// one `grpc.server` span per call, child of the caller's client span.
pub fn server_layer(component: &'static str) -> Option<ServerTraceLayer> {
    enabled().then_some(ServerTraceLayer { component })
}

/// See [`server_layer`].
#[derive(Debug, Clone, Copy)]
pub struct ServerTraceLayer {
    component: &'static str,
}

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace {
            inner,
            component: self.component,
        }
    }
}

/// The service made by [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
    component: &'static str,
}

impl<S, B, RB> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let path = req.uri().path().trim_start_matches('/').to_string();
        let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            component = self.component,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(extract(req.headers()));
        // Inner layers open their spans in `call`: inside this one.
        let fut = {
            let _inside = span.enter();
            self.inner.call(req)
        };
        let record = span.clone();
        Box::pin(
            async move {
                let resp = fut.await?;
                if let Some(code) = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                {
                    record.record("rpc.grpc.status_code", code);
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_only_when_asked() {
        let cfg = TraceConfig::default();
        assert_eq!(endpoint(&cfg, |_| None), None);
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://x:4317".into());
        assert_eq!(endpoint(&cfg, env).as_deref(), Some(""));
        let otlp = TraceConfig {
            TraceExporter: "otlp".into(),
            TraceExporterURL: "http://c:4317".into(),
            ..TraceConfig::default()
        };
        assert_eq!(endpoint(&otlp, |_| None).as_deref(), Some("http://c:4317"));
        let off = |k: &str| (k == "OTEL_SDK_DISABLED").then(|| "true".into());
        assert_eq!(endpoint(&otlp, off), None);
        let bad = TraceConfig {
            TraceExporter: "zipkin".into(),
            ..TraceConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
