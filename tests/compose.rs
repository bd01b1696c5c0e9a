//! The repository's docker-compose.yml brought up for real under podman
//! (podman-compose), with two gateways and two fetchers, and the real go
//! command building a program through a published gateway port.
//!
//! Without systemd, a registry or /etc changes: podman is configured by
//! files under a work folder (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`);
//! the `debian:bookworm-slim` base is made with debootstrap (with this
//! machine's CA certificates) and `podman import`, and a `golang:1-bookworm`
//! stand-in from the machine's Go tree, both kept for the next run (keyed by
//! a hash of what they are made of); the image is built from the
//! repository's Dockerfile with `BINARIES=prebuilt` and the binaries of this
//! build. Everything the test creates (containers, volume, network) is
//! removed at the end; the images stay.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use modmesh_tests::fixtures::{standard_proxy, write_program};
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
        let _ = self
            .0
            .podman(&["volume", "rm", "-f", &format!("{PROJECT}_modules")]);
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

/// How many log lines of a container belong to gRPC calls of the Fetcher
/// service (each call logs one or more, all carrying its path).
fn fetcher_calls(p: &Podman, name: &str) -> Result<usize> {
    let out = p.podman(&["logs", name])?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok(text.matches("/modmesh.v1.Fetcher/").count())
}

/// `http://127.0.0.1:<port>` where `name`'s port 3000 is published.
fn published(p: &Podman, name: &str) -> Result<String> {
    let out = p.podman(&["port", name, "3000"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text.lines().next().unwrap_or_default().trim();
    ensure!(
        addr.starts_with("127.0.0.1:"),
        "{name} published on {addr:?}"
    );
    Ok(format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_mesh_under_podman() -> Result<()> {
    for prog in ["podman", "podman-compose", "debootstrap", "runc"] {
        if modmesh_test_support::find_program(prog).is_none() {
            modmesh_test_support::skip(&format!("{prog} is not installed"), DEPS);
            return Ok(());
        }
    }
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
    mesh_image(&p)?;

    // The upstream, where containers reach it (the host, through the bridge).
    let tmp = tempfile::tempdir()?;
    standard_proxy(tmp.path().join("upstream"))?;
    let mut upstream = StaticServer::start_on(&tmp.path().join("upstream"), "0.0.0.0:0")?;
    let upstream_env = format!(
        "GOPROXY=http://host.containers.internal:{};GOSUMDB=off",
        upstream.addr().port()
    );
    let env = [("ATHENS_GO_BINARY_ENV_VARS", upstream_env.as_str())];
    // Leftovers of an earlier run that was killed, then ours on drop.
    drop(Teardown(&p));
    let _down = Teardown(&p);
    let t = Instant::now();
    let up = p.compose(
        &[
            "up",
            "-d",
            "storage-svc",
            "lock-svc",
            "fetcher-svc",
            "gateway",
        ],
        &env,
    )?;
    lap("compose up", t);
    let t = Instant::now();
    let names = [
        container("storage-svc", 1),
        container("lock-svc", 1),
        container("fetcher-svc", 1),
        container("fetcher-svc", 2),
        container("gateway", 1),
        container("gateway", 2),
    ];
    for n in &names {
        wait_healthy(&p, n, Duration::from_secs(90)).await?;
    }
    lap("all healthy", t);

    // The go command through the first published gateway port.
    let t = Instant::now();
    let gw1 = published(&p, &container("gateway", 1))?;
    let gw2 = published(&p, &container("gateway", 2))?;
    ensure!(gw1 != gw2, "both gateways on {gw1}");
    let prog = tmp.path().join("prog");
    write_program(&prog)?;
    let go = GoEnv::new(&gw1)?;
    build_and_run_program(&go, &prog).await?;
    lap("go build through gateway 1", t);
    ensure!(
        upstream.counts().keys().any(|k| k.ends_with(".zip")),
        "the upstream served no zip: {:?}",
        upstream.counts()
    );

    // Both fetcher replicas did work (more calls, each for a module not
    // asked before, if the build's few calls all went to one).
    let (f1, f2) = (container("fetcher-svc", 1), container("fetcher-svc", 2));
    let mut calls = (fetcher_calls(&p, &f1)?, fetcher_calls(&p, &f2)?);
    for i in 0..40 {
        if calls.0 > 0 && calls.1 > 0 {
            break;
        }
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        // A module nobody asked for: no cached answer, a fetcher is asked.
        let _ = modmesh_tests::http::get(&format!("{gw}/example.com/probe{i}/@v/list")).await;
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

    // The store survives a restart of storage-svc (the volume): the build
    // works again, through the other gateway, with the upstream gone.
    let t = Instant::now();
    upstream.stop();
    p.podman(&["restart", &container("storage-svc", 1)])?;
    wait_healthy(&p, &container("storage-svc", 1), Duration::from_secs(60)).await?;
    let prog2 = tmp.path().join("prog2");
    write_program(&prog2)?;
    let go2 = GoEnv::new(&gw2)?;
    build_and_run_program(&go2, &prog2)
        .await
        .context("build from the restarted store with the upstream stopped")?;
    lap(
        "storage restart + go build through gateway 2 (upstream stopped)",
        t,
    );

    // The s3 profile's services are in the file, and left out of a plain
    // `up` (podman-compose 1.0.3 has no `config` nor `--profile`; docker
    // compose starts them with `--profile s3`).
    let up_said = String::from_utf8_lossy(&up.stdout).to_string();
    ensure!(
        up_said.contains("excluding")
            && up_said.contains("'s3'")
            && up_said.contains("storage-svc-s3"),
        "the s3 profile's services were not excluded from `up`"
    );
    for c in [container("s3", 1), container("storage-svc-s3", 1)] {
        ensure!(
            p.podman(&["container", "exists", &c]).is_err(),
            "{c} was started without its profile"
        );
    }
    drop(_down);
    lap("whole compose test", all);
    Ok(())
}
