//! Security of the gRPC hops: TLS with optional mutual TLS, and a shared
//! token for the calls that change state.
//!
//! Server side (every service, read by [`crate::server::serve_grpc`]):
//! `GrpcTLSCertFile` + `GrpcTLSKeyFile` serve TLS; `GrpcClientCAFile` also
//! requires a client certificate signed by that CA (mTLS).
//!
//! Client side (every channel of [`crate::server::channel_with_timeout`]):
//! an `https://` service URL uses TLS, trusting `GrpcTLSCAFile` (required
//! for `https://`), and presents `GrpcClientCertFile` + `GrpcClientKeyFile`
//! when set.
//!
//! `GrpcToken`: when set on a server, the calls in [`PROTECTED`] must carry
//! `authorization: Bearer <token>` or are refused with PermissionDenied;
//! reads stay open. When set on a client, every call carries it.

use crate::config::{err, Config, ConfigError, Env, Section};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The gRPC calls that need the token when one is set: writes and deletes
/// of storage, the lock's leases, and the fetcher's download (which saves).
pub const PROTECTED: &[&str] = &[
    "/modmesh.v1.Storage/Save",
    "/modmesh.v1.Storage/Delete",
    "/modmesh.v1.Lock/Acquire",
    "/modmesh.v1.Lock/KeepAlive",
    "/modmesh.v1.Lock/Release",
    "/modmesh.v1.Fetcher/Download",
    "/modmesh.v1.Fetcher/DownloadProgress",
];

/// The keys (top level) of the hops' TLS and token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct GrpcSecurity {
    /// `ATHENS_GRPC_TLS_CERT_FILE`: the services' certificate chain (PEM).
    pub GrpcTLSCertFile: String,
    /// `ATHENS_GRPC_TLS_KEY_FILE`: its private key (PEM).
    pub GrpcTLSKeyFile: String,
    /// `ATHENS_GRPC_CLIENT_CA_FILE`: when set, services require client
    /// certificates signed by this CA (PEM).
    pub GrpcClientCAFile: String,
    /// `ATHENS_GRPC_TLS_CA_FILE`: the CA clients trust for `https://`
    /// service URLs (PEM).
    pub GrpcTLSCAFile: String,
    /// `ATHENS_GRPC_CLIENT_CERT_FILE`: the certificate clients present (PEM).
    pub GrpcClientCertFile: String,
    /// `ATHENS_GRPC_CLIENT_KEY_FILE`: its private key (PEM).
    pub GrpcClientKeyFile: String,
    /// `ATHENS_GRPC_TOKEN`: the shared token of the calls in [`PROTECTED`].
    pub GrpcToken: String,
}

impl Section for GrpcSecurity {
    const PATH: &'static str = "";
    const ENV: &'static [Env] = &[
        Env::new("ATHENS_GRPC_TLS_CERT_FILE", "GrpcTLSCertFile"),
        Env::new("ATHENS_GRPC_TLS_KEY_FILE", "GrpcTLSKeyFile"),
        Env::new("ATHENS_GRPC_CLIENT_CA_FILE", "GrpcClientCAFile"),
        Env::new("ATHENS_GRPC_TLS_CA_FILE", "GrpcTLSCAFile"),
        Env::new("ATHENS_GRPC_CLIENT_CERT_FILE", "GrpcClientCertFile"),
        Env::new("ATHENS_GRPC_CLIENT_KEY_FILE", "GrpcClientKeyFile"),
        Env::new("ATHENS_GRPC_TOKEN", "GrpcToken"),
    ];

    fn validate(&self) -> Result<(), ConfigError> {
        let pair = |a: (&str, &str), b: (&str, &str)| {
            if a.1.trim().is_empty() != b.1.trim().is_empty() {
                Err(err(a.0, format!("{} and {} go together", a.0, b.0)))
            } else {
                Ok(())
            }
        };
        pair(
            ("GrpcTLSCertFile", &self.GrpcTLSCertFile),
            ("GrpcTLSKeyFile", &self.GrpcTLSKeyFile),
        )?;
        pair(
            ("GrpcClientCertFile", &self.GrpcClientCertFile),
            ("GrpcClientKeyFile", &self.GrpcClientKeyFile),
        )?;
        if !self.GrpcClientCAFile.trim().is_empty() && self.GrpcTLSCertFile.trim().is_empty() {
            return Err(err(
                "GrpcClientCAFile",
                "needs GrpcTLSCertFile and GrpcTLSKeyFile (client certificates need TLS)",
            ));
        }
        if self.GrpcToken.trim() != self.GrpcToken || self.GrpcToken.contains(char::is_control) {
            return Err(err(
                "GrpcToken",
                "must not have spaces around it or control characters",
            ));
        }
        Ok(())
    }
}

/// The loaded files and token of this process.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    server: Option<ServerTlsConfig>,
    client: Option<ClientTlsConfig>,
    token: Option<Arc<str>>,
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path.trim()).map_err(|e| err(key, format!("{path}: {e}")))
}

