//! Real S3 API servers on loopback ports for tests (feature `testing`):
//! moto and s3s-fs, each shared by a test binary (started once), killed
//! by PID on drop and by the kernel when the test process dies.

use super::{Layout, ObjectStore, Tuning};
use crate::backends::s3;
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
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Self::spawn_command(cmd, port)
    }

    /// Runs `cmd` (which listens on `port`, output discarded) and waits
    /// until it answers.
    pub fn spawn_command(mut cmd: Command, port: u16) -> ServerProcess {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = modmesh_test_support::spawn_tied(cmd).expect("spawn the server");
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

// ----------------------------------------------------------------- MinIO

/// The root user of the test MinIO server.
pub const MINIO_USER: &str = "modmesh";
/// Its password.
pub const MINIO_PASSWORD: &str = "modmesh-secret";

/// A MinIO server (`minio server DIR`) over a temporary directory.
pub struct Minio {
    /// The server.
    pub server: ServerProcess,
    _dir: tempfile::TempDir,
}

/// The MinIO server this test process shares (started once); `None` if
/// `minio` is not installed (a panic under `CI=true`: run
/// `scripts/deps/37-minio.sh`).
pub fn minio() -> Option<&'static Minio> {
    static MINIO: OnceLock<Option<Minio>> = OnceLock::new();
    MINIO
        .get_or_init(|| {
            let Some(bin) = modmesh_test_support::find_program("minio") else {
                assert!(
                    !on_ci(),
                    "CI=true but minio is not installed (scripts/deps/37-minio.sh)"
                );
                return None;
            };
            let dir = tempfile::tempdir().expect("minio data directory");
            let port = free_port();
            let mut cmd = Command::new(bin);
            cmd.arg("server")
                .arg(dir.path().join("data"))
                .args(["--address", &format!("127.0.0.1:{port}")])
                .args(["--console-address", &format!("127.0.0.1:{}", free_port())])
                .arg("--quiet")
                .env("MINIO_ROOT_USER", MINIO_USER)
                .env("MINIO_ROOT_PASSWORD", MINIO_PASSWORD)
                .env("MINIO_BROWSER", "off")
                .env("MINIO_UPDATE", "off")
                .env("HOME", dir.path());
            let server = ServerProcess::spawn_command(cmd, port);
            Some(Minio { server, _dir: dir })
        })
        .as_ref()
}

/// An S3 client of the server at `url` with static credentials
/// (path-style), for creating buckets and listing them plainly.
pub fn client_at(url: &str, key: &str, secret: &str) -> aws_sdk_s3::Client {
    let creds = aws_credential_types::Credentials::new(key, secret, None, None, "test");
    s3::client(
        Some(url.to_string()),
        "us-east-1",
        true,
        aws_credential_types::provider::SharedCredentialsProvider::new(creds),
        &test_tuning(),
    )
}

/// Every key in `bucket`, through the S3 API (ListObjectsV2, all pages).
pub async fn keys(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .expect("ListObjectsV2");
        out.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => return out,
        }
    }
}
