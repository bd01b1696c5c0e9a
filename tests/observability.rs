//! Observability and security of the mesh, with every service a separate
//! process: OpenTelemetry traces exported to a real OTLP/gRPC receiver,
//! Prometheus metrics scraped and parsed, the shared token on the write
//! calls, and the gRPC hops over mutual TLS.
//!
//! Needs the binaries (`cargo build --workspace --bins`) and the go command.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use modmesh_proto::pb;
use modmesh_tests::fixtures::{standard_proxy, url_path, BASE};
use modmesh_tests::http::get;
use modmesh_tests::obs::{start_mesh, Certs, OtlpReceiver, Received};
use modmesh_tests::server::StaticServer;
use modmesh_tests::topology::Store;

/// Both tests start a mesh: one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "mesh-token-4f1c";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn scrape(url: &str) -> Result<prometheus_parse::Scrape> {
    let reply = get(url).await?;
    ensure!(reply.status == 200, "{url}: {}", reply.status);
    let text = reply.text();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .with_context(|| format!("{url}: not the Prometheus text format"))
}

/// The sum of the samples of `name` (of `name_count` for a histogram) whose
/// labels include `labels`.
fn total(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let count = format!("{name}_count");
    let wanted = if s.samples.iter().any(|x| x.metric == count) {
        count.as_str()
    } else {
        name
    };
    s.samples
        .iter()
        .filter(|x| x.metric == wanted)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

async fn storage_client(
    url: &str,
) -> Result<pb::storage_client::StorageClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await?;
    Ok(pb::storage_client::StorageClient::new(ch))
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn coords(module: &str, version: &str) -> pb::Coordinates {
    pb::Coordinates {
        module: module.into(),
        version: version.into(),
    }
}

/// The spans of the trace of the gateway's `GET info` span, once spans from
/// all of `services` are in it.
async fn wait_for_trace(rx: &OtlpReceiver, services: &[&str]) -> Result<Vec<Received>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = rx.spans();
        if let Some(root) = spans.iter().find(|s| {
            s.service == "gateway"
                && s.name == "GET info"
                && s.attributes
                    .get("http.response.status_code")
                    .map(String::as_str)
                    == Some("200")
        }) {
            let trace: Vec<Received> = spans
                .iter()
                .filter(|s| s.trace_id == root.trace_id)
                .cloned()
                .collect();
            let seen: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
            // Complete once the fetcher's save into storage-svc is in too
            // (each process exports on its own schedule).
            let saved = trace
                .iter()
                .any(|s| s.service == "storage-svc" && s.name == "storage.save");
            if saved && services.iter().all(|s| seen.contains(s)) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(rx
                    .spans()
                    .into_iter()
                    .filter(|s| s.trace_id == root.trace_id)
                    .collect());
            }
        }
        if Instant::now() > deadline {
            let names: Vec<String> = spans
                .iter()
                .map(|s| format!("{}:{}:{}", s.service, s.name, &s.trace_id[..8]))
                .collect();
            return Err(anyhow!("no complete trace; spans received: {names:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_metrics_and_token_across_the_mesh() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let tmp = tempfile::tempdir()?;
    let proxy = standard_proxy(tmp.path().join("upstream"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let store = tmp.path().join("store");
    std::fs::create_dir(&store)?;
    let rx = OtlpReceiver::start().await?;
    let mut mesh = start_mesh(
        tmp.path(),
        &Store::Disk(store),
        &upstream.url(),
        &env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("ATHENS_GRPC_TOKEN", TOKEN),
            // The go command fetches, so the go process is in the trace.
            ("ATHENS_FETCHER_MODE", "gocmd"),
        ]),
        "http",
    )
    .await?;
    let gw = mesh.gateways[0].url();
    let metrics_of = |addr: &str| format!("http://{addr}/metrics");
    let before = scrape(&metrics_of(&mesh.gateways[0].spec.addr)).await?;

    // One cold request: gateway → lock-svc, storage-svc, fetcher-svc (go)
    // → storage-svc, all in one trace.
    let info = url_path(BASE, "v1.0.0", "info");
    let reply = get(&format!("{gw}{info}")).await?;
    ensure!(
        reply.status == 200,
        "{} {}\n{}",
        reply.status,
        reply.text(),
        mesh.log_tails(3000)
    );
    let trace = wait_for_trace(&rx, &["gateway", "lock-svc", "fetcher-svc", "storage-svc"])
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", mesh.log_tails(3000)))?;
    let by_id: HashMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    // Every gRPC server span is the child of a client span of another service.
    let mut served = BTreeSet::new();
    for s in trace
        .iter()
        .filter(|s| s.kind == 2 && s.name.starts_with("modmesh.v1."))
    {
        let parent = by_id
            .get(s.parent_span_id.as_str())
            .ok_or_else(|| anyhow!("{}:{} has no parent in the trace", s.service, s.name))?;
        ensure!(
            parent.kind == 3 && parent.service != s.service,
            "{}:{} has parent {}:{} (kind {})",
            s.service,
            s.name,
            parent.service,
            parent.name,
            parent.kind
        );
        served.insert(format!("{} <- {}", s.service, parent.service));
    }
    for edge in [
        "lock-svc <- gateway",
        "fetcher-svc <- gateway",
        "storage-svc <- gateway",
        "storage-svc <- fetcher-svc",
    ] {
        ensure!(served.contains(edge), "no hop {edge} in {served:?}");
    }
    // The go process is a span with its arguments and exit status, in the
    // fetcher's server span.
    let go = trace
        .iter()
        .find(|s| s.service == "fetcher-svc" && s.name.starts_with("go "))
        .ok_or_else(|| anyhow!("no go span"))?;
    ensure!(
        go.attributes
            .get("process.command_args")
            .is_some_and(|a| a.contains("mod download")),
        "{go:?}"
    );
    ensure!(
        go.attributes.get("process.exit_code").map(String::as_str) == Some("0"),
        "{go:?}"
    );
    // Storage spans name their backend.
    ensure!(
        trace.iter().any(|s| s.service == "storage-svc"
            && s.name == "storage.save"
            && s.attributes.get("backend").map(String::as_str) == Some("disk")),
        "no storage.save span with backend=disk"
    );

    // Metrics: warm requests move the gateway's counters by exactly that much.
    for _ in 0..3 {
        let r = get(&format!("{gw}{info}")).await?;
        ensure!(r.status == 200);
    }
    let list = format!("{gw}/{BASE}/@v/list");
    let _ = get(&list).await?;
    let _ = get(&list).await?;
    let after = scrape(&metrics_of(&mesh.gateways[0].spec.addr)).await?;
    let ok_info = [("route", "info"), ("status", "200")];
    let grew = total(&after, "modmesh_http_requests_total", &ok_info)
        - total(&before, "modmesh_http_requests_total", &ok_info);
    ensure!(grew == 4.0, "info requests counted {grew}, made 4");
    ensure!(
        total(
            &after,
            "modmesh_http_request_duration_seconds",
            &[("route", "info")]
        ) >= 4.0
    );
    ensure!(
        total(
            &after,
            "modmesh_http_response_bytes_total",
            &[("route", "info")]
        ) > 0.0
    );
    ensure!(
        total(
            &after,
            "modmesh_upstream_fetches_total",
            &[("kind", "download"), ("result", "ok")]
        ) == 1.0
    );
    ensure!(
        total(
            &after,
            "modmesh_upstream_fetch_duration_seconds",
            &[("kind", "download")]
        ) == 1.0
    );
    ensure!(total(&after, "modmesh_query_cache_total", &[("result", "miss")]) >= 1.0);
    ensure!(total(&after, "modmesh_query_cache_total", &[("result", "hit")]) >= 1.0);

    let storage = scrape(&metrics_of(&mesh.storage.spec.addr)).await?;
    ensure!(
        total(
            &storage,
            "modmesh_storage_call_duration_seconds",
            &[("backend", "disk"), ("method", "save")]
        ) == 1.0
    );
    ensure!(
        total(
            &storage,
            "modmesh_storage_call_duration_seconds",
            &[("backend", "disk"), ("method", "info")]
        ) >= 2.0,
        // At least the miss and the read after the fetch; the warm requests
        // are answered by the gateway's own tier.
    );
    let lock = scrape(&metrics_of(&mesh.lock.spec.addr)).await?;
    ensure!(
        total(
            &lock,
            "modmesh_lock_acquires_total",
            &[("result", "granted")]
        ) == 1.0
    );
    ensure!(total(&lock, "modmesh_lock_wait_seconds", &[]) == 1.0);
    let fetcher = scrape(&metrics_of(&mesh.fetchers[0].spec.addr)).await?;
    ensure!(total(&fetcher, "modmesh_go_processes_total", &[("outcome", "ok")]) >= 1.0);
    ensure!(total(&fetcher, "modmesh_go_processes_running", &[]) == 0.0);

    // The token: writes and deletes need it; reads do not.
    let url = format!("http://{}", mesh.storage.spec.addr);
    let mut c = storage_client(&url).await?;
    let stored = coords(BASE, "v1.0.0");
    let absent = coords(BASE, "v9.9.9");
    let read = c.info(with_token(stored.clone(), None)).await?;
    ensure!(
        !read.into_inner().data.is_empty(),
        "a read without the token"
    );
    for token in [None, Some("wrong-token")] {
        let e = c
            .delete(with_token(stored.clone(), token))
            .await
            .unwrap_err();
        ensure!(
            e.code() == tonic::Code::PermissionDenied,
            "delete with {token:?}: {e:?}"
        );
        let save = with_token(tokio_stream_iter(), token);
        let e = c.save(save).await.unwrap_err();
        ensure!(
            e.code() == tonic::Code::PermissionDenied,
            "save with {token:?}: {e:?}"
        );
    }
    let e = c.delete(with_token(absent, Some(TOKEN))).await.unwrap_err();
    ensure!(
        e.code() == tonic::Code::NotFound,
        "delete with the token: {e:?}"
    );
    // The stored version survived the refused deletes.
    ensure!(
        c.exists(with_token(stored, None))
            .await?
            .into_inner()
            .exists
    );
    // The fetcher's progressive download (which saves) needs it too.
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.fetchers[0].spec.addr))?
            .connect()
            .await?;
    let mut f = pb::fetcher_client::FetcherClient::new(ch);
    for token in [None, Some("wrong-token")] {
        let e = f
            .download_progress(with_token(coords(BASE, "v1.0.0"), token))
            .await
            .unwrap_err();
        ensure!(
            e.code() == tonic::Code::PermissionDenied,
            "DownloadProgress with {token:?}: {e:?}"
        );
    }

    mesh.stop()?;
    Ok(())
}

