//! Runs the real `lock-svc` binary: it serves health and locks on the
//! configured port, ends pending waits and exits 0 promptly on SIGTERM, and
//! exits 2 on a configuration error.

use modmesh_lock::client::LockClient;
use modmesh_lock::Lock;
use modmesh_proto::ErrorKind;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// A directory of its own (so no stray `./athens.toml` is read).
fn workdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lock-svc-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

use modmesh_test_support::free_port;

fn lock_svc(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lock-svc"));
    c.current_dir(dir)
        .env_remove("RUST_LOG")
        .env("ATHENS_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s).await;
    }
    s
}

/// Polls `grpc.health.v1.Health/Check` for `service` until SERVING.
async fn wait_serving(url: &str, service: &str, within: Duration) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let start = Instant::now();
    loop {
        let channel = modmesh_common::server::channel(url).unwrap();
        let req = HealthCheckRequest {
            service: service.to_string(),
        };
        match HealthClient::new(channel).check(req).await {
            Ok(r) if r.get_ref().status() == ServingStatus::Serving => return,
            other => {
                if start.elapsed() > within {
                    panic!("{service} not SERVING after {within:?}: {other:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_locks_and_exits_0_on_sigterm() {
    let dir = workdir();
    let port = free_port();
    let mut child = lock_svc(&dir)
        .env("ATHENS_LOCK_SVC_LISTEN", format!("127.0.0.1:{port}"))
        .env("ATHENS_SINGLE_FLIGHT_TYPE", "memory")
        .env("ATHENS_SHUTDOWN_TIMEOUT", "10")
        .spawn()
        .expect("start lock-svc");
    let url = format!("http://127.0.0.1:{port}");
    wait_serving(&url, "modmesh.v1.Lock", Duration::from_secs(20)).await;

    let client = LockClient::new(&url).unwrap();
    let ttl = Duration::from_secs(30);
    let lease = client
        .acquire("example.com/m@v1.0.0", ttl, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(lease.ttl, ttl);
    client.keep_alive(&lease).await.unwrap();
    // A second caller waits behind it; shutdown must end that wait.
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .acquire("example.com/m@v1.0.0", ttl, Duration::from_secs(60))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    let sent = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("lock-svc did not exit within 5 s of SIGTERM")
        .unwrap();
    let took = sent.elapsed();
    let log = stderr_of(&mut child).await;
    assert!(status.success(), "lock-svc exited {status}: {log}");
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    let e = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the pending wait did not end")
        .unwrap()
        .unwrap_err();
    assert!(e.is(ErrorKind::Unavailable), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn exits_2_on_a_config_error() {
    let dir = workdir();
    let mut child = lock_svc(&dir)
        .env("ATHENS_SINGLE_FLIGHT_TYPE", "zookeeper")
        .spawn()
        .expect("start lock-svc");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("lock-svc did not exit")
        .unwrap();
    let log = stderr_of(&mut child).await;
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("SingleFlightType"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}
