//! The GOPROXY list as the go command honours it, with the real go command
//! against local upstreams: ',' falls through only on 404/410, '|' on any
//! error, a 404 from an upstream beats a `direct` that cannot reach
//! anything, GONOPROXY modules are fetched directly; plus health checks and
//! messages free of server paths.

mod support;

use modmesh_common::server::LoopbackServer;
use modmesh_fetcher::client::FetcherClient;
use modmesh_fetcher::gocmd::{GoFetcher, GoSettings};
use modmesh_fetcher::{server, Fetcher};
use modmesh_proto::{Coordinates, ErrorKind, ModulePath};
use modmesh_storage::Storage;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(60);

fn coords(m: &str, v: &str) -> Coordinates {
    Coordinates::new(m, v).unwrap()
}

fn module(m: &str) -> ModulePath {
    ModulePath::new(m).unwrap()
}

/// A loopback URL nothing listens on.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// Settings with `GOPROXY=<goproxy>` where `direct` cannot reach anything:
/// every non-loopback connection goes through a proxy that refuses (the go
/// command never proxies loopback upstreams).
fn chain_settings(goproxy: &str, base: &Path, timeout: Duration) -> GoSettings {
    let mut s = settings(goproxy, base, timeout);
    let nowhere = closed_url();
    s.env_vars.push(format!("HTTPS_PROXY={nowhere}"));
    s.env_vars.push(format!("HTTP_PROXY={nowhere}"));
    // Nothing inherited may exempt a host from that proxy.
    s.env_vars.push("NO_PROXY=127.0.0.1".into());
    s.env_vars.push("no_proxy=127.0.0.1".into());
    s
}

/// An upstream holding `example.com/a` v1.0.0 with a package in `sub/`.
fn upstream_with_a() -> Upstream {
    let up = Upstream::new();
    up.publish(
        "example.com/a",
        "v1.0.0",
        true,
        &[("a.go", "package a\n"), ("sub/sub.go", "package sub\n")],
    );
    up
}