fn tokio_stream_iter() -> impl futures::Stream<Item = pb::SaveChunk> + Send + 'static {
    futures::stream::empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_over_mutual_tls() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir()?;
    let proxy = standard_proxy(tmp.path().join("upstream"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let certs = Certs::write(&tmp.path().join("certs"))?;
    let mut all = certs.mesh_env();
    all.extend(env(&[("ATHENS_GRPC_TOKEN", TOKEN)]));
    let mut mesh = start_mesh(tmp.path(), &Store::Memory, &upstream.url(), &all, "https").await?;

    // A cold request crosses every hop over mTLS, with the token.
    let info = url_path(BASE, "v1.0.0", "info");
    let reply = get(&format!("{}{info}", mesh.gateways[0].url())).await?;
    ensure!(
        reply.status == 200,
        "{} {}\n{}",
        reply.status,
        reply.text(),
        mesh.log_tails(3000)
    );

    let url = format!("https://{}", mesh.storage.spec.addr);
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(&certs.ca)?);
    let id = tonic::transport::Identity::from_pem(
        std::fs::read(&certs.client.0)?,
        std::fs::read(&certs.client.1)?,
    );
    // With the client certificate: served.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .identity(id);
    let ch = tonic::transport::Endpoint::from_shared(url.clone())?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut c = pb::storage_client::StorageClient::new(ch);
    // A streamed zip's body ends once it is verified; the save ends after.
    let asked = std::time::Instant::now();
    while !c.exists(coords(BASE, "v1.0.0")).await?.into_inner().exists {
        ensure!(
            asked.elapsed() < std::time::Duration::from_secs(20),
            "not stored within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Without one: the handshake (or the first call) is refused.
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca);
    let refused = async {
        let ch = tonic::transport::Endpoint::from_shared(url.clone())?
            .tls_config(tls)?
            .connect()
            .await?;
        pb::storage_client::StorageClient::new(ch)
            .exists(coords(BASE, "v1.0.0"))
            .await?;
        anyhow::Ok(())
    }
    .await;
    ensure!(
        refused.is_err(),
        "a client without a certificate was served"
    );
    // Nor does plain HTTP/2 get through.
    let plain = async {
        let ch =
            tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.storage.spec.addr))?
                .connect()
                .await?;
        pb::storage_client::StorageClient::new(ch)
            .exists(coords(BASE, "v1.0.0"))
            .await?;
        anyhow::Ok(())
    }
    .await;
    ensure!(plain.is_err(), "a plaintext client was served");

    mesh.stop()?;
    Ok(())
}
