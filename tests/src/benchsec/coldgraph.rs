//! The cold-graph benchmark: a real dependency graph (gin, cobra, testify,
//! zap, toml and their dependencies, about 40 modules) resolved by the go
//! command (`go mod tidy`, fresh `GOMODCACHE`, `GOSUMDB=off` on the client)
//! through (a) the upstream `go env GOPROXY` names, directly, (b) an
//! embedded gateway with the native fetcher, (c) the mesh with the native
//! fetcher, (d) an embedded gateway with `FetcherMode=gocmd` (the go
//! command fetches every module) and (e) Athens (`athens-proxy` on `PATH`
//! or in `/usr/local/bin`, disk storage, env-only config). Every proxy gets
//! a fresh store and fetcher directory each round, and verifies against the
//! checksum database the go command would use. The order rotates each
//! round. Before each run the page cache is dropped (as root; see
//! `settle`). Reports the median time and the ratios to direct and to
//! Athens.

use crate::goclient::GoEnv;
use crate::procs::{free_addr, Proc};
use crate::topology::{base_spec, embedded_spec, start_gateway, Mesh, Store};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The graph's roots, pinned.
const REQUIRES: &[(&str, &str, &str)] = &[
    (
        "github.com/gin-gonic/gin",
        "v1.10.0",
        "github.com/gin-gonic/gin",
    ),
    ("github.com/spf13/cobra", "v1.8.1", "github.com/spf13/cobra"),
    (
        "github.com/stretchr/testify",
        "v1.9.0",
        "github.com/stretchr/testify/assert",
    ),
    ("go.uber.org/zap", "v1.27.0", "go.uber.org/zap"),
    (
        "github.com/BurntSushi/toml",
        "v1.4.0",
        "github.com/BurntSushi/toml",
    ),
];

/// Writes the program whose graph is resolved into `dir` (fresh).
fn write_program(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let mut go_mod = String::from("module example.com/coldgraph\n\ngo 1.22\n\nrequire (\n");
    let mut main = String::from("package main\n\nimport (\n");
    for (m, v, pkg) in REQUIRES {
        go_mod.push_str(&format!("\t{m} {v}\n"));
        main.push_str(&format!("\t_ \"{pkg}\"\n"));
    }
    go_mod.push_str(")\n");
    main.push_str(")\n\nfunc main() {}\n");
    std::fs::write(dir.join("go.mod"), go_mod)?;
    std::fs::write(dir.join("main.go"), main)?;
    Ok(())
}

/// Zips in a module cache.
fn count_zips(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.join("cache/download")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "zip") {
                n += 1;
            }
        }
    }
    n
}

/// The proxies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Embedded,
    Mesh,
    GoCmd,
    Athens,
}

impl Kind {
    /// Every kind, in the order of the report.
    const ALL: [Kind; 5] = [
        Kind::Direct,
        Kind::Embedded,
        Kind::Mesh,
        Kind::GoCmd,
        Kind::Athens,
    ];

    /// The word that picks the kind in [`run`]'s `only`.
    fn word(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Embedded => "embedded",
            Kind::Mesh => "mesh",
            Kind::GoCmd => "gocmd",
            Kind::Athens => "athens",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "upstream, direct",
            Kind::Embedded => "embedded gateway (native fetcher)",
            Kind::Mesh => "mesh (native fetcher)",
            Kind::GoCmd => "embedded gateway (FetcherMode=gocmd)",
            Kind::Athens => "Athens",
        }
    }
}

/// A proxy started for one round.
enum Running {
    None,
    Gateway(Box<Proc>),
    Mesh(Box<Mesh>),
}

fn athens_binary() -> Option<PathBuf> {
    modmesh_test_support::find_program("athens-proxy")
        .or_else(|| Some(PathBuf::from("/usr/local/bin/athens-proxy")).filter(|p| p.is_file()))
}

/// Starts `kind` over fresh directories under `dir`; returns its URL.
async fn start(kind: Kind, dir: &Path, upstream: &str) -> Result<(String, Running)> {
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    // The fetcher verifies against the go command's default database.
    let fetcher_env = format!("GOPROXY={upstream}");
    Ok(match kind {
        Kind::Direct => (upstream.to_string(), Running::None),
        Kind::Embedded | Kind::GoCmd => {
            let mut spec = embedded_spec("gateway", dir, &Store::Disk(store), upstream)?;
            spec.set("ATHENS_GO_BINARY_ENV_VARS", fetcher_env);
            spec.set("ATHENS_LOG_LEVEL", "error");
            if kind == Kind::GoCmd {
                spec.set("ATHENS_FETCHER_MODE", "gocmd");
            }
            let p = start_gateway(spec).await?;
            (p.url(), Running::Gateway(Box::new(p)))
        }
        Kind::Mesh => {
            let env = [
                ("ATHENS_GO_BINARY_ENV_VARS", fetcher_env.as_str()),
                ("ATHENS_LOG_LEVEL", "error"),
            ];
            let m =
                Mesh::start_with_fetcher_env(dir, &Store::Disk(store), upstream, 1, &env).await?;
            (m.gateways[0].url(), Running::Mesh(Box::new(m)))
        }
        Kind::Athens => {
            let bin = athens_binary().context("athens-proxy is not installed")?;
            let goget = dir.join("goget");
            std::fs::create_dir_all(&goget)?;
            let mut spec = base_spec(&bin.display().to_string(), "athens", dir);
            spec.env.clear();
            spec.addr = free_addr();
            let addr = spec.addr.clone();
            spec.set("ATHENS_PORT", addr)
                .set("ATHENS_STORAGE_TYPE", "disk")
                .set("ATHENS_DISK_STORAGE_ROOT", store.display().to_string())
                .set("ATHENS_GOGET_DIR", goget.display().to_string())
                .set("ATHENS_GO_BINARY_ENV_VARS", fetcher_env)
                .set("ATHENS_LOG_LEVEL", "error");
            let p = start_gateway(spec).await?;
            (p.url(), Running::Gateway(Box::new(p)))
        }
    })
}