async fn check_not_a_module_is_not_found(f: &GoFetcher, storage: &Arc<dyn Storage>) {
    // The go command asks for every prefix of a package path.
    for m in ["example.com/a/sub", "example.com/a/sub/deeper"] {
        let e = f.list(&module(m)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "list {m}: {e}");
        let e = f.query(&coords(m, "latest")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "latest {m}: {e}");
        let e = f.download(&coords(m, "latest")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "download {m}@latest: {e}");
    }
    let e = f
        .download(&coords("example.com/a", "v9.9.9"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = f
        .query(&coords("example.com/a", "v9.9.9"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    // The module itself resolves and downloads.
    assert_eq!(f.list(&module("example.com/a")).await.unwrap(), ["v1.0.0"]);
    let q = f.query(&coords("example.com/a", "latest")).await.unwrap();
    assert!(std::str::from_utf8(&q).unwrap().contains("\"v1.0.0\""));
    let got = f
        .download(&coords("example.com/a", "latest"))
        .await
        .unwrap();
    assert_eq!(got.version.as_str(), "v1.0.0");
    assert!(storage
        .exists(&coords("example.com/a", "v1.0.0"))
        .await
        .unwrap());
}

#[tokio::test]
async fn a_404_then_an_unreachable_direct_is_not_found_with_comma_and_pipe() {
    let up = upstream_with_a();
    let http = HttpUpstream::start(up.dir.path().to_path_buf(), Mode::Files).await;
    for sep in [",", "|"] {
        let base = Scratch::new("modmesh-base-");
        let goproxy = format!("{}{sep}direct", http.url());
        let (f, storage) = fetcher(chain_settings(&goproxy, base.path(), T));
        let entries = f.goproxy().await.unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(entries[0].fall_back_on_error, sep == "|");
        check_not_a_module_is_not_found(&f, &storage).await;
        assert!(job_dirs(base.path()).is_empty());
    }
    // The upstream was asked for the prefixes.
    assert!(
        http.count("/example.com/a/sub/@v/list") >= 2,
        "{:?}",
        http.requests()
    );

    // Where nobody said "not there", an unreachable direct stays Unavailable.
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(chain_settings("direct", base.path(), T));
    let e = f.list(&module("example.com/a/sub")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let e = f
        .query(&coords("example.com/a/sub", "latest"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn comma_falls_through_on_404_only_and_pipe_on_any_error() {
    let good = upstream_with_a();
    let good = HttpUpstream::start(good.dir.path().to_path_buf(), Mode::Files).await;
    let empty = Upstream::new();
    let missing = HttpUpstream::start(empty.dir.path().to_path_buf(), Mode::Files).await;
    let failing = HttpUpstream::start(empty.dir.path().to_path_buf(), Mode::Status(500)).await;
    let refusing = HttpUpstream::start(empty.dir.path().to_path_buf(), Mode::Status(403)).await;
    let gone = HttpUpstream::start(empty.dir.path().to_path_buf(), Mode::Status(410)).await;
    let c = coords("example.com/a", "v1.0.0");

    // 404 and 410 fall through a comma.
    for first in [&missing, &gone] {
        let base = Scratch::new("modmesh-base-");
        let goproxy = format!("{},{},direct", first.url(), good.url());
        let (f, storage) = fetcher(chain_settings(&goproxy, base.path(), T));
        assert_eq!(f.download(&c).await.unwrap().version.as_str(), "v1.0.0");
        assert!(storage.exists(&c).await.unwrap());
        assert_eq!(f.list(&c.module).await.unwrap(), ["v1.0.0"]);
        assert!(first.count("/example.com/a/@v/v1.0.0.info") >= 1);
    }
    let zips = good.count("/v1.0.0.zip");
    assert!(zips >= 1, "{:?}", good.requests());

    // A 500 or a 403 stops a comma: the next entry is never asked.
    let before = good.requests().len();
    for (first, kind) in [
        (&failing, ErrorKind::Unavailable),
        (&refusing, ErrorKind::Permission),
    ] {
        let base = Scratch::new("modmesh-base-");
        let goproxy = format!("{},{},direct", first.url(), good.url());
        let (f, _) = fetcher(chain_settings(&goproxy, base.path(), T));
        let e = f.download(&c).await.unwrap_err();
        assert_eq!(e.kind, kind, "{e}");
        let e = f.list(&c.module).await.unwrap_err();
        assert_eq!(e.kind, kind, "{e}");
        let e = f
            .query(&coords("example.com/a", "latest"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, kind, "{e}");
    }
    assert_eq!(good.requests().len(), before, "{:?}", good.requests());

    // A pipe falls through on them.
    for first in [&failing, &refusing] {
        let base = Scratch::new("modmesh-base-");
        let goproxy = format!("{}|{}|direct", first.url(), good.url());
        let (f, storage) = fetcher(chain_settings(&goproxy, base.path(), T));
        assert_eq!(f.download(&c).await.unwrap().version.as_str(), "v1.0.0");
        assert!(storage.exists(&c).await.unwrap());
        assert_eq!(f.list(&c.module).await.unwrap(), ["v1.0.0"]);
    }
    assert!(good.requests().len() > before);

    // Every entry failing: the failure of an upstream that answered wins
    // over a later 404 and an unreachable direct.
    let base = Scratch::new("modmesh-base-");
    let goproxy = format!("{}|{}|direct", failing.url(), missing.url());
    let (f, _) = fetcher(chain_settings(&goproxy, base.path(), T));
    let e = f.list(&c.module).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("500"), "{e}");
}

#[tokio::test]
async fn a_timeout_falls_through_a_pipe_and_stays_a_timeout() {
    let good = upstream_with_a();
    let good = HttpUpstream::start(good.dir.path().to_path_buf(), Mode::Files).await;
    let empty = Upstream::new();
    let hang = HttpUpstream::start(empty.dir.path().to_path_buf(), Mode::Hang).await;
    let t = Duration::from_secs(2);

    let base = Scratch::new("modmesh-base-");
    let goproxy = format!("{}|{}", hang.url(), good.url());
    let (f, _) = fetcher(chain_settings(&goproxy, base.path(), t));
    let q = f.query(&coords("example.com/a", "latest")).await.unwrap();
    assert!(std::str::from_utf8(&q).unwrap().contains("\"v1.0.0\""));

    let base = Scratch::new("modmesh-base-");
    let goproxy = format!("{}|direct", hang.url());
    let (f, _) = fetcher(chain_settings(&goproxy, base.path(), t));
    let started = Instant::now();
    let e = f
        .query(&coords("example.com/a", "latest"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // With a comma the timeout ends the walk.
    let goproxy = format!("{},{}", hang.url(), good.url());
    let (f, _) = fetcher(chain_settings(&goproxy, base.path(), t));
    let before = good.requests().len();
    let e = f.list(&module("example.com/a")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert_eq!(good.requests().len(), before);
}

#[tokio::test]
async fn gonoproxy_modules_go_direct_whatever_the_list() {
    let up = upstream_with_a();
    up.publish("example.com/priv", "v1.0.0", true, &[]);
    let http = HttpUpstream::start(up.dir.path().to_path_buf(), Mode::Files).await;
    let base = Scratch::new("modmesh-base-");
    let goproxy = format!("{},direct", http.url());
    let mut s = chain_settings(&goproxy, base.path(), T);
    s.env_vars.push("GONOPROXY=example.com/priv".into());
    let (f, _) = fetcher(s);
    let e = f.list(&module("example.com/priv")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert_eq!(http.count("/example.com/priv/@v/list"), 0);
    // Other modules still use the proxy.
    assert_eq!(f.list(&module("example.com/a")).await.unwrap(), ["v1.0.0"]);
}

#[tokio::test]
async fn the_go_commands_own_goproxy_is_used() {
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(settings(
        "https://a.test,https://b.test|direct,https://ignored.test",
        base.path(),
        T,
    ));
    let urls: Vec<(String, bool)> = f
        .goproxy()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.url, e.fall_back_on_error))
        .collect();
    assert_eq!(
        urls,
        [
            ("https://a.test".to_string(), false),
            ("https://b.test".to_string(), true),
            ("direct".to_string(), false)
        ]
    );
}

#[tokio::test]
async fn messages_carry_no_server_paths() {
    let up = upstream_with_a();
    let base = Scratch::new("modmesh-base-");
    // The module cache cannot be created: go names its path.
    std::fs::write(base.path().join("modmesh-modcache"), "not a directory").unwrap();
    let (f, _) = fetcher(settings(&up.file_url(), base.path(), T));
    let e = f
        .download(&coords("example.com/a", "v1.0.0"))
        .await
        .unwrap_err();
    assert_ne!(e.kind, ErrorKind::Internal, "{e}");
    let base_text = base.path().display().to_string();
    assert!(!e.message.contains(&base_text), "{e}");
    assert!(e.message.contains("<fetcher-dir>"), "{e}");
}

#[tokio::test]
async fn health_of_the_go_fetcher_and_of_the_client() {
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(settings("off", base.path(), T));
    f.health().await.unwrap();
    f.health().await.unwrap();

    let mut s = settings("off", base.path(), T);
    s.go_binary = base.path().join("no-such-go").display().to_string();
    let (broken, _) = fetcher(s);
    let e = broken.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    // A go binary that runs but fails is a local fault too.
    let failing = base.path().join("failing-go");
    std::fs::write(&failing, "#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = settings("off", base.path(), T);
    s.go_binary = failing.display().to_string();
    let (failing, _) = fetcher(s);
    let e = failing.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(e.message.contains("broken"), "{e}");

    // Over gRPC: the service's grpc.health.v1 status.
    let srv = LoopbackServer::start(server::routes(f), &[server::SERVICE_NAME])
        .await
        .unwrap();
    let client = FetcherClient::new(&srv.url).unwrap();
    client.health().await.unwrap();
    srv.stop().await.unwrap();
    let e = client.health().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");

    // A server that never answers: the deadline ends the check.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let client = FetcherClient::new(&format!("http://{addr}")).unwrap();
    let started = Instant::now();
    let e = client.health().await.unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Timeout | ErrorKind::Unavailable),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

/// The native fetcher (`FetcherMode=native`: no go process fetches) walks
/// the list by the same rules: ',' falls through on 404 only, '|' on any
/// failure, `off` is "not there"; list and `latest` come from the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_fetcher_walks_the_list_like_the_go_command() {
    let up = upstream_with_a();
    let root = std::path::PathBuf::from(up.file_url().trim_start_matches("file://"));
    let good = HttpUpstream::start(root.clone(), Mode::Files).await;
    let missing = HttpUpstream::start(root.clone(), Mode::Status(404)).await;
    let failing = HttpUpstream::start(root, Mode::Status(500)).await;
    let scratch = Scratch::new("native-chain");
    let native = |goproxy: String| {
        let cfg = modmesh_common::Config::from_text(
            "",
            &[
                (
                    "ATHENS_GO_BINARY_ENV_VARS",
                    format!("GOPROXY={goproxy};GOSUMDB=off").as_str(),
                ),
                ("ATHENS_GOGET_DIR", scratch.path().to_str().unwrap()),
                ("ATHENS_FETCHER_MODE", "native"),
            ],
        )
        .unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(modmesh_storage::backends::memory::MemoryStorage::new());
        (
            modmesh_fetcher::native::from_config(&cfg, storage.clone()).unwrap(),
            storage,
        )
    };
    let a = coords("example.com/a", "v1.0.0");

    // ',' after a 404: the next entry serves it.
    let (f, storage) = native(format!("{},{}", missing.url(), good.url()));
    let got = f.download(&a).await.unwrap();
    assert_eq!(got.version.as_str(), "v1.0.0");
    assert!(storage.exists(&a).await.unwrap());
    assert_eq!(good.count("v1.0.0.zip"), 1);
    assert_eq!(f.list(&module("example.com/a")).await.unwrap(), ["v1.0.0"]);
    let latest = f.query(&coords("example.com/a", "latest")).await.unwrap();
    assert!(String::from_utf8_lossy(&latest).contains("\"Version\":\"v1.0.0\""));

    // ',' after a 500: no fall-through, 502.
    let (f, storage) = native(format!("{},{}", failing.url(), good.url()));
    let e = f.download(&a).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("500"), "{e}");
    assert!(!storage.exists(&a).await.unwrap());
    assert_eq!(good.count("v1.0.0.zip"), 1);

    // '|' after a 500: the next entry serves it.
    let (f, storage) = native(format!("{}|{}", failing.url(), good.url()));
    f.download(&a).await.unwrap();
    assert!(storage.exists(&a).await.unwrap());
    assert_eq!(good.count("v1.0.0.zip"), 2);

    // Not there anywhere, `off`, and `direct` refused in native mode.
    for list in [
        missing.url(),
        "off".to_string(),
        format!("{},direct", missing.url()),
    ] {
        let (f, storage) = native(list.clone());
        let e = f.download(&a).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{list}: {e}");
        assert!(!storage.exists(&a).await.unwrap());
    }
    assert_eq!(good.count("v1.0.0.zip"), 2);
}
