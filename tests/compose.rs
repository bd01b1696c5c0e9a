//! The repository's docker-compose.yml brought up for real under podman
//! (podman-compose), with two gateways and two fetchers behind the edge
//! (`modmesh edge`, the one published port), and the real go command
//! building a program through it; and the `s3` profile (MinIO and
//! storage-svc-s3) used with the `modmesh` CLI.
//!
//! Without systemd, a registry or /etc changes: podman is configured by
//! files under a work folder (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`);
//! the `debian:bookworm-slim` base is made with debootstrap (with this
//! machine's CA certificates) and `podman import`, a `golang:1-bookworm`
//! stand-in from the machine's Go tree and a MinIO stand-in (under the
//! image name the compose file gives) from the machine's MinIO server, all
//! kept for the next run (keyed by a hash of what they are made of); the
//! image is built from the repository's Dockerfile with `BINARIES=prebuilt`
//! and the binaries of this build. Everything the test creates
//! (containers, volumes, network) is removed at the end; the images stay.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use modmesh_tests::fixtures::{standard_modules, standard_proxy, write_program, PSEUDO, PSEUDO_V};
use modmesh_tests::goclient::{build_and_run_program, GoEnv};
use modmesh_tests::procs::bin_dir;
use modmesh_tests::server::StaticServer;

/// The compose project this test brings up (apart from a user's `modmesh`).
const PROJECT: &str = "modmeshtest";
/// Bumped when the base image recipe changes.
const BASE_RECIPE: &str = "debootstrap minbase bookworm + ca-certificates + host CAs, v1";
const DEPS: &str = "scripts/deps/70-compose.sh";

fn lap(phase: &str, t: Instant) {
    eprintln!("[compose] {phase}: {:.1} s", t.elapsed().as_secs_f64());
}

/// Podman configured under a work folder.
struct Podman {
    work: PathBuf,
    env: Vec<(String, String)>,
    repo: PathBuf,
}

impl Podman {
    fn setup(work: &Path, repo: &Path) -> Result<Podman> {
        for d in ["tmp", "networks", "graph", "run"] {
            std::fs::create_dir_all(work.join(d))?;
        }
        let w = work.display();
        std::fs::write(
            work.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\ntmp_dir = \"{w}/tmp\"\n\n\
                 [network]\nnetwork_config_dir = \"{w}/networks\"\n"
            ),
        )?;
        std::fs::write(
            work.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{w}/graph\"\nrunroot = \"{w}/run\"\n"
            ),
        )?;
        let env = vec![
            ("CONTAINERS_CONF".into(), format!("{w}/containers.conf")),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                format!("{w}/storage.conf"),
            ),
            ("TMPDIR".into(), format!("{w}/tmp")),
        ];
        Ok(Podman {
            work: work.to_path_buf(),
            env,
            repo: repo.to_path_buf(),
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs `podman args`; fails with its output unless it exits 0.
    fn podman(&self, args: &[&str]) -> Result<Output> {
        let mut c = self.cmd("podman");
        c.args(args);
        run(c, &format!("podman {}", args.join(" ")))
    }

    fn compose(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Result<Output> {
        let mut c = self.cmd("podman-compose");
        c.args(["-p", PROJECT, "-f"])
            .arg(self.repo.join("docker-compose.yml"))
            .args(args)
            .envs(extra_env.iter().copied());
        run(c, &format!("podman-compose {}", args.join(" ")))
    }

    fn image_exists(&self, name: &str) -> bool {
        self.cmd("podman")
            .args(["image", "exists", name])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether `name` exists and was made from `key` (remembered in a file).
    fn made_from(&self, name: &str, key: &str) -> bool {
        let marker = self
            .work
            .join(format!("{}.key", name.replace([':', '/'], "_")));
        self.image_exists(name) && std::fs::read_to_string(marker).is_ok_and(|k| k == key)
    }

    fn remember(&self, name: &str, key: &str) -> Result<()> {
        let marker = self
            .work
            .join(format!("{}.key", name.replace([':', '/'], "_")));
        Ok(std::fs::write(marker, key)?)
    }
}

fn run(mut c: Command, what: &str) -> Result<Output> {
    let out = c.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    modmesh_test_support::hex(&h.finalize())
}

/// The machine's extra CA certificates (the base image trusts them too).
fn host_cas() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new("/usr/local/share/ca-certificates");
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "crt") {
                if let Ok(bytes) = std::fs::read(&p) {
                    let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                    out.push((rel, bytes));
                }
            }
        }
    }
    out.sort();
    out
}

