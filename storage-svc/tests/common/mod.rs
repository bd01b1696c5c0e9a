//! Backend constructors shared by the integration tests: each returns a
//! fresh, empty store (with whatever must live as long as it).

#![allow(dead_code)]

use modmesh_common::server::LoopbackServer;
use modmesh_storage::backends::{DiskStorage, MemoryStorage};
use modmesh_storage::client::StorageClient;
use modmesh_storage::compliance::Fixture;
use modmesh_storage::Storage;
use std::sync::Arc;

/// The `memory` backend.
pub async fn memory_backend() -> Fixture {
    Fixture::new(Arc::new(MemoryStorage::new()))
}

/// The `disk` backend in a fresh temporary directory.
pub async fn disk_backend() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = DiskStorage::new(dir.path()).expect("open disk storage");
    Fixture::new(Arc::new(storage)).keep(dir)
}

/// Serves `storage` the way storage-svc does (health, reflection,
/// request-id layer) on 127.0.0.1 and an ephemeral port.
pub async fn serve(storage: Arc<dyn Storage>) -> LoopbackServer {
    LoopbackServer::start(
        modmesh_storage::server::routes(storage),
        &[modmesh_storage::server::SERVICE_NAME],
    )
    .await
    .expect("serve")
}

/// `inner` behind a real gRPC server, reached through [`StorageClient`].
pub async fn over_grpc(inner: Fixture) -> Fixture {
    if let Some(why) = inner.skip_reason() {
        return Fixture::skipped(why);
    }
    let server = serve(inner.storage.clone()).await;
    let client = StorageClient::new(&server.url).expect("client");
    let caps = client.fetch_capabilities().await.expect("capabilities");
    assert_eq!(caps, inner.storage.capabilities(), "capabilities over gRPC");
    Fixture::new(Arc::new(client)).keep(server).keep(inner)
}

/// `memory` over gRPC.
pub async fn grpc_memory_backend() -> Fixture {
    over_grpc(memory_backend().await).await
}

/// `disk` over gRPC.
pub async fn grpc_disk_backend() -> Fixture {
    over_grpc(disk_backend().await).await
}

// ------------------------------------------------------------ S3 servers

use modmesh_storage::backends::s3::{self, Layout, ObjectStore, Tuning};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use modmesh_test_support::free_port;

pub use modmesh_test_support::on_ci;

