//! The gateway's edges, as Athens users run them: basic auth, the filter
//! file, the validator hook (in Athens' order, as tower layers), `PathPrefix`,
//! `/catalog`, `/index`, `/robots.txt`, the home page, and the listener
//! (TCP, TLS with certificate reload, or a unix socket).
//!
//! [`compose`] is the one place routes meet the prefix and the layers: any
//! route added to the gateway's router (the checksum-database proxy too)
//! lives under `PathPrefix` behind the same layers.

pub mod auth;
pub mod config;
pub mod filter;
pub mod index;
pub mod listen;
pub mod pages;
pub mod tls;
pub mod validator;

use crate::app::AppState;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
pub use config::EdgeConfig;
use std::sync::Arc;
use std::time::Duration;

/// Everything the edges need, built once from the configuration.
#[derive(Default)]
pub struct Edges {
    /// The edge keys.
    pub config: EdgeConfig,
    /// Basic auth, when configured.
    pub auth: Option<Arc<auth::BasicAuth>>,
    /// The filter file, when configured.
    pub filter: Option<Arc<filter::FilterLayer>>,
    /// The validator hook, when configured.
    pub validator: Option<Arc<validator::Validator>>,
    /// The module index, unless `IndexType` is `none`.
    pub index: Option<Arc<dyn index::Index>>,
    /// `NoSumPatterns` (the checksum-database section owns the key): shown
    /// on the home page, refused by the `/sumdb/` lookups.
    pub no_sum_patterns: Vec<String>,
}

impl std::fmt::Debug for Edges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edges")
            .field("config", &self.config)
            .field("index", &self.index.is_some())
            .finish_non_exhaustive()
    }
}

impl Edges {
    /// Builds the edges `cfg` describes (reads the filter file, connects
    /// the index). Errors name the key at fault.
    pub async fn from_config(cfg: &modmesh_common::Config) -> Result<Edges, String> {
        let config: EdgeConfig = cfg.section().map_err(|e| e.to_string())?;
        let auth = config.basic_auth().then(|| {
            Arc::new(auth::BasicAuth::new(
                &config.BasicAuthUser,
                &config.BasicAuthPass,
            ))
        });
        let filter = if config.FilterFile.is_empty() {
            None
        } else {
            if cfg.GoEnv == "production" {
                filter::check_permissions(&config.FilterFile)
                    .map_err(|e| format!("config: FilterFile: {e}"))?;
            }
            let f = filter::Filter::load(&config.FilterFile)
                .map_err(|e| format!("config: FilterFile: {e}"))?;
            Some(Arc::new(filter::FilterLayer {
                filter: f,
                endpoint: config.GlobalEndpoint.trim_end_matches('/').to_string(),
            }))
        };
        let validator = if config.ValidatorHook.is_empty() {
            None
        } else {
            Some(Arc::new(
                validator::Validator::new(
                    &config.ValidatorHook,
                    Duration::from_secs(config.ValidatorHookTimeout),
                    Duration::from_secs(config.ValidatorHookCacheTTL),
                )
                .map_err(|e| format!("config: ValidatorHook: {e}"))?,
            ))
        };
        let index = index::from_config(cfg, &config.IndexType)
            .await
            .map_err(|e| format!("IndexType {:?}: {e}", config.IndexType))?;
        let sumdb: modmesh_fetcher::sumdb::SumDbConfig =
            cfg.section().map_err(|e| e.to_string())?;
        Ok(Edges {
            config,
            auth,
            filter,
            validator,
            index,
            no_sum_patterns: sumdb.NoSumPatterns,
        })
    }
}

/// The gateway's routes (with the edge routes added) under `PathPrefix`,
/// behind basic auth, then the filter, then the validator hook. Health and
/// readiness are open, under the prefix and at the root.
pub fn compose(routes: Router<AppState>, state: AppState) -> Router {
    let edges = state.edges_arc();
    let inner: Router = routes
        .route("/", get(pages::home))
        .route("/catalog", get(pages::catalog))
        .route("/index", get(pages::index))
        .route("/robots.txt", get(pages::robots))
        .with_state(state);
    // Layers wrap outward: the last added runs first.
    let mut protected = inner.clone();
    if let Some(v) = &edges.validator {
        protected = protected.layer(axum::middleware::from_fn_with_state(
            v.clone(),
            validator::check,
        ));
    }
    if let Some(f) = &edges.filter {
        protected = protected.layer(axum::middleware::from_fn_with_state(
            f.clone(),
            filter::apply,
        ));
    }
    if let Some(a) = &edges.auth {
        protected = protected.layer(axum::middleware::from_fn_with_state(
            a.clone(),
            auth::require,
        ));
    }
    let prefix = edges.config.path_prefix();
    let app = if prefix.is_empty() {
        protected
    } else {
        under_prefix(&prefix, inner, protected)
    };
    if edges.config.ForceSSL && !edges.config.tls() {
        app.layer(axum::middleware::from_fn(force_ssl))
    } else {
        app
    }
}

fn under_prefix(prefix: &str, inner: Router, protected: Router) -> Router {
    // The open routes at the root are answered by the same (unlayered)
    // routes; a service, not a nested router, so the path stays as it is.
    let open = tower::ServiceExt::map_request(inner, |r: axum::extract::Request| r);
    Router::new()
        .route("/", get(root_health))
        .route_service("/healthz", open.clone())
        .route_service("/readyz", open)
        .nest_service(prefix, protected)
}

/// `ForceSSL`: a plain-HTTP request (not forwarded from https) is sent to
/// the same URL on https with 301; health and readiness answer as they are.
async fn force_ssl(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    let forwarded_https = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if forwarded_https || path.ends_with("/healthz") || path.ends_with("/readyz") {
        return next.run(req).await;
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match host.and_then(|h| HeaderValue::from_str(&format!("https://{h}{target}")).ok()) {
        Some(loc) => {
            let mut r = axum::http::StatusCode::MOVED_PERMANENTLY.into_response();
            r.headers_mut().insert(header::LOCATION, loc);
            r
        }
        None => (axum::http::StatusCode::BAD_REQUEST, "no Host header\n").into_response(),
    }
}

/// `/` on the root when a `PathPrefix` is set: a health answer for load
/// balancers (as in Athens).
async fn root_health() -> Response {
    let mut r = "ok\n".into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
