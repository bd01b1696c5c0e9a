//! Request ids: taken from an incoming request (`X-Request-Id` or Athens'
//! `Athens-Request-ID`) or made fresh, returned in the response, kept in a
//! task-local while the request is handled, written into every log line of
//! the request's span, and passed along as `x-request-id` on every gRPC call
//! made while handling it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The header the mesh uses (HTTP and gRPC metadata).
pub const HEADER: &str = "x-request-id";
/// The header Athens reads; accepted and echoed for compatibility.
pub const ATHENS_HEADER: &str = "athens-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// The request id of the request being handled by this task, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.clone()).ok()
}

/// Runs `fut` with `id` as the current request id.
pub async fn scope<F: Future>(id: String, fut: F) -> F::Output {
    CURRENT.scope(id, fut).await
}

/// A fresh request id.
pub fn generate() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn sanitize(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| raw.to_string())
}

/// The id carried by `headers`, if it is well formed.
pub fn from_headers(headers: &http::HeaderMap) -> Option<String> {
    [HEADER, ATHENS_HEADER]
        .iter()
        .filter_map(|h| headers.get(*h))
        .filter_map(|v| v.to_str().ok())
        .find_map(sanitize)
}

/// A tonic client interceptor that sends the current request id (the one
/// interceptor of every client of the mesh: it also sends the trace context,
/// [`crate::telemetry::inject`], and the token, [`crate::security::attach_token`],
/// when those are on).
pub fn propagate(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    crate::telemetry::inject(&mut req);
    crate::security::attach_token(&mut req);
    if let Some(id) = current() {
        if let Ok(v) = id.parse() {
            req.metadata_mut().insert(HEADER, v);
        }
    }
    Ok(req)
}

/// A tower layer for HTTP and gRPC servers: finds or makes the request id,
/// runs the handler inside a span that carries it and with it as the
/// task-local current id, logs one line per request (status and time), and
/// returns the id in the response headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer {
    /// The service name written into the span.
    pub service: &'static str,
}

impl RequestIdLayer {
    /// A layer whose spans name `service`.
    pub fn new(service: &'static str) -> Self {
        RequestIdLayer { service }
    }
}

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            service: self.service,
        }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    service: &'static str,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RequestIdService<S>
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
        let id = from_headers(req.headers()).unwrap_or_else(generate);
        let span = tracing::info_span!(
            "request",
            service = self.service,
            request_id = %id,
            method = %req.method(),
            path = %req.uri().path(),
        );
        let fut = self.inner.call(req);
        let header = http::HeaderValue::from_str(&id).ok();
        let started = std::time::Instant::now();
        Box::pin(
            async move {
                let mut resp = CURRENT.scope(id, fut).await?;
                // gRPC errors answered at once carry grpc-status in the headers.
                let grpc_status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                tracing::info!(
                    status = resp.status().as_u16(),
                    grpc_status = grpc_status.as_deref(),
                    ms = started.elapsed().as_millis() as u64,
                    "request handled"
                );
                if let Some(h) = header {
                    resp.headers_mut().insert(HEADER, h.clone());
                    resp.headers_mut().insert(ATHENS_HEADER, h);
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
    fn ids_are_sanitized() {
        let mut h = http::HeaderMap::new();
        h.insert(ATHENS_HEADER, "abc-123".parse().unwrap());
        assert_eq!(from_headers(&h).as_deref(), Some("abc-123"));
        h.insert(HEADER, "bad id with spaces".parse().unwrap());
        assert_eq!(from_headers(&h).as_deref(), Some("abc-123"));
        let mut h = http::HeaderMap::new();
        h.insert(HEADER, "x".repeat(200).parse().unwrap());
        assert_eq!(from_headers(&h), None);
    }

    #[tokio::test]
    async fn interceptor_sends_the_current_id() {
        let req = scope("rid-1".into(), async {
            propagate(tonic::Request::new(())).unwrap()
        })
        .await;
        assert_eq!(req.metadata().get(HEADER).unwrap(), "rid-1");
        let req = propagate(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get(HEADER).is_none());
    }
}
