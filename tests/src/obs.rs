//! Helpers of the observability and security tests (`tests/observability.rs`)
//! and of the tracing benchmark: a real OTLP/gRPC trace receiver on
//! loopback, test certificates (a CA, a server and a client certificate),
//! and the mesh started with extra environment on every process, over
//! `http://` or `https://`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::procs::Proc;
use crate::topology::{base_spec, Mesh, Store, READY_TIMEOUT};

/// One span as received, with the service that sent it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `service.name` of the resource.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id (empty for a root).
    pub parent_span_id: String,
    /// The span kind (OTLP numbering: 2 server, 3 client).
    pub kind: i32,
    /// String forms of the attributes.
    pub attributes: HashMap<String, String>,
}

#[derive(Default, Clone)]
struct Sink(Arc<Mutex<Vec<Received>>>);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> std::result::Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Received {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        kind: s.kind,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC trace receiver on 127.0.0.1 (a tonic server of the
/// collector's `TraceService`), keeping every span it is sent. Stops when
/// dropped.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    sink: Sink,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OtlpReceiver {
    /// Starts the receiver.
    pub async fn start() -> Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let sink = Sink::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = TraceServiceServer::new(sink.clone());
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(OtlpReceiver {
            url,
            sink,
            stop: Some(stop),
        })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.sink.0.lock().unwrap().clone()
    }

    /// Forgets the spans received so far.
    pub fn clear(&self) {
        self.sink.0.lock().unwrap().clear();
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// PEM files of a test CA, a server certificate for `127.0.0.1` and
/// `localhost`, and a client certificate, all signed by the CA.
pub struct Certs {
    /// The CA certificate.
    pub ca: std::path::PathBuf,
    /// The server certificate and key.
    pub server: (std::path::PathBuf, std::path::PathBuf),
    /// The client certificate and key.
    pub client: (std::path::PathBuf, std::path::PathBuf),
}

impl Certs {
    /// Writes fresh certificates under `dir`.
    pub fn write(dir: &Path) -> Result<Certs> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "modmesh test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;

        let leaf =
            |names: Vec<String>, usage: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
                let mut p = CertificateParams::new(names)?;
                p.extended_key_usages = vec![usage];
                let key = KeyPair::generate()?;
                let cert = p.signed_by(&key, &ca, &ca_key)?;
                Ok((cert.pem(), key.serialize_pem()))
            };
        let server = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = leaf(
            vec!["mesh-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let put = |name: &str, pem: &str| -> Result<std::path::PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, pem)?;
            Ok(p)
        };
        Ok(Certs {
            ca: put("ca.pem", &ca.pem())?,
            server: (put("server.pem", &server.0)?, put("server.key", &server.1)?),
            client: (put("client.pem", &client.0)?, put("client.key", &client.1)?),
        })
    }

    /// The environment that puts a whole mesh on mTLS: every service serves
    /// TLS and requires client certificates; every client trusts the CA
    /// and presents the client certificate.
    pub fn mesh_env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.display().to_string();
        vec![
            ("ATHENS_GRPC_TLS_CERT_FILE".into(), s(&self.server.0)),
            ("ATHENS_GRPC_TLS_KEY_FILE".into(), s(&self.server.1)),
            ("ATHENS_GRPC_CLIENT_CA_FILE".into(), s(&self.ca)),
            ("ATHENS_GRPC_TLS_CA_FILE".into(), s(&self.ca)),
            ("ATHENS_GRPC_CLIENT_CERT_FILE".into(), s(&self.client.0)),
            ("ATHENS_GRPC_CLIENT_KEY_FILE".into(), s(&self.client.1)),
        ]
    }
}

/// The mesh of [`Mesh::start`] with one fetcher and one gateway, `env` set
/// on every process, and service URLs of `scheme` (`http` or `https`).
pub async fn start_mesh(
    dir: &Path,
    store: &Store,
    upstream: &str,
    env: &[(String, String)],
    scheme: &str,
) -> Result<Mesh> {
    let with_env = |spec: &mut crate::procs::Spec| {
        for (k, v) in env {
            spec.set(k, v.clone());
        }
    };
    let mut storage = base_spec("storage-svc", "storage-svc", dir);
    for (k, v) in store.env() {
        storage.set(&k, v);
    }
    with_env(&mut storage);
    let a = storage.addr.clone();
    storage.set("ATHENS_STORAGE_SVC_LISTEN", a);
    let storage_url = format!("{scheme}://{}", storage.addr);
    let mut storage = Proc::spawn(storage)?;

    let mut lock = base_spec("lock-svc", "lock-svc", dir);
    with_env(&mut lock);
    let a = lock.addr.clone();
    lock.set("ATHENS_LOCK_SVC_LISTEN", a);
    let lock_url = format!("{scheme}://{}", lock.addr);
    let mut lock = Proc::spawn(lock)?;

    let mut f = base_spec("fetcher-svc", "fetcher-1", dir);
    let goget = dir.join("fetcher-1").join("goget");
    std::fs::create_dir_all(&goget)?;
    f.set(
        "ATHENS_GO_BINARY_ENV_VARS",
        format!("GOPROXY={upstream};GOSUMDB=off"),
    );
    f.set("ATHENS_GOGET_DIR", goget.display().to_string());
    with_env(&mut f);
    let a = f.addr.clone();
    f.set("ATHENS_FETCHER_SVC_LISTEN", a);
    f.set("ATHENS_STORAGE_SVC_URL", storage_url.clone());
    let fetcher_url = format!("{scheme}://{}", f.addr);
    let mut fetcher = Proc::spawn(f)?;
    storage.wait_listening(READY_TIMEOUT).await?;
    lock.wait_listening(READY_TIMEOUT).await?;
    fetcher.wait_listening(READY_TIMEOUT).await?;

    let mut g = base_spec("gateway", "gateway-a", dir);
    for (k, v) in store.env() {
        g.set(&k, v);
    }
    with_env(&mut g);
    let a = g.addr.clone();
    g.set("ATHENS_PORT", a);
    g.set("ATHENS_STORAGE_SVC_URL", storage_url);
    g.set("ATHENS_LOCK_SVC_URL", lock_url);
    g.set("ATHENS_FETCHER_SVC_URL", fetcher_url);
    let mut gateway = Proc::spawn(g)?;
    let mut mesh = Mesh {
        storage,
        lock,
        fetchers: vec![fetcher],
        gateways: Vec::new(),
    };
    let ready = gateway.wait_ready(READY_TIMEOUT).await;
    mesh.gateways.push(gateway);
    ready.with_context(|| format!("mesh under {}:\n{}", dir.display(), mesh.log_tails(3000)))?;
    Ok(mesh)
}
