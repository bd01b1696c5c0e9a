//! Sections `warm` (warm `.info` and 1 MiB `.zip` under load) and `big`
//! (peak RSS while 4 clients download a big zip), for the reference servers,
//! the embedded gateway and the mesh.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use hyper::StatusCode;
use modmesh_tests::fixtures::{self, sha256_file, url_path};
use modmesh_tests::http::get_sha256;
use modmesh_tests::procs::{reset_hwm, vm_hwm_kib, Proc};
use modmesh_tests::topology::{embedded_spec, start_gateway, Mesh, Store};

use super::{Ctx, V1};
use modmesh_tests::benchsec::load::Load;

const ONE_MEG: &str = "example.com/onemeg";
const BIG: &str = "example.com/big";

/// A system under test: its address and the processes whose memory counts.
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    pub pids: Vec<(String, u32)>,
}

/// The embedded gateway and the mesh (one gateway), both on disk, with
/// `env` set on every gateway.
pub struct Ours {
    pub embedded: Proc,
    pub mesh: Mesh,
}

impl Ours {
    pub async fn start(ctx: &Ctx, tag: &str, env: &[(&str, &str)]) -> Result<Ours> {
        let dir = ctx.dir.join(format!("ours-{tag}"));
        let store = dir.join("embedded-store");
        std::fs::create_dir_all(&store)?;
        let mut spec = embedded_spec("gateway", &dir, &Store::Disk(store), &ctx.upstream.url())?;
        spec.set("ATHENS_LOG_LEVEL", "error");
        for (k, v) in env {
            spec.set(k, *v);
        }
        let embedded = start_gateway(spec).await?;
        let mesh_store = dir.join("mesh-store");
        std::fs::create_dir_all(&mesh_store)?;
        let mesh = Mesh::start_with_gateway_env(
            &dir.join("mesh"),
            &Store::Disk(mesh_store),
            &ctx.upstream.url(),
            1,
            &[&[("ATHENS_LOG_LEVEL", "error")], env].concat(),
        )
        .await?;
        Ok(Ours { embedded, mesh })
    }

    pub fn targets(&self, suffix: &str) -> Result<Vec<Target>> {
        let pid_of = |p: &Proc| (p.spec.label.clone(), p.pid());
        Ok(vec![
            Target {
                name: format!("embedded{suffix}"),
                addr: self.embedded.spec.addr.parse()?,
                pids: vec![pid_of(&self.embedded)],
            },
            Target {
                name: format!("mesh{suffix}"),
                addr: self.mesh.gateways[0].spec.addr.parse()?,
                pids: self.mesh.procs().into_iter().map(pid_of).collect(),
            },
        ])
    }

    pub fn stop(mut self) -> Result<()> {
        self.embedded.stop()?;
        self.mesh.stop()
    }
}

/// The reference servers present in this run, nginx and Athens first.
fn references(ctx: &Ctx) -> Vec<Target> {
    let mut v = Vec::new();
    if let Ok(n) = &ctx.nginx {
        v.push(Target {
            name: "nginx".into(),
            addr: n.addr,
            pids: n.pids(),
        });
    }
    if let Ok(a) = &ctx.athens {
        v.push(Target {
            name: "Athens v0.18.0".into(),
            addr: a.server.addr,
            pids: a.server.pids(),
        });
    }
    v.push(Target {
        name: "static (in-process hyper)".into(),
        addr: ctx.reference.addr(),
        pids: vec![(
            "bench process (server + clients)".into(),
            std::process::id(),
        )],
    });
    v
}