impl GrpcSecurity {
    /// Reads the files the keys name.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let mut out = Loaded::default();
        if !(self.GrpcTLSCertFile.trim().is_empty() && self.GrpcTLSCAFile.trim().is_empty()) {
            // tonic's TLS takes the process's rustls provider; the build
            // links two, so name one (the first call wins, which is fine).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if !self.GrpcTLSCertFile.trim().is_empty() {
            let id = Identity::from_pem(
                read("GrpcTLSCertFile", &self.GrpcTLSCertFile)?,
                read("GrpcTLSKeyFile", &self.GrpcTLSKeyFile)?,
            );
            let mut tls = ServerTlsConfig::new().identity(id);
            if !self.GrpcClientCAFile.trim().is_empty() {
                tls = tls.client_ca_root(Certificate::from_pem(read(
                    "GrpcClientCAFile",
                    &self.GrpcClientCAFile,
                )?));
            }
            out.server = Some(tls);
        }
        if !self.GrpcTLSCAFile.trim().is_empty() {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(
                "GrpcTLSCAFile",
                &self.GrpcTLSCAFile,
            )?));
            if !self.GrpcClientCertFile.trim().is_empty() {
                tls = tls.identity(Identity::from_pem(
                    read("GrpcClientCertFile", &self.GrpcClientCertFile)?,
                    read("GrpcClientKeyFile", &self.GrpcClientKeyFile)?,
                ));
            }
            out.client = Some(tls);
        }
        if !self.GrpcToken.is_empty() {
            out.token = Some(Arc::from(self.GrpcToken.as_str()));
        }
        Ok(out)
    }
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// Reads the keys of `cfg` and makes them this process's (the first call
/// wins).
pub fn init(cfg: &Config) -> Result<(), ConfigError> {
    let loaded = cfg.section::<GrpcSecurity>()?.load()?;
    let _ = LOADED.set(loaded);
    Ok(())
}

/// The server TLS of this process, if any.
pub fn server_tls() -> Option<ServerTlsConfig> {
    LOADED.get().and_then(|l| l.server.clone())
}

/// Applies this process's client TLS to `endpoint` when `url` is `https://`.
pub fn secure_endpoint(
    url: &str,
    endpoint: tonic::transport::Endpoint,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut tls = LOADED
        .get()
        .and_then(|l| l.client.clone())
        // Without GrpcTLSCAFile nothing is trusted: the handshake fails
        // with an error naming the certificate.
        .unwrap_or_default();
    // A balanced channel dials each replica by address: the certificate is
    // checked against the service's name in `url`.
    if let Some(host) = url.parse::<http::Uri>().ok().and_then(|u| {
        u.host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
    }) {
        tls = tls.domain_name(host);
    }
    endpoint.tls_config(tls)
}

/// For a client interceptor: sends this process's token, if any, as
/// `authorization: Bearer <token>`.
pub fn attach_token(req: &mut tonic::Request<()>) {
    if let Some(token) = LOADED.get().and_then(|l| l.token.as_deref()) {
        if let Ok(v) = format!("Bearer {token}").parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }
}

/// The token check of [`crate::server::serve_grpc`], when a token is set.
pub fn token_layer() -> Option<TokenLayer> {
    LOADED
        .get()
        .and_then(|l| l.token.clone())
        .map(|token| TokenLayer { token })
}

/// Refuses the calls in [`PROTECTED`] that do not carry the token.
#[derive(Debug, Clone)]
pub struct TokenLayer {
    token: Arc<str>,
}

impl TokenLayer {
    /// A check of `token`.
    pub fn new(token: &str) -> Self {
        TokenLayer {
            token: Arc::from(token),
        }
    }
}

impl<S> tower::Layer<S> for TokenLayer {
    type Service = TokenCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TokenCheck {
            inner,
            token: self.token.clone(),
        }
    }
}

/// The service made by [`TokenLayer`].
#[derive(Debug, Clone)]
pub struct TokenCheck<S> {
    inner: S,
    token: Arc<str>,
}

fn allowed(token: &str, headers: &http::HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes())))
}

impl<S, B, RB> tower::Service<http::Request<B>> for TokenCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if PROTECTED.contains(&path) && !allowed(&self.token, req.headers()) {
            let what = path.to_string();
            return Box::pin(async move {
                tracing::warn!(call = %what, "refused: no valid GrpcToken");
                Ok(tonic::Status::permission_denied(format!(
                    "{what} needs the mesh's token (GrpcToken) as authorization: Bearer"
                ))
                .into_http())
            });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(fut.await?.map(tonic::body::Body::new)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_in_pairs() {
        let ok =
            Config::from_text("GrpcTLSCertFile = \"a\"\nGrpcTLSKeyFile = \"b\"\n", &[]).unwrap();
        assert!(ok.section::<GrpcSecurity>().is_ok());
        let half = Config::from_text("", &[("ATHENS_GRPC_TLS_CERT_FILE", "a")]).unwrap();
        let e = half.section::<GrpcSecurity>().unwrap_err();
        assert_eq!(e.key, "GrpcTLSCertFile");
        let ca = Config::from_text("GrpcClientCAFile = \"c\"\n", &[]).unwrap();
        assert_eq!(
            ca.section::<GrpcSecurity>().unwrap_err().key,
            "GrpcClientCAFile"
        );
    }

    #[test]
    fn token_is_compared_exactly() {
        let mut h = http::HeaderMap::new();
        assert!(!allowed("s3cret", &h));
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(allowed("s3cret", &h));
        h.insert("authorization", "Bearer s3cre".parse().unwrap());
        assert!(!allowed("s3cret", &h));
        h.insert("authorization", "s3cret".parse().unwrap());
        assert!(!allowed("s3cret", &h));
    }
}