/// Writes dirty pages out and drops the page cache, so that every run
/// starts from the same memory state; `false` where that is not allowed
/// (not root). On this kind of machine a run that starts with gigabytes of
/// page cache from the previous ones spends seconds more in the kernel
/// writing the same files (one direct run: 1.3 s of system time after a
/// drop, 8.4 s after a few runs without one), which made the ratios
/// meaningless.
fn settle() -> bool {
    let synced = std::process::Command::new("sync")
        .status()
        .is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// One timed cold resolution through `proxy`.
async fn resolve(proxy: &str, dir: &Path) -> Result<(Duration, usize)> {
    let prog = dir.join("program");
    write_program(&prog)?;
    let go = GoEnv::new(proxy)?;
    if !settle() {
        eprintln!("[coldgraph] the page cache could not be dropped (not root?): expect noise");
    }
    let t = Instant::now();
    go.run(&prog, &["mod", "tidy"]).await?;
    let took = t.elapsed();
    Ok((took, count_zips(&go.modcache())))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the section for `rounds` rounds under `dir`; returns the markdown
/// report. Progress goes to stderr. `only` (words: direct, embedded, mesh,
/// gocmd, athens) picks some of the paths; direct is always run, as the
/// reference.
pub async fn run(dir: &Path, rounds: usize, only: Option<&str>) -> Result<String> {
    let upstream = crate::chains::go_env("GOPROXY")?;
    let Some(upstream) = crate::chains::first_proxy_url(&upstream) else {
        bail!("`go env GOPROXY` names no proxy ({upstream:?})");
    };
    let picked = |k: Kind| {
        k == Kind::Direct || only.is_none_or(|o| o.split(',').any(|w| w.trim() == k.word()))
    };
    let athens_installed = athens_binary().is_some();
    if !athens_installed {
        eprintln!("[coldgraph] athens-proxy not found: Athens is left out");
    }
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|&k| picked(k) && (k != Kind::Athens || athens_installed))
        .collect();
    let athens = kinds.contains(&Kind::Athens);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut modules = 0;
    let mut failures: Vec<String> = Vec::new();
    for round in 0..rounds {
        for k in 0..kinds.len() {
            let i = (k + round) % kinds.len();
            let kind = kinds[i];
            let d = dir.join(format!("round{round}-{i}"));
            let (url, running) = start(kind, &d, &upstream).await?;
            let r = resolve(&url, &d).await;
            let log = match &running {
                Running::Gateway(p) => p.log_tail(4000),
                Running::Mesh(m) => m.gateways[0].log_tail(4000),
                Running::None => String::new(),
            };
            drop(running);
            let (took, zips) = match r {
                Ok(r) => r,
                Err(e) => {
                    // One failed run (a proxy serving a broken file) is
                    // reported and left out, not the end of the section.
                    let e = format!("{e:#}");
                    let first = e
                        .lines()
                        .find(|l| l.contains("go.mod") || l.contains("error"))
                        .unwrap_or("");
                    eprintln!(
                        "[coldgraph] round {} {}: FAILED: {first}\n{log}",
                        round + 1,
                        kind.name()
                    );
                    failures.push(format!("round {}: {}: {first}", round + 1, kind.name()));
                    let _ = std::fs::remove_dir_all(&d);
                    continue;
                }
            };
            eprintln!(
                "[coldgraph] round {} {}: {:.2} s, {zips} zips",
                round + 1,
                kind.name(),
                took.as_secs_f64()
            );
            modules = modules.max(zips);
            times[i].push(took.as_secs_f64());
            let _ = std::fs::remove_dir_all(&d);
        }
    }
    let med: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let direct = med[0];
    let athens_t = athens.then(|| med[kinds.len() - 1]);
    let mut out = format!(
        "### Cold dependency graph ({modules} modules, `go mod tidy`, fresh caches and the page cache dropped before each run, {rounds} rounds, median)\n\n| through | seconds | × direct | × Athens |\n|---|---|---|---|\n"
    );
    for (i, kind) in kinds.iter().enumerate() {
        let all: Vec<String> = times[i].iter().map(|t| format!("{t:.1}")).collect();
        out.push_str(&format!(
            "| {} | {:.2} ({}) | {:.2} | {} |\n",
            kind.name(),
            med[i],
            all.join(", "),
            med[i] / direct,
            athens_t.map_or("-".to_string(), |a| format!("{:.2}", med[i] / a))
        ));
    }
    for f in &failures {
        out.push_str(&format!("\nFailed and left out: {f}\n"));
    }
    Ok(out)
}