/// GETs `url` until 200 (cold fetches may take a while).
pub async fn warm_url(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match get_sha256(url).await {
            Ok((StatusCode::OK, _, _)) => return Ok(()),
            Ok((s, _, _)) if Instant::now() > deadline => anyhow::bail!("warming {url}: {s}"),
            Err(e) if Instant::now() > deadline => anyhow::bail!("warming {url}: {e:#}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn warm_all(t: &Target, modules: &[&str]) -> Result<()> {
    let w = Instant::now();
    for m in modules {
        for ext in ["info", "mod", "zip"] {
            warm_url(&format!("http://{}{}", t.addr, url_path(m, V1, ext))).await?;
        }
    }
    eprintln!("{} warmed in {:.1} s", t.name, w.elapsed().as_secs_f64());
    Ok(())
}

fn ratio(x: f64, reference: Option<f64>) -> String {
    match reference {
        Some(r) if r > 0.0 && x.is_finite() => format!("{:.2}×", x / r),
        _ => "–".into(),
    }
}

/// The gateways' environment for the tier on disk only (memory level off).
fn disk_only(ctx: &Ctx) -> [(&'static str, String); 2] {
    [
        ("ATHENS_TIER_MEMORY_BYTES", "0".into()),
        (
            "ATHENS_TIER_DISK_PATH",
            ctx.dir.join("tier-disk").to_string_lossy().into_owned(),
        ),
    ]
}

/// `env` as the `(&str, &str)` pairs [`Ours::start`] takes.
fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Section `warm`: req/s and latency of warm `.info` and warm 1 MiB `.zip`
/// for every target, as ratios to nginx and Athens. The embedded gateway
/// and the mesh also run with the tier disabled and with the tier on disk
/// only.
pub async fn run(ctx: &Ctx) -> Result<()> {
    ctx.proxy.add_big(ONE_MEG, V1, 1 << 20)?;
    ctx.publish(ONE_MEG)?;
    eprintln!("starting the embedded gateway and the mesh…");
    let ours = Ours::start(ctx, "tier", &[]).await?;
    let plain = Ours::start(ctx, "notier", &[("ATHENS_TIER_MEMORY_BYTES", "0")]).await?;
    let disk = Ours::start(ctx, "disktier", &pairs(&disk_only(ctx))).await?;
    let mut targets = references(ctx);
    targets.extend(ours.targets("")?);
    targets.extend(plain.targets(" (tier off)")?);
    targets.extend(disk.targets(" (tier on disk only)")?);
    // `--targets`: only the targets named (by prefix).
    let only = &ctx.args.targets;
    targets.retain(|t| only.is_empty() || only.iter().any(|o| t.name.starts_with(o.as_str())));
    for t in &targets {
        warm_all(t, &[fixtures::BASE, ONE_MEG]).await?;
    }
    let info = url_path(fixtures::BASE, V1, "info");
    let zip1 = url_path(ONE_MEG, V1, "zip");
    let dur = Duration::from_secs(ctx.args.seconds);
    for (wname, path) in [("warm .info", &info), ("warm 1 MiB .zip", &zip1)] {
        let mut rows: Vec<(&Target, Load)> = Vec::new();
        for t in &targets {
            // A short unmeasured run first: connections, caches, allocators.
            ctx.client
                .run(t.addr, path, ctx.args.concurrency, Duration::from_secs(1))
                .await?;
            let r = ctx
                .client
                .run(t.addr, path, ctx.args.concurrency, dur)
                .await?;
            eprintln!(
                "{} / {wname}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                t.name, r.rps, r.p50_ms, r.p99_ms, r.errors
            );
            rows.push((t, r));
        }
        let of = |name: &str| {
            rows.iter()
                .find(|(t, _)| t.name.starts_with(name))
                .map(|r| r.1)
        };
        let (ng, at) = (of("nginx"), of("Athens"));
        println!("### {wname}\n");
        println!(
            "| target | req/s | ×nginx | ×Athens | p50 ms | p99 ms | p99 ×nginx | p99 ×Athens | MiB/s | errors |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (t, r) in &rows {
            println!(
                "| {} | {:.0} | {} | {} | {:.2} | {:.2} | {} | {} | {:.1} | {} |",
                t.name,
                r.rps,
                ratio(r.rps, ng.map(|l| l.rps)),
                ratio(r.rps, at.map(|l| l.rps)),
                r.p50_ms,
                r.p99_ms,
                ratio(r.p99_ms, ng.map(|l| l.p99_ms)),
                ratio(r.p99_ms, at.map(|l| l.p99_ms)),
                r.mib_s,
                r.errors
            );
        }
        println!();
    }
    ours.stop()?;
    plain.stop()?;
    disk.stop()?;
    Ok(())
}

/// Peak RSS and time of 4 concurrent warm downloads of the big zip.
struct BigRun {
    secs: f64,
    /// (process label, VmHWM during the 4 downloads), KiB.
    rss: Vec<(String, u64)>,
}

async fn big_run(t: &Target, path: &str, want: &str, len: u64) -> Result<BigRun> {
    for (_, pid) in &t.pids {
        reset_hwm(*pid)?;
    }
    let url = format!("http://{}{path}", t.addr);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.spawn(async move { get_sha256(&url).await });
    }
    while let Some(r) = tasks.join_next().await {
        let (status, sha, n) = r??;
        ensure!(
            status == StatusCode::OK && sha == want && n == len,
            "{}: big zip download got {status}, {n} bytes, sha256 {sha}",
            t.name
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let mut rss = Vec::new();
    for (label, pid) in &t.pids {
        rss.push((label.clone(), vm_hwm_kib(*pid)?));
    }
    Ok(BigRun { secs, rss })
}

/// Section `big`: peak RSS of every process while 4 clients download a warm
/// `--big-mib` zip (the tier on, at its defaults, and on disk only), per
/// target.
pub async fn big(ctx: &Ctx) -> Result<()> {
    eprintln!("making the {} MiB module…", ctx.args.big_mib);
    let big_zip = ctx.proxy.add_big(BIG, V1, ctx.args.big_mib << 20)?;
    ctx.publish(BIG)?;
    let (want, len) = (sha256_file(&big_zip)?, std::fs::metadata(&big_zip)?.len());
    let ours = Ours::start(ctx, "big", &[]).await?;
    let disk = Ours::start(ctx, "bigdisk", &pairs(&disk_only(ctx))).await?;
    let mut targets = references(ctx);
    targets.extend(ours.targets("")?);
    targets.extend(disk.targets(" (tier on disk only)")?);
    let path = url_path(BIG, V1, "zip");
    println!(
        "### 4 concurrent warm downloads of a {} MiB zip\n",
        ctx.args.big_mib
    );
    println!("| target | process | VmHWM during (MiB) | all processes (MiB) | aggregate MiB/s |");
    println!("|---|---|---:|---:|---:|");
    for t in &targets {
        warm_all(t, &[BIG]).await?;
        // Twice: the first warm read may fill the tier.
        big_run(t, &path, &want, len).await?;
        let b = big_run(t, &path, &want, len).await?;
        let total: u64 = b.rss.iter().map(|r| r.1).sum();
        let tp = 4.0 * len as f64 / b.secs / (1 << 20) as f64;
        eprintln!(
            "{}: 4 × {} MiB in {:.1} s",
            t.name, ctx.args.big_mib, b.secs
        );
        for (i, (label, kib)) in b.rss.iter().enumerate() {
            let (name, tot, tps) = if i == 0 {
                (
                    t.name.as_str(),
                    format!("{:.1}", total as f64 / 1024.0),
                    format!("{tp:.0}"),
                )
            } else {
                ("", String::new(), String::new())
            };
            println!(
                "| {name} | {label} | {:.1} | {tot} | {tps} |",
                *kib as f64 / 1024.0
            );
        }
    }
    println!(
        "\nThe static reference's memory is the whole bench process: its server and the 4 hashing clients.\n"
    );
    ours.stop()?;
    disk.stop()?;
    Ok(())
}
