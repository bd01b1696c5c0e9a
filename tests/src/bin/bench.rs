//! Benchmark harness. Sections (each a module under `bench/`, called with one
//! line from [`main`]) share a [`Ctx`]: the arguments, a scratch directory,
//! the upstream GOPROXY tree and its static server, and the reference servers
//! (nginx on the same tree, Athens v0.18.0 on a disk store, and a minimal
//! in-process static server).
//!
//! ```text
//! cargo build --release -p modmesh-gateway -p modmesh-storage-svc -p modmesh-lock-svc -p modmesh-fetcher-svc --bins
//! cargo run --release -p modmesh-tests --bin bench -- [--seconds N] [--concurrency C] [--big-mib M] [--only a,b] [--targets a,b] [--builtin-client]
//! ```
//!
//! Sections: `warm` (warm `.info` and 1 MiB `.zip` req/s and latency for
//! nginx, Athens, the static reference, the embedded gateway and the mesh),
//! `big` (peak RSS while 4 clients download a big zip), `queries` (cached
//! `list`/`@latest`, and 1,000 concurrent requests for 100 unknown modules),
//! `coldgraph` (a real dependency graph with fresh caches: direct, embedded,
//! mesh, Athens), `tracing` (warm `.info` with traces on and off) and, built with `--features servers`, `objstore` (storage-svc
//! on s3 against disk; a cold miss with each lock driver). Progress goes to
//! stderr, the markdown report to stdout.

#[path = "bench/queries.rs"]
mod queries;
#[path = "bench/refs.rs"]
mod refs;
#[path = "bench/warm.rs"]
mod warm;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use modmesh_tests::benchsec::load;
use modmesh_tests::fixtures::{self, ProxyDir};
use modmesh_tests::server::StaticServer;

/// The sections, in the order they run.
const SECTIONS: &[&str] = &["warm", "big", "queries", "coldgraph", "objstore", "tracing"];

/// The version every bench module is published at.
pub const V1: &str = "v1.0.0";

