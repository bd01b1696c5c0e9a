//! A private GOPROXY: serves a GOPROXY-layout directory over HTTPS (a
//! fresh CA per server) and only to requests carrying its basic-auth
//! credentials; anything else is 401. The go command sends credentials
//! only over HTTPS, from the netrc entry `machine 127.0.0.1:<port>`.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A running private GOPROXY; stopped when dropped.
#[derive(Debug)]
pub struct PrivateProxy {
    port: u16,
    ca: PathBuf,
    unauthorized: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PrivateProxy {
    /// Serves `root` to `user`:`pass`; the CA certificate is written to
    /// `<ca_dir>/private-ca.pem`.
    pub async fn start(root: &Path, ca_dir: &Path, user: &str, pass: &str) -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        use rustls_pki_types::pem::PemObject;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "private proxy test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
        let ca = ca_dir.join("private-ca.pem");
        std::fs::write(&ca, ca_cert.pem())?;

        let chain = vec![cert.der().clone()];
        let key_der =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                .context("key")?;
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let root = Arc::new(root.to_path_buf());
        let want = Arc::new(want);
        let unauthorized = Arc::new(AtomicU64::new(0));
        let un = unauthorized.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, root, want, un) =
                    (acceptor.clone(), root.clone(), want.clone(), un.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, root.clone(), want.clone(), un.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(PrivateProxy {
            port,
            ca,
            unauthorized,
            task,
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The netrc `machine` name the go command looks up for this server.
    pub fn machine(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// Requests refused for lacking the credentials.
    pub fn unauthorized(&self) -> u64 {
        self.unauthorized.load(Ordering::SeqCst)
    }
}

impl Drop for PrivateProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    root: Arc<PathBuf>,
    want: Arc<String>,
    unauthorized: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ok = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == want.as_bytes());
    if !ok {
        unauthorized.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(Full::new(Bytes::from_static(b"unauthorized\n")));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"private\""),
        );
        return Ok(r);
    }
    let raw = req.uri().path();
    let path = crate::server::percent_decode(raw).unwrap_or_else(|| raw.to_string());
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|s| s == "..") {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    match tokio::fs::read(root.join(rel)).await {
        Ok(b) => Ok(Response::new(Full::new(Bytes::from(b)))),
        Err(_) => Ok(status(StatusCode::NOT_FOUND)),
    }
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}
