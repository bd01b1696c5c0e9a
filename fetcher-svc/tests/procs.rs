//! Timeouts and cancellation: the go run's whole process group is killed
//! and reaped, and its work directory removed.

mod support;

use modmesh_common::server::LoopbackServer;
use modmesh_fetcher::gocmd::GoSettings;
use modmesh_fetcher::Fetcher;
use modmesh_proto::{Coordinates, ErrorKind};
use std::time::{Duration, Instant};
use support::*;

fn coords(m: &str, v: &str) -> Coordinates {
    Coordinates::new(m, v).unwrap()
}

#[tokio::test]
async fn a_hanging_upstream_times_out_and_leaves_no_process() {
    let up = Upstream::new();
    let http = HttpUpstream::start(up.dir.path().to_path_buf(), Mode::Hang).await;
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(settings(&http.url(), base.path(), Duration::from_secs(2)));

    let marker = "example.com/hang/timeout@v1.0.0";
    let watch = tokio::spawn(wait_for_process(marker, Duration::from_secs(10)));
    let started = Instant::now();
    let e = f
        .download(&coords("example.com/hang/timeout", "v1.0.0"))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(http.count(".info") >= 1, "{:?}", http.requests());

    let go = watch.await.unwrap().expect("the go process was seen");
    assert_eq!(go.pgid, go.pid, "go leads its own process group");
    // The timeout path reaps before returning: nothing left, not even a zombie.
    let left = leftovers(go.pgid, go.pid);
    assert!(left.is_empty(), "{left:?}");
    assert!(job_dirs(base.path()).is_empty());
}

/// A stand-in go binary that answers `go env` at once and otherwise starts
/// a grandchild and then hangs.
fn forking_go(dir: &std::path::Path) -> std::path::PathBuf {
    let script = dir.join("forking-go");
    std::fs::write(
        &script,
        "#!/bin/sh\nif [ \"$1\" = env ]; then echo '{\"GOPROXY\":\"off\",\"GONOPROXY\":\"\"}'; exit 0; fi\nsleep 300 &\nsleep 301\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn forking_settings(tools: &Scratch, base: &Scratch, timeout: Duration) -> GoSettings {
    GoSettings {
        go_binary: forking_go(tools.path()).display().to_string(),
        env_vars: Vec::new(),
        workers: 2,
        go_get_dir: Some(base.path().to_path_buf()),
        timeout,
    }
}

#[tokio::test]
async fn a_timeout_kills_grandchildren_too() {
    let tools = Scratch::new("modmesh-tools-");
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(forking_settings(&tools, &base, Duration::from_secs(2)));
    let marker = format!("{} list", tools.path().join("forking-go").display());
    let watch = tokio::spawn(async move {
        let leader = wait_for_process(&marker, Duration::from_secs(10)).await?;
        // Wait for the grandchild too.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let n = processes().iter().filter(|p| p.pgid == leader.pgid).count();
            if n >= 3 {
                return Some((leader, n));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some((leader, 0))
    });
    let started = Instant::now();
    let e = f
        .list(&modmesh_proto::ModulePath::new("example.com/slow").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (leader, members) = watch.await.unwrap().expect("the fake go was seen");
    assert!(members >= 3, "sh and both sleeps were in the group");
    let left = wait_group_gone(leader.pgid, leader.pid, Duration::from_secs(3)).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(job_dirs(base.path()).is_empty());
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let tools = Scratch::new("modmesh-tools-");
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(forking_settings(&tools, &base, Duration::from_secs(120)));
    let marker = format!("{} mod", tools.path().join("forking-go").display());

    let c = coords("example.com/cancelled", "v1.0.0");
    let fut = f.download(&c);
    let leader = tokio::select! {
        r = fut => panic!("the download finished: {r:?}"),
        p = wait_for_process(&marker, Duration::from_secs(10)) => p.expect("the fake go was seen"),
    };
    // `fut` is dropped here, mid-run.
    let left = wait_group_gone(leader.pgid, leader.pid, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(job_dirs(base.path()).is_empty());
}

#[tokio::test]
async fn cancelling_a_real_go_run_kills_it() {
    let up = Upstream::new();
    let http = HttpUpstream::start(up.dir.path().to_path_buf(), Mode::Hang).await;
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(settings(&http.url(), base.path(), Duration::from_secs(120)));

    let marker = "example.com/hang/cancel@latest";
    let handle = {
        let f = f.clone();
        tokio::spawn(async move { f.query(&coords("example.com/hang/cancel", "latest")).await })
    };
    let go = wait_for_process(marker, Duration::from_secs(10))
        .await
        .expect("the go process was seen");
    // Like a gRPC client going away: the task running the call is dropped.
    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    let left = wait_group_gone(go.pgid, go.pid, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(job_dirs(base.path()).is_empty());
}

#[tokio::test]
async fn workers_bound_concurrent_runs() {
    let tools = Scratch::new("modmesh-tools-");
    let base = Scratch::new("modmesh-base-");
    let mut s = forking_settings(&tools, &base, Duration::from_secs(2));
    s.workers = 1;
    let (f, _) = fetcher(s);
    let started = Instant::now();
    let (one, two) = (
        coords("example.com/one", "latest"),
        coords("example.com/two", "latest"),
    );
    let (a, b) = tokio::join!(f.query(&one), f.query(&two));
    assert_eq!(a.unwrap_err().kind, ErrorKind::Timeout);
    assert_eq!(b.unwrap_err().kind, ErrorKind::Timeout);
    // One at a time: two 2-second timeouts back to back.
    assert!(
        started.elapsed() >= Duration::from_millis(3900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_grpc_client_going_away_kills_the_group() {
    use modmesh_fetcher::{client::FetcherClient, server};
    let tools = Scratch::new("modmesh-tools-");
    let base = Scratch::new("modmesh-base-");
    let (f, _) = fetcher(forking_settings(&tools, &base, Duration::from_secs(120)));
    let marker = format!("{} mod", tools.path().join("forking-go").display());

    let srv = LoopbackServer::start(server::routes(f), &[server::SERVICE_NAME])
        .await
        .unwrap();
    let addr = srv.url.trim_start_matches("http://").to_string();
    let client = FetcherClient::new(&format!("http://{addr}")).unwrap();
    let c = coords("example.com/remote", "v1.0.0");
    let leader = tokio::select! {
        r = client.download(&c) => panic!("the download finished: {r:?}"),
        p = wait_for_process(&marker, Duration::from_secs(10)) => p.expect("the fake go was seen"),
    };
    // The client's call is dropped: the stream is reset, the server drops
    // the handler, and the fetcher kills the group.
    let left = wait_group_gone(leader.pgid, leader.pid, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(job_dirs(base.path()).is_empty());
    srv.stop().await.unwrap();
}
