//! The object-store section of the benchmark:
//!
//! (a) warm `.info` and warm 1 MiB `.zip` requests/s and p99 through one
//!     gateway of the mesh with storage-svc on s3 (s3s-fs), as a ratio to
//!     the same mesh with storage-svc on disk, in the same run;
//! (b) the latency of a cold miss (one `.zip`, fetched upstream and stored)
//!     with lock-svc on each shared lock driver, against `memory`: median
//!     and p99 over `cold` fresh versions each, and the added median.
//!
//! [`run`] prints progress on stderr and returns the markdown report.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hyper::StatusCode;

use super::load::{builtin, percentile_ms, Load};
use crate::fixtures::{url_path, ProxyDir};
use crate::http::get_sha256;
use crate::lockservers::{lock_env, Driver};
use crate::objstores::{self, Kind};
use crate::server::StaticServer;
use crate::topology::{Mesh, SharedLockMesh, Store};

const ONE_MEG: &str = "example.com/objbench/onemeg";
const COLD: &str = "example.com/objbench/cold";
const V1: &str = "v1.0.0";

/// Warm `.info` and 1 MiB `.zip` through one mesh gateway on `store`, its
/// tier off so that every request reaches storage-svc and its backend.
async fn warm_pair(
    dir: &Path,
    store: &Store,
    upstream: &str,
    seconds: u64,
    conc: usize,
) -> Result<(Load, Load)> {
    let mut mesh = Mesh::start_with_gateway_env(
        dir,
        store,
        upstream,
        1,
        &[("ATHENS_TIER_MEMORY_BYTES", "0")],
    )
    .await?;
    let gw = mesh.gateways[0].url();
    let addr: SocketAddr = mesh.gateways[0].spec.addr.parse()?;
    for ext in ["info", "mod", "zip"] {
        let (s, _, _) = get_sha256(&format!("{gw}{}", url_path(ONE_MEG, V1, ext))).await?;
        ensure!(s == StatusCode::OK, "warming {ext}: {s}");
    }
    let dur = Duration::from_secs(seconds);
    let info = builtin(addr, &url_path(ONE_MEG, V1, "info"), conc, dur).await?;
    let zip = builtin(addr, &url_path(ONE_MEG, V1, "zip"), conc, dur).await?;
    mesh.stop()?;
    Ok((info, zip))
}

/// Cold `.zip` latencies (sorted, µs) over `cold` fresh versions, through
/// a mesh whose lock-svc runs `driver`; `None` when its server is missing.
async fn cold_misses(
    dir: &Path,
    upstream: &str,
    driver: Driver,
    versions: &[String],
) -> Result<Option<Vec<u32>>> {
    let Some(env) = lock_env(driver).await else {
        return Ok(None);
    };
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    let mut mesh =
        SharedLockMesh::start(dir, &Store::Disk(store), upstream, (1, 1, 1), &pairs).await?;
    let gw = mesh.gateways[0].url();
    let mut lat = Vec::new();
    for v in versions {
        let t = Instant::now();
        let (s, _, _) = get_sha256(&format!("{gw}{}", url_path(COLD, v, "zip"))).await?;
        ensure!(s == StatusCode::OK, "cold {v} with {driver:?}: {s}");
        lat.push(t.elapsed().as_micros() as u32);
    }
    mesh.stop()?;
    lat.sort_unstable();
    Ok(Some(lat))
}

/// Runs both parts under `dir`: `seconds` per warm load at `conc`
/// clients, `cold` versions per lock driver. Returns the markdown report.
pub async fn run(dir: &Path, seconds: u64, conc: usize, cold: usize) -> Result<String> {
    let mut out = String::new();
    let proxy = ProxyDir::new(dir.join("objstore-upstream"))?;
    proxy.add_big(ONE_MEG, V1, 1 << 20)?;
    let upstream = StaticServer::start(proxy.root())?;

    // (a) storage-svc on s3 (s3s-fs) against disk.
    eprintln!("objstore: warm loads, storage-svc on disk then on s3 (s3s-fs)…");
    let disk_root = dir.join("objstore-disk");
    std::fs::create_dir_all(&disk_root)?;
    let disk = warm_pair(
        &dir.join("objstore-mesh-disk"),
        &Store::Disk(disk_root),
        &upstream.url(),
        seconds,
        conc,
    )
    .await?;
    out += "### storage-svc on s3 (s3s-fs) against disk (warm, one mesh gateway)\n\n";
    match objstores::open(Kind::S3OnS3sFs).await? {
        None => out += "s3s-fs is not installed: skipped.\n\n",
        Some(bucket) => {
            let s3 = warm_pair(
                &dir.join("objstore-mesh-s3"),
                &Store::Env(bucket.env.clone()),
                &upstream.url(),
                seconds,
                conc,
            )
            .await?;
            out += &format!(
                "{conc} closed-loop clients, {seconds} s per row.\n\n\
                 | request | disk req/s | disk p99 | s3 req/s | s3 p99 | s3/disk req/s | errors |\n\
                 |---|---|---|---|---|---|---|\n"
            );
            for (name, d, s) in [
                ("warm `.info`", disk.0, s3.0),
                ("warm 1 MiB `.zip`", disk.1, s3.1),
            ] {
                out += &format!(
                    "| {name} | {:.0} | {:.2} ms | {:.0} | {:.2} ms | {:.2} | {} |\n",
                    d.rps,
                    d.p99_ms,
                    s.rps,
                    s.p99_ms,
                    s.rps / d.rps,
                    d.errors + s.errors
                );
            }
            out += "\n";
        }
    }

    // (b) cold misses per lock driver.
    let versions: Vec<String> = (0..cold).map(|i| format!("v0.{i}.0")).collect();
    let cold_proxy = ProxyDir::new(dir.join("objstore-cold-upstream"))?;
    for v in &versions {
        cold_proxy.add_big(COLD, v, 64 << 10)?;
    }
    let mut rows = Vec::new();
    for driver in Driver::ALL {
        eprintln!("objstore: {cold} cold misses with lock driver {driver:?}…");
        // A fresh upstream and store per driver: every version is cold.
        let up = StaticServer::start(cold_proxy.root())?;
        let d = dir.join(format!("objstore-cold-{driver:?}"));
        if let Some(lat) = cold_misses(&d, &up.url(), driver, &versions).await? {
            rows.push((driver, lat));
        }
    }
    let base = rows
        .iter()
        .find(|(d, _)| *d == Driver::Memory)
        .map(|(_, l)| percentile_ms(l, 0.5))
        .context("the memory row")?;
    out += &format!(
        "### Cold miss latency by lock driver (64 KiB zip, {cold} fresh versions each, one gateway, one lock-svc)\n\n\
         | lock driver | median | p99 | median added over memory |\n|---|---|---|---|\n"
    );
    for (driver, lat) in &rows {
        let med = percentile_ms(lat, 0.5);
        out += &format!(
            "| {driver:?} | {med:.1} ms | {:.1} ms | {:+.1} ms |\n",
            percentile_ms(lat, 0.99),
            med - base
        );
    }
    out += "\n";
    Ok(out)
}
