//! Benchmark harness: requests/second and latency of warm `.info` and warm
//! 1 MiB `.zip` under a closed-loop load, and peak RSS while 4 clients
//! download a 200 MiB zip, for (a) an embedded gateway on disk and (b) a mesh
//! (storage-svc on disk + lock-svc + fetcher-svc + gateway), each also given
//! as a ratio to a minimal static file server serving the same files.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p modmesh-tests --bin bench -- [--seconds N] [--concurrency C] [--big-mib M]
//! ```
//!
//! Progress goes to stderr, the markdown report to stdout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use modmesh_tests::fixtures::{self, sha256_file, url_path, ProxyDir};
use modmesh_tests::http::get_sha256;
use modmesh_tests::procs::{reset_hwm, vm_hwm_kib, Proc};
use modmesh_tests::server::StaticServer;
use modmesh_tests::topology::{embedded_spec, start_gateway, Mesh, Store};

const ONE_MEG: &str = "example.com/onemeg";
const BIG: &str = "example.com/big";
const V1: &str = "v1.0.0";

#[derive(Debug, Clone)]
struct Args {
    seconds: u64,
    concurrency: usize,
    big_mib: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        seconds: 10,
        concurrency: 16,
        big_mib: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--seconds" => a.seconds = val("--seconds")?,
            "--concurrency" => a.concurrency = val("--concurrency")? as usize,
            "--big-mib" => a.big_mib = val("--big-mib")?,
            "-h" | "--help" => {
                println!("bench [--seconds N (10)] [--concurrency C (16)] [--big-mib M (200)]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    ensure!(
        a.seconds > 0 && a.concurrency > 0,
        "--seconds and --concurrency must be > 0"
    );
    Ok(a)
}

/// One closed-loop measurement.
#[derive(Debug, Clone, Copy)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    mib_s: f64,
    errors: u64,
}

/// `conc` connections, each sending `GET path` back to back over keep-alive
/// for `dur`; latencies of every completed request.
async fn load(addr: SocketAddr, path: &str, conc: usize, dur: Duration) -> Result<Load> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let path = path.to_string();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let (mut bytes, mut errors) = (0u64, 0u64);
            // Reconnects after a failed request (counted as an error).
            'connect: while Instant::now() < deadline {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                while Instant::now() < deadline {
                    let req = Request::get(path.as_str())
                        .header(hyper::header::HOST, addr.to_string())
                        .body(Empty::<Bytes>::new())?;
                    let t = Instant::now();
                    let Ok(resp) = sender.send_request(req).await else {
                        errors += 1;
                        continue 'connect;
                    };
                    let ok = resp.status() == StatusCode::OK;
                    let mut body = resp.into_body();
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                            Err(_) => {
                                errors += 1;
                                continue 'connect;
                            }
                        }
                    }
                    if ok {
                        lat.push(t.elapsed().as_micros() as u32);
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((lat, bytes, errors))
        });
    }
    let (mut all, mut bytes, mut errors) = (Vec::new(), 0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (lat, b, e) = r??;
        all.extend(lat);
        bytes += b;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    Ok(Load {
        rps: all.len() as f64 / secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        mib_s: bytes as f64 / secs / (1 << 20) as f64,
        errors,
    })
}

/// A system under test: its URL and the processes whose memory counts.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pids: Vec<(String, u32)>,
}

/// Peak RSS and throughput of 4 concurrent warm downloads of the big zip.
struct BigRun {
    secs: f64,
    /// (process label, VmHWM since start, VmHWM during the 4 downloads), KiB.
    rss: Vec<(String, u64, u64)>,
}

async fn big_run(t: &Target, path: &str, want: &str, len: u64) -> Result<BigRun> {
    let before: Vec<u64> = t
        .pids
        .iter()
        .map(|(_, pid)| vm_hwm_kib(*pid))
        .collect::<Result<_>>()?;
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
    for ((label, pid), b) in t.pids.iter().zip(before) {
        let during = vm_hwm_kib(*pid)?;
        rss.push((label.clone(), b.max(during), during));
    }
    Ok(BigRun { secs, rss })
}

