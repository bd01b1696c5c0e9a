//! Fault injection: the mesh on loopback, its processes killed (SIGKILL) or
//! frozen (SIGSTOP) at chosen moments of a cold fetch, and clients that are
//! slow, half-open or speak the wrong protocol. Each case asserts an honest
//! answer in bounded time (502/503/504, or a closed connection when the
//! gateway itself dies; never 500, never a hang), nothing half-written
//! visible, no leftover process or directory, and recovery with the exact
//! bytes. Every case prints its figures as `[faults] <case>: <figure>`.

use anyhow::{anyhow, bail, Context, Result};
use modmesh_tests::fixtures::{self, sha256_file, ProxyDir};
use modmesh_tests::procs::Proc;
use modmesh_tests::server::{Answer, StaticServer};
use modmesh_tests::topology::{
    embedded_spec, restart_gateway, start_gateway, Mesh, Store, READY_TIMEOUT,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One case at a time: each starts processes and moves big files on a
/// small machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bound on any answer in these cases (the gateway's `Timeout` is set
/// to [`GATEWAY_TIMEOUT`]; the rest is slack for a loaded machine).
const ANSWER_BOUND: Duration = Duration::from_secs(40);
/// The gateway's `Timeout` in these cases, seconds.
const GATEWAY_TIMEOUT: &str = "30";

fn figure(case: &str, what: &str, d: Duration) {
    eprintln!("[faults] {case}: {what} {:.2} s", d.as_secs_f64());
}

fn signal(p: &Proc, s: Signal) -> Result<()> {
    kill(Pid::from_raw(p.pid() as i32), s).with_context(|| format!("{s} to {}", p.spec.label))
}

/// Processes whose process group is `pgid`, zombies left out.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.trim_start().to_string();
                    let f: Vec<&str> = rest.split(' ').collect();
                    Some(f.first()? != &"Z" && f.get(2)?.parse::<i32>().ok()? == pgid)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Polls `f` every 20 ms until it is `Some` or `within` passes.
async fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The outcome of one GET: status (None: the connection failed), sha256,
/// length and time taken.
#[derive(Debug)]
struct Got {
    status: Option<u16>,
    sha: String,
    len: u64,
    took: Duration,
    /// Why the request failed (shown by `Debug` in failure messages).
    #[allow(dead_code)]
    error: String,
}

async fn get(url: String) -> Got {
    let t = Instant::now();
    match tokio::time::timeout(ANSWER_BOUND, modmesh_tests::http::get_sha256(&url)).await {
        Ok(Ok((status, sha, len))) => Got {
            status: Some(status.as_u16()),
            sha,
            len,
            took: t.elapsed(),
            error: String::new(),
        },
        Ok(Err(e)) => Got {
            status: None,
            sha: String::new(),
            len: 0,
            took: t.elapsed(),
            error: format!("{e:#}"),
        },
        Err(_) => Got {
            status: None,
            sha: String::new(),
            len: 0,
            took: t.elapsed(),
            error: "no answer within the bound (a hang)".into(),
        },
    }
}

/// Asserts an honest failure: 502, 503 or 504 within the bound.
fn assert_upstream_fault(case: &str, g: &Got, logs: &str) -> Result<()> {
    match g.status {
        Some(502..=504) if g.took < ANSWER_BOUND => Ok(()),
        _ => bail!("{case}: want 502/503/504 within {ANSWER_BOUND:?}, got {g:?}\n{logs}"),
    }
}

/// Lets `storage` run in 1 ms slices once its save is near `at` bytes, and
/// returns (with the process frozen by SIGSTOP) once the temporary zip holds
/// at least `at` bytes.
async fn freeze_at(storage: &Proc, store: &Path, at: u64) -> Result<PathBuf> {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    // From the save's first bytes on, storage-svc runs in short steps: at
    // gigabytes a second, a poll between two steps could miss the mark and
    // the end alike.
    let started = Instant::now();
    let zip = loop {
        if let Some(z) = temporaries(store)
            .into_iter()
            .map(|d| d.join("source.zip"))
            .find(|z| z.exists())
        {
            break z;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the save did not start");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        signal(storage, Signal::SIGSTOP)?;
        // Let a stop reach every thread before the size is read.
        tokio::time::sleep(Duration::from_millis(2)).await;
        if size(&zip) >= at {
            return Ok(zip);
        }
        if Instant::now() > deadline {
            bail!("the save did not reach {at} bytes");
        }
        signal(storage, Signal::SIGCONT)?;
        // Short steps: storage-svc writes gigabytes a second, and the last
        // mark leaves only a few MiB before the end.
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// `url` asked while `frozen` is stopped (SIGSTOP) gets an honest upstream
/// fault; asked again once it runs (SIGCONT), it is served.
async fn frozen_then_thawed(case: &str, mesh: &Mesh, frozen: &Proc, url: String) -> Result<()> {
    signal(frozen, Signal::SIGSTOP)?;
    let got = get(url.clone()).await;
    signal(frozen, Signal::SIGCONT)?;
    assert_upstream_fault(case, &got, &mesh.log_tails(3000))?;
    figure(case, &format!("status {:?} in", got.status), got.took);
    let retry = get(url).await;
    assert_eq!(
        retry.status,
        Some(200),
        "{retry:?}\n{}",
        mesh.log_tails(3000)
    );
    figure(case, "retry after thaw served in", retry.took);
    Ok(())
}

/// Restarts a killed process with the same environment and address.
async fn restart(p: &mut Proc) -> Result<()> {
    let _ = p.try_exit();
    let spec = p.spec.clone();
    *p = Proc::spawn(spec)?;
    p.wait_listening(READY_TIMEOUT).await
}

/// The job directories under a fetcher's goget directory.
fn job_dirs(goget: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(goget)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("modmesh-job-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of the disk store's temporary directory.
fn temporaries(store: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(store.join(".modmesh-tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The mesh, its gateways restarted with `Timeout` = [`GATEWAY_TIMEOUT`].
/// Its fetchers run the go command (`FetcherMode=gocmd`, the path of
/// `direct` and VCS upstreams), whose processes and job directories are
/// what a killed fetcher could leave behind; the native fetcher keeps its
/// spool in an unnamed file, which dies with it.
async fn start_mesh(dir: &Path, store: &Store, upstream: &str, n: usize) -> Result<Mesh> {
    let mut mesh =
        Mesh::start_with_fetcher_env(dir, store, upstream, n, &[("ATHENS_FETCHER_MODE", "gocmd")])
            .await?;
    for g in &mut mesh.gateways {
        g.spec.set("ATHENS_TIMEOUT", GATEWAY_TIMEOUT);
        restart_gateway(g).await?;
    }
    Ok(mesh)
}

fn mesh_env(dir: &Path) -> Result<PathBuf> {
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    Ok(store)
}

/// Slow, half-open and malformed clients: a connection over
/// `MaxConnections` gets 503 at once, a request head not complete within
/// `ReadHeaderTimeout` (half sent, dribbled, or nothing) is closed, an
/// HTTP/0.9 request line gets 400, an HTTP/2 preface on the plain port is
/// served as HTTP/2 and closed once idle, and the gateway still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_malformed_clients_get_an_answer_or_are_closed() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    const CASE: &str = "slow-clients";
    let tmp = tempfile::tempdir()?;
    let proxy = fixtures::standard_proxy(tmp.path().join("upstream"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let mut spec = embedded_spec("gateway", tmp.path(), &Store::Memory, &upstream.url())?;
    spec.set("ATHENS_READ_HEADER_TIMEOUT", "2");
    spec.set("ATHENS_IDLE_TIMEOUT", "3");
    spec.set("ATHENS_MAX_CONNECTIONS", "40");
    let gw = start_gateway(spec).await?;
    let addr = gw.spec.addr.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 60 half-sent requests: 40 are taken and closed after the header
    // timeout, the other 20 are answered 503 at once.
    let t = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..60 {
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
        conns.push(s);
    }
    let mut refused = 0;
    let mut closed_at = Vec::new();
    let reads = conns.into_iter().map(|mut s| async move {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        (r.is_ok(), buf, Instant::now())
    });
    for (done, buf, at) in futures::future::join_all(reads).await {
        if !done {
            bail!("{CASE}: a half-open connection was still open 10 s later");
        }
        if buf.starts_with(b"HTTP/1.1 503") {
            refused += 1;
            assert!(at - t < Duration::from_secs(2), "503 not at once");
        } else {
            assert!(
                !buf.starts_with(b"HTTP/1.1 200"),
                "a half request was served"
            );
            closed_at.push(at - t);
        }
    }
    assert_eq!(refused, 20, "connections over MaxConnections=40 get 503");
    let slowest = closed_at.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(5),
        "half-open connections closed after {slowest:?} (ReadHeaderTimeout 2 s)"
    );
    figure(CASE, "40 half-open connections all closed after", slowest);

    // A request dribbled one byte every 300 ms is cut off, never served.
    let t = Instant::now();
    let mut s = TcpStream::connect(&addr).await?;
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut cut = false;
    for b in req.iter() {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if t.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "a dribbled request was served after {:?}",
        t.elapsed()
    );
    assert!(
        cut || t.elapsed() < Duration::from_secs(8),
        "dribbling went on for 8 s"
    );
    figure(CASE, "dribbled request cut off after", t.elapsed());

    // HTTP/0.9: 400 at once. Nothing sent: closed. HTTP/2 preface: served
    // as HTTP/2, closed once idle.
    for (what, bytes, within, want400) in [
        (
            "HTTP/0.9 request",
            &b"GET /healthz\r\n\r\n"[..],
            Duration::from_secs(2),
            true,
        ),
        ("empty request", &b""[..], Duration::from_secs(4), false),
        (
            "HTTP/2 preface",
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            Duration::from_secs(6),
            false,
        ),
    ] {
        let t = Instant::now();
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(bytes).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .map_err(|_| anyhow!("{CASE}: {what}: still open after 10 s"))??;
        let took = t.elapsed();
        if want400 {
            assert!(
                buf.starts_with(b"HTTP/1.1 400"),
                "{what}: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        assert!(took < within, "{what}: closed after {took:?}");
        figure(CASE, &format!("{what} answered and closed after"), took);
    }

    let ok = modmesh_tests::http::get(&format!("{}/healthz", gw.url())).await?;
    assert_eq!(ok.status, 200);
    Ok(())
}

/// fetcher-svc killed mid-download (its go waiting on the upstream): the
/// request gets 502/503/504, the go process dies with it, the job directory
/// is removed when the fetcher restarts, and a retry serves the exact bytes.
/// The same for a frozen fetcher (SIGSTOP): the gateway's deadline answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fetcher_leaves_no_go_and_no_job_dir() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    const CASE: &str = "fetcher-killed";
    let tmp = tempfile::tempdir()?;
    let proxy = fixtures::standard_proxy(tmp.path().join("upstream"))?;
    let want = sha256_file(&proxy.file(fixtures::BASE, "v1.0.0", "zip"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let store = mesh_env(tmp.path())?;
    let mut mesh = start_mesh(tmp.path(), &Store::Disk(store), &upstream.url(), 1).await?;
    let goget = tmp.path().join("fetcher-1/goget");
    let url = format!(
        "{}{}",
        mesh.gateways[0].url(),
        fixtures::url_path(fixtures::BASE, "v1.0.0", "zip")
    );

    upstream.set_answer(Answer::Hang);
    let inflight = tokio::spawn(get(url.clone()));
    let job = wait_for(Duration::from_secs(20), "a go run started", || {
        job_dirs(&goget)
            .into_iter()
            .find(|d| d.join("pgid").is_file())
    })
    .await?;
    let pgid: i32 = std::fs::read_to_string(job.join("pgid"))?.trim().parse()?;
    assert!(
        modmesh_tests::procs::running(pgid as u32),
        "the go run is alive before the kill"
    );
    signal(&mesh.fetchers[0], Signal::SIGKILL)?;
    let killed = Instant::now();
    let got = inflight.await?;
    assert_upstream_fault(CASE, &got, &mesh.log_tails(3000))?;
    figure(CASE, "in-flight request answered after", killed.elapsed());
    figure(CASE, &format!("status {:?} in", got.status), got.took);
    wait_for(
        Duration::from_secs(3),
        "the go run dies with its fetcher",
        || group_members(pgid).is_empty().then_some(()),
    )
    .await?;
    figure(CASE, "go process group gone after", killed.elapsed());
    assert!(job.exists(), "nobody removed the job directory yet");
    let restarted = Instant::now();
    restart(&mut mesh.fetchers[0]).await?;
    wait_for(
        Duration::from_secs(5),
        "the dead fetcher's job dir removed",
        || (!job.exists()).then_some(()),
    )
    .await?;
    figure(
        CASE,
        "job directory removed after restart in",
        restarted.elapsed(),
    );

    upstream.set_answer(Answer::Files);
    let retry = get(url.clone()).await;
    assert_eq!(
        retry.status,
        Some(200),
        "{retry:?}\n{}",
        mesh.log_tails(3000)
    );
    assert_eq!(retry.sha, want);
    figure(CASE, "retry served in", retry.took);

    // Frozen fetcher: the gateway's deadline answers; thawed, it serves.
    const FROZEN: &str = "fetcher-frozen";
    let url = format!(
        "{}{}",
        mesh.gateways[0].url(),
        fixtures::url_path(fixtures::MIXED, fixtures::MIXED_V, "zip")
    );
    frozen_then_thawed(FROZEN, &mesh, &mesh.fetchers[0], url).await?;
    mesh.stop()
}

/// storage-svc killed mid-save of a cold 200 MiB zip, at half and at 99 %
/// of the bytes, and of an 8 MiB zip at its first bytes: the request gets 502/503/504, nothing is visible, the
/// temporary directory is removed when storage-svc restarts, and a retry
/// serves the exact bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_storage_mid_save_leaves_nothing_visible() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    const SIZE: u64 = 200 << 20;
    const MODULE: &str = "example.com/big";
    let tmp = tempfile::tempdir()?;
    let proxy = ProxyDir::new(tmp.path().join("upstream"))?;
    let mut wants = Vec::new();
    for (v, size) in [("v1.0.0", SIZE), ("v1.0.1", SIZE), ("v0.9.0", 8 << 20)] {
        let p = proxy.clone();
        let zip = tokio::task::spawn_blocking(move || p.add_big(MODULE, v, size)).await??;
        wants.push((v, sha256_file(&zip)?, std::fs::metadata(&zip)?.len()));
    }
    let upstream = StaticServer::start(proxy.root())?;
    let store = mesh_env(tmp.path())?;
    let mut mesh = start_mesh(tmp.path(), &Store::Disk(store.clone()), &upstream.url(), 1).await?;

    for ((version, want, zip_len), frac) in wants.into_iter().zip([0.5f64, 0.99, 0.0]) {
        let case = if frac == 0.0 {
            "storage-killed-at-first-bytes-8MiB".to_string()
        } else {
            format!("storage-killed-at-{}%-200MiB", (frac * 100.0) as u32)
        };
        let url = format!(
            "{}{}",
            mesh.gateways[0].url(),
            fixtures::url_path(MODULE, version, "zip")
        );
        let inflight = tokio::spawn(get(url.clone()));
        let at = ((zip_len as f64 * frac) as u64).max(1);
        let tmp_zip = freeze_at(&mesh.storage, &store, at).await?;
        // storage-svc is frozen with the save at its mark: kill it there.
        signal(&mesh.storage, Signal::SIGKILL)?;
        let killed = Instant::now();
        let saved = std::fs::metadata(&tmp_zip).map(|m| m.len()).unwrap_or(0);
        assert!(
            saved < zip_len,
            "{case}: the save was complete before the kill"
        );
        let got = inflight.await?;
        assert_upstream_fault(&case, &got, &mesh.log_tails(3000))?;
        figure(&case, "in-flight request answered after", killed.elapsed());
        let vdir = store.join(MODULE).join(version);
        assert!(!vdir.exists(), "{case}: a half-written version is visible");
        let tmp_dir = tmp_zip.parent().unwrap().to_path_buf();
        assert!(tmp_dir.exists(), "the crashed save's temporary is there");
        let restarted = Instant::now();
        restart(&mut mesh.storage).await?;
        wait_for(
            Duration::from_secs(5),
            "the crashed save's temporary removed",
            || (!tmp_dir.exists()).then_some(()),
        )
        .await?;
        figure(
            &case,
            "leftover removed after restart in",
            restarted.elapsed(),
        );
        let retry = get(url).await;
        assert_eq!(
            retry.status,
            Some(200),
            "{case}: {retry:?}\n{}",
            mesh.log_tails(3000)
        );
        assert_eq!((retry.sha.as_str(), retry.len), (want.as_str(), zip_len));
        figure(&case, "retry (cold fetch) served in", retry.took);
    }

    // Mid-serve: a client reading the stored 200 MiB zip slowly; storage-svc
    // killed after the first MiB. The answer is cut short (the connection
    // closes before Content-Length bytes), never completed with other bytes.
    const SERVE: &str = "storage-killed-mid-serve";
    let path = fixtures::url_path(MODULE, "v1.0.0", "zip");
    let mut c = TcpStream::connect(&mesh.gateways[0].spec.addr).await?;
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = vec![0u8; 1 << 20];
    c.read_exact(&mut buf).await?;
    assert!(buf.starts_with(b"HTTP/1.1 200"), "{SERVE}: not a 200");
    signal(&mesh.storage, Signal::SIGKILL)?;
    let killed = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(ANSWER_BOUND, c.read_to_end(&mut rest))
        .await
        .map_err(|_| anyhow!("{SERVE}: the connection hangs after the kill"))?
        .ok();
    let got = (buf.len() + rest.len()) as u64;
    assert!(got < SIZE, "{SERVE}: {got} bytes arrived after the kill");
    figure(SERVE, "client connection closed after", killed.elapsed());
    restart(&mut mesh.storage).await?;

    // storage-svc frozen: a metadata request gets 502/503/504 within the
    // call deadline; thawed, the mesh serves again.
    const FROZEN: &str = "storage-frozen";
    let url = format!(
        "{}{}",
        mesh.gateways[0].url(),
        fixtures::url_path(MODULE, "v1.0.0", "info")
    );
    frozen_then_thawed(FROZEN, &mesh, &mesh.storage, url).await?;
    mesh.stop()
}

/// A gateway killed while it holds the single-flight lock: another gateway
/// asking for the same version completes the fetch once the lease expires
/// (within `LockTTL` plus one fetch). lock-svc killed mid-fetch: the
/// request gets 502/503/504 and, restarted, the retry succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lock_holder_blocks_its_version_only_for_the_lease_ttl() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    const CASE: &str = "gateway-killed-holding-lock";
    let tmp = tempfile::tempdir()?;
    let proxy = fixtures::standard_proxy(tmp.path().join("upstream"))?;
    let want = sha256_file(&proxy.file(fixtures::BASE, "v1.0.0", "zip"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let store = mesh_env(tmp.path())?;
    let mut mesh = start_mesh(tmp.path(), &Store::Disk(store), &upstream.url(), 2).await?;
    let path = fixtures::url_path(fixtures::BASE, "v1.0.0", "zip");
    let goget = tmp.path().join("fetcher-1/goget");

    upstream.set_answer(Answer::Hang);
    let a = mesh.gateways[0].url();
    let inflight = tokio::spawn(get(format!("{a}{path}")));
    wait_for(Duration::from_secs(20), "gateway-a's fetch started", || {
        job_dirs(&goget).first().cloned()
    })
    .await?;
    signal(&mesh.gateways[0], Signal::SIGKILL)?;
    let killed = Instant::now();
    let got = inflight.await?;
    assert!(
        got.status.is_none() || matches!(got.status, Some(502..=504)),
        "the killed gateway's client: {got:?}"
    );
    upstream.set_answer(Answer::Files);
    let retry = get(format!("{}{path}", mesh.gateways[1].url())).await;
    assert_eq!(
        retry.status,
        Some(200),
        "{retry:?}\n{}",
        mesh.log_tails(3000)
    );
    assert_eq!(retry.sha, want);
    let recovered = killed.elapsed();
    figure(CASE, "another gateway served the version after", recovered);
    // LockTTL (5 s by default) plus one (small) fetch, with slack.
    assert!(
        recovered < Duration::from_secs(5 + 3),
        "recovery took {recovered:?}"
    );

    // lock-svc killed while gateway-b fetches: an honest failure, and a
    // retry once it is back.
    const LOCK: &str = "lock-svc-killed";
    let url = format!(
        "{}{}",
        mesh.gateways[1].url(),
        fixtures::url_path(fixtures::MIXED, fixtures::MIXED_V, "zip")
    );
    upstream.set_answer(Answer::Hang);
    let inflight = tokio::spawn(get(url.clone()));
    wait_for(Duration::from_secs(20), "gateway-b's fetch started", || {
        job_dirs(&tmp.path().join("fetcher-2/goget"))
            .first()
            .cloned()
    })
    .await?;
    signal(&mesh.lock, Signal::SIGKILL)?;
    let killed = Instant::now();
    let got = inflight.await?;
    assert_upstream_fault(LOCK, &got, &mesh.log_tails(3000))?;
    figure(LOCK, "in-flight request answered after", killed.elapsed());
    upstream.set_answer(Answer::Files);
    let restarted = Instant::now();
    restart(&mut mesh.lock).await?;
    let retry = get(url).await;
    assert_eq!(
        retry.status,
        Some(200),
        "{retry:?}\n{}",
        mesh.log_tails(3000)
    );
    figure(LOCK, "retry after restart served in", restarted.elapsed());

    // lock-svc frozen: a cold request gets 502/503/504 within the gateway's
    // deadline; thawed, the retry succeeds.
    const FROZEN: &str = "lock-svc-frozen";
    let url = format!(
        "{}{}",
        mesh.gateways[1].url(),
        fixtures::url_path(fixtures::LEGACY, fixtures::LEGACY_V, "zip")
    );
    frozen_then_thawed(FROZEN, &mesh, &mesh.lock, url).await?;
    mesh.gateways.remove(0);
    mesh.stop()
}

/// A storage that refuses connections (a closed port): the gateway answers
/// 502/503 at once, and `/readyz` says it is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_refusing_connections_gets_an_honest_answer() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    const CASE: &str = "storage-refuses";
    let tmp = tempfile::tempdir()?;
    let proxy = fixtures::standard_proxy(tmp.path().join("upstream"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let mut spec = embedded_spec("gateway", tmp.path(), &Store::Memory, &upstream.url())?;
    let closed = modmesh_tests::procs::free_addr();
    spec.set("ATHENS_STORAGE_SVC_URL", format!("http://{closed}"));
    let gw = Proc::spawn(spec)?;
    let mut gw = gw;
    gw.wait_listening(READY_TIMEOUT).await?;
    let ready = modmesh_tests::http::get(&format!("{}/readyz", gw.url())).await?;
    assert_ne!(ready.status, 200, "ready without its storage");
    for ext in ["info", "mod", "zip"] {
        let got = get(format!(
            "{}{}",
            gw.url(),
            fixtures::url_path(fixtures::BASE, "v1.0.0", ext)
        ))
        .await;
        assert_upstream_fault(CASE, &got, &gw.log_tail(3000))?;
        assert!(got.took < Duration::from_secs(10), "{got:?}");
        figure(
            CASE,
            &format!(".{ext}: status {:?} in", got.status),
            got.took,
        );
    }
    gw.stop()
}

/// A tmpfs mounted at a fresh directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Bytes in use, as the file system counts them.
    fn used(&self) -> Result<u64> {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(&self.0)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("df: {text}"))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The disk filling up during a save (a 64 MiB tmpfs as the store, a
/// 100 MiB zip): the request gets 502/503/504 (never 500), nothing is visible, the space is
/// given back, and a module that fits is still saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_save_cleanly() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    const CASE: &str = "disk-full";
    const MODULE: &str = "example.com/big";
    let tmp = tempfile::tempdir()?;
    let Some(fs) = Tmpfs::mount(&tmp.path().join("store"), "64m") else {
        modmesh_test_support::skip(
            "cannot mount a tmpfs (needs root) for the full-disk case",
            "scripts/test.sh as root",
        );
        return Ok(());
    };
    let proxy = fixtures::standard_proxy(tmp.path().join("upstream"))?;
    let p = proxy.clone();
    tokio::task::spawn_blocking(move || p.add_big(MODULE, "v1.0.0", 100 << 20)).await??;
    let want = sha256_file(&proxy.file(fixtures::BASE, "v1.0.0", "zip"))?;
    let upstream = StaticServer::start(proxy.root())?;
    let mut mesh = start_mesh(tmp.path(), &Store::Disk(fs.0.clone()), &upstream.url(), 1).await?;
    let before = fs.used()?;
    let got = get(format!(
        "{}{}",
        mesh.gateways[0].url(),
        fixtures::url_path(MODULE, "v1.0.0", "zip")
    ))
    .await;
    assert!(
        matches!(got.status, Some(502..=504)),
        "{CASE}: want 502/503/504, got {got:?}\n{}",
        mesh.log_tails(3000)
    );
    figure(CASE, &format!("status {:?} in", got.status), got.took);
    assert!(
        !fs.0.join(MODULE).join("v1.0.0").exists(),
        "nothing visible"
    );
    let t = Instant::now();
    wait_for(Duration::from_secs(5), "space given back", || {
        fs.used().ok().filter(|u| *u <= before + (1 << 20))
    })
    .await?;
    figure(CASE, "space given back after", t.elapsed() + got.took);
    let small = get(format!(
        "{}{}",
        mesh.gateways[0].url(),
        fixtures::url_path(fixtures::BASE, "v1.0.0", "zip")
    ))
    .await;
    assert_eq!(small.status, Some(200), "{small:?}");
    assert_eq!(small.sha, want);
    mesh.stop()
}

/// Watches a disk store's published version directories from a thread:
/// each must, whenever it exists, hold its whole zip (`len` bytes), its
/// `.mod` and `.info`. Violations are collected for [`Watch::finish`].
struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Watch {
    fn start(vdirs: Vec<(PathBuf, u64)>) -> Watch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for (dir, len) in &vdirs {
                    if !dir.exists() {
                        continue;
                    }
                    // The directory is published by one rename: once it is
                    // there, all of it is.
                    let zip = std::fs::metadata(dir.join("source.zip")).map(|m| m.len());
                    let entries = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
                    if zip.as_ref().ok() != Some(len) || entries < 3 {
                        bad.push(format!(
                            "{}: visible with zip {zip:?} (want {len}), {entries} files",
                            dir.display()
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            bad
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let bad = self
            .thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        if bad.is_empty() {
            Ok(())
        } else {
            bail!("half-written versions seen: {:?}", &bad[..bad.len().min(5)])
        }
    }
}

/// Reads an HTTP/1.1 answer head from `c`: (status, Content-Length, the
/// body bytes read past the head).
async fn read_head(c: &mut TcpStream) -> Result<(u16, u64, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("no status line: {head}"))?;
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| anyhow!("no Content-Length: {head}"))?;
            return Ok((status, len, buf[end + 4..].to_vec()));
        }
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the answer head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The gateway's own faults, with two gateways over one storage and lock:
/// 1. gateway-a frozen (SIGSTOP) while it holds the lock of a slow cold
///    fetch: gateway-b's request for the same version is served within
///    `LockTTL` plus one fetch; thawed, gateway-a's client gets 200 with the
///    exact bytes or 502/503/504.
/// 2. gateway-a killed (SIGKILL) while its cold 200 MiB zip is being saved:
///    its client sees a dropped connection; the fetcher's go run and job
///    directory are gone within a bound; gateway-a restarted serves the
///    exact bytes within `LockTTL` plus one fetch.
/// 3. gateway-a frozen while it serves the stored 200 MiB zip: the client's
///    read stalls, gateway-b serves meanwhile; thawed, the transfer
///    completes with the exact bytes.
///
/// All along, no version directory is visible half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_or_killed_gateway_leaves_the_mesh_serving() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    const SIZE: u64 = 200 << 20;
    const MODULE: &str = "example.com/big";
    // LockTTL (the default) and the fetch call's deadline, seconds.
    const TTL: u64 = 5;
    const FETCH_DEADLINE: u64 = 20;
    let tmp = tempfile::tempdir()?;
    let proxy = fixtures::standard_proxy(tmp.path().join("upstream"))?;
    let small = proxy.file(fixtures::BASE, "v1.0.0", "zip");
    let (small_sha, small_len) = (sha256_file(&small)?, std::fs::metadata(&small)?.len());
    let p = proxy.clone();
    let big = tokio::task::spawn_blocking(move || p.add_big(MODULE, "v1.0.0", SIZE)).await??;
    let (big_sha, big_len) = (sha256_file(&big)?, std::fs::metadata(&big)?.len());
    let upstream = StaticServer::start(proxy.root())?;
    let store = mesh_env(tmp.path())?;
    let mut mesh = start_mesh(tmp.path(), &Store::Disk(store.clone()), &upstream.url(), 2).await?;
    let watch = Watch::start(vec![
        (store.join(fixtures::BASE).join("v1.0.0"), small_len),
        (store.join(MODULE).join("v1.0.0"), big_len),
    ]);
    let goget = tmp.path().join("fetcher-1/goget");
    let (a, b) = (mesh.gateways[0].url(), mesh.gateways[1].url());

    // 1. gateway-a frozen holding the lock of a cold fetch hanging on the
    // upstream.
    const FROZEN: &str = "gateway-frozen-holding-lock";
    let path = fixtures::url_path(fixtures::BASE, "v1.0.0", "zip");
    upstream.set_answer(Answer::Hang);
    let inflight = tokio::spawn(get(format!("{a}{path}")));
    wait_for(Duration::from_secs(20), "gateway-a's fetch started", || {
        job_dirs(&goget).first().cloned()
    })
    .await?;
    signal(&mesh.gateways[0], Signal::SIGSTOP)?;
    let frozen = Instant::now();
    upstream.set_answer(Answer::Files);
    let other = get(format!("{b}{path}")).await;
    let served = frozen.elapsed();
    signal(&mesh.gateways[0], Signal::SIGCONT)?;
    let thawed = Instant::now();
    assert_eq!(
        other.status,
        Some(200),
        "{FROZEN}: gateway-b: {other:?}\n{}",
        mesh.log_tails(3000)
    );
    assert_eq!(
        (other.sha.as_str(), other.len),
        (small_sha.as_str(), small_len)
    );
    figure(FROZEN, "gateway-b served the version after", served);
    assert!(
        served < Duration::from_secs(TTL + 5),
        "{FROZEN}: gateway-b took {served:?} (LockTTL {TTL} s plus one small fetch)"
    );
    let own = inflight.await?;
    match own.status {
        Some(200) => assert_eq!(
            (own.sha.as_str(), own.len),
            (small_sha.as_str(), small_len),
            "{FROZEN}: gateway-a's 200 with other bytes"
        ),
        Some(502..=504) => {}
        _ => bail!(
            "{FROZEN}: gateway-a's own client after the thaw: {own:?}\n{}",
            mesh.log_tails(3000)
        ),
    }
    figure(
        FROZEN,
        &format!(
            "gateway-a's own client got {:?}, after the thaw in",
            own.status
        ),
        thawed.elapsed(),
    );

    // The frozen holder's go run (hanging on the upstream) is gone too.
    wait_for(
        Duration::from_secs(FETCH_DEADLINE + 10),
        "gateway-a's abandoned job directory removed",
        || job_dirs(&goget).is_empty().then_some(()),
    )
    .await?;
    figure(
        FROZEN,
        "its job directory gone after the thaw in",
        thawed.elapsed(),
    );

    // 2. gateway-a killed while its cold 200 MiB zip is being saved.
    const KILLED: &str = "gateway-killed-mid-download";
    let path = fixtures::url_path(MODULE, "v1.0.0", "zip");
    let inflight = tokio::spawn(get(format!("{a}{path}")));
    let job = wait_for(
        Duration::from_secs(60),
        "gateway-a's go run started",
        || {
            job_dirs(&goget)
                .into_iter()
                .find(|d| d.join("pgid").is_file())
        },
    )
    .await?;
    let pgid: i32 = std::fs::read_to_string(job.join("pgid"))?.trim().parse()?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let tmp_zip = wait_for(Duration::from_secs(120), "the save reaches 50 MiB", || {
        temporaries(&store)
            .into_iter()
            .map(|d| d.join("source.zip"))
            .find(|z| size(z) >= 50 << 20)
    })
    .await?;
    signal(&mesh.gateways[0], Signal::SIGKILL)?;
    let killed = Instant::now();
    let saved = size(&tmp_zip);
    let got = inflight.await?;
    assert!(
        got.status.is_none(),
        "{KILLED}: the killed gateway's client got an answer: {got:?}"
    );
    figure(
        KILLED,
        &format!(
            "killed at {} MiB saved; client's connection dropped after",
            saved >> 20
        ),
        killed.elapsed(),
    );
    let _ = mesh.gateways[0].try_exit();
    // The fetch either completes (and is published whole) or is abandoned;
    // either way the go run and its job directory go away.
    wait_for(
        Duration::from_secs(FETCH_DEADLINE + 10),
        "the go run and job directory gone",
        || (group_members(pgid).is_empty() && !job.exists()).then_some(()),
    )
    .await
    .with_context(|| mesh.log_tails(3000))?;
    figure(
        KILLED,
        "go run and job directory gone after",
        killed.elapsed(),
    );
    restart(&mut mesh.gateways[0]).await?;
    let retry = get(format!("{a}{path}")).await;
    assert_eq!(
        retry.status,
        Some(200),
        "{KILLED}: {retry:?}\n{}",
        mesh.log_tails(3000)
    );
    assert_eq!((retry.sha.as_str(), retry.len), (big_sha.as_str(), big_len));
    let recovered = killed.elapsed();
    figure(
        KILLED,
        "restarted gateway-a served the exact bytes after",
        recovered,
    );
    assert!(
        recovered < Duration::from_secs(TTL + FETCH_DEADLINE + 10),
        "{KILLED}: recovery took {recovered:?}"
    );
    wait_for(Duration::from_secs(15), "no temporary left", || {
        temporaries(&store).is_empty().then_some(())
    })
    .await?;

    // 3. gateway-a frozen mid-serve of the stored zip.
    const SERVE: &str = "gateway-frozen-mid-serve";
    let mut c = TcpStream::connect(&mesh.gateways[0].spec.addr).await?;
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let (status, len, first) = read_head(&mut c).await?;
    assert_eq!((status, len), (200, big_len), "{SERVE}");
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, &first);
    let mut read = first.len() as u64;
    let mut chunk = vec![0u8; 1 << 20];
    while read < 4 << 20 {
        let n = c.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "{SERVE}: closed at {read} bytes");
        sha2::Digest::update(&mut h, &chunk[..n]);
        read += n as u64;
    }
    signal(&mesh.gateways[0], Signal::SIGSTOP)?;
    let frozen = Instant::now();
    // Drain what the socket buffers hold; then the read stalls.
    let mut stalled = false;
    while frozen.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(1), c.read(&mut chunk)).await {
            Err(_) => {
                stalled = true;
                break;
            }
            Ok(n) => {
                let n = n?;
                anyhow::ensure!(n > 0, "{SERVE}: closed while frozen at {read} bytes");
                sha2::Digest::update(&mut h, &chunk[..n]);
                read += n as u64;
            }
        }
    }
    assert!(stalled, "{SERVE}: bytes kept coming from a frozen gateway");
    assert!(read < big_len, "{SERVE}: all sent before the freeze");
    let other = get(format!("{b}{path}")).await;
    assert_eq!(other.status, Some(200), "{SERVE}: gateway-b: {other:?}");
    assert_eq!((other.sha.as_str(), other.len), (big_sha.as_str(), big_len));
    figure(SERVE, "gateway-b served the zip meanwhile in", other.took);
    signal(&mesh.gateways[0], Signal::SIGCONT)?;
    let thawed = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        while read < big_len {
            let n = c.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut h, &chunk[..n]);
            read += n as u64;
        }
        anyhow::Ok(())
    })
    .await;
    anyhow::ensure!(rest.is_ok(), "{SERVE}: the transfer hangs after the thaw");
    let sha = hex_lower(&sha2::Digest::finalize(h));
    // Frozen for less than IdleTimeout (60 s): the transfer completes.
    assert_eq!(
        (read, sha.as_str()),
        (big_len, big_sha.as_str()),
        "{SERVE}: after the thaw ({:?})",
        rest
    );
    figure(SERVE, "frozen for", thawed - frozen);
    figure(
        SERVE,
        "after the thaw the transfer completed in",
        thawed.elapsed(),
    );

    watch.finish()?;
    mesh.stop()
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