/// The moto server binary: `MODMESH_MOTO_SERVER`, `moto_server` on PATH,
/// or the one `scripts/deps/30-storage.sh` installs.
pub fn moto_binary() -> Option<String> {
    if let Ok(p) = std::env::var("MODMESH_MOTO_SERVER") {
        return Some(p);
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    on_path.or_else(|| {
        let venv = "/opt/modmesh-venv/bin/moto_server";
        std::path::Path::new(venv)
            .exists()
            .then(|| venv.to_string())
    })
}

/// A moto S3 server.
pub type Moto = ServerProcess;

/// A server process on 127.0.0.1, killed (by its PID) when dropped, and by
/// the kernel when this test process dies.
pub struct ServerProcess {
    /// Its port.
    pub port: u16,
    child: Mutex<Option<Child>>,
}

impl ServerProcess {
    /// Starts moto on `port` and waits until it answers; `None` if it is
    /// not installed (a panic under `CI=true`).
    pub fn start(port: u16) -> Option<Moto> {
        let Some(bin) = moto_binary() else {
            assert!(
                !on_ci(),
                "CI=true but moto_server is not installed (scripts/deps/30-storage.sh)"
            );
            return None;
        };
        let args = ["-H", "127.0.0.1", "-p", &port.to_string()]
            .iter()
            .map(|a| a.to_string())
            .collect();
        Some(Self::spawn(bin, args, port))
    }

    /// Runs `bin args` (which listens on `port`) and waits until it answers.
    pub fn spawn(bin: String, args: Vec<String>, port: u16) -> ServerProcess {
        // Spawned from a thread that never ends: the child's parent-death
        // signal follows the spawning thread.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new(bin);
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; it only sets this child's
            // parent-death signal.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        });
        let child = rx.recv().unwrap().expect("spawn the server");
        let server = ServerProcess {
            port,
            child: Mutex::new(Some(child)),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    .is_ok()
                {
                    let mut buf = [0u8; 12];
                    if s.read(&mut buf).is_ok_and(|n| n > 0) {
                        return server;
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not come up on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (by PID) and waits for it.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

static MOTO: OnceLock<Option<Moto>> = OnceLock::new();

/// The moto server this test process shares (started once).
pub fn moto() -> Option<&'static Moto> {
    MOTO.get_or_init(|| Moto::start(free_port())).as_ref()
}

/// A fresh bucket name.
pub fn bucket_name() -> String {
    format!("mm-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// Short deadlines for tests.
pub fn test_tuning() -> Tuning {
    Tuning {
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(20),
        operation_timeout: Duration::from_secs(60),
        read_timeout: Duration::from_secs(20),
        max_attempts: 2,
        orphan_after: Duration::from_secs(120),
    }
}

/// A store over `url`'s `bucket` (any credentials do for moto).
pub fn object_store(url: &str, bucket: &str, layout: Layout, tuning: Tuning) -> ObjectStore {
    let creds = aws_credential_types::Credentials::new("test", "test", None, None, "test");
    let client = s3::client(
        Some(url.to_string()),
        "us-east-1",
        true,
        aws_credential_types::provider::SharedCredentialsProvider::new(creds),
        &tuning,
    );
    ObjectStore::new(client, bucket, layout, tuning, "test")
}

/// Creates `bucket` with a plain HTTP PUT (not our code).
pub async fn create_bucket(url: &str, bucket: &str) {
    let r = reqwest::Client::new()
        .put(format!("{url}/{bucket}"))
        .send()
        .await
        .expect("PUT bucket");
    assert!(
        r.status().is_success(),
        "create bucket {bucket}: {}",
        r.status()
    );
}

/// The `s3` backend, built from configuration (environment overrides)
/// against the shared moto, in a fresh bucket.
pub async fn s3_backend() -> Fixture {
    let Some(moto) = moto() else {
        return Fixture::skipped("moto_server is not installed");
    };
    let bucket = bucket_name();
    create_bucket(&moto.url(), &bucket).await;
    let url = moto.url();
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"s3\"\n",
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test-key"),
            ("AWS_SECRET_ACCESS_KEY", "test-secret"),
            ("ATHENS_S3_BUCKET_NAME", &bucket),
            ("AWS_ENDPOINT", &url),
            ("AWS_FORCE_PATH_STYLE", "true"),
        ],
    )
    .expect("config");
    let storage = modmesh_storage::from_config(&cfg).expect("s3 backend");
    Fixture::new(storage)
}

/// `s3` (on moto) over gRPC: presigned URLs and capabilities cross the hop.
pub async fn grpc_s3_backend() -> Fixture {
    over_grpc(s3_backend().await).await
}

/// The `minio` backend, built from configuration against the shared moto;
/// it creates its fresh bucket itself.
pub async fn minio_backend() -> Fixture {
    let Some(moto) = moto() else {
        return Fixture::skipped("moto_server is not installed");
    };
    let bucket = bucket_name();
    let endpoint = format!("127.0.0.1:{}", moto.port);
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"minio\"\n",
        &[
            ("ATHENS_MINIO_ENDPOINT", &endpoint),
            ("ATHENS_MINIO_ACCESS_KEY_ID", "minio"),
            ("ATHENS_MINIO_SECRET_ACCESS_KEY", "minio123"),
            ("ATHENS_MINIO_USE_SSL", "false"),
            ("ATHENS_MINIO_BUCKET_NAME", &bucket),
        ],
    )
    .expect("config");
    let storage = modmesh_storage::from_config(&cfg).expect("minio backend");
    Fixture::new(storage)
}

// ---------------------------------------------------------------- s3s-fs

/// The s3s-fs binary: `MODMESH_S3S_FS`, `s3s-fs` on PATH, or the one
/// `scripts/deps/30-storage.sh` installs.
pub fn s3s_binary() -> Option<String> {
    if let Ok(p) = std::env::var("MODMESH_S3S_FS") {
        return Some(p);
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v s3s-fs"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    on_path.or_else(|| {
        let p = "/opt/modmesh-s3s/bin/s3s-fs";
        std::path::Path::new(p).exists().then(|| p.to_string())
    })
}

/// An s3s-fs server over a directory of this process (it checks
/// signatures: access key `modmesh`, secret `modmesh-secret`).
pub struct S3sFs {
    /// The server.
    pub server: ServerProcess,
}

/// A data directory for this process's s3s-fs. A shared server is never
/// dropped, so directories of test processes that are gone are removed here.
fn s3s_data_dir() -> std::path::PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(pid) = name.strip_prefix("modmesh-s3s-") else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("modmesh-s3s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("s3s-fs data directory");
    dir
}

static S3S: OnceLock<Option<S3sFs>> = OnceLock::new();

/// The s3s-fs server this test process shares (started once); `None` if it
/// is not installed (a panic under `CI=true`).
pub fn s3s_fs() -> Option<&'static S3sFs> {
    S3S.get_or_init(|| {
        let Some(bin) = s3s_binary() else {
            assert!(
                !on_ci(),
                "CI=true but s3s-fs is not installed (scripts/deps/30-storage.sh)"
            );
            return None;
        };
        let dir = s3s_data_dir();
        let port = free_port();
        let args = [
            "--host".to_string(),
            "127.0.0.1".to_string(),
            "--port".to_string(),
            port.to_string(),
            "--access-key".to_string(),
            "modmesh".to_string(),
            "--secret-key".to_string(),
            "modmesh-secret".to_string(),
            dir.display().to_string(),
        ]
        .to_vec();
        let server = ServerProcess::spawn(bin, args, port);
        Some(S3sFs { server })
    })
    .as_ref()
}

/// The `s3` backend against s3s-fs (real signature checks), built from
/// configuration, in a fresh bucket it creates first.
pub async fn s3s_backend() -> Fixture {
    let Some(s3s) = s3s_fs() else {
        return Fixture::skipped("s3s-fs is not installed");
    };
    let url = s3s.server.url();
    let bucket = bucket_name();
    let creds =
        aws_credential_types::Credentials::new("modmesh", "modmesh-secret", None, None, "test");
    let admin = s3::client(
        Some(url.clone()),
        "us-east-1",
        true,
        aws_credential_types::provider::SharedCredentialsProvider::new(creds),
        &test_tuning(),
    );
    admin
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create a bucket on s3s-fs");
    let cfg = modmesh_common::Config::from_text(
        "StorageType = \"s3\"\n",
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "modmesh"),
            ("AWS_SECRET_ACCESS_KEY", "modmesh-secret"),
            ("ATHENS_S3_BUCKET_NAME", &bucket),
            ("AWS_ENDPOINT", &url),
            ("AWS_FORCE_PATH_STYLE", "true"),
        ],
    )
    .expect("config");
    Fixture::new(modmesh_storage::from_config(&cfg).expect("s3 backend on s3s-fs")).excluding(
        "concurrent_saves",
        "s3s-fs 0.14 checks If-None-Match and then writes, so concurrent \
         conditional writes can all succeed (AWS S3, MinIO and moto decide atomically)",
    )
}
