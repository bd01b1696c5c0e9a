//! The validator hook (`ValidatorHook`): before a module version is served
//! (and so fetched and stored), `POST {"Module":…,"Version":…}` to the hook.
//! 200 allows, 403 refuses (403 to the client). Anything else fails closed
//! with an honest status: an unreachable hook 503, a hook that does not
//! answer within `ValidatorHookTimeout` 504, any other answer 502. Verdicts
//! (not failures) are reused for `ValidatorHookCacheTTL` seconds, and
//! concurrent checks of one version share one call.

use crate::route::{self, Route};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// The most of a hook's answer body read (for the log).
const MAX_BODY: usize = 64 << 10;

/// Why a check failed (the hook did not give a verdict).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookError {
    /// The hook could not be reached (503).
    #[error("validator hook unreachable: {0}")]
    Unreachable(String),
    /// The hook did not answer in time (504).
    #[error("validator hook did not answer within {0:?}")]
    Timeout(Duration),
    /// The hook answered something other than 200 or 403 (502).
    #[error("validator hook answered {0}")]
    BadAnswer(String),
}

impl HookError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            HookError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HookError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            HookError::BadAnswer(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A validator hook client with its verdict cache.
pub struct Validator {
    url: String,
    timeout: Duration,
    client: reqwest::Client,
    verdicts: moka::future::Cache<(String, String), bool>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// A client of the hook at `url`.
    pub fn new(url: &str, timeout: Duration, cache_ttl: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("validator hook client: {e}"))?;
        Ok(Validator {
            url: url.to_string(),
            timeout,
            client,
            verdicts: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl.max(Duration::from_millis(1)))
                .build(),
        })
    }

    /// Whether `module` at `version` may be served.
    pub async fn allows(&self, module: &str, version: &str) -> Result<bool, HookError> {
        let key = (module.to_string(), version.to_string());
        self.verdicts
            .try_get_with(key, self.call(module, version))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn call(&self, module: &str, version: &str) -> Result<bool, HookError> {
        let body = serde_json::json!({ "Module": module, "Version": version });
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                HookError::Timeout(self.timeout)
            } else if e.is_connect() {
                HookError::Unreachable(e.to_string())
            } else {
                HookError::BadAnswer(format!("garbage ({e})"))
            }
        };
        let mut resp = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status();
        let mut text = Vec::new();
        while text.len() < MAX_BODY {
            match resp.chunk().await.map_err(classify)? {
                Some(c) => text.extend_from_slice(&c[..c.len().min(MAX_BODY - text.len())]),
                None => break,
            }
        }
        let text = String::from_utf8_lossy(&text);
        match status.as_u16() {
            200 | 403 => {
                if !text.trim().is_empty() {
                    tracing::warn!(module, version, %status, message = %text.trim(), "validator hook message");
                }
                Ok(status.as_u16() == 200)
            }
            _ => Err(HookError::BadAnswer(format!("status {status}"))),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The middleware: checks requests naming a module version (`.info`,
/// `.mod`, `.zip`).
pub async fn check(State(v): State<Arc<Validator>>, req: Request, next: Next) -> Response {
    let c = match route::parse(req.uri().path()) {
        Ok(Route::Info(c) | Route::Mod(c) | Route::Zip(c)) => c,
        _ => return next.run(req).await,
    };
    match v.allows(c.module.as_str(), c.version.as_str()).await {
        Ok(true) => next.run(req).await,
        Ok(false) => {
            tracing::info!(%c, "refused by the validator hook");
            text(
                StatusCode::FORBIDDEN,
                format!("{c}: refused by the validator hook\n"),
            )
        }
        Err(e) => {
            tracing::warn!(%c, error = %e, "validator hook failed; refusing");
            text(e.status(), format!("{c}: {e}\n"))
        }
    }
}
