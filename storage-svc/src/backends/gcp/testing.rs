//! fake-gcs-server on a loopback port, for tests of the gcp backend and
//! lock driver (feature `testing`).

use super::{GcpConfig, GcpStorage};
use crate::backends::cloud_servers::{find, free_port, skip, ServerProc};
use crate::compliance::Fixture;
use std::sync::{Arc, OnceLock};

/// The service account e-mail of [`test_json_key`].
pub const TEST_ACCOUNT: &str = "modmesh-test@modmesh-test.iam.gserviceaccount.com";

/// A fake-gcs-server (in-memory backend) on 127.0.0.1.
#[derive(Debug)]
pub struct FakeGcs {
    /// The process (stop and restart it to stage an outage).
    pub proc: ServerProc,
}

impl FakeGcs {
    /// Starts one, or `None` (after [`skip`]) when it is not installed.
    pub fn start() -> Option<FakeGcs> {
        let Some(bin) = find("fake-gcs-server") else {
            skip("fake-gcs-server is not installed");
            return None;
        };
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let args = [
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-backend",
            "memory",
            "-external-url",
            &url,
            "-public-host",
            &format!("127.0.0.1:{port}"),
            "-log-level",
            "error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = ServerProc::start("fake-gcs-server", &bin, args, port);
        Some(FakeGcs { proc })
    }

    /// `host:port`, what `STORAGE_EMULATOR_HOST` takes.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.proc.port)
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Creates bucket `name` (plainly, through the JSON API).
    pub async fn create_bucket(&self, name: &str) {
        create_bucket_at(&self.url(), name).await
    }

    /// Uploads `data` to `bucket/object` plainly (not through the backend),
    /// as another program (Athens) would.
    pub async fn put(&self, bucket: &str, object: &str, data: &[u8]) {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
                self.url(),
                percent(object)
            ))
            .body(data.to_vec())
            .send()
            .await
            .expect("upload");
        assert!(r.status().is_success(), "upload {object}: {}", r.status());
    }

    /// The names of every object in `bucket`.
    pub async fn names(&self, bucket: &str) -> Vec<String> {
        let body = reqwest::Client::new()
            .get(format!("{}/storage/v1/b/{bucket}/o", self.url()))
            .send()
            .await
            .expect("list")
            .bytes()
            .await
            .expect("list body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("list json");
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|o| o["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A backend config on `bucket` of this server, with the test key.
    pub fn config(&self, bucket: &str) -> GcpConfig {
        GcpConfig {
            ProjectID: "modmesh-test".into(),
            Bucket: bucket.into(),
            JSONKey: test_json_key(),
            EmulatorHost: self.host(),
        }
    }
}

/// Creates bucket `name` on the fake-gcs-server at `url`.
pub async fn create_bucket_at(url: &str, name: &str) {
    let r = reqwest::Client::new()
        .post(format!("{url}/storage/v1/b"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "name": name }).to_string())
        .send()
        .await
        .expect("create bucket");
    assert!(
        r.status().is_success(),
        "create bucket {name}: {}",
        r.status()
    );
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A service account key (base64 JSON, as `JSONKey` takes it) with a
/// private key made for this test run by `openssl genpkey`.
pub fn test_json_key() -> String {
    use base64::Engine;
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("run openssl genpkey (Debian: openssl)");
        assert!(out.status.success(), "openssl genpkey failed");
        let pem = String::from_utf8(out.stdout).expect("PEM");
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": "modmesh-test",
            "private_key_id": "test",
            "private_key": pem,
            "client_email": TEST_ACCOUNT,
            "client_id": "1",
            "token_uri": "http://127.0.0.1:1/token",
        });
        base64::engine::general_purpose::STANDARD.encode(json.to_string())
    })
    .clone()
}

/// The fake-gcs-server this test binary shares (started on first use).
pub fn shared() -> Option<&'static FakeGcs> {
    static S: OnceLock<Option<FakeGcs>> = OnceLock::new();
    S.get_or_init(FakeGcs::start).as_ref()
}

/// A gcp backend on a fresh bucket of the shared server, for the
/// compliance suite. Panics (under `CI=true`) or gives a fixture of the
/// memory backend labelled as skipped when the server is missing.
pub async fn fixture() -> Fixture {
    let Some(gcs) = shared() else {
        panic!("fake-gcs-server is not installed (scripts/deps/35-cloud.sh)");
    };
    let bucket = format!("mm-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    gcs.create_bucket(&bucket).await;
    let storage = GcpStorage::new(gcs.config(&bucket)).expect("gcp backend");
    Fixture::new(Arc::new(storage))
}

#[async_trait::async_trait]
impl crate::backends::cloud_servers::CloudServer for FakeGcs {
    async fn new_bucket(&self) -> String {
        let bucket = format!("mm-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        self.create_bucket(&bucket).await;
        bucket
    }
    async fn put(&self, bucket: &str, object: &str, data: &[u8]) {
        FakeGcs::put(self, bucket, object, data).await
    }
    async fn names(&self, bucket: &str) -> Vec<String> {
        FakeGcs::names(self, bucket).await
    }
    fn backend(&self, bucket: &str, orphan_age: std::time::Duration) -> Arc<dyn crate::Storage> {
        Arc::new(
            GcpStorage::new(self.config(bucket))
                .expect("gcp backend")
                .with_orphan_age(orphan_age),
        )
    }
    fn env(&self, bucket: &str) -> Vec<(String, String)> {
        vec![
            ("ATHENS_STORAGE_GCP_BUCKET".into(), bucket.into()),
            ("GOOGLE_CLOUD_PROJECT".into(), "modmesh-test".into()),
            ("ATHENS_STORAGE_GCP_JSON_KEY".into(), test_json_key()),
            ("STORAGE_EMULATOR_HOST".into(), self.host()),
        ]
    }
}