/// GETs `url` until 200 (cold fetches may take a while), hashing the body.
async fn warm(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match get_sha256(url).await {
            Ok((StatusCode::OK, _, _)) => return Ok(()),
            Ok((s, _, _)) if Instant::now() > deadline => bail!("warming {url}: {s}"),
            Err(e) if Instant::now() > deadline => bail!("warming {url}: {e:#}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn ratio(x: f64, reference: f64) -> String {
    if reference > 0.0 && x.is_finite() {
        format!("{:.2}×", x / reference)
    } else {
        "–".into()
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let total = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("modmesh-bench-")
        .tempdir()?;
    let dir = tmp.path();

    eprintln!("setting up the upstream ({} MiB module)…", args.big_mib);
    let proxy = ProxyDir::new(dir.join("upstream"))?;
    let base = fixtures::standard_modules()
        .into_iter()
        .find(|m| m.path == fixtures::BASE && m.version == V1)
        .context("base fixture")?;
    proxy.add(&base)?;
    proxy.add_big(ONE_MEG, V1, 1 << 20)?;
    let big_zip = proxy.add_big(BIG, V1, args.big_mib << 20)?;
    let big_sha = sha256_file(&big_zip)?;
    let big_len = std::fs::metadata(&big_zip)?.len();
    let upstream = StaticServer::start(proxy.root())?;
    let reference = StaticServer::start(proxy.root())?;

    eprintln!("starting the embedded gateway and the mesh…");
    let store = dir.join("embedded-store");
    std::fs::create_dir(&store)?;
    let emb_dir = dir.join("embedded");
    let mut gw = start_gateway(embedded_spec(
        "gateway",
        &emb_dir,
        &Store::Disk(store),
        &upstream.url(),
    )?)
    .await?;
    let mesh_store = dir.join("mesh-store");
    std::fs::create_dir(&mesh_store)?;
    let mut mesh = Mesh::start(
        &dir.join("mesh"),
        &Store::Disk(mesh_store),
        &upstream.url(),
        1,
    )
    .await?;

    let info_path = url_path(fixtures::BASE, V1, "info");
    let zip1_path = url_path(ONE_MEG, V1, "zip");
    let big_path = url_path(BIG, V1, "zip");
    let pid_of = |p: &Proc| (p.spec.label.clone(), p.pid());
    let targets = [
        Target {
            name: "static reference",
            addr: reference.addr(),
            pids: vec![(
                "bench process (server + clients)".into(),
                std::process::id(),
            )],
        },
        Target {
            name: "embedded gateway",
            addr: gw.spec.addr.parse()?,
            pids: vec![pid_of(&gw)],
        },
        Target {
            name: "mesh",
            addr: mesh.gateways[0].spec.addr.parse()?,
            pids: mesh.procs().into_iter().map(pid_of).collect(),
        },
    ];
    for t in &targets[1..] {
        let w = Instant::now();
        for (m, ext) in [
            (fixtures::BASE, "info"),
            (fixtures::BASE, "mod"),
            (fixtures::BASE, "zip"),
            (ONE_MEG, "info"),
            (ONE_MEG, "zip"),
            (BIG, "info"),
            (BIG, "zip"),
        ] {
            warm(&format!("http://{}{}", t.addr, url_path(m, V1, ext))).await?;
        }
        eprintln!(
            "{} warmed (cold fetches) in {:.1} s",
            t.name,
            w.elapsed().as_secs_f64()
        );
    }

    let dur = Duration::from_secs(args.seconds);
    let workloads = [
        ("warm .info", info_path.as_str()),
        ("warm 1 MiB .zip", zip1_path.as_str()),
    ];
    let mut results: Vec<Vec<Load>> = Vec::new();
    for t in &targets {
        let mut row = Vec::new();
        for (wname, path) in workloads {
            // A short unmeasured run first: connections, caches, allocators.
            load(t.addr, path, args.concurrency, Duration::from_secs(1)).await?;
            let r = load(t.addr, path, args.concurrency, dur).await?;
            eprintln!(
                "{} / {wname}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                t.name, r.rps, r.p50_ms, r.p99_ms, r.errors
            );
            row.push(r);
        }
        results.push(row);
    }
    let mut bigs = Vec::new();
    for t in &targets {
        let r = big_run(t, &big_path, &big_sha, big_len).await?;
        eprintln!("{}: 4 × {} MiB in {:.1} s", t.name, args.big_mib, r.secs);
        bigs.push(r);
    }

    println!("## modmesh benchmark\n");
    println!(
        "{} cores, {} build, loopback. Closed loop: {} keep-alive connections, {} s per cell \
         (after 1 s unmeasured). ×ref is the ratio to the static reference server (hyper, same \
         files from disk, in the bench process): higher is better for req/s and MiB/s, lower is \
         better for latency and memory.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        args.concurrency,
        args.seconds
    );
    for (wi, (wname, _)) in workloads.iter().enumerate() {
        println!("### {wname}\n");
        println!("| target | req/s | ×ref | p50 ms | ×ref | p99 ms | ×ref | MiB/s | errors |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let r0 = results[0][wi];
        for (t, row) in targets.iter().zip(&results) {
            let r = row[wi];
            println!(
                "| {} | {:.0} | {} | {:.2} | {} | {:.2} | {} | {:.1} | {} |",
                t.name,
                r.rps,
                ratio(r.rps, r0.rps),
                r.p50_ms,
                ratio(r.p50_ms, r0.p50_ms),
                r.p99_ms,
                ratio(r.p99_ms, r0.p99_ms),
                r.mib_s,
                r.errors
            );
        }
        println!();
    }
    println!(
        "### 4 concurrent warm downloads of a {} MiB zip\n",
        args.big_mib
    );
    println!(
        "| target | process | VmHWM during (MiB) | VmHWM since start (MiB) | all processes during (MiB) | ×ref | aggregate MiB/s | ×ref |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let throughput = |b: &BigRun| 4.0 * big_len as f64 / b.secs / (1 << 20) as f64;
    let total_during = |b: &BigRun| b.rss.iter().map(|r| r.2).sum::<u64>();
    let (ref_tp, ref_mem) = (throughput(&bigs[0]), total_during(&bigs[0]));
    for (t, b) in targets.iter().zip(&bigs) {
        let (tp, mem) = (throughput(b), total_during(b));
        for (i, (label, since, during)) in b.rss.iter().enumerate() {
            let first = if i == 0 {
                format!(
                    "{} | {} | {tp:.0} | {}",
                    mib(mem),
                    ratio(mem as f64, ref_mem as f64),
                    ratio(tp, ref_tp)
                )
            } else {
                " | | | ".into()
            };
            let name = if i == 0 { t.name } else { "" };
            println!(
                "| {name} | {label} | {} | {} | {first} |",
                mib(*during),
                mib(*since)
            );
        }
    }
    println!(
        "\nThe reference's memory is the whole bench process: its static server and the 4 hashing clients.\n"
    );

    gw.stop()?;
    mesh.stop()?;
    println!(
        "{}",
        modmesh_tests::benchsec::tracing::run(dir, args.seconds, args.concurrency).await?
    );
    eprintln!("bench done in {:.0} s", total.elapsed().as_secs_f64());
    Ok(())
}
