//! The `queries` section: cached `list` and `@latest`, and a flood of
//! requests for modules the upstream does not know.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use modmesh_tests::fixtures;
use modmesh_tests::topology::{embedded_spec, start_gateway, Store};

use crate::warm::warm_url;
use crate::Ctx;

/// The query section: warm `list` and `@latest` through an embedded gateway
/// (answers kept `ListCacheTTL`), and a flood of 1,000 concurrent requests
/// for 100 modules the upstream does not know, against a fresh gateway:
/// how many upstream requests (go processes, one each) it starts per module.
pub async fn run(ctx: &Ctx) -> Result<()> {
    let (dir, upstream, args) = (&ctx.dir, &ctx.upstream, &ctx.args);
    use std::fmt::Write as _;
    let store = dir.join("query-store");
    std::fs::create_dir(&store)?;
    let mut gw = start_gateway(embedded_spec(
        "gateway-queries",
        &dir.join("queries"),
        &Store::Disk(store),
        &upstream.url(),
    )?)
    .await?;
    let addr: SocketAddr = gw.spec.addr.parse()?;
    let list = format!("/{}/@v/list", fixtures::BASE);
    let latest = format!("/{}/@latest", fixtures::BASE);
    let dur = Duration::from_secs(args.seconds);
    let mut out = String::new();
    writeln!(out, "### Cached `list` and `@latest`\n")?;
    writeln!(out, "| request | req/s | p50 ms | p99 ms | errors |")?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for (name, path) in [("warm list", &list), ("warm @latest", &latest)] {
        warm_url(&format!("http://{addr}{path}")).await?;
        ctx.client
            .run(addr, path, args.concurrency, Duration::from_secs(1))
            .await?;
        let r = ctx.client.run(addr, path, args.concurrency, dur).await?;
        eprintln!(
            "queries / {name}: {:.0} req/s, p99 {:.2} ms",
            r.rps, r.p99_ms
        );
        writeln!(
            out,
            "| {name} | {:.0} | {:.2} | {:.2} | {} |",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        )?;
    }
    writeln!(out)?;

    // The flood, once for list and once for @latest: 10 concurrent requests
    // for each of 100 unknown modules, all in flight together.
    writeln!(
        out,
        "### 1,000 concurrent requests for 100 unknown modules\n"
    )?;
    writeln!(
        out,
        "| request | answers | seconds | upstream requests | most for one module |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|")?;
    let client = modmesh_tests::http::client();
    for (kind, group, suffix) in [
        ("list", "unknown-list", "@v/list"),
        ("@latest", "unknown-latest", "@latest"),
    ] {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for m in 0..100 {
            for _ in 0..10 {
                let url = format!("http://{addr}/example.com/{group}/m{m}/{suffix}");
                let client = client.clone();
                tasks.spawn(async move {
                    let resp = client.get(url.parse()?).await?;
                    anyhow::Ok(resp.status().as_u16())
                });
            }
        }
        let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
        while let Some(r) = tasks.join_next().await {
            *statuses.entry(r??).or_default() += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        let prefix = format!("/example.com/{group}/");
        let per_module: Vec<u64> = upstream
            .counts()
            .into_iter()
            .filter(|(p, _)| p.starts_with(&prefix))
            .map(|(_, n)| n)
            .collect();
        let total: u64 = per_module.iter().sum();
        let most = per_module.iter().copied().max().unwrap_or(0);
        eprintln!("queries / flood {kind}: {statuses:?} in {secs:.1} s, {total} upstream requests, at most {most} per module");
        writeln!(
            out,
            "| {kind} | {statuses:?} | {secs:.1} | {total} | {most} |"
        )?;
    }
    writeln!(
        out,
        "\nThe fetcher asks the upstream once per go process (`go list -m`), so upstream requests per module bound the go processes started; \
         a second flood within `NegativeCacheTTL` would start none."
    )?;
    gw.stop()?;
    println!("{out}");
    Ok(())
}
