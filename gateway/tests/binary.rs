//! The `gateway` binary itself: embedded services reachable over gRPC for
//! internal clients, configuration errors, and the shutdown timeout.

use modmesh_storage::client::StorageClient;
use modmesh_storage::Storage;
use modmesh_tests::fixtures;
use modmesh_tests::procs::free_port;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("ATHENS_LOG_FORMAT", "json")
        .stdin(Stdio::null());
    cmd
}

async fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest_get(&format!("{base}/readyz")).await {
            if r.0 == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{base} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal GET over a raw TCP stream (status, body).
async fn reqwest_get(url: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_storage_answers_metadata_over_grpc() {
    let upstream = tempfile::tempdir().unwrap();
    fixtures::standard_proxy(upstream.path()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (http, grpc) = (free_port(), free_port());
    let mut child = gateway()
        .env("ATHENS_PORT", format!("127.0.0.1:{http}"))
        .env("ATHENS_STORAGE_SVC_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("ATHENS_GOGET_DIR", work.path())
        .env(
            "ATHENS_GO_BINARY_ENV_VARS",
            format!("GOPROXY=file://{};GOSUMDB=off", upstream.path().display()),
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http}");
    wait_ready(&base).await;
    for (m, v) in [
        (fixtures::BASE, "v1.0.0"),
        (fixtures::MIXED, fixtures::MIXED_V),
    ] {
        let (status, body) = reqwest_get(&format!("{base}{}", fixtures::url_path(m, v, "zip")))
            .await
            .unwrap();
        assert_eq!(status, 200, "{m}@{v}: {body}");
    }

    // An internal client reads module metadata from the gateway's own storage.
    let storage = StorageClient::new(&format!("http://127.0.0.1:{grpc}")).unwrap();
    let page = storage.catalog(None, 10, "").await.unwrap();
    let got: Vec<String> = page.entries.iter().map(|c| c.to_string()).collect();
    // Catalog order is by module path (bytewise), then version.
    assert_eq!(
        got,
        [
            format!("{}@{}", fixtures::MIXED, fixtures::MIXED_V),
            format!("{}@v1.0.0", fixtures::BASE),
        ]
    );
    assert_eq!(page.next_page_token, None);
    let module = modmesh_proto::ModulePath::new(fixtures::BASE).unwrap();
    assert_eq!(storage.list(&module).await.unwrap(), ["v1.0.0"]);
    let stat = storage
        .stat(&modmesh_proto::Coordinates::new(fixtures::BASE, "v1.0.0").unwrap())
        .await
        .unwrap();
    let zip = std::fs::read(fixtures::ProxyDir::new(upstream.path()).unwrap().file(
        fixtures::BASE,
        "v1.0.0",
        "zip",
    ))
    .unwrap();
    assert_eq!(stat.zip_size, zip.len() as u64);
    assert!(
        stat.zip_hash.as_deref().unwrap_or("").starts_with("h1:"),
        "{stat:?}"
    );
    assert!(stat.stored_at_unix_ms > 0);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_config_error_names_the_key_and_exits_2() {
    for (key, value, named) in [
        ("ATHENS_STORAGE_TYPE", "floppy", "StorageType"),
        ("ATHENS_GOGET_WORKERS", "many", "ATHENS_GOGET_WORKERS"),
        ("ATHENS_PORT", "not-a-port", "Port"),
        ("ATHENS_STORAGE_SVC_URL", "ftp://x", "StorageSvcURL"),
    ] {
        let out = gateway().env(key, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{key}={value}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    // A tier disk folder that cannot be made (below a regular file).
    let plain = dir.path().join("plain-file");
    std::fs::write(&plain, "").unwrap();
    let out = gateway()
        .env("ATHENS_TIER_DISK_PATH", plain.join("tier"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Tier.DiskPath"), "{err}");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "Timeout = \"soon\"\n").unwrap();
    let out = gateway().arg("-config_file").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Timeout"));
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_timeout_bounds_a_stuck_request() {
    // An upstream that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let work = tempfile::tempdir().unwrap();
    let http = free_port();
    let mut child = gateway()
        .env("ATHENS_PORT", format!("127.0.0.1:{http}"))
        .env("ATHENS_SHUTDOWN_TIMEOUT", "1")
        .env("ATHENS_GOGET_DIR", work.path())
        .env(
            "ATHENS_GO_BINARY_ENV_VARS",
            format!("GOPROXY=http://{hang_addr};GOSUMDB=off"),
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http}");
    wait_ready(&base).await;
    let url = format!(
        "{base}{}",
        fixtures::url_path(fixtures::BASE, "v1.0.0", "info")
    );
    let stuck = tokio::spawn(async move { reqwest_get(&url).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(
        !status.success(),
        "a forced exit is not a clean one: {status}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with ShutdownTimeout=1"
    );
    assert!(!stuck.await.unwrap().is_ok_and(|(s, _)| s == 200));
    // The go command it had started went with it (it would otherwise hang
    // on the silent upstream forever).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_under(work.path());
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "go processes outlived the gateway: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of processes whose working directory is under `dir`.
fn processes_under(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// Every example config loads, and wires what it says: the mesh file names
/// every service's URL at the top level (not inside a table, where TOML would
/// put keys written after a table header), and no key of it goes unread.
#[test]
fn every_example_config_loads_and_wires_what_it_says() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let cfg = modmesh_common::Config::load(Some(&path), |_| None)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // What the storage backend reads of it.
        let _: modmesh_storage::backends::disk::DiskConfig = cfg.section().unwrap();
        let _: modmesh_gateway::service::GatewayConfig = cfg.section().unwrap();
        let unread = cfg.unread_keys(&["", "Storage", "SingleFlight"]);
        assert!(
            unread.is_empty(),
            "{}: unread keys {unread:?}",
            path.display()
        );
        if path.ends_with("mesh.toml") {
            assert_eq!(cfg.StorageSvcURL, "http://storage-svc:50051");
            assert_eq!(cfg.LockSvcURL, "http://lock-svc:50052");
            assert_eq!(cfg.FetcherSvcURL, "http://fetcher-svc:50053");
            assert_eq!(cfg.StorageSvcListen, "0.0.0.0:50051");
            assert_eq!(cfg.StorageType, "disk");
        }
    }
    assert!(seen > 0, "no example configs in {}", dir.display());
}