/// The command line.
#[derive(Debug, Clone)]
pub struct Args {
    pub seconds: u64,
    pub concurrency: usize,
    pub big_mib: u64,
    /// Sections to run (all when empty).
    pub only: Vec<String>,
    /// Use the built-in load generator even if wrk is installed.
    pub builtin_client: bool,
    /// Targets of the `warm` section to measure, by name prefix (all when
    /// empty), e.g. `mesh (tier off)`.
    pub targets: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        seconds: 5,
        concurrency: 64,
        big_mib: 200,
        only: Vec::new(),
        builtin_client: false,
        targets: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| -> Result<String> {
            it.next().with_context(|| format!("{name} needs a value"))
        };
        let num = |name: &str, v: String| -> Result<u64> {
            v.parse().with_context(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--seconds" => a.seconds = num("--seconds", val("--seconds")?)?,
            "--concurrency" => {
                a.concurrency = num("--concurrency", val("--concurrency")?)? as usize
            }
            "--big-mib" => a.big_mib = num("--big-mib", val("--big-mib")?)?,
            "--only" => a
                .only
                .extend(val("--only")?.split(',').map(|s| s.trim().to_string())),
            "--builtin-client" => a.builtin_client = true,
            "--targets" => a
                .targets
                .extend(val("--targets")?.split(',').map(|s| s.trim().to_string())),
            "-h" | "--help" => {
                println!(
                    "bench [--seconds N (5)] [--concurrency C (64)] [--big-mib M (200)] \
                     [--only SECTION,… ({})] [--targets NAME,…] [--builtin-client]",
                    SECTIONS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    ensure!(
        a.seconds > 0 && a.concurrency > 0,
        "--seconds and --concurrency must be > 0"
    );
    for s in &a.only {
        ensure!(
            SECTIONS.contains(&s.as_str()),
            "unknown section {s:?} (sections: {})",
            SECTIONS.join(", ")
        );
    }
    Ok(a)
}

/// What every section shares.
pub struct Ctx {
    pub args: Args,
    /// Scratch directory, removed at the end.
    pub dir: PathBuf,
    /// The upstream GOPROXY tree (sections may add modules to it).
    pub proxy: ProxyDir,
    /// A static server of [`Ctx::proxy`]: the upstream of every gateway.
    pub upstream: StaticServer,
    /// A minimal static server of the same tree (hyper, in this process).
    pub reference: StaticServer,
    /// nginx serving the same tree, or why not.
    pub nginx: std::result::Result<refs::RefServer, String>,
    /// Athens v0.18.0 on a disk store fetching from the upstream, or why not.
    pub athens: std::result::Result<refs::Athens, String>,
    /// The load generator.
    pub client: load::Client,
    _tmp: tempfile::TempDir,
}

impl Ctx {
    async fn new(args: Args) -> Result<Ctx> {
        let tmp = tempfile::Builder::new()
            .prefix("modmesh-bench-")
            .tempdir()?;
        let dir = tmp.path().to_path_buf();
        let proxy = ProxyDir::new(dir.join("upstream"))?;
        let base = fixtures::standard_modules()
            .into_iter()
            .find(|m| m.path == fixtures::BASE && m.version == V1)
            .context("base fixture")?;
        proxy.add(&base)?;
        let upstream = StaticServer::start(proxy.root())?;
        let reference = StaticServer::start(proxy.root())?;
        let nginx = refs::nginx(&dir, proxy.root()).await?;
        let athens = refs::athens(&dir, &upstream.url()).await?;
        let ctx = Ctx {
            client: load::Client::pick(args.builtin_client),
            args,
            dir,
            proxy,
            upstream,
            reference,
            nginx,
            athens,
            _tmp: tmp,
        };
        ctx.publish(fixtures::BASE)?;
        Ok(ctx)
    }

    /// Whether section `name` runs.
    fn wants(&self, name: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|s| s == name)
    }

    /// Makes `module@V1` (already in [`Ctx::proxy`]) warm in Athens: put in
    /// its disk layout, as an Athens operator pre-fills a store.
    pub fn publish(&self, module: &str) -> Result<()> {
        if let Ok(a) = &self.athens {
            a.prefill(&self.proxy, module, V1)?;
        }
        Ok(())
    }

    /// One line on the run's conditions, for each section's report.
    pub fn conditions(&self) -> String {
        format!(
            "{} cores, {} build, loopback, load by {}: {} keep-alive connections, {} s per cell \
             (after 1 s unmeasured).{}{}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            self.client.name(),
            self.args.concurrency,
            self.args.seconds,
            self.nginx
                .as_ref()
                .err()
                .map(|e| format!(" No nginx: {e}."))
                .unwrap_or_default(),
            self.athens
                .as_ref()
                .err()
                .map(|e| format!(" No Athens: {e}."))
                .unwrap_or_default(),
        )
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let total = Instant::now();
    eprintln!("starting the upstream and the reference servers…");
    let ctx = Ctx::new(args).await?;
    println!("## modmesh benchmark\n\n{}\n", ctx.conditions());
    // One line per section.
    if ctx.wants("warm") {
        warm::run(&ctx).await?;
    }
    if ctx.wants("big") {
        warm::big(&ctx).await?;
    }
    if ctx.wants("queries") {
        queries::run(&ctx).await?;
    }
    if ctx.wants("coldgraph") {
        println!(
            "{}",
            modmesh_tests::benchsec::coldgraph::run(&ctx.dir.join("coldgraph"), 3, None).await?
        );
    }
    if ctx.wants("tracing") {
        println!(
            "{}",
            modmesh_tests::benchsec::tracing::run(&ctx.dir, ctx.args.seconds, ctx.args.concurrency)
                .await?
        );
    }
    #[cfg(feature = "servers")]
    if ctx.wants("objstore") {
        println!(
            "{}",
            modmesh_tests::benchsec::objstore::run(
                &ctx.dir,
                ctx.args.seconds,
                ctx.args.concurrency,
                30
            )
            .await?
        );
    }
    eprintln!("bench done in {:.0} s", total.elapsed().as_secs_f64());
    Ok(())
}
