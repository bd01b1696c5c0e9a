//! One span and a few metrics per HTTP request: the span `http.server`
//! (exported when traces are on, [`modmesh_common::telemetry`]) carries the
//! route and status; `modmesh_http_requests_total{route,status}`,
//! `modmesh_http_request_duration_seconds{route}` and
//! `modmesh_http_response_bytes_total{route}` count them.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use std::pin::Pin;
use std::task::{Context, Poll};
use tracing::Instrument;

/// The route of `path`, as a label of few values.
pub fn route_label(path: &str) -> &'static str {
    if path.ends_with("/@v/list") {
        "list"
    } else if path.ends_with("/@latest") {
        "latest"
    } else if path.ends_with(".info") {
        "info"
    } else if path.ends_with(".mod") {
        "mod"
    } else if path.ends_with(".zip") {
        "zip"
    } else if path.contains("/sumdb/") {
        "sumdb"
    } else {
        match path {
            "/healthz" => "healthz",
            "/readyz" => "readyz",
            "/version" => "version",
            "/metrics" => "metrics",
            "/" => "home",
            _ => "other",
        }
    }
}

/// The middleware (outermost layer of [`crate::router`]).
pub async fn observe(req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let span = if modmesh_common::telemetry::enabled() {
        tracing::info_span!(
            "http.server",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = route,
            url.path = %req.uri().path(),
            http.response.status_code = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    };
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    metrics::counter!("modmesh_http_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("modmesh_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    let bytes = metrics::counter!("modmesh_http_response_bytes_total", "route" => route);
    resp.map(|b| Body::new(Counted { inner: b, bytes }))
}

/// A body that counts the bytes it yields.
struct Counted {
    inner: Body,
    bytes: metrics::Counter,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                self.bytes.increment(d.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn labels() {
        assert_eq!(route_label("/x.org/m/@v/list"), "list");
        assert_eq!(route_label("/x.org/m/@v/v1.0.0.info"), "info");
        assert_eq!(route_label("/x.org/m/@v/v1.0.0.zip"), "zip");
        assert_eq!(route_label("/x.org/m/@latest"), "latest");
        assert_eq!(route_label("/metrics"), "metrics");
        assert_eq!(route_label("/anything"), "other");
    }
}
