//! The cost of tracing: warm `.info` requests/second through an embedded
//! gateway with traces off, and with traces on (sampler `always_on`,
//! exporting by OTLP/gRPC to a receiver in the bench process), as a ratio;
//! and with metrics off too, for scale.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::load::builtin;
use crate::fixtures::{self, url_path};
use crate::obs::OtlpReceiver;
use crate::server::StaticServer;
use crate::topology::{embedded_spec, start_gateway, Store};

/// Warm `.info` requests per second; requests that are not 200 fail the run.
async fn rps(addr: SocketAddr, path: &str, conc: usize, dur: Duration) -> Result<f64> {
    let l = builtin(addr, path, conc, dur).await?;
    ensure!(l.errors == 0, "{path}: {} requests failed", l.errors);
    Ok(l.rps)
}

/// Runs the section under `dir` (`seconds` of load per configuration, `conc`
/// connections) and returns its markdown.
pub async fn run(dir: &Path, seconds: u64, conc: usize) -> Result<String> {
    let proxy = fixtures::standard_proxy(dir.join("tracing-upstream"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let receiver = OtlpReceiver::start().await?;
    let path = url_path(fixtures::BASE, "v1.0.0", "info");
    let configs: [(&str, Vec<(&str, &str)>); 3] = [
        ("traces off (default), metrics on", vec![]),
        (
            "traces on (always_on, OTLP to a local receiver), metrics on",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
                ("OTEL_TRACES_SAMPLER", "always_on"),
            ],
        ),
        (
            "traces off, metrics off",
            vec![("ATHENS_STATS_EXPORTER", "")],
        ),
    ];
    let mut rows = Vec::new();
    for (i, (name, env)) in configs.iter().enumerate() {
        let store = dir.join(format!("tracing-store-{i}"));
        std::fs::create_dir_all(&store)?;
        let mut spec = embedded_spec(
            &format!("tracing-gw-{i}"),
            dir,
            &Store::Disk(store),
            &upstream.url(),
        )?;
        spec.set("ATHENS_LOG_LEVEL", "error");
        for (k, v) in env {
            spec.set(k, *v);
        }
        let mut gw = start_gateway(spec).await?;
        let addr: SocketAddr = gw.spec.addr.parse()?;
        // Warm: the cold fetch first, then a short run.
        rps(addr, &path, 1, Duration::from_millis(500))
            .await
            .with_context(|| format!("warming {name}"))?;
        eprintln!("tracing section: {name}…");
        let r = rps(addr, &path, conc, Duration::from_secs(seconds)).await?;
        gw.stop()?;
        rows.push((*name, r));
    }
    let spans = receiver.spans().len();
    ensure!(spans > 0, "traces on, yet no span reached the receiver");
    let base = rows[0].1;
    let mut out = String::from("### Tracing overhead (embedded gateway, warm .info)\n\n");
    out.push_str(&format!(
        "{seconds} s per row, {conc} keep-alive connections; {spans} spans received.\n\n"
    ));
    out.push_str("| configuration | req/s | ×traces off |\n|---|---|---|\n");
    for (name, r) in &rows {
        out.push_str(&format!("| {name} | {r:.0} | {:.2} |\n", r / base));
    }
    Ok(out)
}