/// The Debian mirror apt uses on this machine.
fn debian_mirror() -> String {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .or_else(|_| std::fs::read_to_string("/etc/apt/sources.list"))
        .unwrap_or_default();
    for line in sources.lines() {
        let line = line.trim();
        if let Some(uris) = line.strip_prefix("URIs:") {
            if let Some(u) = uris.split_whitespace().next() {
                return u.to_string();
            }
        }
        if let Some(rest) = line.strip_prefix("deb ") {
            if let Some(u) = rest.split_whitespace().find(|w| w.starts_with("http")) {
                if !u.contains("security") {
                    return u.to_string();
                }
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// `debian:bookworm-slim` made here; its key.
fn base_image(p: &Podman) -> Result<String> {
    let cas = host_cas();
    let mut parts: Vec<&[u8]> = vec![BASE_RECIPE.as_bytes()];
    for (name, bytes) in &cas {
        parts.push(name.as_bytes());
        parts.push(bytes);
    }
    let key = sha256_hex(&parts);
    if p.made_from("debian:bookworm-slim", &key) {
        return Ok(key);
    }
    let t = Instant::now();
    let rootfs = p.work.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    let mut c = Command::new("debootstrap");
    c.args(["--variant=minbase", "--include=ca-certificates", "bookworm"])
        .arg(&rootfs)
        .arg(debian_mirror());
    run(c, "debootstrap")?;
    let dest = rootfs.join("usr/local/share/ca-certificates");
    for (name, bytes) in &cas {
        let to = dest.join(name);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::write(to, bytes)?;
    }
    let mut c = Command::new("chroot");
    c.arg(&rootfs).args(["update-ca-certificates", "--fresh"]);
    run(c, "update-ca-certificates in the base")?;
    let mut c = Command::new("sh");
    c.envs(p.env.iter().map(|(k, v)| (k, v)))
        .arg("-c")
        .arg(format!(
        "tar -C '{}' -c . | podman import --change 'CMD [\"/bin/bash\"]' - debian:bookworm-slim",
        rootfs.display()
    ));
    run(c, "podman import")?;
    std::fs::remove_dir_all(&rootfs)?;
    p.remember("debian:bookworm-slim", &key)?;
    lap("base image (debootstrap + import)", t);
    Ok(key)
}

/// `golang:1-bookworm`: the base plus this machine's Go tree.
fn golang_image(p: &Podman, base_key: &str) -> Result<()> {
    let goroot = Command::new("go").args(["env", "GOROOT"]).output()?;
    let goroot = String::from_utf8(goroot.stdout)?.trim().to_string();
    let version = std::fs::read_to_string(Path::new(&goroot).join("VERSION")).unwrap_or_default();
    let key = sha256_hex(&[base_key.as_bytes(), goroot.as_bytes(), version.as_bytes()]);
    if p.made_from("golang:1-bookworm", &key) {
        return Ok(());
    }
    let t = Instant::now();
    let file = p.work.join("golang.Containerfile");
    std::fs::write(
        &file,
        "FROM debian:bookworm-slim\nCOPY . /usr/local/go\n\
         ENV PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         GOTOOLCHAIN=local\n",
    )?;
    let f = file.display().to_string();
    p.podman(&["build", "-q", "-t", "golang:1-bookworm", "-f", &f, &goroot])?;
    p.remember("golang:1-bookworm", &key)?;
    lap("golang stand-in", t);
    Ok(())
}

/// The MinIO image the compose file's `s3` service names.
fn minio_image_name(repo: &Path) -> Result<String> {
    let text = std::fs::read_to_string(repo.join("docker-compose.yml"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("image:"))
        .map(str::trim)
        .find(|i| i.contains("/minio/minio:"))
        .map(str::to_string)
        .context("docker-compose.yml names no minio image")
}

/// The MinIO image of the compose file, made here: the base plus this
/// machine's MinIO server (scripts/deps/37-minio.sh builds it from source),
/// run as the upstream image runs it (`minio` then the compose command).
fn minio_image(p: &Podman, base_key: &str, minio: &Path) -> Result<String> {
    let name = minio_image_name(&p.repo)?;
    let version =
        std::fs::read_to_string(minio.with_file_name("minio.version")).unwrap_or_default();
    let size = std::fs::metadata(minio)?.len().to_string();
    let key = sha256_hex(&[
        base_key.as_bytes(),
        version.as_bytes(),
        size.as_bytes(),
        b"minio stand-in v1",
    ]);
    if p.made_from(&name, &key) {
        return Ok(name);
    }
    let t = Instant::now();
    let ctx = p.work.join("minio-context");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx)?;
    if std::fs::hard_link(minio, ctx.join("minio")).is_err() {
        std::fs::copy(minio, ctx.join("minio"))?;
    }
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM debian:bookworm-slim\nCOPY minio /usr/bin/minio\n\
         ENTRYPOINT [\"/usr/bin/minio\"]\nEXPOSE 9000\n",
    )?;
    let c = ctx.display().to_string();
    let f = ctx.join("Containerfile").display().to_string();
    p.podman(&["build", "-q", "-t", &name, "-f", &f, &c])?;
    std::fs::remove_dir_all(&ctx)?;
    p.remember(&name, &key)?;
    lap("minio stand-in", t);
    Ok(name)
}

/// `modmesh:latest` from the repository's Dockerfile with this build's
/// binaries.
fn mesh_image(p: &Podman) -> Result<()> {
    let t = Instant::now();
    let ctx = p.work.join("context");
    let _ = std::fs::remove_dir_all(&ctx);
    let pre = ctx.join("prebuilt");
    std::fs::create_dir_all(&pre)?;
    let bins = bin_dir()?;
    for b in [
        "gateway",
        "storage-svc",
        "lock-svc",
        "fetcher-svc",
        "modmesh",
    ] {
        let from = bins.join(b);
        ensure!(
            from.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first",
            from.display()
        );
        if std::fs::hard_link(&from, pre.join(b)).is_err() {
            std::fs::copy(&from, pre.join(b))?;
        }
    }
    let dockerfile = p.repo.join("Dockerfile").display().to_string();
    let c = ctx.display().to_string();
    p.podman(&[
        "build",
        "-q",
        "--build-arg",
        "BINARIES=prebuilt",
        "-t",
        "modmesh:latest",
        "-f",
        &dockerfile,
        &c,
    ])?;
    std::fs::remove_dir_all(&ctx)?;
    // The image of the previous run, now untagged.
    p.podman(&["image", "prune", "-f"])?;
    lap("modmesh image (prebuilt binaries)", t);
    Ok(())
}

/// Brings the project down and removes its volume and network (on drop, so
/// also when the test fails).
struct Teardown<'a>(&'a Podman);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        let _ = self.0.compose(&["down", "-v"], &[]);
        for v in ["modules", "s3data"] {
            let _ = self
                .0
                .podman(&["volume", "rm", "-f", &format!("{PROJECT}_{v}")]);
        }
        let _ = self
            .0
            .podman(&["network", "rm", "-f", &format!("{PROJECT}_default")]);
    }
}

fn container(service: &str, n: usize) -> String {
    format!("{PROJECT}_{service}_{n}")
}

/// Runs the container's healthcheck until it passes.
async fn wait_healthy(p: &Podman, name: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = p
            .cmd("podman")
            .args(["healthcheck", "run", name])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs = p
                .cmd("podman")
                .args(["logs", "--tail", "30", name])
                .output()?;
            bail!(
                "{name} not healthy after {timeout:?}: {}{}\nlogs:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until `name` can open a TCP connection to the host's `port`
/// (`host.containers.internal`).
async fn wait_reaches_host(p: &Podman, name: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let probe = format!("timeout 3 bash -c ':> /dev/tcp/host.containers.internal/{port}'");
    loop {
        let out = p
            .cmd("podman")
            .args(["exec", name, "bash", "-c", &probe])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{name} cannot connect to the host's port {port} after {timeout:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many log lines of a container belong to gRPC calls of the Fetcher
/// service (each call logs one or more, all carrying its path).
fn fetcher_calls(p: &Podman, name: &str) -> Result<usize> {
    let out = p.podman(&["logs", name])?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok(text.matches("/modmesh.v1.Fetcher/").count())
}

/// The last log lines of each container, for a failure's message.
fn tails(p: &Podman, names: &[String]) -> String {
    let mut s = String::new();
    for n in names {
        if let Ok(out) = p.cmd("podman").args(["logs", "--tail", "15", n]).output() {
            s.push_str(&format!(
                "--- {n} ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    s
}

/// How many module requests (`/@v/` paths) a gateway container logged.
fn gateway_requests(p: &Podman, name: &str) -> Result<usize> {
    let out = p.podman(&["logs", name])?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok(text
        .lines()
        .filter(|l| l.contains("request handled") && l.contains("/@v/"))
        .count())
}

/// Runs `modmesh --json <args>` inside `name` (its storage-svc at the CLI's
/// default URL): exit success and the JSON lines.
fn modmesh_in(p: &Podman, name: &str, args: &[&str]) -> Result<(bool, Vec<serde_json::Value>)> {
    let out = p
        .cmd("podman")
        .args(["exec", name, "modmesh", "--json"])
        .args(args)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect::<Result<Vec<serde_json::Value>>>()?;
    if !out.status.success() {
        eprintln!(
            "modmesh {args:?} in {name}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((out.status.success(), lines))
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_mesh_under_podman() -> Result<()> {
    for prog in ["podman", "podman-compose", "debootstrap", "runc"] {
        if modmesh_test_support::find_program(prog).is_none() {
            modmesh_test_support::skip(&format!("{prog} is not installed"), DEPS);
            return Ok(());
        }
    }
    let Some(minio) = modmesh_test_support::find_program("minio") else {
        modmesh_test_support::skip("minio is not installed", "scripts/deps/37-minio.sh");
        return Ok(());
    };
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    if uid != 0 {
        modmesh_test_support::skip("the compose test runs podman as root", DEPS);
        return Ok(());
    }
    let all = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let work = std::env::var_os("MODMESH_COMPOSE_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/modmesh-compose"));
    let p = Podman::setup(&work, &repo)?;
    let base_key = base_image(&p)?;
    golang_image(&p, &base_key)?;
    minio_image(&p, &base_key, &minio)?;
    mesh_image(&p)?;

    // The upstream, where containers reach it (the host, through the bridge).
    let tmp = tempfile::tempdir()?;
    let upstream_dir = tmp.path().join("upstream");
    standard_proxy(&upstream_dir)?;
    let mut upstream = StaticServer::start_on(&upstream_dir, "0.0.0.0:0")?;
    let upstream_env = format!(
        "GOPROXY=http://host.containers.internal:{};GOSUMDB=off",
        upstream.addr().port()
    );
    // The edge's host port: a free one, not 3000 (which may be busy).
    let port = modmesh_test_support::free_port().to_string();
    let env = [
        ("ATHENS_GO_BINARY_ENV_VARS", upstream_env.as_str()),
        ("MODMESH_PORT", port.as_str()),
    ];
    // Leftovers of an earlier run that was killed, then ours on drop.
    drop(Teardown(&p));
    let _down = Teardown(&p);
    // The mesh (pulled in by the edge) and the s3 profile's services, in one
    // `up` (naming them works with podman-compose 1.0.3, which does not read
    // `profiles:`, and with docker compose, which starts a profiled service
    // that is named).
    let t = Instant::now();
    p.compose(&["up", "-d", "edge", "s3", "storage-svc-s3"], &env)?;
    lap("compose up", t);
    let t = Instant::now();
    let names = [
        container("storage-svc", 1),
        container("lock-svc", 1),
        container("fetcher-svc", 1),
        container("fetcher-svc", 2),
        container("gateway", 1),
        container("gateway", 2),
        container("edge", 1),
        container("s3", 1),
        container("storage-svc-s3", 1),
    ];
    for n in &names {
        wait_healthy(&p, n, Duration::from_secs(90)).await?;
    }
    lap("all healthy", t);

    // The fetchers reach the upstream on the host (on this machine a fresh
    // bridge network sometimes drops connections to the host for its first
    // seconds; the go build would then time out in the fetchers, not here).
    let t = Instant::now();
    let up_port = upstream.addr().port();
    for f in [container("fetcher-svc", 1), container("fetcher-svc", 2)] {
        wait_reaches_host(&p, &f, up_port, Duration::from_secs(90)).await?;
    }
    lap("fetchers reach the upstream on the host", t);

    // Gateways are not published; the edge is, on 127.0.0.1:<port>.
    for g in [container("gateway", 1), container("gateway", 2)] {
        let out = p.podman(&["port", &g])?;
        let ports = String::from_utf8_lossy(&out.stdout);
        ensure!(ports.trim().is_empty(), "{g} is published: {ports}");
    }
    let out = p.podman(&["port", &container("edge", 1), "3000"])?;
    let published = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        published == format!("127.0.0.1:{port}"),
        "the edge is published on {published:?}, not 127.0.0.1:{port}"
    );
    let edge = format!("http://127.0.0.1:{port}");

    // The go command through the edge.
    let t = Instant::now();
    let prog = tmp.path().join("prog");
    write_program(&prog)?;
    let go = GoEnv::new(&edge)?;
    if let Err(e) = build_and_run_program(&go, &prog).await {
        bail!("{e:#}\n{}", tails(&p, &names));
    }
    lap("go build through the edge", t);
    ensure!(
        upstream.counts().keys().any(|k| k.ends_with(".zip")),
        "the upstream served no zip: {:?}",
        upstream.counts()
    );
    // Both gateway replicas served the build's requests.
    let (g1, g2) = (container("gateway", 1), container("gateway", 2));
    let served = (gateway_requests(&p, &g1)?, gateway_requests(&p, &g2)?);
    eprintln!(
        "[compose] module requests served: {g1} {}, {g2} {}",
        served.0, served.1
    );
    ensure!(
        served.0 > 0 && served.1 > 0,
        "a gateway replica served nothing through the edge: {served:?}"
    );

    // Both fetcher replicas did work (more calls, each for a module not
    // asked before, if the build's few calls all went to one).
    let (f1, f2) = (container("fetcher-svc", 1), container("fetcher-svc", 2));
    let mut calls = (fetcher_calls(&p, &f1)?, fetcher_calls(&p, &f2)?);
    for i in 0..40 {
        if calls.0 > 0 && calls.1 > 0 {
            break;
        }
        // A module nobody asked for: no cached answer, a fetcher is asked.
        let _ = modmesh_tests::http::get(&format!("{edge}/example.com/probe{i}/@v/list")).await;
        calls = (fetcher_calls(&p, &f1)?, fetcher_calls(&p, &f2)?);
    }
    eprintln!(
        "[compose] fetcher log lines of Fetcher calls: {f1} {}, {f2} {}",
        calls.0, calls.1
    );
    ensure!(
        calls.0 > 0 && calls.1 > 0,
        "a fetcher replica did no work: {calls:?}"
    );

    // The s3 profile: storage-svc-s3 made its bucket in MinIO; the CLI
    // inside its container loads a module tree into it, lists it and
    // verifies every hash.
    let t = Instant::now();
    let s3svc = container("storage-svc-s3", 1);
    p.podman(&[
        "cp",
        &upstream_dir.display().to_string(),
        &format!("{s3svc}:/tmp/modcache"),
    ])?;
    let modules = standard_modules();
    let n = modules.len();
    let (ok, lines) = modmesh_in(&p, &s3svc, &["prefill", "/tmp/modcache"])?;
    ensure!(
        ok && lines.last().is_some_and(|l| l["saved"] == n),
        "prefill into s3: {lines:?}"
    );
    let (ok, lines) = modmesh_in(&p, &s3svc, &["catalog"])?;
    let got: BTreeSet<(String, String)> = lines
        .iter()
        .filter_map(|l| {
            Some((
                l["module"].as_str()?.to_string(),
                l["version"].as_str()?.to_string(),
            ))
        })
        .collect();
    let want: BTreeSet<(String, String)> = modules
        .iter()
        .map(|m| (m.path.clone(), m.version.clone()))
        .collect();
    ensure!(ok && got == want, "catalog of s3: {got:?} != {want:?}");
    let (ok, lines) = modmesh_in(&p, &s3svc, &["verify"])?;
    ensure!(
        ok && lines
            .last()
            .is_some_and(|l| l["ok"] == n && l["checked"] == n),
        "verify of s3: {lines:?}"
    );
    // The objects are in MinIO's bucket (its data folder holds the bucket
    // with the modules' top-level path elements).
    let out = p.podman(&["exec", &container("s3", 1), "ls", "/data/modules"])?;
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let top = modules[0].path.split('/').next().unwrap_or_default();
    ensure!(
        listing.lines().any(|l| l.trim() == top),
        "MinIO's bucket holds {listing:?}, not {top}"
    );
    lap("s3 profile: prefill, catalog, verify", t);

    // One gateway stops, storage-svc restarts (the store is the volume) and
    // the upstream is gone: builds through the edge still work.
    let t = Instant::now();
    upstream.stop();
    p.podman(&["stop", "-t", "5", &g2])?;
    lap("gateway 2 stopped", t);
    p.podman(&["restart", &container("storage-svc", 1)])?;
    wait_healthy(&p, &container("storage-svc", 1), Duration::from_secs(60)).await?;
    lap("storage-svc restarted", t);
    let before = gateway_requests(&p, &g1)?;
    let prog = tmp.path().join("prog-after");
    write_program(&prog)?;
    let go = GoEnv::new(&edge)?;
    if let Err(e) = build_and_run_program(&go, &prog).await {
        bail!(
            "build through the edge with {g2} stopped: {e:#}\n{}",
            tails(&p, &names)
        );
    }
    lap("go build with gateway 2 stopped", t);
    // And every GET in a row of a stored version answers, whichever
    // replica is next in turn.
    for _ in 0..10 {
        let url = format!("{edge}/{PSEUDO}/@v/{PSEUDO_V}.info");
        let r = modmesh_tests::http::get(&url).await?;
        ensure!(
            r.status == 200,
            "{url} through the edge: {} {}\n{}",
            r.status,
            String::from_utf8_lossy(&r.body),
            tails(&p, &names)
        );
    }
    ensure!(
        gateway_requests(&p, &g1)? > before,
        "{g1} served none of the builds with {g2} stopped"
    );
    // The edge saw the stopped replica go (by its re-resolution and probe,
    // or a refused connection).
    let out = p.podman(&["logs", &container("edge", 1)])?;
    let edge_log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        edge_log.contains("replica left") || edge_log.contains("replica did not answer"),
        "the edge never noticed {g2} stopping:\n{edge_log}"
    );
    lap(
        "gateway 2 stopped, storage restarted, upstream stopped: go build and GETs through the edge",
        t,
    );
    drop(_down);
    lap("whole compose test", all);
    Ok(())
}
