//! Lock benchmark: acquire + release round trips per second, and their
//! p50/p99 latency, through a real `lock-svc` process (gRPC, `LockClient`)
//! for the `memory`, `etcd` (three members) and `redis` drivers. The bench
//! starts every server itself, on loopback ports.
//!
//! Each of C workers loops for N seconds over acquire (zero wait, keys of
//! its own, so nothing contends) and release; one round trip is both calls.
//! A second run has all workers contend for 8 keys (waits allowed).
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p modmesh-tests --features lockbench --bin lockbench -- [--seconds N (5)] [--concurrency C (16)]
//! ```
//!
//! Progress goes to stderr, the markdown table to stdout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use modmesh_lock::client::LockClient;
use modmesh_lock::testing::servers::{self, Etcd, Redis};
use modmesh_lock::Lock;
use modmesh_tests::procs::Proc;
use modmesh_tests::topology::base_spec;

struct Args {
    seconds: u64,
    concurrency: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        seconds: 5,
        concurrency: 16,
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
            "-h" | "--help" => {
                println!("lockbench [--seconds N (5)] [--concurrency C (16)]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

/// One measured run.
struct Run {
    ops: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

/// C workers doing acquire + release for `dur`; `contended` makes them
/// share 8 keys (and wait for each other) instead of using keys of their own.
async fn load(lock: Arc<dyn Lock>, workers: usize, dur: Duration, contended: bool) -> Result<Run> {
    let start = Instant::now();
    let until = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let lock = lock.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < until {
                let key = if contended {
                    format!("bench/shared/{}", i % 8)
                } else {
                    format!("bench/{w}/{i}")
                };
                let wait = if contended {
                    Duration::from_secs(10)
                } else {
                    Duration::ZERO
                };
                let t = Instant::now();
                let l = lock.acquire(&key, Duration::from_secs(30), wait).await?;
                lock.release(&l).await?;
                lat.push(t.elapsed());
                i += 1;
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Run {
        ops: all.len(),
        secs,
        p50: pct(0.50),
        p99: pct(0.99),
    })
}

/// Starts `lock-svc` with `env` and returns it with a client.
async fn lock_svc(
    dir: &std::path::Path,
    label: &str,
    env: &[(&str, &str)],
) -> Result<(Proc, Arc<dyn Lock>)> {
    let mut spec = base_spec("lock-svc", label, dir);
    spec.set("ATHENS_LOG_LEVEL", "error");
    for (k, v) in env {
        spec.set(k, *v);
    }
    let a = spec.addr.clone();
    spec.set("ATHENS_LOCK_SVC_LISTEN", a);
    let mut p = Proc::spawn(spec)?;
    p.wait_listening(Duration::from_secs(30)).await?;
    let client: Arc<dyn Lock> = Arc::new(LockClient::new(&p.url())?);
    // Ready when a health check and a first lock succeed.
    let t = Instant::now();
    loop {
        let ok = client.health().await.is_ok()
            && match client
                .acquire("bench/warmup", Duration::from_secs(5), Duration::ZERO)
                .await
            {
                Ok(l) => client.release(&l).await.is_ok(),
                Err(_) => false,
            };
        if ok {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("{label} not ready:\n{}", p.log_tail(4000));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((p, client))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let dur = Duration::from_secs(args.seconds);
    let redis = Redis::start().context("redis-server is not installed")?;
    let etcd = Etcd::start(3).context("etcd is not installed")?;
    let redis_ep = redis.endpoint();
    let etcd_eps = etcd.endpoints().join(",");
    let drivers: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("memory", vec![("ATHENS_SINGLE_FLIGHT_TYPE", "memory")]),
        (
            "redis",
            vec![
                ("ATHENS_SINGLE_FLIGHT_TYPE", "redis"),
                ("ATHENS_REDIS_ENDPOINT", &redis_ep),
                ("ATHENS_REDIS_PASSWORD", servers::REDIS_PASSWORD),
            ],
        ),
        (
            "etcd",
            vec![
                ("ATHENS_SINGLE_FLIGHT_TYPE", "etcd"),
                ("ATHENS_ETCD_ENDPOINTS", &etcd_eps),
            ],
        ),
    ];
    println!(
        "| driver (through lock-svc) | load | round trips/s | p50 | p99 |\n|---|---|---|---|---|"
    );
    for (name, env) in drivers {
        let (mut p, client) = lock_svc(dir.path(), &format!("lock-svc-{name}"), &env).await?;
        load(
            client.clone(),
            args.concurrency,
            Duration::from_secs(1),
            false,
        )
        .await?;
        for contended in [false, true] {
            let r = load(client.clone(), args.concurrency, dur, contended).await?;
            let what = if contended {
                format!("{} workers, 8 shared keys", args.concurrency)
            } else {
                format!("{} workers, own keys", args.concurrency)
            };
            eprintln!("{name}: {what}: {} round trips in {:.1} s", r.ops, r.secs);
            println!(
                "| {name} | {what} | {:.0} | {:.2} ms | {:.2} ms |",
                r.ops as f64 / r.secs,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3
            );
        }
        p.stop()?;
    }
    Ok(())
}
