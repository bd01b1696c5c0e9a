//! Azurite (the Azure Storage emulator's blob service) on a loopback port,
//! for tests of the azureblob backend and lock driver (feature `testing`).

use super::{AzureBlobConfig, AzureBlobStorage};
use crate::backends::cloud_servers::{find, free_port, skip, ServerProc};
use crate::compliance::Fixture;
use std::sync::{Arc, OnceLock};

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its well-known key.
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite blob server (in-memory) on 127.0.0.1.
#[derive(Debug)]
pub struct Azurite {
    /// The process (stop and restart it to stage an outage).
    pub proc: ServerProc,
}

impl Azurite {
    /// Starts one, or `None` (after [`skip`]) when it is not installed.
    pub fn start() -> Option<Azurite> {
        let Some(bin) = find("azurite-blob") else {
            skip("azurite-blob is not installed");
            return None;
        };
        let port = free_port();
        let args = [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--silent",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = ServerProc::start("azurite-blob", &bin, args, port);
        Some(Azurite { proc })
    }

    /// The blob endpoint of the dev account.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.proc.port)
    }

    /// A backend config on `container` of this server (account key).
    pub fn config(&self, container: &str) -> AzureBlobConfig {
        AzureBlobConfig {
            AccountName: ACCOUNT.into(),
            AccountKey: KEY.into(),
            ContainerName: container.into(),
            Endpoint: self.endpoint(),
            ..Default::default()
        }
    }

    /// Creates `container` (through the SDK, not the backend).
    pub async fn create_container(&self, container: &str) {
        self.config(container)
            .container_client()
            .expect("client")
            .create()
            .await
            .expect("create container");
    }

    /// Uploads `data` to `container/blob` plainly (not through the
    /// backend), as another program (Athens) would.
    pub async fn put(&self, container: &str, blob: &str, data: &[u8]) {
        self.config(container)
            .container_client()
            .expect("client")
            .blob_client(blob)
            .put_block_blob(data.to_vec())
            .await
            .expect("put blob");
    }

    /// The names of every blob in `container`.
    pub async fn names(&self, container: &str) -> Vec<String> {
        use futures::StreamExt;
        let client = self.config(container).container_client().expect("client");
        let mut pages = client.list_blobs().into_stream();
        let mut out = Vec::new();
        while let Some(p) = pages.next().await {
            out.extend(p.expect("list").blobs.blobs().map(|b| b.name.clone()));
        }
        out
    }
}

/// The Azurite this test binary shares (started on first use).
pub fn shared() -> Option<&'static Azurite> {
    static S: OnceLock<Option<Azurite>> = OnceLock::new();
    S.get_or_init(Azurite::start).as_ref()
}

/// A fresh container name.
pub fn container_name() -> String {
    format!("mm-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// An azureblob backend on a fresh container of the shared Azurite, for
/// the compliance suite.
pub async fn fixture() -> Fixture {
    let Some(az) = shared() else {
        panic!("azurite-blob is not installed (scripts/deps/35-cloud.sh)");
    };
    let container = container_name();
    az.create_container(&container).await;
    let storage = AzureBlobStorage::new(az.config(&container)).expect("azureblob backend");
    Fixture::new(Arc::new(storage))
}

#[async_trait::async_trait]
impl crate::backends::cloud_servers::CloudServer for Azurite {
    async fn new_bucket(&self) -> String {
        let c = container_name();
        self.create_container(&c).await;
        c
    }
    async fn put(&self, bucket: &str, object: &str, data: &[u8]) {
        Azurite::put(self, bucket, object, data).await
    }
    async fn names(&self, bucket: &str) -> Vec<String> {
        Azurite::names(self, bucket).await
    }
    fn backend(&self, bucket: &str, orphan_age: std::time::Duration) -> Arc<dyn crate::Storage> {
        Arc::new(
            AzureBlobStorage::new(self.config(bucket))
                .expect("azureblob backend")
                .with_orphan_age(orphan_age),
        )
    }
    fn env(&self, bucket: &str) -> Vec<(String, String)> {
        vec![
            ("ATHENS_AZURE_ACCOUNT_NAME".into(), ACCOUNT.into()),
            ("ATHENS_AZURE_ACCOUNT_KEY".into(), KEY.into()),
            ("ATHENS_AZURE_CONTAINER_NAME".into(), bucket.into()),
            ("ATHENS_AZURE_ENDPOINT".into(), self.endpoint()),
        ]
    }
}
